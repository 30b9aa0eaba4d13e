"""Data specs for evaluation: datasets with train / val / test splits and what they hold.

:func:`resolve_data` accepts anything :func:`eofm.data.catalog.open_dataset` reads, plus:

- ``synthetic[:<kind>[:<n>[:<size>]]]``: a small generated set cached under the cache folder;
  kinds ``landcover`` (Sentinel-2, classes, masks, class fractions), ``multilabel`` (the
  same scenes with multi-hot labels: classes covering at least 5 % of the scene),
  ``wavemode`` (Wave Mode imagettes, classes, Hs and wind speed), ``change`` (bi-temporal
  land-cover pairs with a change mask), ``ndvi`` (Sentinel-1 VV/VH in, NDVI map out: pixel
  regression) and ``detection`` (DOTA-style folder of rotated objects);
- named real sets ``eurosat-rgb``, ``eurosat-ms``, ``dubai``, ``bigearthnet-s2``,
  ``bigearthnet-s1``, ``wavemode`` (optionally ``name:<root>``; the default root is
  ``$EOFM_SHARED_DATA/<folder>`` or ``../shared/data/<folder>``);
- a DOTA-style folder (``images/`` + ``labelTxt/``) for detection.

Splits: a ``split`` column of the CSV is used where it exists (EuroSAT RGB's
``splits_seed42.csv``); named sets have fixed splits (Dubai: tiles 1-6 train, 7 val, 8 test;
EuroSAT-MS: the ``shrey160`` train/test folders); otherwise a seeded split, stratified by class
for single-label data (15 % val, 15 % test; sets under 30 samples: a third for test, no val).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Subset

from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError, MissingLabelError

Array = npt.NDArray[Any]

#: Kinds of labels a dataset can provide to the protocols.
KINDS = (
    "classification",
    "multilabel",
    "segmentation",
    "change",
    "detection",
    "regression",
    "pixel_regression",
    "images",
)

#: Named real sets and their folders under the shared data root.
SHARED_SETS: dict[str, str] = {
    "eurosat-rgb": "eurosat_rgb",
    "eurosat-ms": "eurosat_ms_subset",
    "dubai": "dubai_aerial_semseg/Semantic segmentation dataset",
    "bigearthnet-s2": "bigearthnet_samples/BigEarthNet-S2-Example",
    "bigearthnet-s1": "bigearthnet_samples/BigEarthNet-S1-Example",
    "wavemode": "s1_wavemode_wvnet_samples",
}

#: Dubai tiles per split (fixed: the tiles are spatially separate areas).
DUBAI_SPLIT = {"train": (1, 2, 3, 4, 5, 6), "val": (7,), "test": (8,)}

SYNTHETIC_KINDS = ("landcover", "multilabel", "wavemode", "change", "ndvi", "detection")
_SYNTH_DEFAULTS = {
    "landcover": (600, 32),
    "multilabel": (600, 32),
    "wavemode": (400, 64),
    "change": (160, 64),
    "ndvi": (160, 64),
    "detection": (120, 96),
}
TINY = 30


def default_cache_dir() -> Path:
    """``$EOFM_CACHE_DIR`` or ``~/.cache/eofm``."""
    env = os.environ.get("EOFM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "eofm"


def shared_data_root() -> Path:
    """``$EOFM_SHARED_DATA`` or ``../shared/data`` (relative to the working directory)."""
    env = os.environ.get("EOFM_SHARED_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


class ArrayDataset(Dataset[Sample]):
    """Samples held in NumPy arrays (synthetic sets, tests); supports fast ``get_batch``."""

    def __init__(
        self,
        images: Array,
        bands: Sequence[str],
        *,
        labels: Array | None = None,
        masks: Array | None = None,
        targets: Array | None = None,
        images2: Array | None = None,
        class_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        sensor: str | None = None,
        name: str = "arrays",
    ) -> None:
        n = len(images)
        for what, arr in (("labels", labels), ("masks", masks), ("targets", targets)):
            if arr is not None and len(arr) != n:
                raise ConfigError(f"{len(arr)} {what} for {n} images")
        self.images = images
        self.images2 = images2
        self.labels = labels
        self.masks = masks
        self.targets = targets
        self.bands = tuple(bands)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.target_names = tuple(target_names) if target_names is not None else None
        self.sensor = sensor
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def _one(self, arr: Array, i: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arr[i])).to(dtype)

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        out: Sample = {
            "image": self._one(self.images, i, torch.float32),
            "bands": self.bands,
            "path": f"{self.name}[{i}]",
        }
        if self.images2 is not None:
            out["image2"] = self._one(self.images2, i, torch.float32)
        if self.labels is not None:
            lab = self.labels[i]
            out["label"] = torch.as_tensor(lab).to(
                torch.int64 if np.asarray(lab).ndim == 0 else torch.float32
            )
        if self.masks is not None:
            out["mask"] = self._one(self.masks, i, torch.int64)
        if self.targets is not None:
            out["target"] = self._one(self.targets, i, torch.float32)
        return out

    def get_batch(self, indices: Sequence[int] | Array) -> dict[str, Any]:
        """Stacked samples, like :func:`eofm.data.sample.collate_samples`."""
        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32)),
            "bands": self.bands,
        }
        if self.images2 is not None:
            out["image2"] = torch.from_numpy(np.asarray(self.images2[idx], dtype=np.float32))
        if self.labels is not None:
            lab = np.asarray(self.labels[idx])
            out["label"] = torch.from_numpy(
                lab.astype(np.int64) if lab.ndim == 1 else lab.astype(np.float32)
            )
        if self.masks is not None:
            out["mask"] = torch.from_numpy(np.asarray(self.masks[idx], dtype=np.int64))
        if self.targets is not None:
            out["target"] = torch.from_numpy(np.asarray(self.targets[idx], dtype=np.float32))
        out["path"] = [f"{self.name}[{i}]" for i in idx.tolist()]
        return out


@dataclass
class EvalData:
    """A dataset resolved for one protocol: splits, bands and what the labels are."""

    spec: str
    kind: str
    train: Dataset[Sample]
    test: Dataset[Sample]
    val: Dataset[Sample] | None
    bands: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    target_names: tuple[str, ...] | None = None
    sensor: str | None = None
    split_note: str = ""
    #: Stable text identifying data + splits + bands (feature and card caches key on it).
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def sizes(self) -> dict[str, int]:
        out = {"train": len(self.train), "test": len(self.test)}  # type: ignore[arg-type]
        if self.val is not None:
            out["val"] = len(self.val)  # type: ignore[arg-type]
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "bands": list(self.bands),
            "classes": list(self.class_names) if self.class_names else None,
            "targets": list(self.target_names) if self.target_names else None,
            "splits": self.sizes(),
            "split_note": self.split_note,
        }


# --------------------------------------------------------------------------------------------
# labels and splits


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


# --------------------------------------------------------------------------------------------
# resolution


def _task_for_catalog(kind: str) -> str:
    return {
        "multilabel": "multilabel",
        "segmentation": "segmentation",
        "change": "change",
        "classification": "auto",
    }.get(kind, "auto")


def _label_kind(ds: Dataset[Sample]) -> str | None:
    """What labels ``ds`` carries: classification, multilabel, segmentation, change, or None."""
    inner, _ = base_dataset(ds)
    if isinstance(inner, ArrayDataset):
        if inner.images2 is not None:
            return "change"
        if inner.masks is not None and inner.labels is None:
            return "segmentation"
        if inner.labels is not None:
            return "classification" if np.asarray(inner.labels).ndim == 1 else "multilabel"
        if inner.targets is not None:
            return "regression" if np.asarray(inner.targets).ndim <= 2 else "pixel_regression"
        return None
    from eofm.data.datasets import (
        ChangeDetectionDataset,
        ClassificationCSV,
        ClassificationFolder,
        SegmentationDataset,
        UnlabelledPool,
        _MultiLabelBase,
    )

    if isinstance(inner, ChangeDetectionDataset):
        return "change"
    if isinstance(inner, SegmentationDataset):
        return "segmentation"
    if isinstance(inner, (ClassificationCSV, ClassificationFolder)):
        return "classification"
    if isinstance(inner, _MultiLabelBase):
        return "multilabel"
    if isinstance(inner, UnlabelledPool):
        return None
    store = getattr(inner, "_store", None)
    if store is not None:
        if store.label_kind == "class":
            return "classification"
        if store.label_kind == "multilabel":
            return "multilabel"
        if store.index.get("has_masks"):
            return "segmentation"
        if store.index.get("has_targets"):
            shape = store.index.get("target_shape") or ()
            return "pixel_regression" if len(shape) >= 2 else "regression"
        return None
    sample = ds[0]
    if "image2" in sample:
        return "change"
    if "mask" in sample:
        return "segmentation"
    if "label" in sample:
        lab = sample["label"]
        return "multilabel" if getattr(lab, "ndim", 0) == 1 else "classification"
    return None


def _csv_split_column(ds: Dataset[Sample]) -> tuple[Path, list[str]] | None:
    path = getattr(ds, "csv_path", None)
    if path is None:
        return None
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "split" not in reader.fieldnames:
            return None
        values = sorted({row["split"] for row in reader})
    return Path(path), values


def _key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bands_of(ds: Dataset[Sample]) -> tuple[str, ...]:
    bands = getattr(ds, "bands", None)
    if bands:
        return tuple(bands)
    return tuple(ds[0]["bands"])


def _names_of(ds: Dataset[Sample]) -> tuple[str, ...] | None:
    inner, _ = base_dataset(ds)
    names = getattr(inner, "class_names", None)
    return tuple(names) if names else None


def resolve_data(
    spec: str | Path,
    kind: str,
    *,
    bands: Sequence[str] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    progress: bool = False,
) -> EvalData:
    """Open ``spec`` for a protocol that needs labels of ``kind`` (see :data:`KINDS`).

    ``kind="classification"`` accepts single- and multi-label data. Raises
    :class:`MissingLabelError` when the data has no labels of that kind.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; known: {', '.join(KINDS)}")
    text = str(spec)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    head = text.split(":", 1)[0].lower()
    if head == "synthetic":
        data = _synthetic(text, kind, bands=bands, seed=seed, cache=cache, progress=progress)
    elif head in SHARED_SETS and not Path(text).exists():
        data = _named(text, kind, bands=bands, seed=seed)
    elif _is_dota(Path(text)):
        data = _dota(Path(text), kind, bands=bands, seed=seed)
    else:
        data = _generic(text, kind, bands=bands, seed=seed)
    if max_train is not None or max_test is not None:
        data.train = limit(data.train, max_train, seed)
        data.test = limit(data.test, max_test, seed + 1)
        if data.val is not None:
            data.val = limit(data.val, max_test, seed + 2)
    data.key = _key(text, kind, data.bands, seed, data.sizes(), max_train, max_test)
    return data


