"""Progress reads well everywhere: tqdm on a terminal, plain lines in a file or a pipe."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eofm.progress import PlainProgress, format_duration, format_line, progress, use_plain

REPO = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_choice_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOFM_PROGRESS", raising=False)
    assert use_plain(io.StringIO()) and not use_plain(_Tty())
    monkeypatch.setenv("EOFM_PROGRESS", "plain")
    assert use_plain(_Tty())
    monkeypatch.setenv("EOFM_PROGRESS", "bar")
    assert not use_plain(io.StringIO())
    from tqdm.auto import tqdm

    bar = progress(range(3), desc="x", file=io.StringIO())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
    monkeypatch.setenv("EOFM_PROGRESS", "plain")
    assert isinstance(progress(range(3)), PlainProgress)


def test_plain_lines_have_count_rate_and_time_left() -> None:
    out = io.StringIO()
    bar = PlainProgress(total=10, desc="embedding", unit="img", file=out, every_s=0.0)
    for _ in range(4):
        bar.update(1)
    bar.set_postfix(loss=0.123456)
    bar.update(6)
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "embedding: 0/10 (0%)"
    assert re.fullmatch(r"embedding: 4/10 \(40%\), [\d.]+ img/s, \d+:\d\d left", lines[4])
    assert re.fullmatch(r"embedding: 10/10 \(100%\), [\d.]+ img/s, loss=0.1235", lines[-1])
    assert len(lines) == 6  # start, four updates, the last one (close adds nothing new)


def test_plain_lines_are_rate_limited_and_iteration_matches_tqdm() -> None:
    out = io.StringIO()
    with PlainProgress(range(1000), desc="steps", file=out, every_s=3600.0) as bar:
        assert list(bar) == list(range(1000))
    lines = out.getvalue().splitlines()
    assert lines[0] == "steps: 0/1000 (0%)"
    assert lines[-1].startswith("steps: 1000/1000 (100%)")
    assert len(lines) == 2  # start and end only: the interval is an hour
    silent = io.StringIO()
    list(PlainProgress(range(5), file=silent, disable=True))
    assert silent.getvalue() == ""
    resumed = PlainProgress(total=100, initial=40, file=io.StringIO(), every_s=0.0)
    assert resumed.n == 40


def test_formatting() -> None:
    assert format_duration(7) == "0:07"
    assert format_duration(725) == "12:05"
    assert format_duration(3723) == "1:02:03"
    assert format_line("a", 5, None, 1.0, "img") == "a: 5, 5.0 img/s"
    assert format_line("a", 5, 10, 1.0, "img") == "a: 5/10 (50%), 5.0 img/s, 0:01 left"


def _run(args: list[str], log: Path, cwd: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path[1:2]])}
    env.pop("EOFM_PROGRESS", None)
    with log.open("w") as fh:  # stdout and stderr both to the file, as `> log 2>&1`
        proc = subprocess.run(
            [sys.executable, "-m", "eofm.cli.main", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            timeout=600,
        )
    return proc.returncode


def test_pretrain_log_file_has_plain_step_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    args = ["pretrain", "--config", str(REPO / "configs" / "simclr_tiny.yaml")]
    args += ["--set", "trainer.max_steps=30", "--set", "data.path=synthetic:landcover:n=96:size=32"]
    args += ["--set", "model.img_size=32", "--out", str(tmp_path / "run")]
    assert _run(args, log, tmp_path) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "\r" not in text
    steps = re.findall(r"^step (\d+)/30 \(\d+%\), loss [\d.]+, [\d.]+ img/s", text, re.M)
    assert [int(s) for s in steps] == [5, 10, 15, 20, 25, 30]  # log_every_n_steps: 5
    assert re.search(r", \d+:\d\d left$", text, re.M)  # time left while it runs
    assert re.search(r"^training done: step 30 in \d+:\d\d$", text, re.M)


def test_evaluate_log_file_has_plain_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    args = ["evaluate", "--model", "random:vit_test", "--task", "linear"]
    args += ["--data", "synthetic:landcover:60:16", "--out", str(tmp_path / "eval")]
    args += ["--cache-dir", str(tmp_path / "cache"), "--probe-epochs", "2"]
    assert _run(args, log, tmp_path) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "\r" not in text
    assert re.search(r"^features[^\n]*: \d+/\d+ \(100%\)", text, re.M), text[-2000:]
