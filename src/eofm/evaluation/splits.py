"""Labels and splits: subsets that keep ``get_batch``, the labels of a dataset, label-fraction,
stratified and seeded train / val / test indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError
from eofm.evaluation.evaldata import Array, ArrayDataset

TINY = 30


class BatchSubset(Subset[Sample]):
    """A ``Subset`` that keeps the fast ``get_batch`` of the dataset it wraps."""

    def get_batch(self, indices: Sequence[int] | Array) -> dict[str, Any]:
        inner, idx = base_dataset(self)
        batch: dict[str, Any] = inner.get_batch(idx[np.asarray(indices, dtype=np.int64)])  # type: ignore[attr-defined]
        return batch


def make_subset(ds: Dataset[Sample], indices: Sequence[int] | Array) -> Subset[Sample]:
    """``Subset(ds, indices)``, keeping ``get_batch`` where ``ds`` has it."""
    idx = [int(i) for i in indices]
    inner, _ = base_dataset(ds)
    return BatchSubset(ds, idx) if hasattr(inner, "get_batch") else Subset(ds, idx)


def base_dataset(ds: Dataset[Sample]) -> tuple[Dataset[Sample], Array]:
    """The innermost dataset under ``Subset`` wrappers and the indices into it."""
    idx: Array | None = None
    while isinstance(ds, Subset):
        sub = np.asarray(ds.indices, dtype=np.int64)
        idx = sub if idx is None else sub[idx]
        ds = ds.dataset
    if idx is None:
        idx = np.arange(len(ds))  # type: ignore[arg-type]
    return ds, idx


def dataset_labels(ds: Dataset[Sample], *, read_limit: int = 20000) -> Array | None:
    """Labels of every sample (int class indices or multi-hot rows) without reading images
    where the dataset allows it; ``None`` when the dataset has no labels."""
    inner, idx = base_dataset(ds)
    if isinstance(inner, ArrayDataset):
        return None if inner.labels is None else np.asarray(inner.labels)[idx]
    records = getattr(inner, "records", None)
    if records and isinstance(records[0], tuple) and len(records[0]) == 2:
        second = records[0][1]
        if isinstance(second, (int, np.integer)):
            return np.asarray([records[i][1] for i in idx], dtype=np.int64)
        if isinstance(second, np.ndarray):
            return np.stack([records[i][1] for i in idx]).astype(np.float32)
    store = getattr(inner, "_store", None)
    if store is not None:
        if store.label_kind == "none":
            return None
        parts = [np.asarray(store.arrays(s)["labels"]) for s in range(len(store.counts))]
        return np.concatenate(parts)[idx]
    if len(idx) > read_limit:
        return None
    labels = []
    for i in range(len(ds)):  # type: ignore[arg-type]
        sample = ds[i]
        if "label" not in sample:
            return None
        labels.append(np.asarray(sample["label"]))
    return np.stack(labels)


def fraction_indices(
    labels: Array, fraction: float, seed: int, *, multilabel: bool | None = None
) -> Array:
    """A stratified subset holding ``fraction`` of the samples, sorted.

    Single-label: ``max(1, round(fraction * n_c))`` samples of every class ``c`` (so every class
    is present). Multi-label: ``max(1, round(fraction * N))`` samples, starting with one
    positive of each class (rarest first), then random ones.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    multi = labels.ndim == 2 if multilabel is None else multilabel
    if not multi:
        out = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            k = min(len(members), max(1, round(fraction * len(members))))
            out.append(rng.choice(members, size=k, replace=False))
        return np.sort(np.concatenate(out))
    n = len(labels)
    size = max(1, round(fraction * n))
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    counts = labels.sum(0)
    for c in np.argsort(counts):
        if counts[c] == 0 or len(chosen) >= size or labels[taken, c].any():
            continue
        members = np.flatnonzero((labels[:, c] > 0) & ~taken)
        pick = int(rng.choice(members))
        chosen.append(pick)
        taken[pick] = True
    rest = np.flatnonzero(~taken)
    extra = rng.choice(rest, size=max(0, size - len(chosen)), replace=False)
    return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), extra]).astype(np.int64))


def stratified_sample(labels: Array, size: int, seed: int) -> Array:
    """Exactly ``size`` indices, sorted, with classes in proportion (largest remainders; every
    class gets one first when ``size`` allows)."""
    lab = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(lab, return_counts=True)
    size = min(size, len(lab))
    quota = np.floor(size * counts / len(lab)).astype(np.int64)
    if size >= len(classes):
        quota = np.maximum(quota, 1)
    while quota.sum() > size:  # the minimum of one pushed us over: trim the largest
        quota[np.argmax(quota)] -= 1
    remainder = size * counts / len(lab) - quota
    for c in np.argsort(-remainder, kind="stable"):
        if quota.sum() >= size:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
    out = [
        rng.choice(np.flatnonzero(lab == c), size=q, replace=False) for c, q in zip(classes, quota)
    ]
    return np.sort(np.concatenate(out)).astype(np.int64)


def split_indices(
    n: int,
    labels: Array | None,
    *,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> tuple[Array, Array | None, Array]:
    """Seeded train/val/test indices; stratified by class for single-label ``labels``.

    Sets under 30 samples get a third for test and no validation split.
    """
    rng = np.random.default_rng(seed)
    if n < 2:
        raise DataError(None, f"cannot split {n} sample(s) into train and test")
    if n < TINY:
        perm = rng.permutation(n)
        k = max(1, round(n / 3))
        return np.sort(perm[k:]), None, np.sort(perm[:k])
    groups: list[Array]
    if labels is not None and np.asarray(labels).ndim == 1:
        lab = np.asarray(labels)
        groups = [rng.permutation(np.flatnonzero(lab == c)) for c in np.unique(lab)]
    else:
        groups = [rng.permutation(n)]
    train, val, test = [], [], []
    for g in groups:
        n_test = round(test_fraction * len(g))
        n_val = round(val_fraction * len(g))
        if len(g) - n_test - n_val < 1:
            n_test, n_val = min(n_test, len(g) - 1), 0
        test.append(g[:n_test])
        val.append(g[n_test : n_test + n_val])
        train.append(g[n_test + n_val :])
    cat = [np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, test)]
    return cat[0], (cat[1] if len(cat[1]) else None), cat[2]


def limit(ds: Dataset[Sample], size: int | None, seed: int) -> Dataset[Sample]:
    """At most ``size`` samples of ``ds`` (stratified when labels are single-label)."""
    n = len(ds)  # type: ignore[arg-type]
    if size is None or n <= size:
        return ds
    labels = dataset_labels(ds)
    if labels is not None and labels.ndim == 1:
        idx = stratified_sample(labels, size, seed)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return make_subset(ds, idx)
