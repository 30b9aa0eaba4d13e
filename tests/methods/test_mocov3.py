"""MoCo v3: query encoder + predictor against an EMA key encoder, symmetric InfoNCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eofm.methods import Views, create_method
from eofm.methods.heads import cosine_schedule, info_nce
from eofm.methods.mocov3 import MoCoV3
from eofm.models import create_backbone
from tests.training.helpers import ssl_losses

from .conftest import ImageSet, assert_loss_falls


def tiny(name: str = "vit_test", bands: int = 13, **kw: object) -> MoCoV3:
    bb = create_backbone(name, bands=bands, img_size=32)
    return MoCoV3(bb, hidden_dim=64, output_dim=32, **kw)  # type: ignore[arg-type]


def test_registered_and_momentum_encoder_is_frozen() -> None:
    m = create_method("mocov3", create_backbone("vit_test", bands=2, img_size=32))
    assert isinstance(m, MoCoV3) and m.temperature == 0.2 and m.momentum == 0.99
    assert not any(p.requires_grad for p in m.momentum_backbone.parameters())
    assert not any(p.requires_grad for p in m.momentum_projector.parameters())
    # starts as an exact copy
    for p, q in zip(m.backbone.parameters(), m.momentum_backbone.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["vit_test", "resnet_test"])
def test_forward_backward_only_query_side_gets_gradients(name: str) -> None:
    torch.manual_seed(0)
    m = tiny(name, bands=3)
    x1, x2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    out = m.forward_loss(Views([x1, x2]), {})
    assert torch.isfinite(out["loss"]) and "pos_similarity" in out
    out["loss"].backward()
    assert all(p.grad is not None for p in m.predictor.parameters())
    assert all(p.grad is None for p in m.momentum_backbone.parameters())


def test_info_nce_matches_moco_v3_formula() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(8, 16), torch.randn(8, 16)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.2
    ref = F.cross_entropy(logits, torch.arange(8)) * 2 * 0.2
    torch.testing.assert_close(info_nce(q, k, 0.2), ref)


def test_ema_update_and_cosine_momentum() -> None:
    torch.manual_seed(0)
    m = tiny(batch_norm=False)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [q.clone() for q in m.momentum_backbone.parameters()]
    m.on_step_end(0, 100)  # momentum 0.99 at step 0
    for p, q0, q in zip(m.backbone.parameters(), before, m.momentum_backbone.parameters()):
        torch.testing.assert_close(q, 0.99 * q0 + 0.01 * p)
    assert cosine_schedule(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    m.on_step_end(100, 100)
    assert m.current_momentum == 1.0


def test_freeze_patch_embed_for_vits() -> None:
    m = tiny(freeze_patch_embed=True)
    assert not any(p.requires_grad for p in m.backbone.model.patch_embed.parameters())


def test_loss_falls_on_a_fixed_set(image_set: ImageSet) -> None:
    torch.manual_seed(0)
    m = tiny()
    losses = ssl_losses(m, image_set.images, steps=50, lr=1e-3)
    assert_loss_falls(losses)
