"""The shared base of every dataset kind: :class:`EODataset` (reading with band selection,
nodata, transforms, skip-or-raise on unreadable files, :meth:`~EODataset.verify`).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from eofm.data.readers import (
    Raster,
    check_values,
    read_raster,
)
from eofm.data.sample import Sample
from eofm.errors import BandMismatchError, DataError, EmptyDatasetError

Transform = Callable[[Sample], Sample]


OnError = Literal["raise", "skip"]


class EODataset(Dataset[Sample]):
    """Shared machinery: band selection, value checks, error policy and transforms.

    With ``on_error="skip"`` a sample that cannot be read is skipped with a warning, counted in
    :attr:`skipped`, and the next readable sample is returned instead; :meth:`verify` checks
    every file up front and drops the bad ones.
    """

    def __init__(
        self,
        *,
        bands: Sequence[str] | None = None,
        band_names: Sequence[str] | None = None,
        sensor: str | None = None,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_invalid_fraction: float = 1.0,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.requested_bands = tuple(bands) if bands is not None else None
        self.band_names = tuple(band_names) if band_names is not None else None
        self.sensor = sensor
        self.transform = transform
        self.on_error = on_error
        self.max_invalid_fraction = max_invalid_fraction
        self.skipped: dict[str, str] = {}
        self.class_names: tuple[str, ...] | None = None
        #: The first file read and its bands: every other file must hold the same bands.
        self._first_read: tuple[str, tuple[str, ...]] | None = None

    #: One record per sample: a path, or a tuple whose first item is the main path.
    records: Sequence[Any]

    # -- subclasses implement ``load`` and fill ``records`` ------------------------------
    def load(self, index: int) -> Sample:
        """Read sample ``index`` (no transform, no error policy)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def sample_path(self, index: int) -> str:
        """The main file of sample ``index``, for messages."""
        record = self.records[index]
        return str(record[0] if isinstance(record, tuple) else record)

    # -- shared --------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                sample = self.load(i)
                break
            except DataError as err:
                if self.on_error == "raise":
                    raise
                path = self.sample_path(i)
                if path not in self.skipped:
                    self.skipped[path] = str(err)
                    warnings.warn(f"skipped {path}: {err}", stacklevel=2)
        else:
            raise EmptyDatasetError(None, f"none of the {n} samples could be read")
        return self.transform(sample) if self.transform else sample

    def verify(self, progress: bool = False) -> int:
        """Read every sample once, dropping (``on_error='skip'``) or raising on bad ones.

        Returns the number of samples dropped.
        """
        from eofm.progress import progress as progress_bar

        bad: list[int] = []
        for i in progress_bar(range(len(self)), desc="verifying", disable=not progress):
            try:
                self.load(i)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                path = self.sample_path(i)
                self.skipped[path] = str(err)
                warnings.warn(f"skipped {path}: {err}", stacklevel=2)
                bad.append(i)
        self._drop(bad)
        if len(self) == 0:
            raise EmptyDatasetError(None, "no readable sample left after verification")
        return len(bad)

    def _drop(self, indices: Sequence[int]) -> None:
        """Remove samples by index; subclasses with a record list support this."""
        records = getattr(self, "records", None)
        if records is None:
            if indices:
                raise NotImplementedError(f"{type(self).__name__} cannot drop samples")
            return
        drop = set(indices)
        self.records = [r for i, r in enumerate(records) if i not in drop]

    def read_image(self, path: str | Path) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        """Read, select bands by name, check values; nodata becomes NaN."""
        raster = read_raster(
            path, bands=self.requested_bands, band_names=self.band_names, sensor=self.sensor
        )
        self._check_same_bands(path, raster.bands)
        return self.to_tensor(raster)

    def _check_same_bands(self, path: str | Path, bands: tuple[str, ...]) -> None:
        """Every file of a dataset holds the same number of bands: a mix (1-band and 2-band
        GeoTIFFs in one folder) is an error naming a file of each kind."""
        if self._first_read is None:
            self._first_read = (str(path), tuple(bands))
            return
        first_path, first = self._first_read
        if len(bands) != len(first):
            raise BandMismatchError(
                path,
                first,
                bands,
                f"the dataset mixes {len(first)}-band files (like {first_path}) and "
                f"{len(bands)}-band files (like {path}); keep one kind per dataset, select bands "
                "by name (--bands), or skip the odd files (--skip-bad)",
            )

    def to_tensor(self, raster: Raster) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        valid = check_values(raster, max_invalid_fraction=self.max_invalid_fraction)
        image = raster.data.astype(np.float32)
        if not valid.all():
            image[:, ~valid] = np.nan
        return torch.from_numpy(image), raster.bands, torch.from_numpy(valid)

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names of the images this dataset yields (reads the first sample if needed)."""
        if self.requested_bands is not None:
            return self.requested_bands
        return tuple(self[0]["bands"])

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def _list_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(path, "CSV file does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise EmptyDatasetError(path, "CSV file has no rows")
    return rows


def _require_columns(path: Path, rows: list[dict[str, str]], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(path, f"missing columns {missing}; columns are {list(rows[0])}")
