"""The documentation stays true: API examples run, the CLI reference matches the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from eofm.cli.reference import cli_reference

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_cli_reference_is_up_to_date() -> None:
    current = (DOCS / "cli.md").read_text()
    assert current == cli_reference(), (
        "docs/cli.md is out of date: run `python -m eofm.cli.reference docs/cli.md`"
    )


def test_cli_reference_covers_every_command_and_option() -> None:
    text = cli_reference()
    for command in ("eofm demo", "eofm data pack", "eofm pretrain", "eofm evaluate", "eofm curate"):
        assert f"## `{command}`" in text
    assert "`--resume` `last|auto|PATH`" in text and "`--baselines` `BASELINES`" in text


@pytest.mark.parametrize("name", ["api.md"])
def test_python_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOCS / name)
    if name == "api.md":
        assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EOFM_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": f"docs_{name}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{name}[block {i + 1}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{name} block {i + 1} failed: {err!r}\n{code}") from err
    assert os.getcwd() == str(tmp_path)
