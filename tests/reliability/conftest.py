"""Reliability tests: faults, bad inputs and resumption.

Tests run on one intra-op thread. Each test may record what it tried and what happened with
the ``record`` fixture; with ``EOFM_RELIABILITY_JSON=path`` set, the rows (and whether their
test passed) are written there at the end of the session, and
``scripts/reliability_table.py`` renders them into ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

ENV = "EOFM_RELIABILITY_JSON"
_ROWS: list[dict[str, Any]] = []
_OUTCOMES: dict[str, str] = {}
_BASE: list[str] = []

Record = Callable[[str, str, str], None]


REPO = str(Path(__file__).resolve().parents[2])


def clean(text: str) -> str:
    """A message without the session's temporary folders or the checkout's location, on one
    line, not too long."""
    for base in _BASE:
        text = text.replace(base, "<tmp>")
    text = text.replace(REPO + os.sep, "")
    text = re.sub(r"<tmp>/[\w.-]+?\d+/", "<tmp>/", text)
    text = re.sub(r"/tmp/[\w./-]*?/(?=[\w.-]+\b)", "<tmp>/", text)
    text = " ".join(text.split())
    return text if len(text) <= 480 else text[:477] + "..."


@pytest.fixture
def record(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Record:
    """``record(area, fault, outcome)``: one row of the reliability table."""
    base = str(tmp_path_factory.getbasetemp())
    if base not in _BASE:
        _BASE.append(base)

    def add(area: str, fault: str, outcome: str) -> None:
        _ROWS.append(
            {
                "area": area,
                "fault": clean(fault),
                "outcome": clean(outcome),
                "test": request.node.nodeid,
            }
        )

    return add


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get(ENV)
    if not out or not _ROWS:
        return
    import platform

    import lightning

    rows = [{**row, "result": _OUTCOMES.get(row["test"], "unknown")} for row in _ROWS]
    tests = {k: v for k, v in _OUTCOMES.items() if "tests/reliability/" in k}
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
    }
    summary = {
        "tests": len(tests),
        "passed": sum(v == "passed" for v in tests.values()),
        "failed": sum(v == "failed" for v in tests.values()),
        "skipped": sum(v == "skipped" for v in tests.values()),
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"rows": rows, "summary": summary, "environment": environment}
    path.write_text(json.dumps(document, indent=1) + "\n")
