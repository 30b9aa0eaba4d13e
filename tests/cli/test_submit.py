"""``eofm pretrain --submit slurm``: submitit writes the sbatch script and submits it (to a
stand-in ``sbatch`` on PATH here); without sbatch the error says where to run it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from eofm.cli.main import build_parser, main
from eofm.cli.submit import _job_argv

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[2]
ARGS = ["pretrain", "--config", str(REPO / "configs" / "simclr_tiny.yaml")]


def test_submit_writes_the_job_and_hands_it_to_sbatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "sbatch_args"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {seen}\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "run"
    argv = [*ARGS, "--set", "trainer.max_steps=5", "--out", str(out), "--submit", "slurm"]
    argv += ["--slurm-nodes", "2", "--slurm-gpus-per-node", "4", "--slurm-partition", "gpu"]
    assert main([*argv, "--slurm-option", "account=geo"]) == 0
    assert "submitted SLURM job 4242" in capsys.readouterr().out
    script = Path(seen.read_text().split()[-1])
    text = (
        script.read_text()
        if script.is_file()
        else (out / "slurm" / "4242_submission.sh").read_text()
    )
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"):
        assert f"#SBATCH {line}" in text
    assert "#SBATCH --account=geo" in text
    assert not (out / "checkpoints").exists()  # nothing trained here


def test_every_task_runs_the_same_pretrain_with_the_job_size() -> None:
    args = build_parser().parse_args([*ARGS, "--set", "optim.lr=1e-4", "--resume", "last"])
    job = _job_argv(args, 4, 8)
    assert job[:2] == ["--config", str(REPO / "configs" / "simclr_tiny.yaml")]
    assert "optim.lr=1e-4" in job and "trainer.num_nodes=4" in job and "trainer.devices=8" in job
    assert job[-3:] == ["--resume", "auto", "--quiet"]


def test_without_sbatch_the_error_says_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main([*ARGS, "--out", str(tmp_path / "r"), "--submit", "slurm"]) == 2
    assert "sbatch and srun not on PATH" in capsys.readouterr().err
    assert isinstance(build_parser().parse_args(ARGS), argparse.Namespace)
