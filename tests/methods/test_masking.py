"""Random patch masking utilities and the masked ViT/Swin forward helpers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from eofm.errors import ConfigError
from eofm.methods.masking import (
    adapt_mask_patch,
    check_ratio,
    mask_count,
    patchify,
    random_block_mask,
    random_token_mask,
    swin_embed,
    unpatchify,
    upsample_mask,
    vit_embed,
    vit_keep_tokens,
    vit_run_blocks,
)
from eofm.models import create_backbone


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [(16, 0.75, 12), (196, 0.75, 147), (10, 0.9, 9), (36, 0.6, 22), (16, 0.6, 10), (4, 0.99, 3)],
)
def test_random_token_mask_ratio_is_exact(n: int, ratio: float, expected: int) -> None:
    assert mask_count(n, ratio) == expected
    idx_keep, idx_mask, mask = random_token_mask(64, n, ratio)
    assert idx_mask.shape == (64, expected) and idx_keep.shape == (64, n - expected)
    assert (mask.sum(dim=1) == expected).all()
    # kept and masked indices partition the sequence and agree with the boolean mask
    both = torch.cat([idx_keep, idx_mask], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(n).expand(64, n))
    assert mask.gather(1, idx_mask).all() and not mask.gather(1, idx_keep).any()


def test_random_token_mask_is_uniform_over_positions() -> None:
    torch.manual_seed(0)
    _, _, mask = random_token_mask(4000, 16, 0.75)
    freq = mask.float().mean(dim=0)
    assert torch.allclose(freq, torch.full((16,), 0.75), atol=0.03)


def test_random_block_mask_exact_ratio_and_blocks() -> None:
    mask = random_block_mask(8, (48, 48), 0.6, block=8)  # GFM: 32 px cells over 4 px tokens
    assert mask.shape == (8, 48, 48)
    cells = 36
    assert (mask.flatten(1).sum(dim=1) == round(cells * 0.6) * 64).all()
    # every 8x8 cell is all masked or all visible
    blocks = mask.view(8, 6, 8, 6, 8).permute(0, 1, 3, 2, 4).flatten(3)
    assert (blocks.all(dim=-1) | ~blocks.any(dim=-1)).all()


def test_random_block_mask_crops_partial_cells() -> None:
    mask = random_block_mask(3, (7, 5), 0.5, block=2)
    assert mask.shape == (3, 7, 5)


def test_adapt_mask_patch_follows_patch_and_image_size() -> None:
    assert adapt_mask_patch(32, 4, (48, 48)) == 8  # Swin-B at 192: SimMIM's 32 px patches
    assert adapt_mask_patch(32, 16, (14, 14)) == 2  # ViT-B/16 at 224
    assert adapt_mask_patch(32, 4, (8, 8)) == 2  # swin_test at 32 px: 8 px cells
    assert adapt_mask_patch(32, 8, (4, 4)) == 1  # vit_test at 32 px: single tokens


def test_check_ratio() -> None:
    assert check_ratio(0.75) == 0.75
    assert check_ratio(0, allow_zero=True) == 0.0
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            check_ratio(bad)


def test_patchify_roundtrip_any_bands_rectangular() -> None:
    x = torch.randn(2, 13, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 6, 8 * 8 * 13)
    # patch 1 (row 0, column 1) holds pixels [0:8, 8:16] in (p, p, C) order
    assert torch.equal(p[0, 1].view(8, 8, 13), x[0, :, 0:8, 8:16].permute(1, 2, 0))
    assert torch.equal(unpatchify(p, 8, (2, 3), 13), x)
    with pytest.raises(ConfigError):
        patchify(torch.randn(1, 3, 10, 16), 8)


def test_upsample_mask() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    pix = upsample_mask(mask, 3)
    assert pix.shape == (1, 1, 6, 6)
    assert pix[0, 0, :3, :3].eq(1).all() and pix[0, 0, :3, 3:].eq(0).all()


@pytest.mark.parametrize("name", ["vit_test", "vit_test_parallel"])
def test_vit_helpers_match_timm_forward(name: str) -> None:
    bb = create_backbone(name, bands=2, img_size=32).eval()
    vit: Any = bb.model
    x = torch.randn(2, 2, 32, 40)
    tokens, grid = vit_embed(vit, x)
    assert grid == (4, 5)
    out = vit.norm(vit_run_blocks(vit, tokens))
    assert torch.allclose(out, vit.forward_features(x), atol=1e-6)
    # keeping all tokens in order changes nothing; keeping some drops the others
    all_idx = torch.arange(20).expand(2, 20)
    assert torch.equal(vit_keep_tokens(tokens, all_idx, 1), tokens)
    assert vit_keep_tokens(tokens, all_idx[:, :5], 1).shape == (2, 6, tokens.shape[-1])


def test_vit_embed_mask_token_replaces_patch_embedding() -> None:
    bb = create_backbone("vit_test", bands=3, img_size=32)
    vit: Any = bb.model
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    token = torch.randn(1, 1, 64)
    plain, _ = vit_embed(vit, x)
    masked, _ = vit_embed(vit, x, mask, token)
    pos = vit.pos_embed[0, 1 + 1 * 4 + 2]
    assert torch.allclose(masked[0, 1 + 6], token[0, 0] + pos, atol=1e-6)
    diff = (masked - plain).abs().sum(-1)
    assert diff[0, 1 + 6] > 0 and diff.sum() == diff[0, 1 + 6]


def test_swin_embed_matches_timm_forward() -> None:
    bb = create_backbone("swin_test", bands=13, img_size=32).eval()
    swin: Any = bb.model
    x = torch.randn(2, 13, 32, 32)
    out = swin.norm(swin.layers(swin_embed(swin, x)))
    assert torch.allclose(out, swin.forward_features(x), atol=1e-6)
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    token = torch.randn(1, 1, 24)
    emb = swin_embed(swin, x, mask, token)
    assert torch.allclose(emb, token.view(1, 1, 1, 24).expand(2, 8, 8, 24))
