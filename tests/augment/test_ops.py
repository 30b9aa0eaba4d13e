"""Batched augmentation operations: geometry records, band handling, SAR speckle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eofm.augment import ops, source_to_view, view_to_source
from eofm.errors import ConfigError

S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_follow_scale_and_ratio() -> None:
    boxes = ops.random_resized_crop_boxes(500, 64, 48, (0.2, 0.6), (0.75, 4 / 3), generator=_gen())
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert torch.equal(boxes, boxes.round())  # integer pixel boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 64).all()
    area = w * h / (64 * 48)
    assert area.min() > 0.17 and area.max() < 0.64  # rounding moves the area a little
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    with pytest.raises(ConfigError, match="scale"):
        ops.random_resized_crop_boxes(2, 8, 8, (0.0, 1.0))


def test_crop_resize_equals_interpolate_of_box() -> None:
    x = torch.randn(6, 3, 40, 40)
    boxes = ops.random_resized_crop_boxes(6, 40, 40, (0.05, 1.0), generator=_gen(1))
    out = ops.crop_resize(x, boxes, 24)
    for i in range(6):
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        ref = F.interpolate(
            x[i : i + 1, :, y0:y1, x0:x1], size=(24, 24), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-4, rtol=1e-4)


def test_rot90_and_flip_match_torch() -> None:
    x = torch.randn(4, 2, 8, 8)
    k = torch.tensor([0, 1, 2, 3])
    out = ops.rot90(x, k)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    flip = torch.tensor([True, False, True, False])
    f = ops.hflip(x, flip)
    assert torch.equal(f[0], x[0].flip(-1)) and torch.equal(f[1], x[1])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_view_to_source_inverts_the_recorded_geometry(k: int, flip: bool) -> None:
    # A source image whose pixel value encodes its own coordinates.
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    src = torch.stack([xx, yy]).float()[None]  # (1, 2, H, W): channel 0 = col, 1 = row
    box = torch.tensor([[4.0, 6.0, 20.0, 22.0]])  # 16 x 16, same size as the view: no resampling
    view = ops.crop_resize(src, box, 16)
    view = ops.hflip(view, torch.tensor([flip]))
    view = ops.rot90(view, torch.tensor([k]))
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    pts = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5], dim=-1)[None].float()
    src_pts = view_to_source(pts, box, torch.tensor([flip]), torch.tensor([k]), 16)
    expected_col = view[0, 0].flatten() + 0.5
    expected_row = view[0, 1].flatten() + 0.5
    torch.testing.assert_close(src_pts[0, :, 0], expected_col)
    torch.testing.assert_close(src_pts[0, :, 1], expected_row)
    back = source_to_view(src_pts, box, torch.tensor([flip]), torch.tensor([k]), 16)
    torch.testing.assert_close(back, pts)


def test_rgb_indices_by_name() -> None:
    assert ops.rgb_indices(S2, "sentinel2_l1c") == (3, 2, 1)
    assert ops.rgb_indices(S2) == (3, 2, 1)  # sensor found from the band names
    assert ops.rgb_indices(("red", "green", "blue")) == (0, 1, 2)
    assert ops.rgb_indices(("blue", "nir", "red", "green")) == (2, 3, 0)
    assert ops.rgb_indices(("VV", "VH")) is None
    assert ops.rgb_indices(("B08", "B11")) is None


def test_color_jitter_never_touches_other_bands() -> None:
    x = torch.randn(16, 13, 16, 16)
    rgb = ops.rgb_indices(S2)
    assert rgb is not None
    out = ops.rgb_color_jitter(x, rgb, p=1.0, generator=_gen())
    others = [i for i in range(13) if i not in rgb]
    assert torch.equal(out[:, others], x[:, others])
    assert not torch.allclose(out[:, list(rgb)], x[:, list(rgb)])
    grey = ops.rgb_grayscale(x, rgb, 1.0, generator=_gen())
    assert torch.equal(grey[:, others], x[:, others])
    torch.testing.assert_close(grey[:, 3], grey[:, 1])


def test_band_jitter_is_per_band_and_respects_selection() -> None:
    x = torch.randn(8, 5, 16, 16)
    out = ops.band_jitter(x, 0.3, 0.3, 1.0, bands=[0, 2, 4], generator=_gen())
    assert torch.equal(out[:, [1, 3]], x[:, [1, 3]])
    gains = out[:, [0, 2, 4]].std(dim=(-2, -1)) / x[:, [0, 2, 4]].std(dim=(-2, -1))
    assert gains.min() >= 0.7 - 1e-4 and gains.max() <= 1.3 + 1e-4
    assert gains.std() > 0.01  # independent per band and image


def test_band_dropout_zeroes_whole_bands_and_keeps_one() -> None:
    x = torch.randn(64, 4, 8, 8) + 5
    out, dropped = ops.band_dropout(x, 0.5, generator=_gen())
    assert dropped.any() and not dropped.all(dim=1).any()
    for i in range(64):
        for c in range(4):
            if dropped[i, c]:
                assert (out[i, c] == 0).all()
            else:
                assert torch.equal(out[i, c], x[i, c])
    out1, dropped1 = ops.band_dropout(x[:, :1], 0.9, generator=_gen())
    assert not dropped1.any() and torch.equal(out1, x[:, :1])  # one band: nothing to drop


def test_speckle_preserves_mean_linear_intensity() -> None:
    torch.manual_seed(0)
    mean, std = torch.tensor([0.05, 0.01]), torch.tensor([0.02, 0.004])
    raw = torch.rand(64, 2, 32, 32) * 0.08 + 0.01  # linear backscatter
    x = (raw - mean.view(1, 2, 1, 1)) / std.view(1, 2, 1, 1)
    out = ops.sar_speckle(x, (2.0, 8.0), 1.0, mean=mean, std=std, generator=_gen())
    back = out * std.view(1, 2, 1, 1) + mean.view(1, 2, 1, 1)
    ratio = (back / raw).mean().item()
    assert ratio == pytest.approx(1.0, abs=0.01)
    assert (back / raw).var().item() > 0.1  # real multiplicative noise of few looks
    # dB data: 10 log10(gamma) is added; the mean in linear power is preserved
    db = 10 * torch.log10(raw)
    out_db = ops.sar_speckle(db, (2.0, 8.0), 1.0, scale="db", generator=_gen())
    lin = 10 ** (out_db / 10)
    assert (lin / raw).mean().item() == pytest.approx(1.0, abs=0.01)


def test_sar_gain_is_one_factor_for_all_polarisations() -> None:
    raw = torch.rand(16, 2, 8, 8) + 0.1
    out = ops.sar_gain(raw, 3.0, 1.0, generator=_gen())
    ratio = out / raw
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.min(1).values, per_image.max(1).values)
    assert per_image.max() <= 10**0.3 + 1e-5 and per_image.min() >= 10**-0.3 - 1e-5
    db = ops.sar_gain(10 * torch.log10(raw), 3.0, 1.0, scale="db", generator=_gen())
    torch.testing.assert_close(10 ** (db / 10), out, rtol=1e-4, atol=1e-6)


def test_blur_smooths_selected_images_only() -> None:
    x = torch.randn(8, 3, 32, 32)
    out = ops.gaussian_blur(x, (1.5, 2.0), 0.5, generator=_gen(3))
    changed = [not torch.equal(out[i], x[i]) for i in range(8)]
    assert any(changed) and not all(changed)
    i = changed.index(True)
    assert out[i].std() < x[i].std() * 0.7
    assert math.isfinite(out.sum().item())


def test_jitter_at_probability_zero_is_free_and_keeps_the_random_stream() -> None:
    x = torch.rand(4, 5, 8, 8)
    for fn in (
        lambda im, p, g: ops.band_jitter(im, 0.2, 0.2, p=p, generator=g),
        lambda im, p, g: ops.rgb_color_jitter(im, (2, 1, 0), p=p, generator=g),
    ):
        g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        assert fn(x, 0.0, g0) is x  # no work, not even a copy
        assert not torch.equal(fn(x, 1.0, g1), x)
        # both calls drew the same random numbers: later augmentations are unaffected by p
        assert torch.equal(torch.rand(3, generator=g0), torch.rand(3, generator=g1))
