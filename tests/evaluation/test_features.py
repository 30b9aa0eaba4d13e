"""Feature extraction: cache hits without recomputation, resuming, band selection by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eofm.data.stats import Normalizer
from eofm.evaluation.data import ArrayDataset, EvalData, make_subset
from eofm.evaluation.features import (
    Preprocess,
    extract_features,
    feature_cache_key,
    make_preprocess,
)
from eofm.evaluation.models import resolve_model

BANDS = ("B02", "B03", "B04", "B08")


def small_set(n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 3000, (n, 4, 16, 16)).astype(np.float32)
    return ArrayDataset(images, BANDS, labels=rng.integers(0, 3, n), sensor="sentinel2_l1c")


def identity_pre(bands: tuple[str, ...]) -> Preprocess:
    return Preprocess(None, Normalizer([0.0] * len(bands), [1000.0] * len(bands), bands=bands))


class Counting(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Counts reads and can fail after a number of them (an interrupted run)."""

    def __init__(self, inner: ArrayDataset, fail_after: int | None = None) -> None:
        self.inner = inner
        self.reads = 0
        self.fail_after = fail_after
        self.bands = inner.bands

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.reads += 1
        return self.inner[i]


def test_cache_hit_skips_model_and_data(tmp_path: Path) -> None:
    ds = small_set()
    model = resolve_model("random:vit_test", bands=BANDS, img_size=16)
    pre = identity_pre(BANDS)
    first = extract_features(
        model, ds, pre, cache_dir=tmp_path, cache_key="k1", batch_size=8, progress=False
    )
    assert not first.cached and first.features.shape == (40, 64)
    assert (tmp_path / "features" / "k1.npy").exists()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model must not run on a cache hit")

    model.backbone.forward = boom  # type: ignore[method-assign]
    counting = Counting(ds)
    second = extract_features(
        model, counting, pre, cache_dir=tmp_path, cache_key="k1", progress=False
    )
    assert second.cached
    assert counting.reads <= 1  # at most one sample to see which field holds the labels
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_interrupted_extraction_resumes(tmp_path: Path) -> None:
    ds = small_set()
    model = resolve_model("random:vit_test", bands=BANDS, img_size=16)
    pre = identity_pre(BANDS)
    full = extract_features(model, ds, pre, batch_size=8, progress=False)
    broken = Counting(ds, fail_after=25)
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            model,
            broken,
            pre,
            cache_dir=tmp_path,
            cache_key="r",
            batch_size=8,
            checkpoint_every=8,
            progress=False,
        )
    assert (tmp_path / "features" / "r.partial.json").exists()
    resumed = Counting(ds)
    out = extract_features(
        model, resumed, pre, cache_dir=tmp_path, cache_key="r", batch_size=8, progress=False
    )
    assert resumed.reads < 40 - 8  # started after the saved checkpoint
    np.testing.assert_allclose(out.features, full.features, atol=1e-5)
    np.testing.assert_array_equal(out.labels, full.labels)
    assert not (tmp_path / "features" / "r.partial.json").exists()


def test_preprocess_selects_model_bands_by_name(tmp_path: Path) -> None:
    ds = small_set()
    data = EvalData(
        "arrays", "classification", ds, ds, None, BANDS, sensor="sentinel2_l1c", key="x"
    )
    model = resolve_model(
        "random:vit_test", bands=("red", "green", "blue"), img_size=16, sensor="sentinel2_l1c"
    )
    pre = make_preprocess(model, data, tmp_path, size=16)
    assert pre.band_index == [2, 1, 0]  # B04, B03, B02
    batch = torch.from_numpy(ds.images[:2])
    out = pre(batch)
    assert out.shape == (2, 3, 16, 16)
    card_mean = pre.normalizer.mean
    assert torch.allclose(out.mean(), torch.tensor(0.0), atol=0.3)
    assert card_mean.shape == (3,)


def test_cache_key_changes_with_split_and_model() -> None:
    model_a = resolve_model("random:vit_test", bands=BANDS, img_size=16, seed=0)
    model_b = resolve_model("random:vit_test", bands=BANDS, img_size=16, seed=1)
    pre = identity_pre(BANDS)
    keys = {
        feature_cache_key(model_a, "d", "train", pre),
        feature_cache_key(model_a, "d", "test", pre),
        feature_cache_key(model_b, "d", "train", pre),
        feature_cache_key(model_a, "e", "train", pre),
    }
    assert len(keys) == 4


def test_subset_keeps_fast_batches() -> None:
    ds = small_set()
    sub = make_subset(ds, [3, 1, 7])
    batch = sub.get_batch([0, 2])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(batch["image"].numpy(), ds.images[[3, 7]])
