"""Shared by the benchmark scripts: replace one ``## Section`` of ``benchmarks/results.md``."""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def write_section(section: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace ``section`` (a ``## Title`` line and its body) or append it; others stay as
    they are. The file is written to a temporary name and renamed."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    body = "\n".join(lines).rstrip() + "\n"
    pattern = re.compile(rf"^{re.escape(section)}\s*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote section {section!r} of {path}")
