"""A NaN or infinite loss: the run stops with a clear, typed error and keeps its last good
checkpoint (``trainer.nonfinite_loss: stop``, the default), or drops the bad steps' updates
(``skip``) until ``trainer.max_nonfinite_skips`` of them in a row stop it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from eofm.cli.main import main
from eofm.errors import ConfigError, NonFiniteLossError
from eofm.training import load_config, run_pretraining
from tests.reliability.conftest import Record
from tests.reliability.test_kill_and_resume import with_callbacks

TINY = [
    "data.path=synthetic:landcover:n=64:size=32",
    "data.batch_size=16",
    "model.backbone=vit_test",
    "method.name=simclr",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=10",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
    "optim.warmup_steps=2",
    "output.tensorboard=false",
]


def tiny(tmp: Path, name: str, *extra: str) -> Any:
    return load_config(None, [*TINY, f"output.dir={tmp}", f"output.name={name}", *extra])


class Poison(pl.Callback):
    """Makes the batch of the given (0-based) steps non-finite, after normalisation."""

    def __init__(self, steps: set[int], value: float = float("nan")) -> None:
        self.steps = steps
        self.value = value

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in self.steps:
            batch["image"].fill_(self.value)


class Snapshots(pl.Callback):
    """Parameters, buffers (BatchNorm statistics) and Adam moments before each step."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.moments: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self.params[step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        state = trainer.optimizers[0].state
        self.moments[step] = [s["exp_avg"].clone() for s in state.values() if "exp_avg" in s]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    record: Record,
) -> None:
    with_callbacks(monkeypatch, Poison({6}))
    out = tmp_path / "nan"
    code = main(["pretrain", *[f"--set={o}" for o in TINY], "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the simclr loss is nan at step 6" in err and "the run stopped" in err
    last = out / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in err  # saved at step 4, with every periodic one
    assert not (out / "checkpoints" / "interrupted.ckpt").exists()
    assert not (out / "model.safetensors").exists()
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    record("non-finite loss", "NaN loss at step 6 (nonfinite_loss: stop, the default)", err.strip())

    # the run continues from that checkpoint once the cause is gone
    monkeypatch.undo()
    assert main(["pretrain", *[f"--set={o}" for o in TINY], "--out", str(out), "--quiet",
                 "--resume", "last"]) == 0  # fmt: skip
    assert torch.load(last, weights_only=True)["global_step"] == 10


def test_inf_loss_raises_a_typed_error_in_the_api(tmp_path: Path, record: Record) -> None:
    config = tiny(tmp_path, "inf")
    with pytest.raises(NonFiniteLossError) as info:
        run_pretraining(config, callbacks=[Poison({2}, float("inf"))])
    err = info.value
    assert isinstance(err, FloatingPointError) and err.step == 2
    assert err.checkpoint is None  # nothing saved yet: said, not invented
    assert "at step 2" in str(err) and "nonfinite_loss=skip" in str(err)
    record("non-finite loss", "infinite inputs at step 2, before any checkpoint", str(err))


def test_skip_drops_the_bad_steps_updates_and_the_run_finishes(
    tmp_path: Path, record: Record
) -> None:
    snaps = Snapshots()
    config = tiny(
        tmp_path,
        "skip",
        "trainer.nonfinite_loss=skip",
        "trainer.max_nonfinite_skips=3",
        "optim.grad_clip=1.0",  # clipping finds no gradient on skipped steps
    )
    result = run_pretraining(config, callbacks=[Poison({5, 6}), snaps])
    assert result.global_step == 10  # skipped steps still count
    # steps 5 and 6 changed nothing: parameters, BatchNorm statistics and Adam moments before
    # step 7 are those before step 5; step 4 and step 7 did change them
    for k, v in snaps.params[5].items():
        assert torch.equal(v, snaps.params[7][k]), k
    assert all(torch.equal(a, b) for a, b in zip(snaps.moments[5], snaps.moments[7]))
    assert any(not torch.equal(v, snaps.params[5][k]) for k, v in snaps.params[4].items())
    assert any(not torch.equal(v, snaps.params[7][k]) for k, v in snaps.params[8].items())
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert ckpt["eofm_nonfinite"] == {"skipped_steps": 2, "consecutive_skips": 0}
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    rows = list(csv.DictReader(next((result.run_dir / "logs").rglob("metrics.csv")).open()))
    skipped = [float(r["train/skipped_steps"]) for r in rows]
    assert skipped == [0, 0, 0, 0, 0, 1, 2, 2, 2, 2]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 10 and all(abs(v) < 1e6 for v in losses)  # no NaN in the logs
    record(
        "non-finite loss",
        "NaN losses at steps 5 and 6 with nonfinite_loss: skip",
        "both updates dropped (parameters, BatchNorm statistics and Adam moments unchanged), "
        "the run finished its 10 "
        "steps with finite weights; train/skipped_steps logged 0 0 0 0 0 1 2 2 2 2",
    )


def test_skip_stops_after_too_many_in_a_row(tmp_path: Path, record: Record) -> None:
    config = tiny(tmp_path, "many", "trainer.nonfinite_loss=skip", "trainer.max_nonfinite_skips=3")
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row") as info:
        run_pretraining(config, callbacks=[Poison({5, 6, 7, 8})])
    err = info.value
    assert err.step == 7
    assert err.checkpoint is not None and Path(err.checkpoint).name in (
        "last.ckpt",
        "step=0000004.ckpt",
    )
    assert torch.load(err.checkpoint, weights_only=True)["global_step"] == 4
    record("non-finite loss", "NaN losses at steps 5-8, skip with max_nonfinite_skips=3", str(err))


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'skip'"):
        tiny(tmp_path, "x", "trainer.nonfinite_loss=skp")
    with pytest.raises(ConfigError, match="max_nonfinite_skips"):
        run_pretraining(tiny(tmp_path, "y", "trainer.max_nonfinite_skips=0"))


class PoisonRank(Poison):
    """Poisons the batch of one rank only: the other rank's loss stays finite."""

    def __init__(self, steps: set[int], rank: int) -> None:
        super().__init__(steps)
        self.rank = rank

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


DDP = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp_spawn",
    "trainer.max_steps=4",
    "method.options={hidden_dim: 32, output_dim: 16, batch_norm: false}",
]


@pytest.mark.slow
def test_ddp_ranks_skip_or_stop_together(tmp_path: Path, record: Record) -> None:
    config = tiny(tmp_path, "ddp_skip", *DDP, "trainer.nonfinite_loss=skip")
    result = run_pretraining(config, callbacks=[PoisonRank({2}, rank=1)])
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["eofm_nonfinite"]["skipped_steps"] == 1  # counted on rank 0, poisoned on rank 1
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    record(
        "non-finite loss",
        "DDP (2 CPU processes): NaN loss on rank 1 only at step 2, nonfinite_loss: skip",
        "both ranks skipped step 2 together (rank 0 counted it), the run finished its 4 steps "
        "with finite weights; no collective hung",
    )
    config = tiny(tmp_path, "ddp_stop", *DDP, "trainer.checkpoint_every_n_steps=1")
    with pytest.raises(NonFiniteLossError, match="at step 2") as info:
        run_pretraining(config, callbacks=[PoisonRank({2}, rank=1)])
    assert info.value.step == 2 and info.value.checkpoint is not None
    assert torch.load(info.value.checkpoint, weights_only=True)["global_step"] == 2
    record(
        "non-finite loss",
        "DDP (2 CPU processes): NaN loss on rank 1 only at step 2, nonfinite_loss: stop",
        f"both ranks stopped at step 2; the caller gets {type(info.value).__name__}: {info.value}",
    )
