"""Checkpoints and model files are never half-written: written to a temporary file beside the
target, flushed, then renamed; a writer killed at any moment leaves the old file or the new
one, and a failed write leaves the old one."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import eofm.models.export as export
from eofm.errors import CheckpointError
from eofm.models import create_backbone, export_model, load_model
from eofm.training.module import (
    AtomicCheckpointIO,
    atomic_torch_save,
    remove_partial_checkpoints,
)
from tests.reliability.conftest import Record


def _write_forever(path: Path, version: int) -> None:
    """A writer that saves a new 16 MB checkpoint version after version, until killed."""
    torch.set_num_threads(1)
    while True:
        version += 1
        atomic_torch_save({"v": version, "t": torch.full((4_000_000,), float(version))}, path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_writers_killed_at_random_moments(tmp_path: Path, record: Record) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    version, mid_write, rounds = 0, 0, 12
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:  # the child writes until it is killed
            try:
                _write_forever(path, version)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.15, 0.4))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        leftovers = list(path.parent.glob(".*.tmp"))
        mid_write += bool(leftovers)
        ckpt = torch.load(path, weights_only=True)  # always a whole checkpoint
        assert ckpt["v"] > version and bool((ckpt["t"] == float(ckpt["v"])).all())
        version = ckpt["v"]
        assert sorted(remove_partial_checkpoints(path.parent)) == sorted(leftovers)
        assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    assert mid_write >= 1  # some kills landed in the middle of a 16 MB write
    record(
        "atomic writes",
        f"a process saving 16 MB checkpoints in a loop, SIGKILLed {rounds} times at random",
        f"the checkpoint loaded whole after every kill ({mid_write} kills hit a write in "
        "progress: only a hidden temporary file was incomplete; removed on the next start)",
    )


def test_a_failed_save_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"v": 1}, path)
    real_save = torch.save

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left") as err:
        io.save_checkpoint({"v": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    record(
        "atomic writes",
        "disk full in the middle of saving a checkpoint (Lightning's CheckpointIO)",
        f"{err.value.strerror}: the previous last.ckpt was kept intact, no partial file left",
    )


def test_model_export_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    torch.manual_seed(0)
    first = create_backbone("vit_test", bands=["red", "green", "blue"], img_size=32)
    path = export_model(first, tmp_path / "model.safetensors")
    second = create_backbone("vit_test", bands=["red", "green", "blue"], img_size=32)

    import safetensors.torch

    real = safetensors.torch.save_file

    def killed(state: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt  # as Ctrl-C while the weights are being written

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        export_model(second, path)
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    reloaded = load_model(path)  # the first model, whole
    x = torch.randn(1, 3, 32, 32)
    first.eval()
    assert torch.equal(reloaded(x), first(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    record(
        "atomic writes",
        "export interrupted while writing model.safetensors",
        "the previous model file and card stayed in place and loaded; no partial file left",
    )

    real_write = export._atomic_write

    def weights_only(target: Path, write: Any) -> None:
        if target.suffix == ".json":
            raise KeyboardInterrupt  # killed between the weights and the card
        real_write(target, write)

    monkeypatch.setattr(export, "_atomic_write", weights_only)
    with pytest.raises(KeyboardInterrupt):
        export_model(second, path)
    monkeypatch.setattr(export, "_atomic_write", real_write)
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match") as err:
        load_model(path)
    record(
        "atomic writes",
        "export interrupted between the new weights and the new card",
        f"load_model refuses the mismatched pair: {err.value}",
    )
