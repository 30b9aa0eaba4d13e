"""Dense contrastive learning: exact view correspondence, overlap handling, training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from eofm.methods import Views, create_method
from eofm.methods.dense import (
    DenseContrast,
    box_overlap,
    grid_points,
    sample_points,
    source_to_view,
)
from eofm.models import create_backbone

from .conftest import (
    ImageSet,
    assert_loss_falls,
    make_views,
    train_losses,
    unused_parameters,
)


def coordinate_image(h: int, w: int) -> torch.Tensor:
    """Channel 0: x of each pixel centre, channel 1: y (so bilinear sampling is exact)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys]).float().unsqueeze(0)


def make_view(
    img: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], flip: bool, k: int
) -> torch.Tensor:
    x0, y0, x1, y1 = box
    crop = img[..., y0:y1, x0:x1]
    v = F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
    if flip:
        v = v.flip(-1)
    return torch.rot90(v, k, dims=(-2, -1))


@pytest.mark.parametrize("flip_a", [False, True])
@pytest.mark.parametrize("flip_b", [False, True])
def test_matched_points_sample_the_same_ground_location(flip_a: bool, flip_b: bool) -> None:
    """Every flip/rotation combination, non-square crops and views of different sizes."""
    img = coordinate_image(64, 80)
    boxes_a = [(4, 6, 50, 40), (10, 0, 80, 64), (0, 20, 30, 64), (30, 10, 70, 50)]
    boxes_b = [(20, 10, 60, 60), (0, 8, 56, 48), (8, 30, 40, 60), (20, 0, 80, 40)]
    ka, kb = [0, 1, 2, 3], [3, 2, 1, 0]
    va = torch.cat([make_view(img, b, (32, 32), flip_a, k) for b, k in zip(boxes_a, ka)])
    vb = torch.cat([make_view(img, b, (40, 40), flip_b, k) for b, k in zip(boxes_b, kb)])
    n = len(boxes_a)
    views = Views(
        images=[va, vb],
        boxes=[torch.tensor(boxes_a).float(), torch.tensor(boxes_b).float()],
        flips=[torch.full((n,), flip_a), torch.full((n,), flip_b)],
        rot90=[torch.tensor(ka), torch.tensor(kb)],
    )
    m = DenseContrast(create_backbone("vit_test", bands=2, img_size=32), grid_size=5).eval()
    uv_a, uv_b, valid = m.matched_points(views)
    assert valid.all()
    inter, _ = box_overlap(views.boxes[0], views.boxes[1])
    ground = grid_points(inter, 5)  # the points the method laid out (no jitter in eval)
    got_a = sample_points(va, uv_a)
    got_b = sample_points(vb, uv_b)
    assert torch.allclose(got_a, ground, atol=1e-3)
    assert torch.allclose(got_b, ground, atol=1e-3)


def test_source_to_view_rotation_convention() -> None:
    """One counter-clockwise turn (torch.rot90) takes the top-right corner to the top-left."""
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    top_right = torch.tensor([[[9.5, 0.5]]])
    uv = source_to_view(top_right, box, torch.tensor([False]), torch.tensor([1]))
    assert torch.allclose(uv, torch.tensor([[[0.05, 0.05]]]))
    flipped = source_to_view(top_right, box, torch.tensor([True]), torch.tensor([0]))
    assert torch.allclose(flipped, torch.tensor([[[0.05, 0.05]]]))


def test_features_of_matched_points_agree_for_identical_views() -> None:
    """Same crop, one view rotated and flipped: sampled feature vectors agree (ResNet maps)."""
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32)
    rot = torch.rot90(img.flip(-1), 2, dims=(-2, -1))
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(2, 1)
    views = Views(
        images=[img, rot],
        boxes=[full, full],
        flips=[torch.tensor([False, False]), torch.tensor([True, True])],
        rot90=[torch.tensor([0, 0]), torch.tensor([2, 2])],
    )
    m = DenseContrast(
        create_backbone("resnet_test", bands=3, img_size=32), feature_level=0, grid_size=4
    ).eval()
    uv0, uv1, _ = m.matched_points(views)
    with torch.no_grad():
        f0 = m.backbone.forward_features(img)[0]
        f1 = m.backbone.forward_features(rot)[0]
    # points at the centres of a 4x4 grid fall on feature-pixel centres of the 8x8 map;
    # convolutions are not exactly flip/rotation equivariant, so compare the rotated maps
    assert torch.allclose(
        sample_points(f1, uv1), sample_points(torch.rot90(f1, 2, (-2, -1)).flip(-1), uv0), atol=1e-5
    )
    assert sample_points(f0, uv0).shape == (2, 16, 64)


