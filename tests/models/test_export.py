"""Model files: safetensors + JSON card, exact round trip, plain timm state dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from eofm.errors import CheckpointError, ConfigError
from eofm.models import (
    create_backbone,
    export_model,
    export_timm_state_dict,
    load_model,
    read_card,
)

from .conftest import randomise

S2_MEAN = [
    1605.575,
    1390.782,
    1314.873,
    1363.524,
    1549.444,
    2091.749,
    2371.717,
    2299.905,
    2560.295,
    830.066,
    22.104,
    2177.072,
    1524.065,
]
S2_STD = [
    786.787,
    850.348,
    875.065,
    1138.850,
    1122.178,
    1161.592,
    1274.392,
    1248.429,
    1345.527,
    577.316,
    51.154,
    1336.099,
    1136.538,
]


@pytest.mark.parametrize("name", ["vit_test", "swin_test", "resnet_test", "vit_test_parallel"])
def test_export_then_load_gives_identical_embeddings(name: str, tmp_path: Path) -> None:
    bb = randomise(create_backbone(name, bands="sentinel2_l1c", img_size=32))
    path = export_model(
        bb,
        tmp_path / "model.safetensors",
        normalization={"mean": S2_MEAN, "std": S2_STD},
        method="mae",
        data="SSL4EO-S12 (test)",
        extra={"epochs": 3},
    )
    loaded = load_model(path)
    assert not loaded.training
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), bb(x))
        for a, b in zip(loaded.forward_features(x), bb.forward_features(x), strict=True):
            assert torch.equal(a, b)
    assert loaded.bands == bb.bands and loaded.arch == name and loaded.sensor == "sentinel2_l1c"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_card_contents(tmp_path: Path) -> None:
    bb = create_backbone(
        "vit_test", bands=["B04", "B08"], sensor="s2", img_size=(32, 48), drop_path_rate=0.1
    )
    path = export_model(
        bb,
        tmp_path / "m.safetensors",
        normalization={
            "mean": {"nir": 0.3, "red": 0.1},
            "std": {"B08": 0.2, "B4": 0.05},
            "method": "zscore",
        },
        method="softcon",
        data="SSL4EO-S12",
    )
    card = json.loads((tmp_path / "m.json").read_text())
    assert card == read_card(path)
    assert card["arch"] == "vit_test" and card["bands"] == ["B04", "B08"]
    assert card["img_size"] == [32, 48] and card["patch_size"] == 8 and card["embed_dim"] == 64
    assert card["normalization"] == {
        "mean": {"B04": 0.1, "B08": 0.3},
        "std": {"B04": 0.05, "B08": 0.2},
        "method": "zscore",
    }
    assert card["pretraining"] == {"method": "softcon", "data": "SSL4EO-S12"}
    assert card["timm_overrides"] == {"drop_path_rate": 0.1}
    assert card["timm_name"] == "vit_tiny_patch16_224" and len(card["sha256"]) == 64
    assert card["eofm_version"] and card["created"].endswith("+00:00")
    loaded = load_model(tmp_path / "m.json")  # the card path works too
    assert loaded.card is not None and loaded.card["normalization"]["std"]["B08"] == 0.2
    assert loaded.img_size == (32, 48)


def test_bad_normalisation_and_path(tmp_path: Path) -> None:
    bb = create_backbone("vit_test", bands=2)
    with pytest.raises(ConfigError, match="3 values for 2 bands"):
        export_model(
            bb, tmp_path / "a.safetensors", normalization={"mean": [0, 0, 0], "std": [1, 1]}
        )
    with pytest.raises(ConfigError, match="std of band 'band_1' is invalid"):
        export_model(bb, tmp_path / "a.safetensors", normalization={"mean": [0, 0], "std": [1, 0]})
    with pytest.raises(ConfigError, match="no value for band 'band_1'"):
        export_model(
            bb, tmp_path / "a.safetensors", normalization={"mean": {"band_0": 0}, "std": [1, 1]}
        )
    with pytest.raises(ConfigError, match=r"must end in \.safetensors"):
        export_model(bb, tmp_path / "a.pth")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_tampered_or_incomplete_model_files(tmp_path: Path) -> None:
    bb = create_backbone("vit_test", bands=2)
    path = export_model(bb, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(path)
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="model card not found"):
        load_model(path)
    # A card whose bands disagree with the weights.
    path = export_model(bb, tmp_path / "n.safetensors")
    card = json.loads((tmp_path / "n.json").read_text())
    card["bands"] = ["a", "b", "c"]
    (tmp_path / "n.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"weights do not fit vit_test .*patch_embed"):
        load_model(path)
    (tmp_path / "n.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_plain_timm_state_dict(suffix: str, tmp_path: Path) -> None:
    bb = randomise(create_backbone("vit_test", bands=4)).eval()
    path = export_timm_state_dict(bb, tmp_path / f"timm{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    model = timm.create_model(
        bb.timm_name, in_chans=4, num_classes=0, img_size=32, **bb.spec.timm_kwargs
    )
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), bb(x), atol=1e-6)
    # ...and it is a checkpoint create_backbone can load with pretrained=.
    again = create_backbone("vit_test", bands=4, pretrained=path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), bb(x))
    with pytest.raises(ConfigError, match="use a .safetensors"):
        export_timm_state_dict(bb, tmp_path / "x.onnx")
