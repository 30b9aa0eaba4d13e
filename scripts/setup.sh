#!/usr/bin/env bash
# Create .venv (if missing) and install eofm with everything it needs, CPU or GPU machine alike.
# Re-running is cheap: pip skips what is already installed.
#
# Versions: the tested ones, from constraints.txt (written by scripts/freeze_constraints.sh).
# torch, torchvision and triton are pinned separately (constraints-torch.txt) and only where
# torch is not installed yet: a machine's own torch build (a CUDA image, a ROCm wheel) is kept.
#   EOFM_SYSTEM_SITE_PACKAGES=1  create .venv with --system-site-packages (use the system torch)
#   EOFM_NO_CONSTRAINTS=1        newest versions that satisfy pyproject.toml instead of the pins
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${EOFM_SYSTEM_SITE_PACKAGES:-0}" = 1 ]; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
pins=()
if [ "${EOFM_NO_CONSTRAINTS:-0}" != 1 ]; then
  pins=(-c constraints.txt)
  if .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "keeping the installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
  else
    pins+=(-c constraints-torch.txt)
  fi
fi
.venv/bin/python -m pip install -q ${pins[@]+"${pins[@]}"} -e ".[all,dev]"
.venv/bin/python -c "import eofm, torch; print(f'eofm {eofm.__version__} ready (torch {torch.__version__})')"
