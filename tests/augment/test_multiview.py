"""MultiViewAugment: views for a ViewSpec, by sensor kind, reproducible from a seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eofm.augment import AugmentConfig, MultiViewAugment
from eofm.augment.ops import crop_resize
from eofm.errors import ConfigError
from eofm.methods.base import ViewSpec

S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NO_PHOTO = AugmentConfig(
    band_jitter_p=0,
    rgb_jitter_p=0,
    rgb_grayscale_p=0,
    speckle_p=0,
    sar_gain_p=0,
    blur_p=[0.0],
    local_blur_p=0,
)


def test_shapes_and_records_for_multi_crop() -> None:
    aug = MultiViewAugment(S2, sensor="sentinel2_l1c")
    x = torch.randn(4, 13, 48, 48)
    spec = ViewSpec(global_views=2, local_views=3, global_size=32, local_size=16)
    views = aug(x, spec, seed=0)
    assert views.num_global == 2 and len(views.images) == 5
    assert [tuple(v.shape) for v in views.images] == [(4, 13, 32, 32)] * 2 + [(4, 13, 16, 16)] * 3
    assert len(views.boxes) == len(views.flips) == len(views.rot90) == 5
    for box, flip, rot in zip(views.boxes, views.flips, views.rot90):
        assert box.shape == (4, 4) and flip.dtype == torch.bool and rot.dtype == torch.long
        assert (box[:, 2] > box[:, 0]).all() and (box[:, 2] <= 48).all()
    small = (views.boxes[2][:, 2] - views.boxes[2][:, 0]) * (
        views.boxes[2][:, 3] - views.boxes[2][:, 1]
    )
    assert (small <= 0.25 * 48 * 48 + 48).all()  # local crops use local_crop_scale


def test_same_seed_same_views_other_seed_other_views() -> None:
    aug = MultiViewAugment(S2)
    x = torch.randn(4, 13, 32, 32)
    spec = ViewSpec(local_views=2, local_size=16)
    a, b, c = aug(x, spec, seed=7), aug(x, spec, seed=7), aug(x, spec, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.images, b.images))
    assert all(torch.equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert not torch.equal(a.images[0], c.images[0])


def test_views_are_crops_of_their_recorded_boxes() -> None:
    aug = MultiViewAugment(S2, NO_PHOTO)
    x = torch.randn(6, 13, 40, 40)
    views = aug(x, ViewSpec(global_views=2, global_size=24), seed=3)
    for img, box, flip, rot in zip(views.images, views.boxes, views.flips, views.rot90):
        for i in range(6):
            x0, y0, x1, y1 = (int(v) for v in box[i])
            ref = F.interpolate(x[i : i + 1, :, y0:y1, x0:x1], size=(24, 24), mode="bilinear")
            if flip[i]:
                ref = ref.flip(-1)
            ref = torch.rot90(ref, int(rot[i]), dims=(-2, -1))
            torch.testing.assert_close(img[i : i + 1], ref, atol=1e-4, rtol=1e-4)
    assert any(f.any() for f in views.flips) and any((r > 0).any() for r in views.rot90)


def test_non_geometric_views_stay_aligned() -> None:
    aug = MultiViewAugment(S2, NO_PHOTO)
    x = torch.randn(3, 13, 32, 32)
    views = aug(x, ViewSpec(global_views=2, geometric=False), seed=0)
    assert all(torch.equal(v, x) for v in views.images)
    assert all((b == torch.tensor([0.0, 0.0, 32.0, 32.0])).all() for b in views.boxes)
    assert not any(f.any() for f in views.flips) and not any(r.any() for r in views.rot90)
    resized = aug(x, ViewSpec(global_views=1, geometric=False, global_size=16), seed=0)
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(3, 4)
    torch.testing.assert_close(resized.images[0], crop_resize(x, full, 16))


def test_rgb_jitter_only_on_rgb_bands() -> None:
    cfg = AugmentConfig(
        band_jitter_p=0, rgb_jitter_p=1.0, rgb_grayscale_p=0.5, blur_p=[0.0], flip_p=0, rot90=False
    )
    aug = MultiViewAugment(S2, cfg, sensor="sentinel2_l1c")
    assert aug.rgb == (3, 2, 1)
    x = torch.randn(8, 13, 16, 16)
    views = aug(x, ViewSpec(global_views=2, crop_scale=(1.0, 1.0)), seed=0)
    others = [i for i in range(13) if i not in (1, 2, 3)]
    for v in views.images:
        assert torch.equal(v[:, others], x[:, others])
        assert not torch.allclose(v[:, [1, 2, 3]], x[:, [1, 2, 3]])


def test_sar_views_get_speckle_not_colour() -> None:
    aug = MultiViewAugment(
        ("VV", "VH"), sensor="sentinel1_grd", mean=[-12.5, -20.2], std=[5.3, 5.9]
    )
    assert aug.kind == "sar" and aug.sar_scale == "db" and aug.rgb is None
    lin = MultiViewAugment(("VV",), sensor="sentinel1_wv")
    assert lin.kind == "sar" and lin.sar_scale == "linear"
    assert MultiViewAugment(("VV", "VH")).kind == "sar"  # polarisation names
    x = torch.randn(4, 2, 16, 16)
    views = aug(x, ViewSpec(global_views=2), seed=1)
    assert all(torch.isfinite(v).all() for v in views.images)


def test_band_dropout_in_views() -> None:
    cfg = AugmentConfig(band_dropout_p=0.5, band_jitter_p=0, rgb_jitter_p=0, blur_p=[0.0])
    aug = MultiViewAugment(S2, cfg)
    x = torch.randn(8, 13, 16, 16) + 3
    v = aug(x, ViewSpec(global_views=1), seed=0).images[0]
    zero_bands = (v == 0).flatten(2).all(-1)
    assert zero_bands.any() and not zero_bands.all(dim=1).any()


def test_bad_input_raises() -> None:
    aug = MultiViewAugment(S2)
    with pytest.raises(ConfigError, match="13"):
        aug(torch.randn(2, 3, 16, 16), ViewSpec())
    with pytest.raises(ConfigError, match="mean"):
        MultiViewAugment(("VV",), mean=[0.0, 1.0], std=[1.0])


def test_sar_scale_auto_reads_db_from_negative_means_without_a_sensor() -> None:
    from eofm.augment.multiview import sar_scale_of

    assert sar_scale_of(None, [-15.0, -22.0]) == "db"  # VV/VH in dB, no sensor recorded
    assert sar_scale_of(None, [0.05, 0.01]) == "linear"
    assert sar_scale_of("sentinel1_grd_linear", [-1.0]) == "linear"  # a named sensor decides
    assert sar_scale_of("sentinel1_grd", None) == "db"
