"""SoftCon: hard InfoNCE + soft multi-label target, Siamese masking, EMA branch."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from eofm.methods import create_method
from eofm.methods.softcon import SoftCon, cosine_momentum, label_vectors, soft_targets
from eofm.models import create_backbone

from .conftest import (
    ImageSet,
    assert_loss_falls,
    make_views,
    train_losses,
    unused_parameters,
)


def tiny(name: str = "vit_test", bands: int = 13, **kw: Any) -> SoftCon:
    kw = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64, **kw}
    return SoftCon(create_backbone(name, bands=bands, img_size=32), **kw)


def test_soft_target_uniform_for_identical_labels() -> None:
    labels = torch.tensor([[1.0, 0.0, 1.0]]).repeat(5, 1)
    targets, labelled = soft_targets(labels, 5)
    assert labelled.all()
    assert torch.allclose(targets, torch.full((5, 5), 0.2))


def test_soft_target_is_identity_for_distinct_one_hot_labels() -> None:
    targets, labelled = soft_targets(torch.eye(4), 4)
    assert labelled.all() and torch.allclose(targets, torch.eye(4))


def test_soft_target_graded_and_unlabelled_rows() -> None:
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets, labelled = soft_targets(labels, 4)
    assert labelled.tolist() == [True, True, False, True]
    c = 2**-0.5  # cos([1,1,0], [1,0,0])
    assert torch.allclose(targets[0], torch.tensor([1.0, c, 0.0, 0.0]) / (1 + c))
    assert torch.allclose(targets[1], torch.tensor([c, 1.0, 0.0, 0.0]) / (1 + c))
    assert targets[2].eq(0).all()  # no label: no soft row
    assert torch.allclose(targets[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(targets[labelled].sum(1), torch.ones(3))


def test_label_vectors_from_class_indices_and_missing() -> None:
    y = label_vectors(torch.tensor([2, 0, 2, -1]), 4)
    assert y is not None
    targets, labelled = soft_targets(y, 4)
    assert labelled.tolist() == [True, True, True, False]
    assert torch.allclose(targets[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    fractions = torch.tensor([[0.9, 0.1, 0.0], [0.02, 0.98, 0.0]])
    assert torch.equal(label_vectors(fractions, 2, 0.05), torch.tensor([[1.0, 1, 0], [0, 1, 0]]))
    assert label_vectors(None, 4) is None
    assert label_vectors(torch.ones(3, 2), 4) is None  # wrong batch size: ignored


def run(m: SoftCon, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    views = make_views(x, 2, generator=torch.Generator().manual_seed(0))
    batch: dict[str, Any] = {"image": x}
    if labels is not None:
        batch["label"] = labels
    return m.forward_loss(views, batch)


@pytest.mark.parametrize(("name", "bands"), [("vit_test", 13), ("resnet_test", 2)])
def test_forward_backward_and_ema_gets_no_gradient(name: str, bands: int) -> None:
    torch.manual_seed(0)
    m = tiny(name, bands)
    x = torch.randn(6, bands, 32, 32)
    out = run(m, x, (torch.rand(6, 5) > 0.5).float())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in m.momentum_backbone.parameters())
    assert all(p.grad is None for p in m.momentum_projector.parameters())
    assert m.backbone.model.state_dict() is not None
    first = next(p for p in m.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert m.predictor.layers[0].weight.grad is not None
    assert unused_parameters(m) == []


def test_soft_term_reduces_to_hard_and_falls_back_without_labels() -> None:
    torch.manual_seed(0)
    m = tiny().eval()
    m.mask_ratio = 0.0  # deterministic branches for this comparison
    x = torch.randn(5, 13, 32, 32)
    distinct = run(m, x, torch.eye(5))
    assert distinct["loss_soft"].item() == pytest.approx(distinct["loss_hard"].item(), rel=1e-5)
    assert distinct["soft_kl"].item() == pytest.approx(distinct["loss_soft"].item(), rel=1e-5)
    with pytest.warns(UserWarning, match="no multi-label vectors under 'label'"):
        none = run(m, x, None)
    assert none["loss_soft"].item() == 0.0 and none["labelled"].item() == 0.0
    assert none["loss"].item() == pytest.approx(none["loss_hard"].item())
    zeros = run(m, x, torch.zeros(5, 3))
    assert zeros["loss"].item() == pytest.approx(none["loss"].item(), rel=1e-6)
    same = run(m, x, torch.ones(5, 3))
    assert same["loss_soft"].item() != pytest.approx(same["loss_hard"].item(), rel=1e-3)
    # uniform soft target: cross-entropy = KL + log(5)
    assert same["loss_soft"].item() == pytest.approx(same["soft_kl"].item() + math.log(5), 1e-5)
    assert m.embed(x).shape == (5, 64)  # pooled embeddings of the trainable backbone


def test_siamese_masking_on_trainable_branch_only() -> None:
    torch.manual_seed(0)
    m = tiny("vit_test", 3, mask_ratio=0.5)
    lengths: dict[str, int] = {}
    m.backbone.model.blocks[0].register_forward_hook(
        lambda _m, i, _o: lengths.__setitem__("online", i[0].shape[1])
    )
    m.momentum_backbone.model.blocks[0].register_forward_hook(
        lambda _m, i, _o: lengths.__setitem__("ema", i[0].shape[1])
    )
    run(m, torch.randn(4, 3, 32, 32), None)
    assert lengths == {"online": 1 + 8, "ema": 1 + 16}  # 16 patches, half dropped online
    r = tiny("resnet_test", 2, mask_ratio=0.5)
    seen: list[torch.Tensor] = []
    r.backbone.model.conv1.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    x = torch.randn(4, 2, 32, 32) + 5.0
    r.encode_masked(x)
    zero_share = (seen[0] == 0).all(dim=1).float().mean().item()
    assert zero_share == pytest.approx(0.5)  # 8 of 16 8x8-pixel blocks zeroed


def test_ema_update_and_schedule() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    m = tiny("resnet_test", 2)
    online = m.backbone.model.conv1.weight
    ema = m.momentum_backbone.model.conv1.weight
    assert torch.equal(online, ema)  # the EMA branch starts from the (pretrained) backbone
    with torch.no_grad():
        online.add_(1.0)
    before = ema.clone()
    m.on_step_end(0, 10)
    assert torch.allclose(ema, 0.99 * before + 0.01 * online)
    assert m.current_momentum == pytest.approx(0.99)


def test_registry_and_symmetric(image_set: ImageSet) -> None:
    bb = create_backbone("vit_test", bands=2, img_size=32)
    m = create_method(
        "softcon", bb, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, symmetric=True
    )
    assert isinstance(m, SoftCon) and m.view_spec.global_views == 2
    x = image_set.bands(2)[:6]
    out = m.forward_loss(make_views(x, 2), {"label": image_set.labels[:6]})
    assert torch.isfinite(out["loss"]) and out["labelled"].item() > 0


def test_loss_falls(image_set: ImageSet) -> None:
    m = tiny("vit_test", 13)
    losses = train_losses(m, image_set.bands(13), image_set.labels, steps=50, lr=2e-3)
    assert_loss_falls(losses)


def test_soft_term_learns_label_similarity(image_set: ImageSet) -> None:
    """With a strong soft weight the embedding similarities approach the label similarities
    (the KL part of the soft cross-entropy falls; with lambda = 1 the hard identity target
    pulls the other way and it plateaus)."""
    torch.manual_seed(0)
    m = tiny("vit_test", 13, soft_weight=5.0)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    x, labels = image_set.bands(13), image_set.labels
    kl = []
    for step in range(50):
        out = m.forward_loss(make_views(x, 2, generator=gen), {"label": labels})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.on_step_end(step, 50)
        kl.append(float(out["soft_kl"]))
    assert sum(kl[-5:]) < 0.7 * sum(kl[:5])
