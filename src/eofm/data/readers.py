"""Readers for real EO formats, each returning a :class:`Raster` that knows its band names.

Supported: GeoTIFF/COG (rasterio, windowed reads), one file per band resampled onto one grid
(BigEarthNet), JPEG/PNG (Pillow), NumPy ``.npy``/``.npz``, NetCDF and Zarr (xarray).
Every failure raises a typed :class:`~eofm.errors.DataError` that names the file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
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

GEOTIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
XARRAY_SUFFIXES = (".nc", ".nc4", ".netcdf", ".zarr")
RASTER_SUFFIXES = GEOTIFF_SUFFIXES + IMAGE_SUFFIXES + ARRAY_SUFFIXES + XARRAY_SUFFIXES

Window = tuple[int, int, int, int]
"""``(row_offset, col_offset, height, width)`` in pixels."""


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


def _check_size(path: Path, shape: Sequence[int]) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if any(int(s) <= 0 for s in shape):
        raise CorruptFileError(path, f"raster has an empty dimension {tuple(shape)}")
    if n > MAX_ELEMENTS:
        raise DataError(
            path,
            f"raster of shape {tuple(shape)} is too large to read at once",
            "read it with a window",
        )


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


def read_geotiff(
    path: str | Path,
    *,
    window: Window | None = None,
    band_names: Sequence[str] | None = None,
    sensor: str | None = None,
    out_shape: tuple[int, int] | None = None,
    resampling: str = "bilinear",
) -> Raster:
    """Read a GeoTIFF/COG. Band names come from ``band_names``, the file's band descriptions,
    or ``sensor``'s band order, in that order of preference."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import Window as RioWindow

    path = Path(path)
    _check_exists(path)
    try:
        with rasterio.open(path) as src:
            h, w = (window[2], window[3]) if window else (src.height, src.width)
            shape = out_shape or (h, w)
            _check_size(path, (src.count, *shape))
            names = _resolve_names(path, src.descriptions, src.count, band_names, sensor)
            rio_window = RioWindow(window[1], window[0], window[3], window[2]) if window else None
            data = src.read(
                window=rio_window,
                out_shape=(src.count, *shape),
                resampling=getattr(Resampling, resampling),
            )
            crs = src.crs.to_string() if src.crs else None
            transform = tuple(src.transform)[:6]
            nodata = src.nodata
    except (RasterioError, OSError) as err:
        raise CorruptFileError(path, f"cannot be read as a GeoTIFF: {err}") from err
    return Raster(data, names, str(path), nodata, crs, transform)


