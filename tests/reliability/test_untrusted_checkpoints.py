"""Checkpoints and model files from untrusted sources never run pickled code: a pickle whose
``__reduce__`` would write a marker file is refused with a typed error wherever eofm reads a
checkpoint (``--resume``, ``load_model``, ``load_pretrained``, ``eofm evaluate --model``,
``eofm curate --model``, ``model.pretrained``), and the marker is never created. Corrupt and
truncated checkpoints are typed errors too."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eofm.cli.main import main
from eofm.errors import CheckpointError
from eofm.models import create_backbone, export_model, load_model, load_pretrained
from eofm.models.checkpoints import load_torch_checkpoint, read_checkpoint
from eofm.training import load_config, run_pretraining
from eofm.training.engine import check_resume_checkpoint
from tests.reliability.conftest import Record

TINY = [
    "data.path=synthetic:landcover:n=32:size=32",
    "data.batch_size=16",
    "model.backbone=vit_test",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=2",
    "trainer.checkpoint_every_n_steps=1",
    "trainer.progress_bar=false",
    "output.tensorboard=false",
]


class Payload:
    """Unpickling this runs ``Path.write_text(marker, "pwned")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Malicious files in the forms an attacker would use: a torch zip checkpoint that looks
    like a training checkpoint, a raw pickle, and a model card whose weights are a pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "evil.ckpt"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "global_step": 3, "loops": {}, "x": Payload(marker)},
        ckpt,
    )
    raw = folder / "raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    weights = folder / "model.pth"
    torch.save({"patch_embed.proj.weight": Payload(marker)}, weights)
    bb = create_backbone("vit_test", bands=["red", "green", "blue"], img_size=32)
    good = export_model(bb, folder / "model.safetensors")
    card = json.loads(good.with_suffix(".json").read_text())
    card["weights"] = weights.name
    card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    return {"ckpt": ckpt, "raw": raw, "card": good}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned.txt"


def test_the_payload_is_live(tmp_path: Path, marker: Path) -> None:
    """The files really are malicious: unsafe loading would run the payload."""
    files = evil_files(tmp_path / "evil", marker)
    torch.load(files["ckpt"], weights_only=False)
    assert marker.read_text() == "pwned"


def _refused(
    what: str, call: Callable[[], Any], marker: Path, record: Record, match: str = "not executed"
) -> str:
    with pytest.raises(CheckpointError, match=match) as err:
        call()
    assert not marker.exists(), f"{what} ran the pickled code"
    record("untrusted files", what, str(err.value))
    return str(err.value)


def test_api_loaders_refuse_pickled_code(tmp_path: Path, marker: Path, record: Record) -> None:
    files = evil_files(tmp_path / "evil", marker)
    bb = create_backbone("vit_test", bands=["red", "green", "blue"], img_size=32)
    _refused(
        "malicious torch checkpoint to load_pretrained",
        lambda: load_pretrained(bb, files["ckpt"]),
        marker,
        record,
    )
    _refused(
        "raw pickle (not a torch file) to read_checkpoint",
        lambda: read_checkpoint(files["raw"]),
        marker,
        record,
    )
    _refused(
        "model card whose weights (hash matching) are a malicious pickle, to load_model",
        lambda: load_model(files["card"]),
        marker,
        record,
    )
    _refused(
        "malicious checkpoint as model.pretrained of a recipe",
        lambda: run_pretraining(
            load_config(
                None,
                [*TINY, f"model.pretrained={files['ckpt']}", f"output.dir={tmp_path / 'runs'}"],
            )
        ),
        marker,
        record,
    )


def test_resume_refuses_pickled_code(
    tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str], record: Record
) -> None:
    files = evil_files(tmp_path / "evil", marker)
    for key in ("ckpt", "raw"):
        argv = ["pretrain", *[f"--set={o}" for o in TINY], "--out", str(tmp_path / f"run_{key}")]
        assert main([*argv, "--quiet", "--resume", str(files[key])]) == 2
        err = capsys.readouterr().err
        assert "eofm: error:" in err and "not executed" in err and str(files[key]) in err
        assert not marker.exists()
        record("untrusted files", f"`eofm pretrain --resume` {files[key].name}", err.strip())


def test_evaluate_and_curate_refuse_pickled_code(
    tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str], record: Record
) -> None:
    files = evil_files(tmp_path / "evil", marker)
    cache = tmp_path / "cache"
    code = main(
        [
            "evaluate",
            "--model",
            str(files["ckpt"]),
            "--backbone",
            "vit_test",
            "--task",
            "knn",
            "--data",
            "synthetic:landcover:24:16",
            "--out",
            str(tmp_path / "eval"),
            "--cache-dir",
            str(cache),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not executed" in err and not marker.exists()
    record("untrusted files", "`eofm evaluate --model evil.ckpt --backbone vit_test`", err.strip())
    code = main(
        [
            "curate",
            "--model",
            str(files["ckpt"]),
            "--backbone",
            "vit_test",
            "--data",
            "synthetic:landcover:n=24:size=16",
            "--target",
            "0.5",
            "--out",
            str(tmp_path / "cur"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not executed" in err and not marker.exists()
    record("untrusted files", "`eofm curate --model evil.ckpt --backbone vit_test`", err.strip())


def test_resume_refuses_files_that_are_not_training_checkpoints(
    tmp_path: Path, record: Record
) -> None:
    plain = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(3)}, plain)
    err = _refused(
        "--resume given a plain state dict",
        lambda: check_resume_checkpoint(plain),
        tmp_path / "none",
        record,
        match="not a training checkpoint",
    )
    assert str(plain) in err
    run = run_pretraining(load_config(None, [*TINY, f"output.dir={tmp_path}", "output.name=r"]))
    assert run.last_checkpoint is not None
    data = run.last_checkpoint.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    err = _refused(
        "--resume given a training checkpoint cut in half",
        lambda: check_resume_checkpoint(cut),
        tmp_path / "none",
        record,
        match="cannot be read",
    )
    assert check_resume_checkpoint(run.last_checkpoint) == 2


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(data=st.binary(min_size=1, max_size=400), suffix=st.sampled_from([".ckpt", ".pth", ".pt"]))
def test_random_bytes_as_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("junk") / f"junk{suffix}"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="junk"):
        load_torch_checkpoint(path)
    with pytest.raises(CheckpointError, match="junk"):
        check_resume_checkpoint(path)


def test_random_bytes_summary(tmp_path: Path, record: Record) -> None:
    """The fuzzed cases above, as one row of the table (they are checked there)."""
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"\x80\x04\x95 truncated pickle")
    with pytest.raises(CheckpointError) as err:
        check_resume_checkpoint(path)
    record(
        "untrusted files",
        "random bytes (1-400, 40 cases) as .ckpt/.pth/.pt to the checkpoint loader and --resume",
        f"CheckpointError every time, e.g. '{err.value}'",
    )
