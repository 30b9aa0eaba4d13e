"""SimCLR: projection head + NT-Xent with global-batch negatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eofm.methods import Views, create_method
from eofm.methods.registry import import_all
from eofm.methods.simclr import SimCLR
from eofm.models import create_backbone
from tests.training.helpers import ssl_losses

from .conftest import ImageSet, assert_loss_falls


def tiny(name: str = "vit_test", bands: int = 13, **kw: object) -> SimCLR:
    bb = create_backbone(name, bands=bands, img_size=32)
    return SimCLR(bb, hidden_dim=64, output_dim=32, **kw)  # type: ignore[arg-type]


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's loss written out: 2N views, positives across, the rest negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / t
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def test_registered_with_two_views() -> None:
    assert "simclr" in import_all()
    m = create_method("simclr", create_backbone("vit_test", bands=3, img_size=32))
    assert isinstance(m, SimCLR) and m.name == "simclr"
    assert m.view_spec.global_views == 2 and m.view_spec.local_views == 0


@pytest.mark.parametrize("name", ["vit_test", "resnet_test"])
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    m = tiny(name, bands=4)
    x1, x2 = torch.randn(6, 4, 32, 32), torch.randn(6, 4, 32, 32)
    out = m.forward_loss(Views([x1, x2]), {"image": x1})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in m.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_loss_is_nt_xent() -> None:
    torch.manual_seed(0)
    m = tiny(batch_norm=False, temperature=0.3).eval()
    x1, x2 = torch.randn(5, 13, 32, 32), torch.randn(5, 13, 32, 32)
    loss = m.forward_loss(Views([x1, x2]), {})["loss"]
    with torch.no_grad():
        ref = nt_xent_reference(m.project(x1), m.project(x2), 0.3)
    torch.testing.assert_close(loss.detach(), ref, atol=1e-5, rtol=1e-5)


def test_loss_falls_on_a_fixed_set(image_set: ImageSet) -> None:
    torch.manual_seed(0)
    m = tiny(temperature=0.2)
    losses = ssl_losses(m, image_set.images, steps=50, lr=1e-3)
    assert_loss_falls(losses)