def _need(found: str | None, kind: str, spec: str, what: str = "") -> str:
    """Check that labels of ``found`` kind serve ``kind``; return the effective kind."""
    if kind == "images":
        return "images"
    ok = {
        "classification": ("classification", "multilabel"),
        "multilabel": ("multilabel",),
        "segmentation": ("segmentation",),
        "change": ("change",),
        "regression": ("regression", "pixel_regression"),
        "pixel_regression": ("pixel_regression",),
        "detection": ("detection",),
    }[kind]
    if found not in ok:
        has = f"{found} labels" if found else "no labels"
        raise MissingLabelError(
            spec,
            f"this protocol needs {kind} labels, but the data has {has}{what}",
            "see `eofm evaluate --help` for the data each task needs",
        )
    return found


def _generic(spec: str, kind: str, *, bands: Sequence[str] | None, seed: int) -> EvalData:
    from eofm.data.catalog import open_dataset

    kwargs: dict[str, Any] = {}
    if bands:
        kwargs["bands"] = list(bands)
    ds = open_dataset(spec, task=_task_for_catalog(kind), **kwargs)  # type: ignore[arg-type]
    found = _label_kind(ds)
    eff = _need(found, kind, spec)
    split = _csv_split_column(ds)
    val: Dataset[Sample] | None
    if split is not None and "train" in split[1] and len(split[1]) > 1:
        from eofm.data.datasets import ClassificationCSV

        csv_path, values = split
        inner: Any = ds

        def part(value: str) -> Dataset[Sample]:
            return ClassificationCSV(
                csv_path,
                root=inner.root,
                split=value,
                classes=inner.class_names,
                **kwargs,
            )

        val_name = next((v for v in ("val", "valid", "validation") if v in values), None)
        test_name = "test" if "test" in values else val_name
        train = part("train")
        test = part(test_name) if test_name else part("train")
        val = part(val_name) if val_name and val_name != test_name else None
        note = f"split column of {csv_path.name}: train / {val_name} / {test_name}"
    else:
        n = len(ds)  # type: ignore[arg-type]
        labels = dataset_labels(ds) if eff in ("classification", "multilabel") else None
        tr, va, te = split_indices(n, labels, seed=seed)
        train, test = make_subset(ds, tr), make_subset(ds, te)
        val = make_subset(ds, va) if va is not None else None
        strat = "stratified " if labels is not None and labels.ndim == 1 else ""
        note = f"seeded {strat}split (seed {seed})" + (", no val (tiny set)" if va is None else "")
    return EvalData(
        spec=spec,
        kind=eff,
        train=train,
        test=test,
        val=val,
        bands=_bands_of(ds),
        class_names=_names_of(ds),
        sensor=getattr(base_dataset(ds)[0], "sensor", None),
        split_note=note,
    )


