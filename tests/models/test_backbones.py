"""Backbones: every family with unusual band sets, registry, band resolution, input checks."""

from __future__ import annotations

import pytest
import torch

from eofm.errors import ConfigError, UnknownNameError
from eofm.models import create_backbone, get_backbone_spec, list_backbones, register_backbone

FAMILY_TEST_MODELS = ["vit_test", "vit_test_parallel", "swin_test", "swinv2_test", "resnet_test"]


@pytest.mark.parametrize("name", FAMILY_TEST_MODELS)
def test_forward_each_family_with_unusual_band_sets(name: str) -> None:
    for n_bands in (1, 2, 4, 13):
        bb = create_backbone(name, bands=n_bands, img_size=32).eval()
        assert bb.in_chans == n_bands
        x = torch.randn(2, n_bands, 32, 32)
        with torch.no_grad():
            emb = bb(x)
            feats = bb.forward_features(x)
        assert emb.shape == (2, bb.embed_dim)
        assert torch.isfinite(emb).all()
        assert len(feats) == len(bb.feature_channels) == len(bb.feature_strides)
        for f, c, s in zip(feats, bb.feature_channels, bb.feature_strides, strict=True):
            assert f.shape == (2, c, 32 // s, 32 // s)
        # Each band reaches the embedding: changing one band changes the output.
        x2 = x.clone()
        x2[:, -1] += 1.0
        with torch.no_grad():
            assert not torch.allclose(bb(x2), emb)


def test_families_states_embedding_size_and_strides() -> None:
    vit = create_backbone("vit_test", bands=13)
    assert (vit.embed_dim, vit.patch_size, vit.feature_strides[0]) == (64, 8, 8)
    swin = create_backbone("swin_test", bands=2)
    assert swin.feature_strides == [4, 8, 16, 32]
    assert swin.embed_dim == swin.feature_channels[-1] == 192
    res = create_backbone("resnet_test", bands=4)
    assert res.patch_size is None and res.feature_strides == [4, 8, 16, 32]
    assert res.feature_channels == [64, 128, 256, 512] and res.embed_dim == 512


def test_vit_accepts_other_image_sizes_at_run_time() -> None:
    bb = create_backbone("vit_test", bands=4, img_size=32).eval()
    x = torch.randn(1, 4, 48, 40)
    with torch.no_grad():
        feats = bb.forward_features(x)
        emb = bb(x)
    assert feats[-1].shape == (1, 64, 6, 5)
    assert emb.shape == (1, 64)


def test_timm_model_is_exposed_for_pretraining_methods() -> None:
    bb = create_backbone("vit_test", bands=3)
    assert hasattr(bb.model, "patch_embed") and len(bb.model.blocks) == 2
    assert bb.model.patch_embed.proj.weight.shape == (64, 3, 8, 8)


def test_bands_from_sensor_and_common_names() -> None:
    bb = create_backbone("vit_test", bands="sentinel2_l1c")
    assert bb.bands[:4] == ("B01", "B02", "B03", "B04") and len(bb.bands) == 13
    assert bb.sensor == "sentinel2_l1c"
    bb2 = create_backbone("vit_test", bands=["red", "nir"], sensor="s2")
    assert bb2.bands == ("B04", "B08")
    assert create_backbone("vit_test").bands == ("red", "green", "blue")


def test_band_errors() -> None:
    with pytest.raises(ConfigError, match="unique"):
        create_backbone("vit_test", bands=["B04", "B4"])
    with pytest.raises(ConfigError, match="at least one band"):
        create_backbone("vit_test", bands=[])
    with pytest.raises(UnknownNameError):
        create_backbone("vit_test", bands=["red", "not_a_band"], sensor="s2")


def test_wrong_input_channels_is_a_clear_error() -> None:
    bb = create_backbone("vit_test", bands=4)
    with pytest.raises(ConfigError, match=r"expects \(B, 4, H, W\)"):
        bb(torch.randn(1, 3, 32, 32))


def test_registry() -> None:
    names = list_backbones()
    for expected in (
        "vit_tiny_patch16",
        "vit_small_patch16",
        "vit_small_patch14",
        "vit_small_patch8",
        "vit_base_patch16",
        "vit_large_patch16",
        "vit_huge_patch14",
        "vit_giant_patch14",
        "swin_tiny",
        "swin_base",
        "swinv2_tiny",
        "resnet18",
        "resnet50",
        "vit_b12x1",
        "vit_l12x4",
        "vit_h12x4",
        "vit_g12x4",
    ):
        assert expected in names
    assert set(list_backbones(family="swinv2")) >= {"swinv2_tiny", "swinv2_test"}
    assert "vit_test" in list_backbones(tag="test")
    spec = get_backbone_spec("VIT_SMALL_PATCH14")
    assert spec.timm_name == "vit_small_patch14_dinov2" and spec.patch_size == 14
    assert spec.metadata()["embed_dim"] == 384
    with pytest.raises(UnknownNameError, match="unknown backbone 'vit_nope'"):
        create_backbone("vit_nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("vit_test", family="vit", timm_name="x", img_size=1, embed_dim=1)


def test_real_sizes_build_on_meta_with_right_widths() -> None:
    for name, dim, patch in [
        ("vit_small_patch14", 384, 14),
        ("vit_base_patch16", 768, 16),
        ("vit_large_patch16", 1024, 16),
        ("vit_huge_patch14", 1280, 14),
        ("vit_giant_patch14", 1536, 14),
        ("vit_small_patch8", 384, 8),
        ("swin_tiny", 768, 4),
        ("swin_base", 1024, 4),
        ("swinv2_tiny", 768, 4),
    ]:
        bb = create_backbone(name, bands=13, device="meta")
        assert bb.embed_dim == dim == get_backbone_spec(name).embed_dim, name
        assert bb.patch_size == patch, name
        assert bb.model.patch_embed.proj.weight.shape[1] == 13
    vit_b = get_backbone_spec("vit_base_patch16").num_params()
    assert abs(vit_b - 85_798_656) < 1000  # timm ViT-B/16 without head


def test_unbuildable_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot build backbone"):
        create_backbone("vit_test", bands=3, num_heads=5)  # 64 is not divisible by 5
