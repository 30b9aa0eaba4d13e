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
  the first of ``$EOFM_SHARED_DATA/<folder>``, the project's ``../shared/data/<folder>`` and
  the working folder's ``../shared/data/<folder>`` that exists, see :func:`named_set_root`);
- a DOTA-style folder (``images/`` + ``labelTxt/``) for detection.

Splits: a ``split`` column of the CSV is used where it exists (EuroSAT RGB's
``splits_seed42.csv``); named sets have fixed splits (Dubai: tiles 1-6 train, 7 val, 8 test;
EuroSAT-MS: the ``shrey160`` train/test folders); otherwise a seeded split, stratified by class
for single-label data (15 % val, 15 % test; sets under 30 samples: a third for test, no val).

The types and helpers live in their own modules and are re-exported here:
:mod:`eofm.evaluation.evaldata` (:class:`EvalData`, :class:`ArrayDataset`),
:mod:`eofm.evaluation.splits` (subsets, labels, fractions, splits) and
:mod:`eofm.evaluation.synthetic` (the generated arrays).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError, MissingLabelError
from eofm.evaluation.evaldata import (
    KINDS,
    Array,
    ArrayDataset,
    EvalData,
    default_cache_dir,
)
from eofm.evaluation.splits import (
    TINY,
    BatchSubset,
    base_dataset,
    dataset_labels,
    fraction_indices,
    limit,
    make_subset,
    split_indices,
    stratified_sample,
)
from eofm.evaluation.synthetic import (
    SYNTH_DEFAULTS,
    SYNTHETIC_KINDS,
    synthetic_arrays,
    synthetic_dataset,
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


def shared_data_roots() -> list[Path]:
    """Where named sets are looked for, in order: ``$EOFM_SHARED_DATA``, ``../shared/data`` of
    the project (the repository holding this source tree), ``../shared/data`` of the working
    folder."""
    roots = []
    env = os.environ.get("EOFM_SHARED_DATA")
    if env:
        roots.append(Path(env))
    project = Path(__file__).resolve().parents[3]  # src/eofm/evaluation/data.py -> the repo
    if (project / "pyproject.toml").is_file():
        roots.append(project.parent / "shared" / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    return list(dict.fromkeys(roots))


def shared_data_root() -> Path:
    """The first of :func:`shared_data_roots` that exists (else the first one)."""
    roots = shared_data_roots()
    return next((r for r in roots if r.is_dir()), roots[0])


def named_set_root(name: str) -> Path:
    """The folder of the named set ``name``: the first root of :func:`shared_data_roots` that
    holds it; :class:`DataError` naming every place looked in when none does."""
    tried = [root / SHARED_SETS[name] for root in shared_data_roots()]
    for path in tried:
        if path.exists():
            return path
    raise DataError(
        tried[0],
        f"{name}: data folder not found; looked in "
        + ", ".join(str(p) for p in tried)
        + " (set EOFM_SHARED_DATA to the folder holding it, or use name:ROOT)",
    )


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
    band_names: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> EvalData:
    """Open ``spec`` for a protocol that needs labels of ``kind`` (see :data:`KINDS`).

    ``kind="classification"`` accepts single- and multi-label data. Raises
    :class:`MissingLabelError` when the data has no labels of that kind. ``band_names``: the
    files' own band order, when they do not name their bands; ``skip_bad``: leave unreadable
    files and incomplete samples out (counted in :meth:`EvalData.skipped`) instead of stopping.
    Both apply to folders and files (not to named or synthetic sets).
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
        data = _dota(Path(text), kind, bands=bands, seed=seed, **_open_kw(band_names, skip_bad))
    else:
        data = _generic(text, kind, bands=bands, seed=seed, **_open_kw(band_names, skip_bad))
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


def _open_kw(band_names: Sequence[str] | None, skip_bad: bool) -> dict[str, Any]:
    """Dataset keywords for ``band_names`` and ``skip_bad`` (only those that are set)."""
    kw: dict[str, Any] = {}
    if band_names:
        kw["band_names"] = list(band_names)
    if skip_bad:
        kw["on_error"] = "skip"
    return kw


def _generic(
    spec: str, kind: str, *, bands: Sequence[str] | None, seed: int, **open_kw: Any
) -> EvalData:
    from eofm.data.catalog import open_dataset

    kwargs: dict[str, Any] = dict(open_kw)
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
    root = Path(root_text) if root_text else named_set_root(name)
    if not root.exists():
        raise DataError(root, f"{name}: data folder not found")
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


def _dota(
    root: Path, kind: str, *, bands: Sequence[str] | None, seed: int, **open_kw: Any
) -> EvalData:
    from eofm.evaluation.dota import DotaDataset

    _need("detection", kind, str(root), " (DOTA folder)")
    ds = DotaDataset(root, bands=bands, **open_kw)
    data = _split_generic(ds, str(root), "detection", seed)
    data.class_names = ds.class_names
    return data


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
    n_default, size_default = SYNTH_DEFAULTS[sk]
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
        arrays = synthetic_arrays("landcover", n, size, seed, folder, progress)
        ds = synthetic_dataset("landcover", "multilabel", arrays, spec)
    else:
        arrays = synthetic_arrays(sk, n, size, seed, folder, progress)
        ds = synthetic_dataset(sk, kind, arrays, spec)
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


__all__ = [
    "DUBAI_SPLIT",
    "KINDS",
    "SHARED_SETS",
    "SYNTHETIC_KINDS",
    "TINY",
    "Array",
    "ArrayDataset",
    "BatchSubset",
    "EvalData",
    "base_dataset",
    "dataset_labels",
    "default_cache_dir",
    "fraction_indices",
    "limit",
    "make_subset",
    "named_set_root",
    "resolve_data",
    "shared_data_root",
    "shared_data_roots",
    "split_indices",
    "stratified_sample",
]
