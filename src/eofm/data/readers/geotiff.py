"""GeoTIFF / COG (rasterio, windowed reads) and one file per band resampled onto one grid
(BigEarthNet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from eofm.data.readers.base import (
    Raster,
    Window,
    _check_dtype,
    _check_exists,
    _check_size,
    _resolve_names,
)
from eofm.data.sensors import match_bands
from eofm.errors import (
    CorruptFileError,
    DataError,
)


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
            try:
                dtypes = [np.dtype(d) for d in src.dtypes]
            except TypeError:
                raise DataError(path, f"unsupported data type {src.dtypes[:1]}") from None
            for dt in dtypes[:1]:
                _check_dtype(path, dt)
            _check_size(path, (src.count, *shape), max((d.itemsize for d in dtypes), default=1))
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
    except (RasterioError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise CorruptFileError(path, f"cannot be read as a GeoTIFF: {err}") from err
    except MemoryError:
        raise DataError(path, "not enough memory for the raster", "read it with a window") from None
    return Raster(data, names, str(path), nodata, crs, transform)


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
