"""The engine end to end on CPU: a tiny run, export, checkpoints, exact resume, CLI errors."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from eofm.cli.main import main
from eofm.errors import ConfigError
from eofm.models import load_model
from eofm.training import (
    TrainingInterrupted,
    load_config,
    parse_synthetic,
    resolve_resume,
    run_pretraining,
)

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "data.path=synthetic:landcover:n=128:size=32",
    "data.batch_size=16",  # 8 batches per epoch
    "model.backbone=vit_test",
    "method.name=simclr",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=12",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
    "optim.warmup_steps=3",
    "output.tensorboard=false",
]


def tiny(tmp: Path, name: str, *extra: str) -> Any:
    return load_config(None, [*TINY, f"output.dir={tmp}", f"output.name={name}", *extra])


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(ckpt, weights_only=True)["state_dict"]
    return state


def test_parse_synthetic_spec() -> None:
    assert parse_synthetic("synthetic") == {
        "kind": "landcover",
        "n": 512,
        "size": 64,
        "seed": 0,
        "heavy_tail": None,
    }
    spec = parse_synthetic("synthetic:wavemode:n=64:size=32:seed=3")
    assert spec["kind"] == "wavemode" and spec["n"] == 64 and spec["seed"] == 3
    with pytest.raises(ConfigError, match="unknown key"):
        parse_synthetic("synthetic:count=3")


def test_tiny_run_exports_a_model_and_safe_checkpoints(tmp_path: Path) -> None:
    result = run_pretraining(tiny(tmp_path, "run", "trainer.max_steps=6"))
    assert result.global_step == 6 and result.final_loss is not None
    assert result.images_per_s is not None and result.images_per_s > 0
    names = {p.name for p in result.checkpoints}
    assert names == {"last.ckpt", "step=0000004.ckpt"}  # no second copy (last-v1.ckpt)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)  # plain types only
    assert ckpt["global_step"] == 6 and ckpt["optimizer_states"]
    assert result.model_path is not None
    model = load_model(result.model_path)
    assert model.arch == "vit_test" and len(model.bands) == 13
    card = model.card or {}
    assert card["pretraining"]["method"] == "simclr"
    # the data's sensor is recorded, so bands can later be matched by name (B04 = red)
    assert card["sensor"] == "sentinel2_l1c" and model.sensor == "sentinel2_l1c"
    assert set(card["normalization"]["mean"]) == set(model.bands)
    x = torch.randn(2, 13, 32, 32)
    assert model(x).shape == (2, model.embed_dim)
    # backbone weights equal those in the final checkpoint
    sd = weights(result.last_checkpoint)
    for k, v in model.model.state_dict().items():
        torch.testing.assert_close(v, sd[f"method.backbone.model.{k}"])
    logs = list((result.run_dir / "logs").rglob("metrics.csv"))
    rows = list(csv.DictReader(logs[0].open()))
    assert any(r.get("train/loss") for r in rows) and any(r.get("img_s") for r in rows)
    assert (result.run_dir / "config.yaml").is_file()
    # the folder now holds a run: a new one there must resume or overwrite
    with pytest.raises(ConfigError, match="--resume last"):
        run_pretraining(tiny(tmp_path, "run", "trainer.max_steps=6"))


def test_final_step_checkpoint_is_written_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: list[tuple[str, int]] = []
    original = pl.Trainer.save_checkpoint

    def counting(self: pl.Trainer, filepath: Any, *args: Any, **kwargs: Any) -> None:
        saves.append((Path(filepath).name, self.global_step))
        original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", counting)
    # the periodic checkpoint falls on the last step: last.ckpt is not saved again
    run_pretraining(tiny(tmp_path, "a", "trainer.max_steps=8"))
    assert saves.count(("last.ckpt", 8)) == 1 and ("step=0000008.ckpt", 8) in saves
    saves.clear()
    # no periodic checkpoint in the run: last.ckpt once, at the end
    result = run_pretraining(tiny(tmp_path, "b", "trainer.max_steps=3", "output.tensorboard=true"))
    assert saves == [("last.ckpt", 3)]
    assert [p.name for p in result.checkpoints] == ["last.ckpt"]
    # TensorBoard and CSV share one version folder
    assert [p.name for p in (result.run_dir / "logs").iterdir()] == ["version_0"]
    version = result.run_dir / "logs" / "version_0"
    assert (version / "metrics.csv").is_file() and list(version.glob("events.out.tfevents.*"))


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of an epoch


class _Capture(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = trainer.global_step
        state = trainer.optimizers[0].state_dict()["state"]
        self.exp_avg = {k: v["exp_avg"].clone() for k, v in state.items()}


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_interrupt_and_resume_continue_exactly(tmp_path: Path, method: str) -> None:
    extra = [f"method.name={method}"]
    if method == "dino":
        extra += [
            "method.options={hidden_dim: 32, bottleneck_dim: 16, output_dim: 64}",
            "method.views={local_views: 2, local_size: 16}",
        ]
    full = run_pretraining(tiny(tmp_path, "full", *extra))
    config = tiny(tmp_path, "stopped", *extra)
    with pytest.raises(TrainingInterrupted) as info:
        run_pretraining(config, callbacks=[_StopAt(5)])
    saved = info.value.checkpoint
    assert saved is not None and saved.name == "interrupted.ckpt" and info.value.step == 5
    assert resolve_resume("last", tmp_path / "stopped") == saved  # newest checkpoint
    in_ckpt = torch.load(saved, weights_only=True)["optimizer_states"][0]["state"]
    capture = _Capture()
    resumed = run_pretraining(config, resume="last", callbacks=[capture])
    assert capture.step == 5 and resumed.global_step == 12
    assert set(capture.exp_avg) == set(in_ckpt)
    for k, v in capture.exp_avg.items():
        assert torch.equal(v, in_ckpt[k]["exp_avg"])
    assert not saved.exists()  # removed once the run finished
    a, b = weights(full.last_checkpoint), weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_resume_from_a_periodic_checkpoint(tmp_path: Path) -> None:
    full = run_pretraining(tiny(tmp_path, "full", "trainer.keep_all_checkpoints=true"))
    step4 = tmp_path / "full" / "checkpoints" / "step=0000004.ckpt"
    assert step4.is_file()
    again = run_pretraining(tiny(tmp_path, "again"), resume=step4)
    assert again.global_step == 12
    a, b = weights(full.last_checkpoint), weights(again.last_checkpoint)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_streamed_shards_bf16_checkpointing_and_geotiff_folders(tmp_path: Path) -> None:
    streamed = run_pretraining(
        tiny(
            tmp_path,
            "stream",
            "data.iterable=true",
            "trainer.max_steps=3",
            "trainer.precision=bf16-mixed",  # CPU autocast
            "model.activation_checkpointing=true",
        )
    )
    assert streamed.global_step == 3 and streamed.final_loss is not None
    from eofm.data.synthetic import write_synthetic

    folder = write_synthetic(tmp_path / "tifs", n=32, size=32, progress=False, sensors=("s1",))
    run = run_pretraining(
        tiny(
            tmp_path,
            "tifs_run",
            f"data.path={folder}",
            "data.options={modality: s1}",
            "method.name=mocov3",
            "method.options={hidden_dim: 32, output_dim: 16}",
            "trainer.max_steps=2",
        )
    )
    assert run.global_step == 2 and run.model_path is not None
    assert load_model(run.model_path).bands == ("VV", "VH")


def test_cli_pretrain_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "pretrain",
            "--config",
            str(REPO / "configs" / "dino_tiny.yaml"),
            "--set",
            "data.path=synthetic:wavemode:n=32:size=32",
            "data.batch_size=8",
            "model.img_size=32",
            "method.views={global_size: 32, local_size: 16, local_views: 2}",
            "trainer.max_steps=2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "model:" in text and (out / "model.safetensors").is_file()
    assert load_model(out / "model.safetensors").bands == ("VV",)

    def error(*argv: str) -> str:
        assert main(["pretrain", *argv]) == 2
        return capsys.readouterr().err

    assert "did you mean 'lr'" in error("optim.lrr=1", "trainer.max_steps=1")
    missing = tmp_path / "nowhere"
    assert str(missing) in error(
        f"data.path={missing}", "trainer.max_steps=1", "--out", str(tmp_path / "other")
    )
    assert "no last.ckpt" in error(
        "trainer.max_steps=1", "--resume", "last", "--out", str(tmp_path)
    )
    if not torch.cuda.is_available():
        msg = error("trainer.accelerator=gpu", "trainer.max_steps=1")
        assert "no GPU is available" in msg and "trainer.accelerator=cpu" in msg
    assert (
        main(["pretrain", "--config", str(REPO / "configs" / "simclr_tiny.yaml"), "--print-config"])
        == 0
    )
    assert "simclr" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "term"
    cmd = [
        sys.executable,
        "-m",
        "eofm.cli.main",
        "pretrain",
        "--config",
        str(REPO / "configs" / "simclr_tiny.yaml"),
        "--set",
        "trainer.max_steps=100000",
        "trainer.checkpoint_every_n_steps=2",
        "data.path=synthetic:landcover:n=64:size=32",
        "data.batch_size=16",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step=*.ckpt")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    saved = out / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file() and "--resume last" in err
    step = torch.load(saved, weights_only=True)["global_step"]
    code = main(
        [
            "pretrain",
            "--config",
            str(REPO / "configs" / "simclr_tiny.yaml"),
            "--set",
            f"trainer.max_steps={step + 2}",
            "data.path=synthetic:landcover:n=64:size=32",
            "data.batch_size=16",
            "--out",
            str(out),
            "--quiet",
            "--resume",
            "last",
        ]
    )
    assert code == 0
    assert (
        torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2
    )


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path: Path) -> None:
    config = tiny(
        tmp_path,
        "ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "trainer.max_steps=4",
        "method.options={hidden_dim: 32, output_dim: 16, batch_norm: false}",
    )
    result = run_pretraining(config)
    assert result.model_path is not None and result.model_path.is_file()
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 4
