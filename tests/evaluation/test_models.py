"""Model specs: Lightning-style checkpoints, model files with cards, RGB baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eofm.errors import CheckpointError, ConfigError
from eofm.evaluation.models import find_backbone_prefix, resolve_model
from eofm.models import create_backbone, export_model

S2 = ("B02", "B03", "B04", "B08")


def test_prefix_prefers_teacher_and_coverage() -> None:
    model_keys = ["a.weight", "b.weight", "b.bias"]
    keys = [f"method.student.model.{k}" for k in model_keys]
    keys += [f"method.teacher.model.{k}" for k in model_keys]
    keys += ["method.head.a.weight"]
    assert find_backbone_prefix(keys, model_keys) == "method.teacher.model."
    assert find_backbone_prefix(["x.a.weight", "x.b.weight", "y.a.weight"], model_keys) == "x."
    assert find_backbone_prefix(keys, model_keys, prefix="method.student.model.") == (
        "method.student.model."
    )


def test_lightning_checkpoint_loads_exactly(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = create_backbone("vit_test", bands=list(S2), img_size=32).eval()
    state = {f"method.backbone.model.{k}": v for k, v in src.model.state_dict().items()}
    state["method.projector.weight"] = torch.randn(8, 64)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, ckpt)
    with pytest.raises(ConfigError, match="--backbone"):
        resolve_model(ckpt, bands=S2, img_size=32)
    m = resolve_model(ckpt, bands=S2, img_size=32, backbone="vit_test")
    assert m.info["prefix"] == "method.backbone.model."
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.backbone(x), src(x), atol=1e-6)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    src = create_backbone("resnet_test", bands=list(S2), img_size=32)
    ckpt = tmp_path / "r.pth"
    torch.save(src.model.state_dict(), ckpt)
    with pytest.raises(CheckpointError):
        resolve_model(ckpt, bands=S2, img_size=32, backbone="vit_test")


def test_model_file_brings_bands_and_normalisation(tmp_path: Path) -> None:
    bb = create_backbone("vit_test", bands=list(S2), img_size=32)
    path = export_model(
        bb,
        tmp_path / "m.safetensors",
        normalization={"mean": [1.0, 2.0, 3.0, 4.0], "std": [5.0, 6.0, 7.0, 8.0]},
    )
    m = resolve_model(path, bands=("whatever",), img_size=64)
    assert m.bands == S2
    assert m.normalization is not None and m.normalization["mean"]["B03"] == 2.0


def test_rgb_baseline_adapts_to_multispectral(tmp_path: Path) -> None:
    rgb = create_backbone("vit_test", img_size=32)
    path = tmp_path / "rgb.pth"
    torch.save({"model": rgb.model.state_dict()}, path)
    m = resolve_model(f"rgb:{path}", bands=S2, img_size=32, backbone="vit_test", sensor="s2")
    assert m.bands == S2
    assert m.info["load_report"]["adapted"]
    w = m.backbone.model.patch_embed.proj.weight
    assert torch.allclose(w[:, 2], rgb.model.patch_embed.proj.weight[:, 0])  # B04 <- red
