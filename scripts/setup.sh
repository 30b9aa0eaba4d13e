#!/usr/bin/env bash
# Create .venv (if missing) and install eofm with everything it needs, CPU or GPU machine alike.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,dev]"
.venv/bin/python -c "import eofm, torch; print(f'eofm {eofm.__version__} ready (torch {torch.__version__})')"
