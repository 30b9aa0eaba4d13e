"""The billion-scale family (Cha et al. 2023): parameter counts within 1% of the paper's."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import ParallelThingsBlock

from eofm.models import BILLION_SCALE, billion_scale_counts, create_backbone, parameter_count

PAPER = {"vit_b12x1": 86e6, "vit_l12x4": 605.26e6, "vit_h12x4": 1.3e9, "vit_g12x4": 2.4e9}


def test_parameter_counts_within_one_percent_of_paper() -> None:
    counts = billion_scale_counts()
    assert set(counts) == set(PAPER)
    for name, (count, paper) in counts.items():
        rel = count / PAPER[name] - 1
        print(f"{name}: {count:,} parameters (paper {PAPER[name] / 1e6:,.2f}M, {rel:+.2%})")
        assert paper == PAPER[name]
        assert abs(rel) < 0.01, name
    assert [c[0] for c in counts.values()] == sorted(c[0] for c in counts.values())


@pytest.mark.parametrize("cfg", BILLION_SCALE, ids=lambda c: c.name)
def test_built_on_meta_with_parallel_blocks(cfg: object) -> None:
    name = cfg.name  # type: ignore[attr-defined]
    bb = create_backbone(name, bands=13, device="meta")
    assert next(bb.parameters()).device == torch.device("meta")
    assert len(bb.model.blocks) == 12
    block = bb.model.blocks[0]
    if cfg.parallel > 1:  # type: ignore[attr-defined]
        assert isinstance(block, ParallelThingsBlock) and block.num_parallel == 4
    assert bb.embed_dim == cfg.width  # type: ignore[attr-defined]
    # 13 bands add only (13 - 3) * 16 * 16 * width patch-kernel weights.
    assert parameter_count(bb) - billion_scale_counts()[name][0] == 10 * 256 * bb.embed_dim


def test_tiny_parallel_model_runs_and_sums_its_branches() -> None:
    bb = create_backbone("vit_test_parallel", bands=2).eval()
    block = bb.model.blocks[0]
    assert isinstance(block, ParallelThingsBlock) and len(block.attns) == 4
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        y = x + sum(a(x) for a in block.attns)
        expected = y + sum(f(y) for f in block.ffns)
        assert torch.allclose(block(x), expected, atol=1e-5)