def _named(spec: str, kind: str, *, bands: Sequence[str] | None, seed: int) -> EvalData:
    name, _, root_text = spec.partition(":")
    name = name.lower()
    root = Path(root_text) if root_text else shared_data_root() / SHARED_SETS[name]
    if not root.exists():
        raise DataError(root, f"{name}: data folder not found (set EOFM_SHARED_DATA or name:ROOT)")
    if name == "eurosat-rgb":
        return _generic(str(root), kind, bands=bands, seed=seed)
    if name == "eurosat-ms":
        from eofm.data.datasets import EUROSAT_MS_BANDS, ClassificationFolder

        _need("classification", kind, spec)
        base = root / "shrey160" if (root / "shrey160").is_dir() else root
        kw: dict[str, Any] = {"band_names": EUROSAT_MS_BANDS, "sensor": "sentinel2_l1c"}
        if bands:
            kw["bands"] = list(bands)
        train = ClassificationFolder(base / "train", **kw)
        test = ClassificationFolder(base / "test", classes=train.class_names, **kw)
        return EvalData(
            spec=spec,
            kind="classification",
            train=train,
            test=test,
            val=None,
            bands=_bands_of(train),
            class_names=train.class_names,
            sensor="sentinel2_l1c",
            split_note="EuroSAT-MS subset: shrey160/train and shrey160/test folders",
        )
    if name == "dubai":
        from eofm.data.datasets import dubai_segmentation

        _need("segmentation", kind, spec)
        ds = dubai_segmentation(root, **({"bands": list(bands)} if bands else {}))
        tiles = []
        for img, _ in ds.records:
            m = re.search(r"Tile (\d+)", str(img))
            tiles.append(int(m.group(1)) if m else 0)
        parts = {k: [i for i, t in enumerate(tiles) if t in v] for k, v in DUBAI_SPLIT.items()}
        return EvalData(
            spec=spec,
            kind="segmentation",
            train=make_subset(ds, parts["train"]),
            val=make_subset(ds, parts["val"]),
            test=make_subset(ds, parts["test"]),
            bands=_bands_of(ds),
            class_names=ds.class_names,
            split_note="Dubai fixed tile split: tiles 1-6 train, 7 val, 8 test",
        )
    if name.startswith("bigearthnet"):
        from eofm.data.datasets import BigEarthNet

        _need("multilabel", "classification" if kind == "classification" else kind, spec)
        kw_b: dict[str, Any] = {"bands": list(bands)} if bands else {}
        ds_b = BigEarthNet(root, modality="s1" if name.endswith("s1") else "s2", **kw_b)
        data = _split_generic(ds_b, spec, "multilabel", seed)
        data.sensor = ds_b.sensor
        return data
    # wavemode
    return _generic(str(root), kind, bands=bands, seed=seed)


