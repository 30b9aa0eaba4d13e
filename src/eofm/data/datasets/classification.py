"""Single-label scene classification: :class:`ClassificationFolder` (class sub-folders) and
:class:`ClassificationCSV` (path and label columns, optional split).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eofm.data.datasets.base import EODataset, _list_files, _read_csv, _require_columns
from eofm.data.readers import (
    RASTER_SUFFIXES,
)
from eofm.data.sample import Sample
from eofm.errors import DataError, EmptyDatasetError, MissingLabelError

#: EuroSAT-MS GeoTIFFs store B8A last, not in wavelength order.
EUROSAT_MS_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip


class ClassificationFolder(EODataset):
    """Scene classification from class sub-folders: ``root/<class>/<image>``."""

    def __init__(
        self,
        root: str | Path,
        *,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "folder does not exist")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_names = tuple(classes) if classes is not None else tuple(found)
        unknown = [c for c in self.class_names if c not in found]
        if unknown:
            raise DataError(self.root, f"class folders {unknown} are missing; found {found}")
        self.records: list[tuple[Path, int]] = []
        for label, name in enumerate(self.class_names):
            self.records += [(p, label) for p in _list_files(self.root / name, extensions)]
        if not self.records:
            raise EmptyDatasetError(
                self.root, f"no image files ({', '.join(extensions)}) in class sub-folders"
            )

    def load(self, index: int) -> Sample:
        path, label = self.records[index]
        image, bands, valid = self.read_image(path)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.tensor(label),
            "path": str(path),
        }


class ClassificationCSV(EODataset):
    """Scene classification from a CSV with a path and a label column (and an optional split)."""

    def __init__(
        self,
        csv_path: str | Path,
        *,
        root: str | Path | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split: str | None = None,
        split_column: str = "split",
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        rows = _read_csv(self.csv_path)
        _require_columns(self.csv_path, rows, [path_column, label_column])
        if split is not None:
            _require_columns(self.csv_path, rows, [split_column])
            rows = [r for r in rows if r[split_column] == split]
            if not rows:
                raise EmptyDatasetError(self.csv_path, f"no rows with {split_column}={split!r}")
        for line, r in enumerate(rows, start=2):
            if not (r.get(label_column) or "").strip():
                raise MissingLabelError(
                    self.csv_path, f"row {line} ({r[path_column]}) has no {label_column!r}"
                )
        self.class_names = (
            tuple(classes)
            if classes is not None
            else tuple(sorted({r[label_column] for r in rows}))
        )
        lookup = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({r[label_column] for r in rows} - set(lookup))
        if unknown:
            raise DataError(self.csv_path, f"labels {unknown} are not among classes")
        self.records = [(self.root / r[path_column], lookup[r[label_column]]) for r in rows]

    load = ClassificationFolder.load
