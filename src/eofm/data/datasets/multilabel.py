"""Multi-label scene classification: :class:`MultiLabelCSV`, :class:`MultiLabelJSON` and
:class:`BigEarthNet` (one file per band, resampled to one grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from eofm.data.datasets.base import EODataset, _read_csv, _require_columns
from eofm.data.readers import (
    read_band_files,
    read_json,
)
from eofm.data.sample import Sample
from eofm.errors import DataError, EmptyDatasetError, MissingLabelError

#: The 43 CORINE land-cover classes of BigEarthNet v1.0, in their usual order.
BIGEARTHNET_CLASSES_43 = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock", "Sparsely vegetated areas",
    "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats",
    "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
)  # fmt: skip


class _MultiLabelBase(EODataset):
    """Records of (path, multi-hot vector) over :attr:`class_names`."""

    records: list[tuple[Path, np.ndarray]]

    def load(self, index: int) -> Sample:
        path, target = self.records[index]
        image, bands, valid = self.read_image(path)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.from_numpy(target.copy()),
            "path": str(path),
        }

    def _encode(self, source: Path, names_per_item: Sequence[Sequence[str]]) -> list[np.ndarray]:
        assert self.class_names is not None
        lookup = {c: i for i, c in enumerate(self.class_names)}
        out = []
        for names in names_per_item:
            vec = np.zeros(len(self.class_names), dtype=np.float32)
            for n in names:
                if n not in lookup:
                    raise DataError(source, f"label {n!r} is not among the classes")
                vec[lookup[n]] = 1.0
            out.append(vec)
        return out


class MultiLabelCSV(_MultiLabelBase):
    """Multi-label classification from a CSV: either one 0/1 (or fraction) column per class,
    or one column listing class names separated by ``separator``."""

    def __init__(
        self,
        csv_path: str | Path,
        *,
        root: str | Path | None = None,
        path_column: str = "path",
        label_columns: Sequence[str] | None = None,
        labels_column: str | None = None,
        separator: str = ";",
        threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        rows = _read_csv(self.csv_path)
        _require_columns(self.csv_path, rows, [path_column])
        if labels_column is not None:
            _require_columns(self.csv_path, rows, [labels_column])
            lists = [
                [s.strip() for s in r[labels_column].split(separator) if s.strip()] for r in rows
            ]
            self.class_names = tuple(sorted({n for names in lists for n in names}))
            vectors = self._encode(self.csv_path, lists)
        else:
            cols = (
                list(label_columns) if label_columns else [c for c in rows[0] if c != path_column]
            )
            _require_columns(self.csv_path, rows, cols)
            self.class_names = tuple(cols)
            vectors = []
            for line, r in enumerate(rows, start=2):
                try:
                    values = [float(r[c]) for c in cols]
                except (TypeError, ValueError):
                    raise MissingLabelError(
                        self.csv_path,
                        f"row {line} ({r[path_column]}) has a missing or non-numeric label value",
                    ) from None
                vectors.append((np.asarray(values) > threshold).astype(np.float32))
        self.records = [(self.root / r[path_column], v) for r, v in zip(rows, vectors)]


class MultiLabelJSON(_MultiLabelBase):
    """Multi-label classification from JSON: ``{"path": ["label", ...]}`` or a list of
    ``{"path": ..., "labels": [...]}`` records."""

    def __init__(
        self,
        json_path: str | Path,
        *,
        root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.json_path = Path(json_path)
        self.root = Path(root) if root is not None else self.json_path.parent
        data = read_json(self.json_path)
        if isinstance(data, dict):
            items = list(data.items())
        else:
            try:
                items = [(d["path"], d["labels"]) for d in data]
            except (KeyError, TypeError):
                raise DataError(
                    self.json_path,
                    "expected {path: [labels]} or a list of {'path', 'labels'} records",
                ) from None
        if not items:
            raise EmptyDatasetError(self.json_path, "no samples")
        self.class_names = (
            tuple(classes)
            if classes is not None
            else tuple(sorted({n for _, names in items for n in names}))
        )
        vectors = self._encode(self.json_path, [names for _, names in items])
        self.records = [(self.root / p, v) for (p, _), v in zip(items, vectors)]


class BigEarthNet(_MultiLabelBase):
    """BigEarthNet v1 patch folders: one GeoTIFF per band (10/20/60 m, resampled onto one
    120 x 120 grid) and a ``*_labels_metadata.json`` with the CORINE labels."""

    def __init__(
        self,
        root: str | Path,
        *,
        modality: Literal["s2", "s1"] = "s2",
        size: int = 120,
        classes: Sequence[str] = BIGEARTHNET_CLASSES_43,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sensor", "sentinel2_l2a" if modality == "s2" else "sentinel1_grd")
        super().__init__(**kwargs)
        self.root = Path(root)
        self.size = size
        self.class_names = tuple(classes)
        patches = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if not patches:
            raise EmptyDatasetError(self.root, "no BigEarthNet patch folders")
        self.patches: list[tuple[Path, dict[str, Path]]] = []
        label_lists = []
        for patch in patches:
            label_file = patch / f"{patch.name}_labels_metadata.json"
            if not label_file.exists():
                raise MissingLabelError(label_file, "label file is missing")
            meta = read_json(label_file)
            if "labels" not in meta:
                raise MissingLabelError(label_file, "has no 'labels' entry")
            label_lists.append(meta["labels"])
            files = {}
            for f in patch.glob(f"{patch.name}_*.tif"):
                files[f.stem[len(patch.name) + 1 :]] = f
            self.patches.append((label_file, files))
        vectors = self._encode(self.root, label_lists)
        self.records = [(p, v) for p, v in zip(patches, vectors)]

    def _drop(self, indices: Sequence[int]) -> None:
        drop = set(indices)
        self.patches = [p for i, p in enumerate(self.patches) if i not in drop]
        super()._drop(indices)

    def load(self, index: int) -> Sample:
        path, target = self.records[index]
        _, files = self.patches[index]
        from eofm.data.sensors import get_sensor

        order = get_sensor(self.sensor or "sentinel2_l2a").band_names
        available = [b for b in order if b in files] or sorted(files)
        raster = read_band_files(
            {b: files[b] for b in available},
            bands=self.requested_bands,
            shape=(self.size, self.size),
        )
        raster.path = str(path)
        image, bands, valid = self.to_tensor(raster)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.from_numpy(target.copy()),
            "path": str(path),
        }