def _split_generic(ds: Dataset[Sample], spec: str, kind: str, seed: int) -> EvalData:
    labels = dataset_labels(ds) if kind in ("classification", "multilabel") else None
    tr, va, te = split_indices(len(ds), labels, seed=seed)  # type: ignore[arg-type]
    return EvalData(
        spec=spec,
        kind=kind,
        train=make_subset(ds, tr),
        test=make_subset(ds, te),
        val=make_subset(ds, va) if va is not None else None,
        bands=_bands_of(ds),
        class_names=_names_of(ds),
        target_names=getattr(base_dataset(ds)[0], "target_names", None),
        sensor=getattr(base_dataset(ds)[0], "sensor", None),
        split_note=f"seeded split (seed {seed})" + (", no val (tiny set)" if va is None else ""),
    )


def _is_dota(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "labelTxt").is_dir()


def _dota(root: Path, kind: str, *, bands: Sequence[str] | None, seed: int) -> EvalData:
    from eofm.evaluation.dota import DotaDataset

    _need("detection", kind, str(root), " (DOTA folder)")
    ds = DotaDataset(root, bands=bands)
    data = _split_generic(ds, str(root), "detection", seed)
    data.class_names = ds.class_names
    return data


# --------------------------------------------------------------------------------------------
# synthetic sets


