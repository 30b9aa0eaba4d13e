"""DINO: student/EMA teacher, centring and sharpening, multi-crop."""

from __future__ import annotations

import pytest
import torch

from eofm.methods import Views, ViewSpec, create_method
from eofm.methods.dino import DINO
from eofm.models import create_backbone
from tests.training.helpers import ssl_losses

from .conftest import ImageSet, assert_loss_falls


def tiny(name: str = "vit_test", bands: int = 13, **kw: object) -> DINO:
    bb = create_backbone(name, bands=bands, img_size=32)
    return DINO(bb, hidden_dim=64, bottleneck_dim=16, output_dim=128, **kw)  # type: ignore[arg-type]


def multi_crop(b: int = 4, c: int = 13) -> Views:
    g = [torch.randn(b, c, 32, 32) for _ in range(2)]
    loc = [torch.randn(b, c, 16, 16) for _ in range(3)]
    return Views(g + loc, num_global=2)


def test_registered_and_multi_crop_view_spec() -> None:
    m = create_method("dino", create_backbone("vit_test", bands=1, img_size=32))
    assert isinstance(m, DINO) and m.name == "dino"
    spec = m.view_spec
    assert spec.global_views == 2 and spec.local_views > 0
    assert spec.crop_scale == (0.4, 1.0) and spec.local_crop_scale == (0.05, 0.4)
    assert not any(p.requires_grad for p in m.teacher_backbone.parameters())
    assert not any(p.requires_grad for p in m.teacher_head.parameters())


@pytest.mark.parametrize("name", ["vit_test", "resnet_test"])
def test_forward_backward_multi_crop(name: str) -> None:
    torch.manual_seed(0)
    m = tiny(name, bands=2)
    out = m.forward_loss(multi_crop(c=2), {})
    assert torch.isfinite(out["loss"]) and out["teacher_temp"].item() == pytest.approx(0.04)
    out["loss"].backward()
    assert m.head.last_layer.weight_v.grad is not None
    assert all(p.grad is None for p in m.teacher_backbone.parameters())
    assert m.criterion.center.abs().sum() > 0  # centring updated from the teacher outputs


def test_teacher_is_ema_embed_and_export_use_it() -> None:
    torch.manual_seed(0)
    m = tiny(batch_norm=False)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.5)
    old = [q.clone() for q in m.teacher_backbone.parameters()]
    m.on_step_end(0, 10)
    for p, q0, q in zip(m.backbone.parameters(), old, m.teacher_backbone.parameters()):
        torch.testing.assert_close(q, 0.996 * q0 + 0.004 * p)
    x = torch.randn(3, 13, 32, 32)
    m.eval()
    torch.testing.assert_close(m.embed(x), m.teacher_backbone(x))
    assert m.export_backbone() is m.teacher_backbone
    assert int(m.step) == 0 and int(m.max_steps) == 10


def test_teacher_temperature_warmup_and_frozen_last_layer() -> None:
    m = tiny(
        warmup_teacher_temp=0.02,
        teacher_temp=0.06,
        warmup_teacher_temp_fraction=0.5,
        freeze_last_layer_fraction=0.2,
    )
    m.on_step_end(0, 100)
    assert m.current_teacher_temp() == pytest.approx(0.02)
    m.on_step_end(25, 100)
    assert m.current_teacher_temp() == pytest.approx(0.04)
    m.on_step_end(60, 100)
    assert m.current_teacher_temp() == pytest.approx(0.06)
    out = m.forward_loss(multi_crop(), {})
    out["loss"].backward()
    m.on_before_optimizer_step(10, 100)  # within the first 20 %: no update of the last layer
    assert m.head.last_layer.weight_v.grad is None
    assert not m.head.last_layer.weight_g.requires_grad  # norm_last_layer
    m.zero_grad()
    m.forward_loss(multi_crop(), {})["loss"].backward()
    m.on_before_optimizer_step(30, 100)
    assert m.head.last_layer.weight_v.grad is not None


def test_sharpening_of_the_teacher() -> None:
    """A colder teacher gives a lower-entropy target."""
    torch.manual_seed(0)
    views = multi_crop()
    hot = tiny(teacher_temp=0.2).eval()
    cold = tiny(teacher_temp=0.02).eval()
    cold.load_state_dict(hot.state_dict())
    e_hot = hot.forward_loss(views, {})["teacher_entropy"]
    e_cold = cold.forward_loss(views, {})["teacher_entropy"]
    assert e_cold < e_hot


def test_loss_falls_on_a_fixed_set(image_set: ImageSet) -> None:
    torch.manual_seed(0)
    m = tiny(momentum=0.99)
    spec = ViewSpec(
        global_views=2,
        local_views=2,
        local_size=16,
        crop_scale=(0.4, 1.0),
        local_crop_scale=(0.1, 0.4),
    )
    losses = ssl_losses(m, image_set.images, steps=50, lr=1e-3, spec=spec)
    assert_loss_falls(losses)
