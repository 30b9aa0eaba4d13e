"""Random patch masking and masked forward passes shared by the masked-image methods.

- Masks: :func:`random_token_mask` (exactly ``round(n * ratio)`` tokens per image, MAE) and
  :func:`random_block_mask` (SimMIM: coarse mask patches of several tokens each).
- Pixels: :func:`patchify` / :func:`unpatchify` for any band count and rectangular images,
  :func:`upsample_mask` from token to pixel resolution.
- Encoders: :func:`vit_embed` (tokens with position embedding, optional mask token),
  :func:`vit_run_blocks`, :func:`swin_embed`. They use the timm models inside
  :class:`eofm.models.Backbone` (ViT: ``patch_embed``, ``_pos_embed``, ``blocks``, ``norm``;
  Swin: ``patch_embed``, ``layers``, ``norm``), so parallel-block ViTs work unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightly.models.utils import get_at_index
from timm.models import checkpoint_seq
from torch import Tensor

from eofm.errors import ConfigError

__all__ = [
    "adapt_mask_patch",
    "check_ratio",
    "mask_count",
    "patchify",
    "random_block_mask",
    "random_token_mask",
    "swin_embed",
    "unpatchify",
    "upsample_mask",
    "vit_embed",
    "vit_keep_tokens",
    "vit_run_blocks",
]


def check_ratio(ratio: float, name: str = "mask_ratio", allow_zero: bool = False) -> float:
    """``ratio`` as a float in ``(0, 1)`` (``[0, 1)`` with ``allow_zero``), else ConfigError."""
    value = float(ratio)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be in {bound}, got {ratio!r}")
    return value


def mask_count(n: int, ratio: float) -> int:
    """Number of the ``n`` items masked at ``ratio``: ``round(n * ratio)``, leaving at least one."""
    if n < 1:
        raise ConfigError(f"cannot mask a sequence of {n} tokens")
    return max(0, min(n - 1, round(n * ratio)))


def random_token_mask(
    batch: int,
    n: int,
    ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mask exactly :func:`mask_count` of ``n`` tokens in each of ``batch`` rows, uniformly.

    Returns ``(idx_keep, idx_mask, mask)``: kept and masked indices (``(B, n_keep)``,
    ``(B, n_mask)``, each sorted ascending) and the boolean mask ``(B, n)`` (True = masked).
    """
    n_mask = mask_count(n, ratio)
    noise = torch.rand(batch, n, device=device, generator=generator)
    order = torch.argsort(noise, dim=1)
    idx_keep = order[:, : n - n_mask].sort(dim=1).values
    idx_mask = order[:, n - n_mask :].sort(dim=1).values
    mask = torch.zeros(batch, n, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, idx_mask, True)
    return idx_keep, idx_mask, mask


def random_block_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    block: int = 1,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SimMIM masking: a ``(B, H, W)`` token mask made of ``block`` x ``block`` squares.

    The token grid ``grid = (H, W)`` is covered by ``ceil(H / block) x ceil(W / block)`` cells of
    which exactly :func:`mask_count` are masked per image; cells are upsampled to tokens and
    cropped to the grid (so the token ratio is exact when ``block`` divides the grid).
    """
    h, w = grid
    if block < 1:
        raise ConfigError(f"mask block must be at least one token, got {block}")
    ch, cw = math.ceil(h / block), math.ceil(w / block)
    _, _, cells = random_token_mask(batch, ch * cw, ratio, device=device, generator=generator)
    cells = cells.view(batch, ch, cw)
    tokens = cells.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    return tokens[:, :h, :w].contiguous()


def adapt_mask_patch(mask_patch_size: int, token_size: int, grid: tuple[int, int]) -> int:
    """Tokens per side of one mask patch: ``mask_patch_size / token_size`` (at least 1).

    SimMIM masks 32 x 32-pixel patches (Swin at 192 px: 6 x 6 cells over a 48 x 48 token grid).
    On small images this would mask whole images, so the cell is halved until the grid holds at
    least 4 cells per side (a 32 px ``swin_test`` input gets 8 px cells).
    """
    block = max(1, round(mask_patch_size / token_size))
    while block > 1 and min(grid) // block < 4:
        block //= 2
    return block


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """A ``(B, h, w)`` token mask as a ``(B, 1, h * factor, w * factor)`` float pixel mask."""
    out = mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return out.unsqueeze(1).float()


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` to ``(B, L, p * p * C)`` patches (row-major, ``(p, p, C)`` per patch, MAE).

    Any band count and rectangular images whose sides are multiples of ``patch_size``.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ConfigError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify` for a ``grid = (H / p, W / p)`` token grid."""
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)


def _blend(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """Replace tokens ``(B, H, W, D)`` where ``mask`` ``(B, H, W)`` is True by ``mask_token``."""
    w = mask.unsqueeze(-1).to(tokens.dtype)
    return tokens * (1.0 - w) + mask_token.reshape(1, 1, 1, -1).to(tokens.dtype) * w


def vit_embed(
    vit: Any,
    images: Tensor,
    token_mask: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> tuple[Tensor, tuple[int, int]]:
    """Patch tokens of a timm ViT with prefix tokens and position embeddings added.

    Returns ``(tokens, grid)``: ``(B, num_prefix + H * W, D)`` tokens after ``norm_pre`` and the
    token grid ``(H, W)``. With ``token_mask`` ``(B, H, W)`` the masked patch embeddings are
    replaced by ``mask_token`` before the position embedding (SimMIM).
    """
    x = vit.patch_embed(images)
    if x.ndim == 3:  # a ViT built without dynamic_img_size gives (B, L, D)
        p = vit.patch_embed.patch_size
        x = x.reshape(x.shape[0], images.shape[-2] // p[0], images.shape[-1] // p[1], -1)
        grid = (int(x.shape[1]), int(x.shape[2]))
        if token_mask is not None and mask_token is not None:
            x = _blend(x, token_mask, mask_token)
        x = x.flatten(1, 2)
    else:
        grid = (int(x.shape[1]), int(x.shape[2]))
        if token_mask is not None and mask_token is not None:
            x = _blend(x, token_mask, mask_token)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    return x, grid


def vit_keep_tokens(tokens: Tensor, idx_keep: Tensor, num_prefix: int) -> Tensor:
    """Prefix tokens followed by the patch tokens at ``idx_keep`` (``(B, n_keep)``)."""
    patches = get_at_index(tokens[:, num_prefix:], idx_keep)
    return torch.cat([tokens[:, :num_prefix], patches], dim=1)


def vit_run_blocks(vit: Any, tokens: Tensor, start: int = 0, end: int | None = None) -> Tensor:
    """Run ``vit.blocks[start:end]`` (with activation checkpointing when the model asks)."""
    blocks = vit.blocks[start:end]
    if getattr(vit, "grad_checkpointing", False) and torch.is_grad_enabled():
        out: Tensor = checkpoint_seq(blocks, tokens)
        return out
    out = blocks(tokens)
    return out


def swin_embed(
    swin: Any,
    images: Tensor,
    token_mask: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> Tensor:
    """Swin patch embedding ``(B, H, W, D)`` with masked tokens replaced by ``mask_token``."""
    x: Tensor = swin.patch_embed(images)
    if token_mask is not None and mask_token is not None:
        x = _blend(x, token_mask, mask_token)
    return x