def test_no_overlap_gives_finite_loss_and_skips_images() -> None:
    torch.manual_seed(0)
    m = DenseContrast(
        create_backbone("vit_test", bands=2, img_size=32),
        proj_hidden_dim=32,
        proj_dim=16,
        grid_size=3,
    )
    x = torch.randn(2, 2, 32, 32)
    zeros = torch.zeros(2, dtype=torch.long)
    left = torch.tensor([[0.0, 0.0, 16.0, 32.0]]).repeat(2, 1)
    right = torch.tensor([[16.0, 0.0, 32.0, 32.0]]).repeat(2, 1)
    views = Views([x, x], boxes=[left, right], flips=[zeros.bool()] * 2, rot90=[zeros] * 2)
    out = m.forward_loss(views, {})
    assert torch.isfinite(out["loss"]) and out["loss"].item() == 0.0
    assert out["overlap"].item() == 0.0
    out["loss"].backward()  # still connected to the graph
    mixed = Views(
        [x, x],
        boxes=[left, torch.stack([right[0], left[1]])],
        flips=[zeros.bool()] * 2,
        rot90=[zeros] * 2,
    )
    out = m.forward_loss(mixed, {})
    assert out["overlap"].item() == 0.5 and torch.isfinite(out["loss"]) and out["loss"] > 0


@pytest.mark.parametrize(
    ("name", "bands", "level"), [("vit_test", 2, -1), ("resnet_test", 13, 1), ("swin_test", 13, -1)]
)
def test_forward_backward_and_ema_gets_no_gradient(name: str, bands: int, level: int) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name, bands=bands, img_size=32)
    m = create_method(
        "dense", bb, feature_level=level, proj_hidden_dim=32, proj_dim=16, grid_size=4
    )
    assert isinstance(m, DenseContrast)
    x = torch.randn(4, bands, 32, 32)
    out = m.forward_loss(make_views(x, 2, scale=(0.5, 1.0)), {"image": x})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in m.momentum_backbone.parameters())
    assert any(p.grad is not None for p in m.backbone.parameters())
    if level == -1:  # every parameter takes part (DDP-safe); earlier levels skip later blocks
        assert unused_parameters(m) == []
    before = [p.clone() for p in m.momentum_projector.parameters()]
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    m.on_step_end(5, 10)
    assert all(not torch.equal(a, b) for a, b in zip(before, m.momentum_projector.parameters()))


def test_needs_boxes() -> None:
    m = DenseContrast(create_backbone("vit_test", bands=2, img_size=32))
    x = torch.randn(2, 2, 32, 32)
    with pytest.raises(Exception, match="crop boxes"):
        m.forward_loss(Views([x, x]), {})


def test_loss_falls(image_set: ImageSet) -> None:
    kw: dict[str, Any] = {"proj_hidden_dim": 64, "proj_dim": 32, "grid_size": 4}
    m = DenseContrast(create_backbone("vit_test", bands=13, img_size=32), **kw)
    losses = train_losses(m, image_set.bands(13), steps=50, lr=2e-3, scale=(0.5, 1.0))
    assert_loss_falls(losses)


def test_matches_the_geometry_of_eofm_augment() -> None:
    """The engine's augmentations (when present) record boxes/flips/turns the same way."""
    multiview = pytest.importorskip("eofm.augment.multiview")
    from eofm.methods.base import ViewSpec

    img = coordinate_image(64, 64).repeat(16, 1, 1, 1)
    cfg = multiview.AugmentConfig(
        band_jitter_p=0.0, rgb_jitter_p=0.0, rgb_grayscale_p=0.0, blur_p=[0.0], band_dropout_p=0.0
    )
    aug = multiview.MultiViewAugment(("band_0", "band_1"), cfg)
    views = aug(img, ViewSpec(global_views=2, global_size=48, crop_scale=(0.3, 1.0)), seed=3)
    m = DenseContrast(create_backbone("vit_test", bands=2, img_size=48), grid_size=4).eval()
    uv0, uv1, valid = m.matched_points(views)
    assert valid.sum() >= 8
    inter, _ = box_overlap(views.boxes[0], views.boxes[1], m.min_overlap)
    ground = grid_points(inter, 4)
    for uv, view in ((uv0, views.images[0]), (uv1, views.images[1])):
        assert torch.allclose(sample_points(view, uv)[valid], ground[valid], atol=1e-3)
