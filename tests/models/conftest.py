"""Fixtures for model tests: tiny RGB "pretrained" models and checkpoints written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eofm.models import Backbone, create_backbone


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomise(backbone: Backbone, seed: int = 1) -> Backbone:
    """Give every parameter and norm statistic non-trivial values (as trained weights have)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.model.state_dict().items():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=gen) * 0.05
                if name.endswith("running_var"):
                    p.copy_(1.0 + noise.abs())
                else:
                    p.add_(noise)
    return backbone.eval()


@pytest.fixture
def rgb_vit() -> Backbone:
    """A tiny RGB ViT with 'trained' weights, as a timm ImageNet model would be."""
    return randomise(create_backbone("vit_test", bands=("red", "green", "blue"), img_size=32))


@pytest.fixture
def rgb_vit_ckpt(rgb_vit: Backbone, tmp_path: Path) -> Path:
    """The RGB ViT saved as a plain timm state dict (``.pth``)."""
    path = tmp_path / "vit_rgb.pth"
    torch.save(rgb_vit.model.state_dict(), path)
    return path
