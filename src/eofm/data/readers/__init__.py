"""Readers for real EO formats, each returning a :class:`Raster` that knows its band names.

Supported: GeoTIFF/COG (rasterio, windowed reads), one file per band resampled onto one grid
(BigEarthNet), JPEG/PNG (Pillow), NumPy ``.npy``/``.npz``, NetCDF and Zarr (xarray).
Every failure raises a typed :class:`~eofm.errors.DataError` that names the file: a reader
never crashes on a corrupt, truncated or hostile file, and never allocates more than the
file could hold (see :func:`_check_size`). NetCDF is read with the pure-Python ``scipy``
backend (NetCDF-3) or ``h5netcdf`` (NetCDF-4/HDF5), not the netCDF4 C library, which crashes
the interpreter on some corrupt NetCDF-3 files. NetCDF-4/HDF5 files are read in a helper
process with a time limit (:data:`HDF5_TIMEOUT_S`): the HDF5 C library loops forever, holding
the interpreter lock, on some corrupt files.

One module per format (``geotiff``, ``image``, ``array``, ``netcdf``) on a shared ``base``
(:class:`Raster`, limits, checks); :func:`read_raster` (``dispatch``) picks the reader. Every
name is re-exported here. The limits stay settable here as before
(``eofm.data.readers.MAX_BYTES = ...``, ``ISOLATE_HDF5``, ``HDF5_TIMEOUT_S``): setting one on
this package sets it in the module that uses it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from eofm.data.readers import base as _base
from eofm.data.readers import netcdf as _netcdf
from eofm.data.readers.array import (
    read_array,
)
from eofm.data.readers.base import (
    ARRAY_SUFFIXES,
    GEOTIFF_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_BYTES,
    MAX_ELEMENTS,
    MAX_RATIO,
    RASTER_KINDS,
    RASTER_SUFFIXES,
    SMALL_BYTES,
    XARRAY_SUFFIXES,
    Array,
    Raster,
    Window,
    check_values,
    read_json,
    warn_skipped,
)
from eofm.data.readers.dispatch import (
    read_raster,
)
from eofm.data.readers.geotiff import (
    read_band_files,
    read_geotiff,
)
from eofm.data.readers.image import (
    read_image,
)
from eofm.data.readers.netcdf import (
    HDF5_TIMEOUT_S,
    ISOLATE_HDF5,
    read_xarray,
)

#: Settable limits and the module that reads each one (read at call time, as ``base.X``).
_KNOBS: dict[str, types.ModuleType] = {
    "MAX_ELEMENTS": _base,
    "MAX_BYTES": _base,
    "SMALL_BYTES": _base,
    "MAX_RATIO": _base,
    "HDF5_TIMEOUT_S": _netcdf,
    "ISOLATE_HDF5": _netcdf,
}


class _ReadersModule(types.ModuleType):
    """This package, passing a limit set on it on to the module that uses it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _KNOBS:
            setattr(_KNOBS[name], name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ReadersModule


__all__ = [
    "ARRAY_SUFFIXES",
    "GEOTIFF_SUFFIXES",
    "HDF5_TIMEOUT_S",
    "IMAGE_SUFFIXES",
    "ISOLATE_HDF5",
    "MAX_BYTES",
    "MAX_ELEMENTS",
    "MAX_RATIO",
    "RASTER_KINDS",
    "RASTER_SUFFIXES",
    "SMALL_BYTES",
    "XARRAY_SUFFIXES",
    "Array",
    "Raster",
    "Window",
    "check_values",
    "read_array",
    "read_band_files",
    "read_geotiff",
    "read_image",
    "read_json",
    "read_raster",
    "read_xarray",
    "warn_skipped",
]
