"""Open a dataset from a path, a glob or a torchgeo name, recognising the usual layouts.

``open_dataset`` is what the CLI uses; in code, constructing a dataset class directly is
equally fine. Recognised (in this order):

- ``torchgeo:<ClassName>:<root>``: a torchgeo dataset by class name;
- a folder with ``index.json``: eofm shards;
- a folder written by ``eofm data synth`` (``labels.csv`` + ``classes.json``);
- BigEarthNet patch folders; Sen1Floods11 (``S1``/``S2``/``Labels``); the Dubai tiles;
- ``A``/``B``/``label`` folders: change detection; ``images``/``masks`` folders: segmentation;
- a CSV with ``path``/``label`` columns (classification) or one column per class (multi-label),
  a folder holding one such CSV (EuroSAT's ``splits_seed42.csv``), a JSON of multi-labels;
- class sub-folders: classification; any other folder or glob: an unlabelled pool.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from eofm.data.datasets import (
    BigEarthNet,
    ChangeDetectionDataset,
    ClassificationCSV,
    ClassificationFolder,
    MultiLabelCSV,
    MultiLabelJSON,
    SegmentationDataset,
    Sen1Floods11,
    TorchGeoDataset,
    UnlabelledPool,
    dubai_segmentation,
)
from eofm.data.readers import RASTER_SUFFIXES
from eofm.data.sample import Sample
from eofm.errors import DataError

Task = Literal["auto", "classification", "multilabel", "segmentation", "change", "unlabelled"]


def _csv_columns(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in RASTER_SUFFIXES for p in folder.iterdir() if p.is_file())


def _open_synthetic(root: Path, task: Task, **kwargs: Any) -> Dataset[Sample]:
    meta = json.loads((root / "classes.json").read_text())
    classes = list(meta["classes"])
    csv_path = root / "labels.csv"
    cols = _csv_columns(csv_path)
    image_col = next((c for c in ("s2", "s1", "image") if c in cols), "image")
    modality = kwargs.pop("modality", None)
    if modality:
        if modality not in cols:
            raise DataError(csv_path, f"no {modality!r} column; columns are {cols}")
        image_col = modality
    if task == "segmentation":
        if "mask" not in cols:
            raise DataError(csv_path, "this synthetic set has no masks")
        return SegmentationDataset.from_csv(
            csv_path, image_column=image_col, mask_column="mask", classes=classes, **kwargs
        )
    if task == "multilabel":
        threshold = kwargs.pop("threshold", 0.05)
        return MultiLabelCSV(
            csv_path, path_column=image_col, label_columns=classes, threshold=threshold, **kwargs
        )
    return ClassificationCSV(
        csv_path, path_column=image_col, label_column="label", classes=classes, **kwargs
    )


def open_dataset(spec: str | Path, *, task: Task = "auto", **kwargs: Any) -> Dataset[Sample]:
    """A dataset for ``spec`` (see the module docstring); ``kwargs`` go to its class
    (``bands=``, ``band_names=``, ``sensor=``, ``transform=``, ``on_error=``, ``split=`` ...)."""
    text = str(spec)
    if text.startswith("torchgeo:"):
        parts = text.split(":", 2)
        if len(parts) != 3:
            raise DataError(None, f"{text!r}: expected torchgeo:<ClassName>:<root>")
        return TorchGeoDataset(parts[1], parts[2], **kwargs)
    path = Path(spec)
    if any(ch in text for ch in "*?[") and not path.exists():
        return UnlabelledPool(text, **kwargs)
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _open_csv(path, task, **kwargs)
        if path.suffix.lower() == ".json":
            return MultiLabelJSON(path, **kwargs)
        return UnlabelledPool([path], **kwargs)
    if (path / "index.json").exists():
        from eofm.data.shards import ShardDataset

        return ShardDataset(path, **kwargs)
    if (path / "labels.csv").exists() and (path / "classes.json").exists():
        return _open_synthetic(path, task, **kwargs)
    subdirs = sorted(d for d in path.iterdir() if d.is_dir())
    names = {d.name for d in subdirs}
    if subdirs and all(any(d.glob("*_labels_metadata.json")) for d in subdirs[:3]):
        s1 = any("_VV.tif" in f.name for f in subdirs[0].iterdir())
        return BigEarthNet(path, modality="s1" if s1 else "s2", **kwargs)
    if {"S1", "Labels"} <= names:
        return Sen1Floods11(path, **kwargs)
    tiles = list(path.glob("Tile */images")) or list(path.glob("*/Tile */images"))
    if tiles:
        return dubai_segmentation(tiles[0].parent.parent, **kwargs)
    if {"A", "B", "label"} <= names:
        return ChangeDetectionDataset(path, **kwargs)
    if {"images", "masks"} <= names:
        return SegmentationDataset(path / "images", path / "masks", **kwargs)
    csvs = sorted(path.glob("*.csv"))
    if task in ("auto", "classification", "multilabel") and len(csvs) == 1:
        return _open_csv(csvs[0], task, **kwargs)
    if task == "unlabelled" or _has_images(path):
        return UnlabelledPool(path, **kwargs)
    if subdirs and any(_has_images(d) for d in subdirs):
        return ClassificationFolder(path, **kwargs)
    if len(subdirs) == 1:  # e.g. EuroSAT's single "2750" folder
        return open_dataset(subdirs[0], task=task, **kwargs)
    raise DataError(
        path, "layout not recognised", "see `eofm data inspect --help` for the layouts eofm reads"
    )


def _open_csv(path: Path, task: Task, **kwargs: Any) -> Dataset[Sample]:
    cols = _csv_columns(path)
    path_col = next((c for c in ("path", "filename", "file", "image") if c in cols), cols[0])
    if task != "multilabel" and "label" in cols:
        return ClassificationCSV(path, path_column=path_col, **kwargs)
    if "labels" in cols:
        return MultiLabelCSV(path, path_column=path_col, labels_column="labels", **kwargs)
    return MultiLabelCSV(path, path_column=path_col, **kwargs)
