"""SimMIM (Xie et al. 2022): masked image modelling with a mask token and a linear decoder.

Masked patch embeddings are replaced by a learnable mask token and the *whole* token grid goes
through the encoder (ViT or Swin; for Swin the mask token is inserted right after
``patch_embed``, before the first stage). The last feature map (stride ``s``: the patch size
for ViT, 32 for Swin) is decoded by ``Conv2d(C, s^2 * bands, 1)`` + ``PixelShuffle(s)`` and the
loss is the L1 error on masked pixels, summed and divided by the number of masked pixels and by
the band count (as GFM's and SimMIM's code do). Masks are random squares of
``mask_patch_size`` pixels (32 in SimMIM and GFM) at ``mask_ratio`` (0.6).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.errors import ConfigError
from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.masking import (
    adapt_mask_patch,
    check_ratio,
    random_block_mask,
    swin_embed,
    upsample_mask,
    vit_embed,
    vit_run_blocks,
)
from eofm.models import Backbone

__all__ = ["MaskedEncoder", "SimMIM", "masked_l1"]

MIM_FAMILIES = ("vit", "swin", "swinv2")


def masked_l1(pred: Tensor, target: Tensor, pixel_mask: Tensor) -> Tensor:
    """SimMIM/GFM loss: ``sum(|pred - target| * mask) / (mask.sum() + 1e-5) / C``.

    ``pixel_mask`` is ``(B, 1, H, W)`` (1 = masked); unmasked pixels do not enter the loss.
    """
    per_pixel = F.l1_loss(pred, target, reduction="none")
    return (per_pixel * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / pred.shape[1]


class MaskedEncoder(nn.Module):
    """A ViT or Swin backbone run with a mask token, optionally tapping an intermediate level.

    ``tap`` (``None``: no tap) selects the intermediate feature: for ViT the output of the first
    ``tap`` blocks; for Swin the output of the first ``tap`` stages, followed by the next
    stage's patch merging when ``merge`` is set (timm merges at the start of a stage, the
    original Swin code at the end of the previous one, which is what GFM's ``layers[:-1]`` is).
    """

    def __init__(self, backbone: Backbone, mask_token: bool = True) -> None:
        super().__init__()
        family = getattr(backbone, "family", None)
        if family not in MIM_FAMILIES:
            raise ConfigError(
                f"masked image modelling needs a ViT or Swin backbone; got "
                f"{getattr(backbone, 'arch', type(backbone))!r} (family {family})"
            )
        self.family = str(family)
        model: Any = backbone.model
        if self.family == "vit":
            self.token_size = int(backbone.patch_size or 0)
            token_dim = int(backbone.embed_dim)
            self.out_channels = int(backbone.embed_dim)
            self.out_stride = self.token_size
            self.num_prefix = int(model.num_prefix_tokens)
            self.depth = len(model.blocks)
        else:
            self.token_size = int(backbone.patch_size or 0)
            token_dim = int(backbone.feature_channels[0])
            self.out_channels = int(backbone.feature_channels[-1])
            self.out_stride = int(backbone.feature_strides[-1])
            self.num_prefix = 0
            self.depth = len(model.layers)
        self.mask_token: nn.Parameter | None = None
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, token_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def default_tap(self) -> int:
        """GFM's level: Swin stage 3 of 4 (``layers[:-1]``); ViT block at 2/3 depth."""
        if self.family == "vit":
            return max(1, round(self.depth * 2 / 3))
        return self.depth - 1

    def tap_channels(self, backbone: Backbone, tap: int, merge: bool = True) -> int:
        """Channels of the tapped feature."""
        if self.family == "vit":
            return int(backbone.embed_dim)
        if merge and tap < self.depth:
            return int(backbone.feature_channels[tap])
        return int(backbone.feature_channels[tap - 1])

    def check_tap(self, tap: int) -> int:
        if not 1 <= tap <= self.depth:
            unit = "blocks" if self.family == "vit" else "stages"
            raise ConfigError(f"feature level {tap} is outside 1..{self.depth} {unit}")
        return tap

    def forward(
        self,
        model: Any,
        images: Tensor,
        token_mask: Tensor | None = None,
        *,
        tap: int | None = None,
        merge: bool = True,
        final: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(final map (B, C, h, w) or None, tapped feature avg-pooled (B, C_tap) or None)``.

        ``model`` is the timm model of the backbone (passed in so a frozen teacher can share
        this code). ``final=False`` stops after the tap.
        """
        mask_token = self.mask_token if token_mask is not None else None
        pooled: Tensor | None = None
        if self.family == "vit":
            tokens, grid = vit_embed(model, images, token_mask, mask_token)
            if tap is None:
                tokens = vit_run_blocks(model, tokens)
            else:
                tokens = vit_run_blocks(model, tokens, 0, tap)
                pooled = tokens[:, self.num_prefix :].mean(dim=1)
                if not final:
                    return None, pooled
                tokens = vit_run_blocks(model, tokens, tap)
            tokens = model.norm(tokens)[:, self.num_prefix :]
            fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])
            return fmap, pooled
        x = swin_embed(model, images, token_mask, mask_token)
        for i, stage in enumerate(model.layers):
            x = stage(x)
            if tap is not None and i + 1 == tap:
                feat = model.layers[i + 1].downsample(x) if merge and tap < self.depth else x
                pooled = feat.mean(dim=(1, 2))
                if not final:
                    return None, pooled
        x = model.norm(x)
        return x.permute(0, 3, 1, 2).contiguous(), pooled


@register_method("simmim")
class SimMIM(SSLMethod):
    """SimMIM on a ViT or Swin backbone (any bands).

    Args:
        backbone: ViT, Swin v1 or Swin v2 :class:`~eofm.models.Backbone`.
        mask_ratio: share of mask patches replaced by the mask token (0.6).
        mask_patch_size: side of a mask patch in pixels (32); made a multiple of the token size
            and shrunk on small images (see :func:`~eofm.methods.masking.adapt_mask_patch`).
    """

    view_spec = ViewSpec(global_views=1, crop_scale=(0.67, 1.0), geometric=True)

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 32,
    ) -> None:
        super().__init__(backbone)
        self.encoder = MaskedEncoder(backbone)
        self.mask_ratio = check_ratio(mask_ratio)
        if int(mask_patch_size) < 1:
            raise ConfigError(f"mask_patch_size must be positive, got {mask_patch_size}")
        self.mask_patch_size = int(mask_patch_size)
        self.in_chans = len(backbone.bands)
        stride = self.encoder.out_stride
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.out_channels, stride**2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(stride),
        )

    def make_mask(self, images: Tensor) -> Tensor:
        """Random ``(B, H / t, W / t)`` token mask (``t``: the patch-embedding stride)."""
        b, _, h, w = images.shape
        t = self.encoder.token_size
        s = self.encoder.out_stride
        if h % s or w % s:
            raise ConfigError(
                f"{self.name}: view size {h}x{w} is not a multiple of the encoder stride {s}"
            )
        grid = (h // t, w // t)
        block = adapt_mask_patch(self.mask_patch_size, t, grid)
        return random_block_mask(b, grid, self.mask_ratio, block, device=images.device)

    def reconstruction_loss(
        self, fmap: Tensor, token_mask: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(L1 loss on masked pixels, reconstruction)`` for the final feature map."""
        rec = self.decoder(fmap)
        pixel_mask = upsample_mask(token_mask, self.encoder.token_size).to(rec.dtype)
        return masked_l1(rec, target, pixel_mask), rec

    def forward_masked(
        self, images: Tensor, token_mask: Tensor, target: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss for a given token mask; ``target`` (default ``images``) is reconstructed."""
        fmap, _ = self.encoder(self.backbone.model, images, token_mask)
        assert fmap is not None
        loss, _ = self.reconstruction_loss(fmap, token_mask, images if target is None else target)
        return {"loss": loss, "mask_ratio": token_mask.float().mean().detach()}

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = views.images[0]
        return self.forward_masked(images, self.make_mask(images))