def _synthetic(
    spec: str,
    kind: str,
    *,
    bands: Sequence[str] | None,
    seed: int,
    cache: Path,
    progress: bool,
) -> EvalData:
    parts = spec.split(":")
    default_kind = {
        "change": "change",
        "detection": "detection",
        "regression": "wavemode",
        "pixel_regression": "ndvi",
    }.get(kind, "landcover")
    sk = parts[1].lower() if len(parts) > 1 and parts[1] else default_kind
    if sk not in SYNTHETIC_KINDS:
        raise ConfigError(f"unknown synthetic kind {sk!r}; known: {', '.join(SYNTHETIC_KINDS)}")
    n_default, size_default = _SYNTH_DEFAULTS[sk]
    try:
        n = int(parts[2]) if len(parts) > 2 and parts[2] else n_default
        size = int(parts[3]) if len(parts) > 3 and parts[3] else size_default
    except ValueError as err:
        raise ConfigError(f"{spec!r}: expected synthetic:<kind>:<n>:<size> ({err})") from None
    folder = cache / "synthetic" / f"{sk}_n{n}_s{size}_seed{seed}"
    if sk == "detection":
        from eofm.evaluation.dota import write_synthetic_detection

        if not (folder / "done.json").exists():
            write_synthetic_detection(folder, n=n, size=size, seed=seed)
        return _dota(folder, kind, bands=bands, seed=seed)
    if sk == "multilabel":  # land cover with multi-hot labels (classes covering >= 5 %)
        folder = cache / "synthetic" / f"landcover_n{n}_s{size}_seed{seed}"
        arrays = _synthetic_arrays("landcover", n, size, seed, folder, progress)
        ds = _synthetic_dataset("landcover", "multilabel", arrays, spec)
    else:
        arrays = _synthetic_arrays(sk, n, size, seed, folder, progress)
        ds = _synthetic_dataset(sk, kind, arrays, spec)
    if bands:
        from eofm.data.sensors import match_bands

        idx = match_bands(list(bands), ds.bands, sensor=ds.sensor, path=spec)
        ds.images = ds.images[:, idx]
        if ds.images2 is not None:
            ds.images2 = ds.images2[:, idx]
        ds.bands = tuple(ds.bands[i] for i in idx)
    found = _label_kind(ds)
    eff = _need(found, kind, spec)
    data = _split_generic(ds, spec, eff, seed)
    data.class_names = ds.class_names
    data.target_names = ds.target_names
    data.extra["synthetic"] = {"kind": sk, "n": n, "size": size, "cache": str(folder)}
    return data


