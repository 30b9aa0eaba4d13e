"""Loading RGB checkpoints into backbones with other bands, sizes and layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from eofm.errors import CheckpointError
from eofm.models import (
    Backbone,
    adapt_input_weight,
    create_backbone,
    load_pretrained,
    match_source_bands,
)

from .conftest import randomise

S2 = "sentinel2_l1c"


def _embed_rgb_vs_s2(rgb: Backbone, s2: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    x_rgb = torch.randn(2, 3, 32, 32)
    x_s2 = torch.zeros(2, 13, 32, 32)
    for i, band in enumerate(("B04", "B03", "B02")):
        x_s2[:, s2.bands.index(band)] = x_rgb[:, i]
    with torch.no_grad():
        return rgb(x_rgb), s2(x_s2)


def test_rgb_checkpoint_to_13_bands_is_exact_when_other_bands_are_zero(
    rgb_vit: Backbone, rgb_vit_ckpt: Path
) -> None:
    s2 = create_backbone("vit_test", bands=S2, img_size=32, pretrained=rgb_vit_ckpt).eval()
    report = s2.pretrained_report
    assert report is not None and report.complete
    assert "patch_embed.proj.weight" in report.adapted
    mapping = report.band_mapping
    assert mapping is not None
    assert mapping.copied == {"B02": "blue", "B03": "green", "B04": "red"}
    assert len(mapping.filled) == 10 and mapping.fill_rule == "mean"
    emb_rgb, emb_s2 = _embed_rgb_vs_s2(rgb_vit, s2)
    assert torch.allclose(emb_rgb, emb_s2, atol=1e-5)
    # Dense features too.
    x = torch.randn(1, 3, 32, 32)
    x13 = torch.zeros(1, 13, 32, 32)
    x13[:, [3, 2, 1]] = x
    with torch.no_grad():
        for a, b in zip(rgb_vit.forward_features(x), s2.forward_features(x13), strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_fill_rule_values_and_activation_scale(rgb_vit: Backbone, rgb_vit_ckpt: Path) -> None:
    s2 = create_backbone("vit_test", bands=S2, img_size=32, pretrained=rgb_vit_ckpt)
    w_rgb = rgb_vit.model.patch_embed.proj.weight.detach()
    w_s2 = s2.model.patch_embed.proj.weight.detach()
    # RGB kernels copied exactly, in the right places.
    for src, band in enumerate(("B04", "B03", "B02")):
        assert torch.equal(w_s2[:, s2.bands.index(band)], w_rgb[:, src])
    # The other 10 bands share the mean RGB kernel: each gets mean / 10.
    mean_kernel = w_rgb.mean(dim=1)
    others = [i for i, b in enumerate(s2.bands) if b not in ("B02", "B03", "B04")]
    for i in others:
        assert torch.allclose(w_s2[:, i], mean_kernel / 10)
    # Scale of activations on standardised (zero-mean, unit-variance) random input.
    x3, x13 = torch.randn(64, 3, 32, 32), torch.randn(64, 13, 32, 32)
    std_rgb = F.conv2d(x3, w_rgb, stride=8).std()
    std_s2 = F.conv2d(x13, w_s2, stride=8).std()
    ratio = float(std_s2 / std_rgb)
    assert 0.95 < ratio < 1.5, ratio
    # A flat spectrum (all bands equal) grows by exactly 4/3 (sum of kernels = 4 * mean).
    assert torch.allclose(w_s2.sum(dim=1), w_rgb.sum(dim=1) * 4 / 3, atol=1e-6)


def test_sar_bands_share_the_rgb_kernel_sum(rgb_vit: Backbone, rgb_vit_ckpt: Path) -> None:
    sar = create_backbone("vit_test", bands="sentinel1_grd", pretrained=rgb_vit_ckpt).eval()
    mapping = sar.pretrained_report.band_mapping  # type: ignore[union-attr]
    assert mapping is not None and mapping.copied == {} and mapping.fill_rule == "sum"
    w_rgb = rgb_vit.model.patch_embed.proj.weight.detach()
    w_sar = sar.model.patch_embed.proj.weight.detach()
    assert torch.allclose(w_sar[:, 0], w_rgb.sum(dim=1) / 2)
    assert torch.allclose(w_sar.sum(dim=1), w_rgb.sum(dim=1), atol=1e-6)
    # A grey image (every band equal) gives the RGB model's output exactly.
    grey = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            sar(grey.expand(-1, 2, -1, -1)), rgb_vit(grey.expand(-1, 3, -1, -1)), atol=1e-5
        )


def test_partial_match_gives_leftover_source_kernels_to_new_bands() -> None:
    w = torch.randn(4, 3, 2, 2)
    new, mapping = adapt_input_weight(w, ("red", "green", "blue"), ("B08", "B04"), target_sensor=S2)
    assert torch.equal(new[:, 1], w[:, 0])  # B04 <- red
    assert torch.allclose(new[:, 0], w[:, 1] + w[:, 2])  # nir gets green + blue
    assert mapping.fill_from == ("green", "blue") and mapping.filled == ("B08",)
    # Band names are matched without a sensor when every sensor agrees (B04 is red everywhere).
    assert match_source_bands(("red", "green", "blue"), ("B02", "B04")) == {0: 2, 1: 0}
    # Reordering (BGR checkpoint into an RGB model) is a permutation, nothing filled.
    new, mapping = adapt_input_weight(w, ("blue", "green", "red"), ("red", "green", "blue"))
    assert torch.equal(new, w.flip(1)) and not mapping.filled


def test_multispectral_checkpoint_maps_by_band_name(tmp_path: Path) -> None:
    """A SoftCon-style 13-band checkpoint into a 4-band model: bands picked by name."""
    src = randomise(create_backbone("vit_test", bands=S2))
    path = tmp_path / "b13.pth"
    torch.save({"model": src.model.state_dict()}, path)
    dst = create_backbone("vit_test", bands=["B08", "B04", "B03", "B02"], sensor=S2)
    report = load_pretrained(dst, path, source_bands=src.bands, source_sensor=S2)
    w_src = src.model.patch_embed.proj.weight
    w_dst = dst.model.patch_embed.proj.weight
    for t, band in enumerate(dst.bands):
        assert torch.equal(w_dst[:, t], w_src[:, src.bands.index(band)])
    assert report.band_mapping is not None and not report.band_mapping.filled
    assert "source_bands" not in str(report)
    with pytest.raises(CheckpointError, match="pass source_bands"):
        load_pretrained(create_backbone("vit_test", bands=4), path)


def test_position_embedding_interpolated_to_new_image_size(tmp_path: Path) -> None:
    src = randomise(create_backbone("vit_test", bands=3, img_size=64))  # 8x8 grid
    path = tmp_path / "vit64.safetensors"
    save_file(src.model.state_dict(), str(path))
    dst = create_backbone("vit_test", bands=3, img_size=32, pretrained=path)  # 4x4 grid
    report = dst.pretrained_report
    assert report is not None and "pos_embed" in report.interpolated
    expected = resample_abs_pos_embed(
        src.model.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1
    )
    assert torch.allclose(dst.model.pos_embed, expected, atol=1e-6)
    assert torch.equal(dst.model.cls_token, src.model.cls_token)
    assert "pos_embed" in str(report) and "-> [1, 17, 64]" in str(report)


def test_patch_size_change_resamples_the_kernel(tmp_path: Path) -> None:
    src = randomise(create_backbone("vit_test", bands=3, img_size=64, patch_size=16))  # 4x4
    path = tmp_path / "vit_p16.pth"
    torch.save(src.model.state_dict(), path)
    dst = create_backbone("vit_test", bands=3, img_size=32, pretrained=path)  # patch 8, 4x4
    report = dst.pretrained_report
    assert report is not None and "patch_embed.proj.weight" in report.interpolated
    expected = resample_patch_embed(src.model.patch_embed.proj.weight.detach(), [8, 8])
    assert torch.allclose(dst.model.patch_embed.proj.weight, expected, atol=1e-6)
    assert torch.equal(dst.model.pos_embed, src.model.pos_embed)


def test_nested_checkpoint_with_prefixes(rgb_vit: Backbone, tmp_path: Path) -> None:
    sd = rgb_vit.model.state_dict()
    teacher = {f"module.backbone.{k}": v for k, v in sd.items()}
    teacher["module.head.mlp.0.weight"] = torch.randn(8, 64)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "dino.pth"
    torch.save({"teacher": teacher, "student": student, "epoch": 7}, path)
    bb = create_backbone("vit_test", bands=3, pretrained=path)
    report = bb.pretrained_report
    assert report is not None
    assert report.nested_under == "teacher" and report.prefix == "module.backbone."
    assert "module.head.mlp.0.weight" in report.unexpected
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_dinov2_original_layout(tmp_path: Path) -> None:
    """DINOv2 hub keys: mask_token, chunked blocks, `encoder.` prefix, layer scale."""
    src = randomise(create_backbone("vit_test", bands=3, init_values=1e-5))
    sd = src.model.state_dict()
    assert "blocks.0.ls1.gamma" in sd
    ckpt = {}
    for k, v in sd.items():
        ckpt["encoder." + re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k)] = v  # one chunk
    ckpt["encoder.mask_token"] = torch.zeros(1, 64)
    assert "encoder.blocks.0.1.ls1.gamma" in ckpt
    path = tmp_path / "dinov2.pth"
    torch.save(ckpt, path)
    dst = create_backbone("vit_test", bands=3, init_values=1e-5, pretrained=path)
    for k, v in dst.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_swin_original_layout_loads(tmp_path: Path) -> None:
    """ImageNet-22k Swin checkpoints downsample at the end of a stage; timm at the start."""
    src = randomise(create_backbone("swin_test", bands=3)).eval()
    ckpt = {}
    for k, v in src.model.state_dict().items():
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        ckpt[k] = v
    ckpt["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    ckpt["head.weight"] = torch.randn(5, 192)
    path = tmp_path / "swin22k.pth"
    torch.save({"model": ckpt}, path)
    dst = create_backbone(
        "swin_test", bands=4, sensor=None, pretrained=path, source_bands=("red", "green", "blue")
    ).eval()
    report = dst.pretrained_report
    assert report is not None and report.complete and "head.fc.weight" in report.unexpected
    assert dst.model.patch_embed.proj.weight.shape[1] == 4
    x = torch.randn(1, 3, 32, 32)
    rgb = create_backbone("swin_test", bands=3, pretrained=path).eval()
    untrained = create_backbone("swin_test", bands=3).eval()
    with torch.no_grad():
        assert torch.allclose(rgb(x), src(x), atol=1e-5)
        assert not torch.allclose(untrained(x), src(x), atol=1e-3)


def test_torchvision_resnet_checkpoint(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for p in tv.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    tv.eval()
    path = tmp_path / "resnet18_tv.pth"
    torch.save(tv.state_dict(), path)
    bb = create_backbone("resnet18", bands=3, img_size=64, pretrained=path).eval()
    assert bb.pretrained_report is not None
    assert bb.pretrained_report.unexpected == ["fc.bias", "fc.weight"]
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb(x), tv(x), atol=1e-5)


# ---------------------------------------------------------------- errors and partial loading


def test_wrong_shape_is_an_error_unless_partial(rgb_vit: Backbone, tmp_path: Path) -> None:
    sd = dict(rgb_vit.model.state_dict())
    sd["blocks.0.mlp.fc1.weight"] = torch.randn(100, 64)
    path = tmp_path / "bad_shape.pth"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \[100, 64\]"
        r" vs model \[256, 64\]",
    ) as err:
        create_backbone("vit_test", bands=3, pretrained=path)
    assert str(path) in str(err.value) and "strict=False" in str(err.value)
    torch.manual_seed(5)
    fresh = create_backbone("vit_test", bands=3)
    init = fresh.model.blocks[0].mlp.fc1.weight.detach().clone()
    report = load_pretrained(fresh, path, strict=False)
    assert "blocks.0.mlp.fc1.weight" in report.mismatched
    assert report.left_random == ["blocks.0.mlp.fc1.weight"]
    assert torch.equal(fresh.model.blocks[0].mlp.fc1.weight, init)  # left as initialised
    assert torch.equal(fresh.model.blocks[1].mlp.fc1.weight, rgb_vit.model.blocks[1].mlp.fc1.weight)
    assert "wrong shape, left random: 1" in str(report)


def test_missing_keys_is_an_error_unless_partial(rgb_vit: Backbone, tmp_path: Path) -> None:
    sd = dict(rgb_vit.model.state_dict())
    del sd["blocks.1.norm1.weight"], sd["norm.bias"]
    path = tmp_path / "missing.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"2 model tensors missing .*blocks\.1\.norm1\."):
        create_backbone("vit_test", bands=3, pretrained=path)
    bb = create_backbone("vit_test", bands=3, pretrained=path, strict=False)
    report = bb.pretrained_report
    assert report is not None
    assert report.missing == ["blocks.1.norm1.weight", "norm.bias"]
    assert "missing, left random: 2" in str(report)


class _Payload:
    """Unpickling this object would create a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_pickled_object_is_refused_and_not_executed(rgb_vit: Backbone, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": rgb_vit.model.state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects .* not executed") as err:
        create_backbone("vit_test", bands=3, pretrained=path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: unsafe loading would run it
    assert marker.exists()


def test_unreadable_and_unrelated_checkpoints(rgb_vit: Backbone, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        create_backbone("vit_test", bands=3, pretrained=junk)
    bad_st = tmp_path / "junk.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        create_backbone("vit_test", bands=3, pretrained=bad_st)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_backbone("vit_test", bands=3, pretrained=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        (tmp_path / "w.h5").write_bytes(b"x")
        create_backbone("vit_test", bands=3, pretrained=tmp_path / "w.h5")
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        create_backbone("vit_test", bands=3, pretrained=lst)
    res = tmp_path / "resnet.pth"
    torch.save(create_backbone("resnet_test", bands=3).model.state_dict(), res)
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint fits"):
        create_backbone("vit_test", bands=3, pretrained=res, strict=False)
    with pytest.raises(CheckpointError, match="source_bands names 2"):
        create_backbone(
            "vit_test",
            bands=3,
            pretrained=_save(rgb_vit, tmp_path / "rgb.pth"),
            source_bands=("red", "green"),
        )


def _save(bb: Backbone, path: Path) -> Path:
    torch.save(bb.model.state_dict(), path)
    return path


def test_report_is_readable(rgb_vit_ckpt: Path) -> None:
    bb = create_backbone("vit_test", bands=S2, pretrained=rgb_vit_ckpt)
    text = str(bb.pretrained_report)
    assert "loaded:" in text and "adapted: 1" in text
    assert "3 -> 13 bands: copied B02<-blue, B03<-green, B04<-red" in text
    assert "taken as red, green, blue" in text
    d = bb.pretrained_report.to_dict()  # type: ignore[union-attr]
    assert d["missing"] == [] and "patch_embed.proj.weight" in d["adapted"]
