"""MAE: visible-token encoder, light decoder, normalised-pixel MSE on masked patches."""

from __future__ import annotations

import pytest
import torch

from eofm.errors import ConfigError
from eofm.methods import Views, create_method
from eofm.methods.mae import MAE, masked_mse
from eofm.methods.masking import patchify, random_token_mask
from eofm.models import create_backbone

from .conftest import ImageSet, assert_loss_falls, train_losses, unused_parameters


def tiny_mae(name: str = "vit_test", bands: int = 3, **kw: object) -> MAE:
    bb = create_backbone(name, bands=bands, img_size=32)
    return MAE(bb, decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["vit_test", "vit_test_parallel"])
@pytest.mark.parametrize("bands", [2, 13])
def test_forward_backward_any_bands(name: str, bands: int) -> None:
    torch.manual_seed(0)
    mae = tiny_mae(name, bands)
    x = torch.randn(4, bands, 32, 48)  # rectangular: 4 x 6 tokens
    out = mae.forward_loss(Views([x], num_global=1), {"image": x})
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert out["mask_ratio"].item() == pytest.approx(18 / 24)
    out["loss"].backward()
    assert mae.backbone.model.patch_embed.proj.weight.grad is not None
    assert mae.decoder.pred.weight.grad is not None
    assert unused_parameters(mae) == []
    assert mae.decoder.pred.out_features == 8 * 8 * bands


def test_registered_and_view_spec() -> None:
    bb = create_backbone("vit_test", bands=2, img_size=32)
    mae = create_method("mae", bb, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert isinstance(mae, MAE) and mae.name == "mae"
    assert mae.view_spec.global_views == 1 and mae.view_spec.local_views == 0
    assert mae.view_spec.crop_scale == (0.2, 1.0)  # MAE's RandomResizedCrop(scale=(0.2, 1))


def test_rejects_non_vit_backbones_and_bad_ratio() -> None:
    with pytest.raises(ConfigError, match="ViT"):
        MAE(create_backbone("swin_test", bands=3, img_size=32))
    with pytest.raises(ConfigError, match="mask_ratio"):
        tiny_mae(mask_ratio=1.0)


def test_encoder_sees_only_visible_tokens() -> None:
    torch.manual_seed(0)
    mae = tiny_mae(bands=2).eval()
    x = torch.randn(2, 2, 32, 32)
    idx_keep, _, mask = random_token_mask(2, 16, 0.75)
    tokens, grid = mae.encode_visible(x, idx_keep)
    assert grid == (4, 4) and tokens.shape == (2, 1 + 4, 64)
    # scribbling over the masked patches of the input does not change the encoding
    pix = mask.view(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
    y = torch.where(pix, torch.randn_like(x) * 10, x)
    assert torch.allclose(mae.encode_visible(y, idx_keep)[0], tokens, atol=1e-6)
    z = torch.where(pix, x, x + 1.0)  # changing visible pixels does change it
    assert not torch.allclose(mae.encode_visible(z, idx_keep)[0], tokens, atol=1e-3)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_depends_only_on_masked_patches(norm_pix: bool) -> None:
    torch.manual_seed(0)
    mae = tiny_mae(bands=13, norm_pix_loss=norm_pix).eval()
    x = torch.randn(2, 13, 32, 32)
    idx_keep, _, mask = random_token_mask(2, 16, 0.75)
    pix = mask.view(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
    base = mae.forward_masked(x, idx_keep, mask)["loss"]
    visible_changed = torch.where(pix, x, torch.randn_like(x) * 5)
    same = mae.forward_masked(x, idx_keep, mask, target=visible_changed)["loss"]
    assert torch.allclose(same, base, atol=1e-6)
    masked_flat = torch.where(pix, torch.zeros_like(x), x)  # flat patches: target 0 either way
    other = mae.forward_masked(x, idx_keep, mask, target=masked_flat)["loss"]
    assert other < base - 0.5


def test_masked_mse_formula() -> None:
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    mask = torch.tensor([[False, True, False, True]])
    assert masked_mse(pred, target, mask, norm_pix=False).item() == pytest.approx((4 + 16) / 2)
    # normalised targets: every patch becomes (-0.707, 0.707)-like; here constant -> zero
    assert masked_mse(pred, target, mask, norm_pix=True).item() == pytest.approx(0.0)
    assert patchify(torch.ones(1, 2, 8, 8), 4).shape == (1, 4, 32)


def test_loss_falls(image_set: ImageSet) -> None:
    mae = tiny_mae(bands=13)
    losses = train_losses(mae, image_set.bands(13), steps=50, lr=2e-3, geometric=False)
    assert_loss_falls(losses)


def test_loss_falls_parallel_blocks(image_set: ImageSet) -> None:
    mae = tiny_mae("vit_test_parallel", bands=2)
    losses = train_losses(mae, image_set.bands(2), steps=50, lr=2e-3, geometric=False)
    assert_loss_falls(losses)
