"""What every reader shares: :class:`Raster` (data + band names), the size limits that refuse
corrupt headers before anything is allocated, the file suffixes, and the checks.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data.sensors import Sensor, get_sensor, match_bands
from eofm.errors import (
    BandMismatchError,
    CorruptFileError,
    DataError,
    InvalidValuesError,
    UnknownNameError,
)

#: Largest raster (pixels x bands) a reader will allocate; guards against corrupt headers.
MAX_ELEMENTS = 2**31


#: Largest decoded raster in bytes a reader will allocate at once.
MAX_BYTES = 2**32


#: Decoded sizes up to this are never questioned against the size of the file.
SMALL_BYTES = 64 * 2**20


#: Largest plausible ratio of decoded bytes to file bytes for compressed formats (deflate
#: cannot exceed about 1032:1; JPEG is bounded by a few bits per 8x8 block). A header that
#: claims more than this is corrupt, and is refused before anything is allocated.
MAX_RATIO = {"png": 1100, "npz": 1100, "image": 4096}


#: dtype kinds a raster may hold: bool, signed/unsigned integers, floats.
RASTER_KINDS = "biuf"


GEOTIFF_SUFFIXES = (".tif", ".tiff")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


ARRAY_SUFFIXES = (".npy", ".npz")


XARRAY_SUFFIXES = (".nc", ".nc4", ".netcdf", ".zarr")


RASTER_SUFFIXES = GEOTIFF_SUFFIXES + IMAGE_SUFFIXES + ARRAY_SUFFIXES + XARRAY_SUFFIXES


Window = tuple[int, int, int, int]
"""``(row_offset, col_offset, height, width)`` in pixels."""


Array = np.ndarray[Any, Any]


@dataclass
class Raster:
    """An image as read from disk: ``data`` is ``(C, H, W)`` in the file's dtype."""

    data: np.ndarray
    bands: tuple[str, ...]
    path: str
    nodata: float | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.data.shape
        return (c, h, w)

    def select(self, bands: Sequence[str], sensor: str | None = None) -> Raster:
        """The same raster with ``bands`` only, in that order, matched by name."""
        idx = match_bands(bands, self.bands, sensor=sensor, path=self.path)
        names = tuple(self.bands[i] for i in idx)
        return Raster(
            self.data[idx], names, self.path, self.nodata, self.crs, self.transform, self.meta
        )

    def valid_mask(self) -> np.ndarray:
        """``(H, W)`` bool: True where every band is finite and differs from ``nodata``."""
        data = self.data
        ok = np.ones(data.shape[1:], dtype=bool)
        if np.issubdtype(data.dtype, np.floating):
            ok &= np.isfinite(data).all(axis=0)
        if self.nodata is not None and not np.isnan(self.nodata):
            ok &= (data != self.nodata).all(axis=0)
        return ok


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptFileError(path, "file is empty (0 bytes)")


def _check_size(
    path: Path,
    shape: Sequence[int],
    itemsize: int = 1,
    *,
    ratio: float | None = None,
    available: int | None = None,
) -> None:
    """Refuse a raster before it is allocated: empty dimensions, more than
    :data:`MAX_ELEMENTS`/:data:`MAX_BYTES`, or more bytes than the file can hold (``ratio``
    times the file size, beyond :data:`SMALL_BYTES`; or more than ``available`` bytes)."""
    dims = tuple(int(s) for s in shape)
    if any(d <= 0 for d in dims):
        raise CorruptFileError(path, f"raster has an empty dimension {dims}")
    n = float(np.prod(dims, dtype=np.float64))
    nbytes = n * max(1, int(itemsize))
    if n > MAX_ELEMENTS or nbytes > MAX_BYTES:
        raise DataError(
            path,
            f"raster of shape {dims} ({human_bytes(nbytes)}) is too large to read at once",
            "read it with a window",
        )
    if available is not None and nbytes > available:
        raise CorruptFileError(
            path,
            f"truncated: the header says shape {dims} ({int(nbytes)} bytes) but the file "
            f"holds {max(0, available)} bytes of data",
        )
    if ratio is not None and path.is_file():
        size = path.stat().st_size
        if nbytes > max(SMALL_BYTES, ratio * size):
            raise CorruptFileError(
                path,
                f"corrupt header: shape {dims} ({int(nbytes)} bytes) cannot come from a "
                f"{size}-byte file",
            )


def human_bytes(nbytes: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 bytes``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def _check_dtype(path: Path, dtype: np.dtype[Any], kinds: str = RASTER_KINDS) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in kinds:
        raise DataError(path, f"unsupported dtype {dtype}", "expected integers, floats or bool")


def _resolve_names(
    path: Path,
    found: Sequence[str | None],
    count: int,
    band_names: Sequence[str] | None,
    sensor: str | None,
) -> tuple[str, ...]:
    """Band names: explicit ``band_names``, else the file's own descriptions, else the sensor."""
    if band_names is not None:
        if len(band_names) != count:
            raise BandMismatchError(
                path, band_names, [f"<{count} bands>"], problem="wrong band count"
            )
        return tuple(band_names)
    if all(found) and len(found) == count:
        names = tuple(str(n) for n in found)
        if sensor is not None:  # canonical names (B1 -> B01) where the sensor knows them
            sens = get_sensor(sensor)
            names = tuple(_canonical_or_same(sens, n) for n in names)
        return names
    if sensor is not None:
        names = get_sensor(sensor).band_names
        if len(names) != count:
            raise BandMismatchError(
                path, names, [f"<{count} bands>"], problem=f"wrong band count for sensor {sensor}"
            )
        return names
    return tuple(f"band_{i + 1}" for i in range(count))


def _canonical_or_same(sensor: Sensor, name: str) -> str:
    try:
        return sensor.band(name).name
    except UnknownNameError:
        return name


def check_values(raster: Raster, *, max_invalid_fraction: float = 1.0) -> np.ndarray:
    """Validate pixel values; returns the ``(H, W)`` valid mask.

    Raises :class:`InvalidValuesError` when the image has no valid pixel, or when more than
    ``max_invalid_fraction`` of its pixels are NaN, infinite or nodata.
    """
    valid = raster.valid_mask()
    frac_bad = 1.0 - float(valid.mean()) if valid.size else 1.0
    if not valid.any():
        raise InvalidValuesError(raster.path, "every pixel is NaN, infinite or nodata")
    if frac_bad > max_invalid_fraction:
        raise InvalidValuesError(
            raster.path,
            f"{frac_bad:.1%} of pixels are NaN, infinite or nodata "
            f"(more than the allowed {max_invalid_fraction:.1%})",
        )
    return valid


def read_json(path: str | Path) -> Any:
    """Load a JSON file, raising a :class:`DataError` that names it on failure."""
    path = Path(path)
    _check_exists(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"is not valid JSON: {err}") from err


def warn_skipped(path: str | Path, err: Exception) -> None:
    """Warn that a sample was skipped (used by datasets with ``on_error='skip'``)."""
    warnings.warn(f"skipped {path}: {err}", stacklevel=3)
