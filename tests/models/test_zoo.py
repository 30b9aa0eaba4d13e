"""Published models by name, loaded from local files (no network).

Each weight file is written here with the key names and tensor shapes of the published
architecture (timm's models, which torchgeo's and timm's weights use), random values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from eofm.errors import BandMismatchError, CheckpointError
from eofm.evaluation.models import resolve_model
from eofm.models.zoo import list_published, resolve_published

S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = {k: tmp_path / k for k in ("weights", "torch", "hf")}
    monkeypatch.setenv("EOFM_WEIGHTS_DIR", str(paths["weights"]))
    monkeypatch.setenv("TORCH_HOME", str(paths["torch"]))
    monkeypatch.setenv("HF_HOME", str(paths["hf"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("EOFM_OFFLINE", "1")
    for p in paths.values():
        p.mkdir()
    return paths


def place_torchgeo(name: str, folder: Path, *, num_classes: int = 0) -> dict[str, torch.Tensor]:
    """A file in torchgeo's layout for ``name``: its timm architecture's state dict."""
    pw = resolve_published(name)
    model = timm.create_model(
        str(pw.timm_name), pretrained=False, num_classes=num_classes, in_chans=len(pw.bands or ())
    )
    state = model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / pw.filename)
    return state


def test_torchgeo_vit_s2_dino_loads_maps_and_runs(caches: dict[str, Path]) -> None:
    name = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO"
    state = place_torchgeo(name, caches["weights"])
    pw = resolve_published(name)
    assert pw.arch == "vit_small_patch16" and pw.sensor == "sentinel2_l1c"
    assert pw.bands is not None and set(pw.bands) == set(S2) and pw.bands[8] == "B8A"
    m = resolve_model(name, bands=S2, img_size=64)
    assert m.backbone.arch == "vit_small_patch16" and m.bands == S2
    report = m.info["load_report"]
    assert report["missing"] == [] and "blocks.0.attn.qkv.weight" in report["loaded"]
    got = m.backbone.model.state_dict()["blocks.3.mlp.fc1.weight"]
    assert torch.equal(got, state["blocks.3.mlp.fc1.weight"])
    # EuroSAT's band order differs from torchgeo's (B8A last): kernels follow the names
    k_src = state["patch_embed.proj.weight"][:, 8]  # torchgeo's B8a
    k_dst = m.backbone.model.state_dict()["patch_embed.proj.weight"][:, S2.index("B8A")]
    assert torch.equal(k_src, k_dst)
    assert m.normalization is not None and m.normalization["std"]["B04"] == 10000.0
    out = m.backbone(torch.rand(2, 13, 64, 64))
    assert out.shape == (2, 384)


def test_torchgeo_resnet50_s1_moco_reports_its_classifier(caches: dict[str, Path]) -> None:
    name = "torchgeo:ResNet50_Weights.SENTINEL1_ALL_MOCO"
    place_torchgeo(name, caches["torch"] / "hub" / "checkpoints", num_classes=1000)
    m = resolve_model(name, bands=["VV", "VH"], img_size=64)
    assert m.info["published"]["cached"].startswith(str(caches["torch"]))
    assert set(m.info["load_report"]["unexpected"]) == {"fc.weight", "fc.bias"}
    assert m.backbone(torch.rand(1, 2, 64, 64)).shape == (1, 2048)
    with pytest.raises(BandMismatchError, match="no band in common") as info:
        resolve_model(name, bands=["red", "green", "blue"], img_size=64)
    assert "VV" in str(info.value) and "red" in str(info.value)


def test_timm_and_hf_names_from_the_hugging_face_cache(caches: dict[str, Path]) -> None:
    snap = caches["hf"] / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(state, str(snap / "model.safetensors"))
    m = resolve_model("timm:resnet18.a1_in1k", bands=["red", "green", "blue"], img_size=64)
    assert torch.equal(m.backbone.model.state_dict()["conv1.weight"], state["conv1.weight"])
    assert m.normalization is not None
    assert m.normalization["mean"]["red"] == pytest.approx(0.485 * 255, rel=1e-3)
    # hf:<org>/<repo>/<file> with the architecture named
    repo = caches["hf"] / "hub" / "models--someone--eo-resnet" / "snapshots" / "f00"
    repo.mkdir(parents=True)
    torch.save({"state_dict": state}, repo / "weights.pth")
    h = resolve_model(
        "hf:someone/eo-resnet/weights.pth",
        bands=["red", "green", "blue"],
        img_size=64,
        backbone="resnet18",
    )
    assert torch.equal(h.backbone.model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_a_missing_file_says_which_file_to_place_where(caches: dict[str, Path]) -> None:
    name = "torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO"
    with pytest.raises(CheckpointError) as info:
        resolve_model(name, bands=["red", "green", "blue"], img_size=64)
    text = str(info.value)
    assert resolve_published(name).filename in text and str(caches["weights"]) in text
    assert "not on this machine" in text and "https://" in text


def test_list_import_and_continual_pretraining(
    caches: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eofm.cli.main import main
    from eofm.models import load_model
    from eofm.training.config import load_config
    from eofm.training.engine import run_pretraining

    name = "torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO"
    state = place_torchgeo(name, caches["weights"])
    names = {pw.name for pw in list_published()}
    assert name in names and "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO" in names
    assert main(["models", "list", "--cached"]) == 0
    listed = capsys.readouterr().out
    assert name in listed and "1 on this machine" in listed
    assert main(["models", "import", name, str(tmp_path / "zoo")]) == 0
    exported = next((tmp_path / "zoo").glob("*.safetensors"))
    bb = load_model(exported)
    assert len(bb.bands) == 13 and torch.equal(
        bb.model.state_dict()["conv1.weight"], state["conv1.weight"]
    )
    config = load_config(
        None,
        [
            "data.path=synthetic:landcover:n=16:size=32",
            "data.batch_size=8",
            "model.backbone=resnet18",
            "model.img_size=32",
            f"model.init={name}",
            "method.name=simclr",
            "method.options={hidden_dim: 32, output_dim: 16}",
            "trainer.max_steps=1",
            "trainer.progress_bar=false",
            f"output.dir={tmp_path / 'runs'}",
        ],
    )
    result = run_pretraining(config)
    assert result.global_step == 1 and result.model_path is not None
