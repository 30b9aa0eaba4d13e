"""A pretraining run killed with SIGKILL resumes with ``eofm pretrain --resume last`` exactly:
same step, optimiser, learning-rate schedule, curation subset and data position as a run that
was never killed (compared step by step, and bit for bit at the end)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

import eofm.training as training
from eofm.cli.main import main
from eofm.curation.dynamic import DynamicPruning
from eofm.training.module import AtomicCheckpointIO
from tests.reliability.conftest import Record

REPO = Path(__file__).resolve().parents[2]

#: A script that runs ``eofm pretrain`` and SIGKILLs itself (or its whole process group:
#: every DDP process) at the end of step ``EOFM_KILL_AT_STEP``.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as pl
    import eofm.training as training
    from eofm.cli.main import main

    KILL_AT = int(os.environ["EOFM_KILL_AT_STEP"])
    GROUP = os.environ.get("EOFM_KILL_GROUP") == "1"

    class KillAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == KILL_AT and trainer.global_rank == 0:
                if GROUP:
                    os.killpg(os.getpgid(0), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)

    _run = training.run_pretraining

    def run(config, *, resume=None, callbacks=None):
        return _run(config, resume=resume, callbacks=[*(callbacks or []), KillAt()])

    training.run_pretraining = run

    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
    """
)

ARGS = [
    "pretrain",
    "--config",
    str(REPO / "configs" / "simclr_tiny.yaml"),
    "--set",
    "data.path=synthetic:landcover:n=128:size=32",
    "data.batch_size=16",  # 8 steps per epoch on the pool, then 4 on half of it
    "model.img_size=32",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=20",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.log_every_n_steps=1",
    "output.tensorboard=false",
    "curation={enabled: true, warmup_epochs: 1, every_epochs: 1, fraction: 0.5, subsample: 100}",
    "--quiet",
]


def digest(values: Any) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


class StepLog(pl.Callback):
    """Per step: the samples trained on, the learning rate and the curation subset; at the
    start: the step, optimiser moments and scheduler state the run starts from."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple[list[int], float, str]] = {}
        self.start: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = trainer.optimizers[0]
        sched = trainer.lr_scheduler_configs[0].scheduler
        self.start = {
            "step": trainer.global_step,
            "exp_avg": {k: v["exp_avg"].clone() for k, v in opt.state_dict()["state"].items()},
            "last_epoch": sched.last_epoch,  # type: ignore[attr-defined]
            "io": trainer.strategy.checkpoint_io,
        }

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pruning = next(c for c in trainer.callbacks if isinstance(c, DynamicPruning))
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.steps[trainer.global_step] = (batch["index"].tolist(), lr, digest(pruning.subset))


_RUN: Callable[..., Any] = training.run_pretraining


def with_callbacks(monkeypatch: pytest.MonkeyPatch, *extra: pl.Callback) -> None:
    """``eofm pretrain`` in this process, with ``extra`` callbacks (these only)."""
    run = _RUN

    def patched(config: Any, *, resume: Any = None, callbacks: Any = None) -> Any:
        return run(config, resume=resume, callbacks=[*(callbacks or []), *extra])

    monkeypatch.setattr(training, "run_pretraining", patched)


def weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["state_dict"]
    return state


def killed_run(tmp_path: Path, out: Path, step: int, *extra: str, group: bool = False) -> int:
    driver = tmp_path / "kill_driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "EOFM_KILL_AT_STEP": str(step), "EOFM_KILL_GROUP": "1" if group else ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(driver), *ARGS, *extra, "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # the kill of the process group spares pytest
    )
    return proc.returncode


def test_sigkill_then_resume_last_continues_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    # the run that is never killed
    ref_log = StepLog()
    with_callbacks(monkeypatch, ref_log)
    assert main([*ARGS, "--out", str(tmp_path / "ref")]) == 0

    # killed at the end of step 10: two steps after the checkpoint of step 8, which is also
    # the last batch of the warm-up epoch (the first curation refresh is due right after it)
    out = tmp_path / "killed"
    code = killed_run(tmp_path, out, 10)
    assert code == -9  # SIGKILL: no handler ran, nothing was saved on the way out
    ckpt_dir = out / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["last.ckpt", "step=0000008.ckpt"]
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8
    stale = ckpt_dir / ".last.ckpt.x1y2z3.tmp"  # as a kill in the middle of a save leaves
    stale.write_bytes(b"partial")

    log = StepLog()
    with_callbacks(monkeypatch, log)
    assert main([*ARGS, "--out", str(out), "--resume", "last"]) == 0
    assert not stale.exists()
    start = log.start
    assert start["step"] == 8 and start["last_epoch"] == 8
    assert isinstance(start["io"], AtomicCheckpointIO)
    moments = saved["optimizer_states"][0]["state"]
    assert start["exp_avg"].keys() == moments.keys()
    for k, v in start["exp_avg"].items():
        assert torch.equal(v, moments[k]["exp_avg"])
    # steps 9..20 saw the same samples, learning rates and curation subsets
    assert sorted(log.steps) == list(range(8, 20))
    for step, seen in log.steps.items():
        assert seen == ref_log.steps[step], f"step {step + 1} differs"
    a, b = weights(tmp_path / "ref" / "checkpoints" / "last.ckpt"), weights(ckpt_dir / "last.ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    pb = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    sa, sb = pa["callbacks"]["DynamicPruning"], pb["callbacks"]["DynamicPruning"]
    assert sa["refreshes"] == sb["refreshes"] == 3
    assert torch.equal(sa["subset"], sb["subset"])
    record(
        "resume",
        "CPU run (SimCLR + dynamic pruning) SIGKILLed at step 10; checkpoints every 4 steps",
        "exit -9, last.ckpt of step 8 intact; `--resume last` restarted at step 8 with the "
        "saved Adam moments and LR schedule, ran the curation refresh that was due at the end "
        "of epoch 0, trained steps 9-20 on the same samples/LRs/subsets as an uninterrupted "
        "run and ended bit-identical to it; a stale partial checkpoint file was removed",
    )


@pytest.mark.slow
def test_ddp_processes_killed_then_resume_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    ddp = [
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "trainer.max_steps=12",
        "method.options={hidden_dim: 32, output_dim: 16, batch_norm: false}",
    ]
    assert main([*ARGS, *ddp, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "killed"
    code = killed_run(tmp_path, out, 6, *ddp, group=True)
    assert code == -9
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert main([*ARGS, *ddp, "--out", str(out), "--resume", "last"]) == 0
    a = weights(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    b = weights(out / "checkpoints" / "last.ckpt")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    pa = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    pb = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(
        pa["callbacks"]["DynamicPruning"]["subset"], pb["callbacks"]["DynamicPruning"]["subset"]
    )
    record(
        "resume",
        "2-process DDP run (gloo, ddp_spawn, CPU) whose processes were all SIGKILLed at step 6",
        "last.ckpt of step 4 intact; `--resume last` finished step 12 with the curation subset "
        "of an uninterrupted DDP run and "
        + ("bit-identical weights" if worst == 0 else f"weights within {worst:.1e} of it"),
    )
