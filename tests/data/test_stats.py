"""Streaming band statistics, dataset cards and the normaliser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eofm.data.shards import ShardDataset, ShardWriter
from eofm.data.stats import (
    CARD_NAME,
    BandStats,
    DatasetCard,
    Normalizer,
    compute_stats,
    load_or_compute_card,
)
from eofm.errors import BandMismatchError, ConfigError, CorruptFileError, EmptyDatasetError
from tests.conftest import shared_subdir

QS = (1, 2, 50, 98, 99)


def _data(n: int = 40, seed: int = 0) -> np.ndarray:
    """(n, 3, 12, 10): a normal, a wide skewed and a nearly constant band."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10.0, 2.0, (n, 12, 10))
    b = rng.gamma(2.0, 300.0, (n, 12, 10))
    c = 5.0 + rng.normal(0, 1e-3, (n, 12, 10))
    return np.stack([a, b, c], axis=1).astype(np.float32)


def _flat(data: np.ndarray) -> np.ndarray:
    return np.moveaxis(data, 1, 0).reshape(data.shape[1], -1).astype(np.float64)


class _Batched:
    """A dataset with ``get_batch``, like ShardDataset, serving (B, C, H, W) chunks."""

    root = "memory"

    def __init__(self, data: np.ndarray, bands: tuple[str, ...]) -> None:
        self.data, self.bands = data, bands

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.from_numpy(self.data[i]), "bands": self.bands}

    def get_batch(self, idx: Any) -> dict[str, Any]:
        return {"image": torch.from_numpy(self.data[np.asarray(idx)]), "bands": self.bands}


@pytest.mark.parametrize("batch_size", [1, 3, 7, 40])
def test_streaming_moments_match_numpy(batch_size: int) -> None:
    data = _data()
    card = compute_stats(_Batched(data, ("a", "b", "c")), batch_size=batch_size, progress=False)
    flat = _flat(data)
    assert card.num_samples == 40 and card.bands == ("a", "b", "c")
    for i, name in enumerate(card.bands):
        s = card.stats[name]
        assert s.count == flat.shape[1]
        assert s.mean == pytest.approx(flat[i].mean(), rel=1e-6)
        assert s.std == pytest.approx(flat[i].std(), rel=1e-6)
        assert s.min == flat[i].min() and s.max == flat[i].max()
        assert s.nodata_fraction == 0.0