def _synthetic_arrays(
    sk: str, n: int, size: int, seed: int, folder: Path, progress: bool
) -> dict[str, Array]:
    path = folder / "arrays.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Array]
    if sk == "wavemode":
        from eofm.data.synthetic import generate_wavemode

        w = generate_wavemode(n, size, seed=seed, progress=progress)
        out = {
            "images": w.images.astype(np.float32),
            "labels": w.labels,
            "targets": np.stack([w.hs, w.wind_speed], 1).astype(np.float32),
        }
    else:
        from eofm.data.synthetic import generate_landcover

        sensors = ("s2", "s1") if sk == "ndvi" else ("s2",)
        pairs = sk == "change"
        s = generate_landcover(n * (2 if pairs else 1), size, seed=seed, sensors=sensors)
        assert s.s2 is not None
        if sk == "landcover":
            out = {
                "images": s.s2,
                "labels": s.labels,
                "masks": s.masks,
                "fractions": s.fractions,
                "multi_hot": s.multi_hot(),
            }
        elif sk == "ndvi":
            assert s.s1 is not None
            s2 = s.s2.astype(np.float32)
            from eofm.data.synthetic import S2_BANDS

            nir, red = s2[:, S2_BANDS.index("B08")], s2[:, S2_BANDS.index("B04")]
            ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
            out = {"images": s.s1.astype(np.float32), "targets": ndvi[:, None].astype(np.float32)}
        else:
            out = _make_change_pairs(s.s2, s.masks, n, seed)
    tmp = folder / "arrays.tmp.npz"
    np.savez(tmp, **out)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return out


def _make_change_pairs(s2: Array, masks: Array, n: int, seed: int) -> dict[str, Array]:
    """Pairs (scene i, scene i with blobs pasted from scene n + i); change = pasted pixels whose
    land-cover class differs. The second date gets a small radiometric gain."""
    rng = np.random.default_rng(seed + 7)
    size = s2.shape[-1]
    before = s2[:n].astype(np.float32)
    after = before.copy()
    change = np.zeros((n, size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        region = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 10, size / 4, 2)
            region |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        src = n + i
        after[i][:, region] = s2[src][:, region]
        change[i] = region & (masks[i] != masks[src])
        after[i] *= np.float32(rng.normal(1.0, 0.03))
    return {
        "images": before,
        "images2": after,
        "masks": change,
    }


def _synthetic_dataset(sk: str, kind: str, a: dict[str, Array], spec: str) -> ArrayDataset:
    from eofm.data.synthetic import CLASS_NAMES, S1_BANDS, S2_BANDS, WV_BANDS, WV_CLASS_NAMES

    name = spec
    if sk == "wavemode":
        if kind == "regression":
            return ArrayDataset(
                a["images"],
                WV_BANDS,
                targets=a["targets"],
                target_names=("hs", "wind_speed"),
                sensor="sentinel1_wv",
                name=name,
            )
        return ArrayDataset(
            a["images"],
            WV_BANDS,
            labels=a["labels"],
            class_names=WV_CLASS_NAMES,
            sensor="sentinel1_wv",
            name=name,
        )
    if sk == "ndvi":
        return ArrayDataset(
            a["images"],
            S1_BANDS,
            targets=a["targets"],
            target_names=("ndvi",),
            sensor="sentinel1_grd",
            name=name,
        )
    if sk == "change":
        return ArrayDataset(
            a["images"],
            S2_BANDS,
            images2=a["images2"],
            masks=a["masks"],
            class_names=("no_change", "change"),
            sensor="sentinel2_l1c",
            name=name,
        )
    common: dict[str, Any] = {"sensor": "sentinel2_l1c", "name": name}
    if kind == "segmentation":
        return ArrayDataset(
            a["images"], S2_BANDS, masks=a["masks"], class_names=CLASS_NAMES, **common
        )
    if kind == "multilabel":
        return ArrayDataset(
            a["images"], S2_BANDS, labels=a["multi_hot"], class_names=CLASS_NAMES, **common
        )
    if kind == "regression":
        return ArrayDataset(
            a["images"], S2_BANDS, targets=a["fractions"], target_names=CLASS_NAMES, **common
        )
    return ArrayDataset(
        a["images"], S2_BANDS, labels=a["labels"], class_names=CLASS_NAMES, **common
    )