def read_image(
    path: str | Path, *, band_names: Sequence[str] | None = None, window: Window | None = None
) -> Raster:
    """Read a JPEG/PNG. RGB files give bands ``red, green, blue``; greyscale gives one band."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as img:
            _check_size(path, (len(img.getbands()), img.height, img.width))
            if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode == "LA":
                img = img.convert("L")
            if window:
                r, c, h, w = window
                img = img.crop((c, r, c + w, r + h))
            arr = np.asarray(img)
            mode = img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(path, f"cannot be decoded as an image: {err}") from err
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    default = {
        "RGB": ("red", "green", "blue"),
        "RGBA": ("red", "green", "blue", "alpha"),
    }.get(mode, tuple(f"band_{i + 1}" for i in range(arr.shape[0])))
    if mode in ("L", "I", "I;16", "F") and band_names is None:
        default = ("gray",)
    names = _resolve_names(path, [], arr.shape[0], band_names, None) if band_names else default
    return Raster(np.ascontiguousarray(arr), tuple(names), str(path))


def read_array(
    path: str | Path, *, band_names: Sequence[str] | None = None, key: str | None = None
) -> Raster:
    """Read ``.npy`` (``(C, H, W)`` or ``(H, W)``) or ``.npz`` (array ``key``, default the first;
    an optional ``bands`` entry in the archive names the bands)."""
    path = Path(path)
    _check_exists(path)
    found: Sequence[str | None] = []
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in archive.files if k != "bands"]
                if not keys:
                    raise CorruptFileError(path, "archive holds no array")
                arr = archive[key or keys[0]]
                if "bands" in archive.files:
                    found = [str(b) for b in archive["bands"]]
        else:
            arr = np.load(path, allow_pickle=False)
    except CorruptFileError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise CorruptFileError(path, f"cannot be read as a NumPy array: {err}") from err
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(path, f"expected a (C, H, W) array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(path, f"unsupported dtype {arr.dtype}")
    _check_size(path, arr.shape)
    names = _resolve_names(path, found, arr.shape[0], band_names, None)
    return Raster(arr, names, str(path))


def read_xarray(
    path: str | Path,
    *,
    band_names: Sequence[str] | None = None,
    variable: str | None = None,
    band_dim: str = "band",
) -> Raster:
    """Read NetCDF or Zarr through xarray: either one variable with a ``band`` dimension, or
    one 2-D variable per band (their names are the band names)."""
    import xarray as xr

    path = Path(path)
    _check_exists(path)
    try:
        if path.suffix == ".zarr" or (path / ".zgroup").exists() or (path / "zarr.json").exists():
            ds = xr.open_zarr(path)
        else:
            ds = xr.open_dataset(path)
    except Exception as err:  # xarray raises many types depending on the backend
        raise CorruptFileError(path, f"cannot be opened with xarray: {err}") from err
    with ds:
        if variable is not None or any(band_dim in ds[v].dims for v in ds.data_vars):
            var = variable or next(v for v in ds.data_vars if band_dim in ds[v].dims)
            if var not in ds:
                raise DataError(path, f"no variable {var!r}; variables: {list(ds.data_vars)}")
            da = ds[var]
            if band_dim in da.dims:
                da = da.transpose(band_dim, ...)
                found = [str(b) for b in da[band_dim].values] if band_dim in da.coords else []
            else:
                da = da.expand_dims(band_dim)
                found = [var]
            arr = np.asarray(da.values)
        else:
            vars2d = [v for v in ds.data_vars if ds[v].ndim == 2]
            if not vars2d:
                raise DataError(path, "no 2-D variable or variable with a 'band' dimension")
            want = list(band_names) if band_names else vars2d
            missing = [b for b in want if b not in ds]
            if missing:
                raise BandMismatchError(path, want, vars2d, problem=f"missing bands {missing}")
            arr = np.stack([np.asarray(ds[v].values) for v in want])
            found = want
    if arr.ndim != 3:
        raise DataError(path, f"expected (band, y, x) data, got shape {arr.shape}")
    _check_size(path, arr.shape)
    names = _resolve_names(path, found, arr.shape[0], band_names, None)
    return Raster(arr, names, str(path))


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


def read_band_files(
    files: Mapping[str, str | Path],
    *,
    bands: Sequence[str] | None = None,
    shape: tuple[int, int] | None = None,
    resampling: str = "bilinear",
) -> Raster:
    """Read one single-band file per band (BigEarthNet) and resample all onto one grid.

    The grid is ``shape`` or that of the finest band (the largest file).
    """
    import rasterio
    from rasterio.errors import RasterioError

    wanted = list(bands) if bands is not None else list(files)
    idx = match_bands(wanted, list(files), path=str(next(iter(files.values()), "")))
    keys = [list(files)[i] for i in idx]
    if shape is None:
        sizes = []
        for k in keys:
            p = Path(files[k])
            _check_exists(p)
            try:
                with rasterio.open(p) as src:
                    sizes.append((src.height, src.width))
            except (RasterioError, OSError) as err:
                raise CorruptFileError(p, f"cannot be read as a GeoTIFF: {err}") from err
        shape = max(sizes)
    layers = []
    crs, transform, nodata = None, None, None
    for k in keys:
        r = read_geotiff(files[k], band_names=[k], out_shape=shape, resampling=resampling)
        if r.data.shape[1:] == tuple(shape) and crs is None:
            crs, transform, nodata = r.crs, r.transform, r.nodata
        layers.append(r.data[0])
    dtypes = {a.dtype for a in layers}
    if len(dtypes) > 1:
        layers = [a.astype(np.float32) for a in layers]
    first = str(files[keys[0]])
    return Raster(np.stack(layers), tuple(wanted), first, nodata, crs, transform)


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
