"""One entry point for every format: :func:`read_raster` picks the reader by suffix, then selects
bands by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eofm.data.readers.array import read_array
from eofm.data.readers.base import (
    ARRAY_SUFFIXES,
    GEOTIFF_SUFFIXES,
    IMAGE_SUFFIXES,
    RASTER_SUFFIXES,
    XARRAY_SUFFIXES,
    Raster,
    Window,
)
from eofm.data.readers.geotiff import read_geotiff
from eofm.data.readers.image import read_image
from eofm.data.readers.netcdf import read_xarray
from eofm.errors import (
    DataError,
)


def read_raster(
    path: str | Path,
    *,
    bands: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    sensor: str | None = None,
    window: Window | None = None,
) -> Raster:
    """Read any supported raster, then select ``bands`` by name (in the requested order).

    ``band_names`` declares the file's own band order when the file does not name its bands
    (EuroSAT-MS stores ``B01..B12, B8A``); ``sensor`` gives both a default order and aliases
    (``red`` finds ``B04``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GEOTIFF_SUFFIXES:
        raster = read_geotiff(path, window=window, band_names=band_names, sensor=sensor)
    elif suffix in IMAGE_SUFFIXES:
        raster = read_image(path, band_names=band_names, window=window)
    elif suffix in ARRAY_SUFFIXES:
        raster = read_array(path, band_names=band_names)
    elif suffix in XARRAY_SUFFIXES or path.is_dir():
        raster = read_xarray(path, band_names=band_names)
    else:
        raise DataError(
            path, f"unsupported file type {suffix!r}", f"supported: {', '.join(RASTER_SUFFIXES)}"
        )
    if window and suffix not in GEOTIFF_SUFFIXES + IMAGE_SUFFIXES:
        r, c, h, w = window
        raster.data = raster.data[:, r : r + h, c : c + w]
    if bands is not None:
        raster = raster.select(bands, sensor=sensor)
    return raster
