"""SimMIM: mask token after the patch embedding, linear decoder, L1 on masked pixels."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from eofm.errors import ConfigError
from eofm.methods import Views, create_method
from eofm.methods.masking import upsample_mask
from eofm.methods.simmim import SimMIM, masked_l1
from eofm.models import create_backbone

from .conftest import ImageSet, assert_loss_falls, train_losses, unused_parameters


def tiny(name: str, bands: int, **kw: Any) -> SimMIM:
    return SimMIM(create_backbone(name, bands=bands, img_size=32), **kw)


@pytest.mark.parametrize("name", ["vit_test", "swin_test", "swinv2_test", "vit_test_parallel"])
@pytest.mark.parametrize("bands", [2, 13])
def test_forward_backward_any_bands(name: str, bands: int) -> None:
    torch.manual_seed(0)
    m = tiny(name, bands)
    x = torch.randn(3, bands, 32, 32)
    out = m.forward_loss(Views([x], num_global=1), {"image": x})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.encoder.mask_token is not None and m.encoder.mask_token.grad is not None
    assert m.backbone.model.patch_embed.proj.weight.grad is not None
    assert unused_parameters(m) == []
    # the decoder reconstructs every band at full resolution
    fmap, _ = m.encoder(m.backbone.model, x, m.make_mask(x))
    assert m.decoder(fmap).shape == x.shape


def test_decoder_layout_follows_encoder_stride() -> None:
    swin = tiny("swin_test", 13)
    conv = swin.decoder[0]
    assert conv.in_channels == 192 and conv.out_channels == 32 * 32 * 13  # stride 32
    vit = tiny("vit_test", 2)
    assert vit.decoder[0].out_channels == 8 * 8 * 2  # stride = patch size


@pytest.mark.parametrize("name", ["vit_test", "swin_test"])
def test_masked_pixels_do_not_reach_the_encoder(name: str) -> None:
    torch.manual_seed(0)
    m = tiny(name, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = m.make_mask(x)
    pix = upsample_mask(mask, m.encoder.token_size).bool()
    assert pix.float().mean().item() == pytest.approx(mask.float().mean().item())
    fmap, _ = m.encoder(m.backbone.model, x, mask)
    y = torch.where(pix, torch.randn_like(x) * 10, x)
    fmap2, _ = m.encoder(m.backbone.model, y, mask)
    assert torch.allclose(fmap, fmap2, atol=1e-5)


@pytest.mark.parametrize("name", ["vit_test", "swin_test"])
def test_loss_depends_only_on_masked_pixels(name: str) -> None:
    torch.manual_seed(0)
    m = tiny(name, 13).eval()
    x = torch.randn(2, 13, 32, 32)
    mask = m.make_mask(x)
    pix = upsample_mask(mask, m.encoder.token_size).bool()
    base = m.forward_masked(x, mask)["loss"]
    visible_changed = torch.where(pix, x, torch.randn_like(x) * 5)
    assert torch.allclose(m.forward_masked(x, mask, target=visible_changed)["loss"], base)
    masked_changed = torch.where(pix, x + 3.0, x)
    assert m.forward_masked(x, mask, target=masked_changed)["loss"] > base + 1.0


def test_masked_l1_divides_by_masked_pixels_and_bands() -> None:
    pred = torch.zeros(1, 2, 4, 4)
    target = torch.ones(1, 2, 4, 4)
    target[:, 1] = 3.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0  # 8 masked pixels
    # sum over masked pixels and bands: 8 * 1 + 8 * 3 = 32; / 8 pixels / 2 bands = 2
    assert masked_l1(pred, target, mask).item() == pytest.approx(2.0, rel=1e-5)


def test_gfm_mask_geometry_at_192() -> None:
    m = SimMIM(create_backbone("swin_test", bands=3, img_size=192))
    x = torch.zeros(2, 3, 192, 192)
    mask = m.make_mask(x)
    assert mask.shape == (2, 48, 48)
    assert (mask.flatten(1).sum(1) == 22 * 64).all()  # 22 of 36 32-px cells (ratio 0.6)


def test_registry_and_errors() -> None:
    bb = create_backbone("swin_test", bands=2, img_size=32)
    m = create_method("simmim", bb, mask_ratio=0.5)
    assert isinstance(m, SimMIM) and m.view_spec.global_views == 1
    with pytest.raises(ConfigError, match="ViT or Swin"):
        SimMIM(create_backbone("resnet_test", bands=3, img_size=32))
    with pytest.raises(ConfigError, match="stride"):
        m.make_mask(torch.zeros(1, 2, 40, 40))


@pytest.mark.parametrize("name", ["swin_test", "vit_test"])
def test_loss_falls(image_set: ImageSet, name: str) -> None:
    m = tiny(name, 13)
    losses = train_losses(m, image_set.bands(13), steps=50, lr=2e-3, geometric=False)
    assert_loss_falls(losses)