def test_iterable_of_arrays_and_chunking_agree() -> None:
    data = _data(n=12)
    one = compute_stats(iter(list(data)), bands=["a", "b", "c"], progress=False)
    tensors = compute_stats((torch.from_numpy(x) for x in data), progress=False)
    assert tensors.bands == ("band0", "band1", "band2")
    flat = _flat(data)
    for i, name in enumerate(one.bands):
        assert one.stats[name].mean == pytest.approx(flat[i].mean(), rel=1e-6)
        assert tensors.stats[f"band{i}"].std == pytest.approx(flat[i].std(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_within_one_bin(seed: int) -> None:
    data = _data(n=30, seed=seed)
    # First chunk narrow, later ones far outside on both sides: the histogram must grow.
    data[5, 0] -= 100.0
    data[20, 1] += 5e4
    card = compute_stats(iter(list(data)), bands=["a", "b", "c"], bins=512, progress=False)
    flat = _flat(data)
    for i, name in enumerate(card.bands):
        width = card.extra["bin_width"][name]
        assert width > 0
        for q in QS:
            exact = np.percentile(flat[i], q)
            assert abs(card.stats[name].percentile(q) - exact) <= width * 1.0001, (name, q)


def test_nan_inf_and_nodata_excluded_and_counted() -> None:
    data = _data(n=6).astype(np.float64)
    data[0, 0, 0, :4] = np.nan
    data[1, 0, 3, 3] = np.inf
    data[2, 1, :2, :] = -9999.0
    data[3, 2, 0, 0] = 0.0
    card = compute_stats(iter(list(data)), bands=["a", "b", "c"], nodata=[-9999, 0], progress=False)
    flat = _flat(data)
    total = flat.shape[1]
    a, b, c = card.stats["a"], card.stats["b"], card.stats["c"]
    assert (a.nonfinite_count, a.nodata_count, a.count) == (5, 0, total - 5)
    assert (b.nonfinite_count, b.nodata_count, b.count) == (0, 20, total - 20)
    assert (c.nonfinite_count, c.nodata_count, c.count) == (0, 1, total - 1)
    assert a.nodata_fraction == pytest.approx(5 / total)
    assert b.nodata_fraction == pytest.approx(20 / total)
    valid_a = flat[0][np.isfinite(flat[0])]
    valid_b = flat[1][flat[1] != -9999]
    assert a.mean == pytest.approx(valid_a.mean(), rel=1e-9)
    assert b.std == pytest.approx(valid_b.std(), rel=1e-9)
    assert b.min == valid_b.min() and np.isfinite(a.max)


def test_valid_mask_and_band_order_per_sample() -> None:
    data = _data(n=4)
    samples = []
    for i, img in enumerate(data):
        valid = np.ones(img.shape[1:], dtype=bool)
        valid[0, :] = False
        if i % 2:  # odd samples list their bands in another order
            samples.append({"image": img[[2, 0, 1]], "bands": ("c", "a", "b"), "valid": valid})
        else:
            samples.append({"image": img, "bands": ("a", "b", "c"), "valid": valid})
    card = compute_stats(samples, bands=["b", "a"], progress=False)
    assert card.bands == ("b", "a")
    kept = data[:, :, 1:, :]
    assert card.stats["a"].mean == pytest.approx(kept[:, 0].astype(np.float64).mean(), rel=1e-9)
    assert card.stats["b"].mean == pytest.approx(kept[:, 1].astype(np.float64).mean(), rel=1e-9)
    assert card.stats["a"].nodata_count == 4 * 10


def test_all_excluded_band_and_empty_input(tmp_path: Path) -> None:
    data = np.full((2, 2, 3, 3), np.nan, dtype=np.float32)
    data[:, 1] = 1.0
    card = compute_stats(iter(list(data)), bands=["x", "y"], progress=False)
    assert card.stats["x"].count == 0 and np.isnan(card.stats["x"].mean)
    assert card.stats["x"].nodata_fraction == 1.0
    assert card.stats["y"].std == 0.0 and card.stats["y"].percentile(50) == 1.0
    card.to_json(tmp_path / "c.json")  # NaN is written as null, read back as NaN
    back = DatasetCard.from_json(tmp_path / "c.json")
    assert np.isnan(back.stats["x"].mean) and back.stats["y"] == card.stats["y"]
    with pytest.raises(EmptyDatasetError):
        compute_stats(iter([]), progress=False)
    with pytest.raises(BandMismatchError):
        compute_stats(iter(list(data)), bands=["x"], progress=False)


def test_max_samples_uses_a_spread_subset() -> None:
    data = _data(n=20)
    data[10:, 0] += 1000.0  # a "class-sorted" dataset: the second half differs
    card = compute_stats(_Batched(data, ("a", "b", "c")), max_samples=8, progress=False)
    assert card.num_samples == 8 and card.extra["max_samples"] == 8
    assert 100 < card.stats["a"].mean < 950  # both halves were sampled
    first = compute_stats(iter(list(data)), bands=["a", "b", "c"], max_samples=3, progress=False)
    assert first.num_samples == 3


def test_card_json_round_trip_and_mean_std_by_name(tmp_path: Path) -> None:
    card = compute_stats(
        _Batched(_data(), ("B02", "B03", "B04")), sensor="sentinel2_l2a", progress=False
    )
    path = card.to_json(tmp_path / "sub" / "card.json")
    assert not list(path.parent.glob("*.tmp*"))
    back = DatasetCard.from_json(path)
    assert back == card
    assert isinstance(back.stats["B03"], BandStats) and back.sensor == "sentinel2_l2a"
    mean, std = back.mean_std(["B04", "B02"])
    assert mean.tolist() == [card.stats["B04"].mean, card.stats["B02"].mean]
    assert std.tolist() == [card.stats["B04"].std, card.stats["B02"].std]
    alias_mean, _ = back.mean_std(["red", "B2"])  # sensor names resolve
    assert alias_mean.tolist() == mean.tolist()
    lo, hi = back.percentile_range(["B03"])
    assert lo[0] == card.stats["B03"].percentile(2) and hi[0] == card.stats["B03"].percentile(98)
    with pytest.raises(BandMismatchError):
        back.mean_std(["B08"])
    path.write_text("{broken")
    with pytest.raises(CorruptFileError, match=r"card\.json"):
        DatasetCard.from_json(path)


class _Counting(_Batched):
    calls = 0

    def get_batch(self, idx: Any) -> dict[str, Any]:
        _Counting.calls += 1
        return super().get_batch(idx)


def test_load_or_compute_card_caches_and_refreshes(tmp_path: Path) -> None:
    ds = _Counting(_data(n=10), ("a", "b", "c"))
    card = load_or_compute_card(tmp_path, ds, progress=False)
    assert (tmp_path / CARD_NAME).is_file() and _Counting.calls == 1
    again = load_or_compute_card(tmp_path, ds, progress=False)
    assert _Counting.calls == 1 and again == card  # from the cache
    sub = load_or_compute_card(tmp_path, ds, bands=["c", "a"], progress=False)
    assert _Counting.calls == 2 and sub.bands == ("c", "a")  # stale: bands differ
    assert json.loads((tmp_path / CARD_NAME).read_text())["bands"] == ["c", "a"]
    load_or_compute_card(tmp_path, ds, bands=["c", "a"], nodata=0, progress=False)
    assert _Counting.calls == 3  # stale: nodata differs
    (tmp_path / CARD_NAME).write_text("garbage")
    load_or_compute_card(tmp_path, ds, progress=False)
    assert _Counting.calls == 4


def test_stats_over_shards(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 10000, (9, 3, 4, 4), dtype=np.uint16)
    with ShardWriter(tmp_path, ("B02", "B03", "B04"), sensor="s2", shard_size=4) as w:
        w.add_batch(data)
    card = compute_stats(ShardDataset(tmp_path), bands=["B04"], progress=False)
    assert card.sensor == "s2" and card.source == str(tmp_path)
    assert card.stats["B04"].mean == pytest.approx(data[:, 2].mean(), rel=1e-9)


# ---------------------------------------------------------------------------- Normalizer


def test_normalizer_zscore_from_card() -> None:
    data = _data()
    card = compute_stats(_Batched(data, ("a", "b", "c")), progress=False)
    norm = Normalizer.from_card(card, ["c", "a"])
    x = torch.from_numpy(data[:, [2, 0]])
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (out.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(norm(x[0]), out[0])  # (C, H, W) works too
    with pytest.raises(BandMismatchError):
        norm(torch.zeros(3, 4, 4))


def test_normalizer_nan_and_constant_band() -> None:
    norm = Normalizer([1.0, 5.0], [2.0, 0.0], bands=["x", "y"], nodata_fill=-3.0)
    x = torch.tensor([[[1.0, float("nan")]], [[5.0, 5.0]]])
    out = norm(x)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 1] == -3.0  # NaN filled after normalising
    assert torch.isfinite(out).all() and (out[1] == 0).all()  # std 0 is guarded


def test_normalizer_minmax_percentile_and_softcon() -> None:
    data = _data()
    card = compute_stats(_Batched(data, ("a", "b", "c")), progress=False)
    x = torch.from_numpy(data)
    mm = Normalizer.from_card(card, method="minmax_percentile")(x)
    assert mm.min() == 0.0 and mm.max() == 1.0
    frac_inside = ((mm > 0) & (mm < 1)).float().mean()
    assert 0.9 < frac_inside < 0.97  # p2..p98 maps into (0, 1)
    soft = Normalizer.from_card(card, ["b"], method="softcon")
    out = soft(x[:, 1:2])
    mean, std = card.mean_std(["b"])
    expected = ((x[:, 1:2].double() - (mean[0] - 2 * std[0])) / (4 * std[0])).clamp(0, 1)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    with pytest.raises(ConfigError):
        Normalizer([0.0], [1.0], bands=["a"], method="minmax_percentile")
    with pytest.raises(ConfigError):
        Normalizer([0.0], [1.0], bands=["a"], method="unknown")  # type: ignore[arg-type]


def test_normalize_sample_picks_bands_by_name() -> None:
    norm = Normalizer([1.0, 10.0], [1.0, 2.0], bands=["b", "a"])
    sample = {"image": torch.tensor([[[10.0]], [[1.0]], [[7.0]]]), "bands": ("a", "b", "c")}
    out = norm.normalize_sample(sample)
    assert out["bands"] == ("b", "a") and out["image"].flatten().tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_eurosat_rgb_stats_match_numpy(shared_data: Path) -> None:
    from PIL import Image

    root = shared_subdir(shared_data, "eurosat_rgb/2750")
    files = [p for d in sorted(root.iterdir()) for p in sorted(d.glob("*.jpg"))[:20]]
    images = [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in files]
    card = compute_stats(iter(images), bands=["red", "green", "blue"], progress=False)
    flat = np.concatenate([im.reshape(3, -1) for im in images], axis=1).astype(np.float64)
    for i, name in enumerate(card.bands):
        s = card.stats[name]
        assert s.mean == pytest.approx(flat[i].mean(), rel=1e-6)
        assert s.std == pytest.approx(flat[i].std(), rel=1e-6)
        width = card.extra["bin_width"][name]
        for q in QS:
            assert abs(s.percentile(q) - np.percentile(flat[i], q)) <= width * 1.0001


def test_requesting_the_datasets_own_bands_in_order() -> None:
    """Regression: asking for exactly the items' bands, in their order, used to fail."""
    import torch

    from eofm.data.stats import compute_stats

    items = [
        {"image": torch.full((2, 4, 4), float(i)), "bands": ("VV", "VH"), "path": f"{i}"}
        for i in range(3)
    ]
    card = compute_stats(items, bands=["VV", "VH"], progress=False)
    assert card.bands == ("VV", "VH")
    assert abs(card.stats["VH"].mean - 1.0) < 1e-9
