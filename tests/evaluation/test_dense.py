"""Dense machinery: decoders keep the input size, sliding windows tile images exactly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from eofm.evaluation.dense import DenseModel, predict_sliding
from eofm.models import create_backbone


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 1.0


@pytest.mark.parametrize("size", [(50, 37), (16, 20), (64, 64)])
def test_sliding_window_reassembles_the_image(size: tuple[int, int]) -> None:
    img = torch.randn(3, *size)
    out = predict_sliding(Identity(), img, window=24, out_channels=3, overlap=0.5, batch_size=3)
    assert out.shape == img.shape
    assert torch.allclose(out, img, atol=1e-6)


class Position(nn.Module):
    """Output depends on where in the window a pixel is: averaging must still be consistent."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :1] * 0 + torch.ones_like(x[:, :1])


def test_sliding_window_averages_overlaps() -> None:
    out = predict_sliding(
        Position(), torch.zeros(1, 40, 40), window=16, out_channels=1, overlap=0.25
    )
    assert torch.allclose(out, torch.ones(1, 40, 40))


@pytest.mark.parametrize("arch", ["vit_test", "resnet_test"])
@pytest.mark.parametrize("decoder", ["linear", "fcn", "upernet"])
def test_dense_model_output_matches_input(arch: str, decoder: str) -> None:
    bb = create_backbone(arch, bands=4, img_size=32)
    net = DenseModel(bb, decoder, 5).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 4, 40, 36))
    assert out.shape == (2, 5, 40, 36)
    assert not any(p.requires_grad for p in net.encoder.parameters())


def test_siamese_model_sees_the_difference() -> None:
    bb = create_backbone("vit_test", bands=2, img_size=32)
    net = DenseModel(bb, "fcn", 2, siamese=True).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        same = net(torch.cat([x, x], 1))
        swapped = net(torch.cat([x, x + 1], 1)), net(torch.cat([x + 1, x], 1))
    assert same.shape == (1, 2, 32, 32)
    assert torch.allclose(swapped[0], swapped[1], atol=1e-5)  # |f1 - f2| is symmetric
