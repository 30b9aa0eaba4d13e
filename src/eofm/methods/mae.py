"""Masked autoencoder (He et al. 2022), the objective of Cha et al. 2023's billion-scale models.

The ViT encoder sees only the visible 25% of the patch tokens; a light transformer decoder
gets the encoded tokens plus a shared mask token at every masked position (with fixed 2-D
sine-cosine position embeddings) and predicts the pixels of every patch, all bands. The loss
is the mean squared error on masked patches only, against per-patch normalised pixels
(``norm_pix_loss``). Works for any ViT of :mod:`eofm.models`, including the parallel-block
billion-scale family (``vit_b12x1``, ``vit_l12x4``...), any band count and any image size that
is a multiple of the patch size.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightly.models.utils import normalize_mean_var, set_at_index
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from eofm.errors import ConfigError
from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.masking import (
    check_ratio,
    patchify,
    random_token_mask,
    vit_embed,
    vit_keep_tokens,
    vit_run_blocks,
)
from eofm.models import Backbone

__all__ = ["MAE", "MAEDecoder", "masked_mse"]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE loss: per-patch MSE ``(B, L, P)`` averaged over the masked patches (``mask`` True).

    With ``norm_pix`` the target patches are normalised to zero mean and unit variance over
    their ``P = p * p * C`` values first. Visible patches do not enter the loss at all.
    """
    if norm_pix:
        target = normalize_mean_var(target, dim=-1)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


class MAEDecoder(nn.Module):
    """MAE decoder: embed, fill masked positions with a mask token, transformer, predict pixels.

    Position embeddings are fixed 2-D sine-cosine ones built for the token grid of each batch,
    so any image size works. Prefix tokens (class, registers) pass through without position.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_dim: int,
        *,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % num_heads or dim % 4:
            raise ConfigError(
                f"MAE decoder width {dim} must be a multiple of 4 and of its {num_heads} heads"
            )
        self.dim = dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        norm: Any = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *[
                Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                for _ in range(depth)
            ]
        )
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_weights)

    def forward(
        self, tokens: Tensor, idx_keep: Tensor, grid: tuple[int, int], num_prefix: int
    ) -> Tensor:
        """Predicted patches ``(B, H * W, patch_dim)`` from encoded prefix + visible tokens."""
        x = self.embed(tokens)
        b = x.shape[0]
        length = grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(b, length, -1)
        full = set_at_index(full, idx_keep, x[:, num_prefix:])
        pos = build_sincos2d_pos_embed(list(grid), dim=self.dim, device=x.device, dtype=x.dtype)
        full = full + pos.reshape(1, length, self.dim)
        x = torch.cat([x[:, :num_prefix], full], dim=1)
        x = self.norm(self.blocks(x))
        out: Tensor = self.pred(x[:, num_prefix:])
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_method("mae")
class MAE(SSLMethod):
    """Masked autoencoder on a ViT backbone (any bands; parallel-block ViTs included).

    Args:
        backbone: a ViT :class:`~eofm.models.Backbone`.
        mask_ratio: share of patch tokens hidden from the encoder (0.75).
        decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio: the light decoder
            (MAE default 512 wide, 8 blocks, 16 heads).
        norm_pix_loss: normalise each target patch (MAE's best setting).
    """

    view_spec = ViewSpec(global_views=1, crop_scale=(0.2, 1.0), geometric=True)

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__(backbone)
        if getattr(backbone, "family", None) != "vit":
            raise ConfigError(
                f"mae needs a ViT backbone; got {getattr(backbone, 'arch', type(backbone))!r} "
                f"(family {getattr(backbone, 'family', '?')})"
            )
        self.mask_ratio = check_ratio(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.patch_size = int(backbone.patch_size or 0)
        self.in_chans = len(backbone.bands)
        vit: Any = backbone.model
        self.num_prefix = int(vit.num_prefix_tokens)
        self.decoder = MAEDecoder(
            backbone.embed_dim,
            self.patch_size**2 * self.in_chans,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_ratio=decoder_mlp_ratio,
        )

    def encode_visible(self, images: Tensor, idx_keep: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Encoder output (normalised) for prefix + visible tokens, and the token grid."""
        vit: Any = self.backbone.model
        tokens, grid = vit_embed(vit, images)
        tokens = vit_keep_tokens(tokens, idx_keep, self.num_prefix)
        tokens = vit.norm(vit_run_blocks(vit, tokens))
        return tokens, grid

    def forward_masked(
        self, images: Tensor, idx_keep: Tensor, mask: Tensor, target: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss for given masks (``idx_keep`` ``(B, n_keep)``, ``mask`` ``(B, L)``).

        ``target`` (default: ``images``) is what is reconstructed; tests use it to show that
        only masked patches matter.
        """
        tokens, grid = self.encode_visible(images, idx_keep)
        pred = self.decoder(tokens, idx_keep, grid, self.num_prefix)
        target_patches = patchify(images if target is None else target, self.patch_size)
        loss = masked_mse(pred, target_patches, mask, self.norm_pix_loss)
        return {"loss": loss, "mask_ratio": mask.float().mean().detach()}

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = views.images[0]
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(f"mae: view size {h}x{w} is not a multiple of the patch size {p}")
        idx_keep, _, mask = random_token_mask(
            b, (h // p) * (w // p), self.mask_ratio, device=images.device
        )
        return self.forward_masked(images, idx_keep, mask)
