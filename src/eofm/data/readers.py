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
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
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
#: NetCDF-4/HDF5 files are read in a helper process (started once per process) and given up
#: after this many seconds: corrupt HDF5 metadata can make the HDF5 library loop forever.
HDF5_TIMEOUT_S = 120.0
#: Read NetCDF-4/HDF5 in the helper process (``False``: in this process; trusted data only).
ISOLATE_HDF5 = True

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
            f"raster of shape {dims} ({_human(nbytes)}) is too large to read at once",
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


def _human(nbytes: float) -> str:
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


_IMAGE_ITEMSIZE = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def read_image(
    path: str | Path, *, band_names: Sequence[str] | None = None, window: Window | None = None
) -> Raster:
    """Read a JPEG/PNG. RGB files give bands ``red, green, blue``; greyscale gives one band."""
    from PIL import Image

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as img:
            ratio = MAX_RATIO["png"] if img.format == "PNG" else MAX_RATIO["image"]
            itemsize = _IMAGE_ITEMSIZE.get(img.mode, 1)
            _check_size(path, (len(img.getbands()), img.height, img.width), itemsize, ratio=ratio)
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode == "LA":
                img = img.convert("L")
            if window:
                r, c, h, w = window
                img = img.crop((c, r, c + w, r + h))
            arr = np.asarray(img)
            mode = img.mode
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(path, f"image is too large to decode safely: {err}") from None
    except MemoryError:
        raise DataError(path, "not enough memory to decode the image") from None
    except Exception as err:  # Pillow's decoders raise many types on corrupt data
        raise CorruptFileError(path, f"cannot be decoded as an image: {err}") from err
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise CorruptFileError(path, f"decoded to an unusable array of shape {arr.shape}")
    _check_dtype(path, arr.dtype)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    default = {
        "RGB": ("red", "green", "blue"),
        "RGBA": ("red", "green", "blue", "alpha"),
    }.get(mode, tuple(f"band_{i + 1}" for i in range(arr.shape[0])))
    if mode in ("L", "I", "I;16", "F") and band_names is None:
        default = ("gray",)
    names = _resolve_names(path, [], arr.shape[0], band_names, None) if band_names else default
    return Raster(np.ascontiguousarray(arr), tuple(names), str(path))


def _npy_header(fp: Any, path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """``(shape, dtype, header bytes)`` of the ``.npy`` stream ``fp``, read without the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unknown .npy format version {version}")
        offset = int(fp.tell())
    except Exception as err:  # ValueError, SyntaxError, tokenize errors, EOFError...
        raise CorruptFileError(path, f"cannot be read as a NumPy array: {err}") from err
    return tuple(int(d) for d in shape), np.dtype(dtype), offset


def _check_array_header(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    available: int,
    kinds: str = RASTER_KINDS,
    ndims: tuple[int, ...] = (2, 3),
) -> None:
    if len(shape) not in ndims:
        raise DataError(path, f"expected a (C, H, W) array, got shape {shape}")
    _check_dtype(path, dtype, kinds)
    if shape:
        _check_size(path, shape, dtype.itemsize, available=available)


def _read_npy(path: Path) -> Array:
    with path.open("rb") as f:
        shape, dtype, offset = _npy_header(f, path)
    _check_array_header(path, shape, dtype, path.stat().st_size - offset)
    arr: Array = np.load(path, allow_pickle=False)
    return arr


def _read_member(
    zf: zipfile.ZipFile, name: str, path: Path, kinds: str, ndims: tuple[int, ...]
) -> Array:
    """One array of an ``.npz`` archive, its header checked against the member's size."""
    info = zf.getinfo(name)
    if info.file_size > max(SMALL_BYTES, MAX_RATIO["npz"] * max(1, info.compress_size)):
        raise CorruptFileError(path, f"{name}: implausible compression ratio (zip bomb?)")
    with zf.open(info) as f:
        shape, dtype, offset = _npy_header(f, path)
    _check_array_header(path, shape, dtype, info.file_size - offset, kinds, ndims)
    with zf.open(info) as f:
        arr: Array = np.lib.format.read_array(f, allow_pickle=False)
    return arr


def _read_npz(path: Path, key: str | None) -> tuple[Array, list[str]]:
    with zipfile.ZipFile(path) as zf:
        names = [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
        arrays = [n for n in names if n != "bands"]
        if not arrays:
            raise CorruptFileError(path, "archive holds no array")
        name = key or arrays[0]
        if name not in arrays:
            raise DataError(path, f"no array {name!r} in the archive; arrays: {arrays}")
        arr = _read_member(zf, f"{name}.npy", path, RASTER_KINDS, (2, 3))
        found: list[str] = []
        if "bands" in names:
            bands = _read_member(zf, "bands.npy", path, "US", (1,))
            found = [str(b) for b in bands]
    return arr, found


def read_array(
    path: str | Path, *, band_names: Sequence[str] | None = None, key: str | None = None
) -> Raster:
    """Read ``.npy`` (``(C, H, W)`` or ``(H, W)``) or ``.npz`` (array ``key``, default the first;
    an optional ``bands`` entry in the archive names the bands). The header is checked before
    the data are read: a truncated file or a header claiming more than the file holds is a
    :class:`CorruptFileError`, and nothing is allocated for it."""
    path = Path(path)
    _check_exists(path)
    found: Sequence[str | None] = []
    try:
        if path.suffix == ".npz":
            arr, found = _read_npz(path, key)
        else:
            arr = _read_npy(path)
    except DataError:
        raise
    except MemoryError:
        raise DataError(path, "not enough memory to read the array") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as err:
        raise CorruptFileError(path, f"cannot be read as a NumPy array: {err}") from err
    except Exception as err:  # zlib.error, struct.error, ... from a corrupt archive
        raise CorruptFileError(path, f"cannot be read as a NumPy array: {err!r}") from err
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(path, f"expected a (C, H, W) array, got shape {arr.shape}")
    _check_dtype(path, arr.dtype)
    _check_size(path, arr.shape, arr.dtype.itemsize)
    names = _resolve_names(path, found, arr.shape[0], band_names, None)
    return Raster(arr, names, str(path))


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _netcdf_engine(path: Path) -> str:
    """The xarray backend for a NetCDF file, from its signature: ``scipy`` (pure Python) for
    NetCDF-3, ``h5netcdf`` for NetCDF-4/HDF5 (the signature may sit at 0, 512, 1024...)."""
    with path.open("rb") as f:
        head = f.read(4)
        if head in (b"CDF\x01", b"CDF\x02"):
            return "scipy"
        if head == b"CDF\x05":
            raise DataError(
                path, "NetCDF-3 64-bit-data (CDF-5) files are not supported", "convert to NetCDF-4"
            )
        offset = 0
        size = path.stat().st_size
        while offset < size:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return "h5netcdf"
            offset = 512 if offset == 0 else offset * 2
    raise CorruptFileError(path, "not a NetCDF file (no NetCDF-3 or HDF5 signature)")


def read_xarray(
    path: str | Path,
    *,
    band_names: Sequence[str] | None = None,
    variable: str | None = None,
    band_dim: str = "band",
) -> Raster:
    """Read NetCDF or Zarr through xarray: either one variable with a ``band`` dimension, or
    one 2-D variable per band (their names are the band names). Sizes and dtypes are checked
    on the lazy arrays before any data are loaded."""

    path = Path(path)
    _check_exists(path)
    is_zarr = path.suffix == ".zarr" or (path / ".zgroup").exists() or (path / "zarr.json").exists()
    engine = "zarr" if is_zarr else _netcdf_engine(path)
    if engine == "h5netcdf" and ISOLATE_HDF5:
        return _ISOLATED.read(path, band_names, variable, band_dim)
    return _read_xarray_here(path, engine, band_names, variable, band_dim)


def _read_xarray_here(
    path: Path,
    engine: str,
    band_names: Sequence[str] | None,
    variable: str | None,
    band_dim: str,
) -> Raster:
    import xarray as xr

    try:
        ds = xr.open_zarr(path) if engine == "zarr" else xr.open_dataset(path, engine=engine)
    except DataError:
        raise
    except Exception as err:  # xarray raises many types depending on the backend
        raise CorruptFileError(path, f"cannot be opened with xarray: {err}") from err
    try:
        with ds:
            arr, found = _xarray_values(ds, path, band_names, variable, band_dim)
    except DataError:
        raise
    except MemoryError:
        raise DataError(path, "not enough memory to read the data") from None
    except Exception as err:  # decoding errors of corrupt chunks, bad attributes...
        raise CorruptFileError(path, f"cannot be read with xarray: {err}") from err
    if arr.ndim != 3:
        raise DataError(path, f"expected (band, y, x) data, got shape {arr.shape}")
    _check_size(path, arr.shape, arr.dtype.itemsize)
    names = _resolve_names(path, found, arr.shape[0], band_names, None)
    return Raster(arr, names, str(path))


class _IsolatedReader:
    """A helper process that reads NetCDF-4/HDF5 files for this one, so that a file on which
    the HDF5 library hangs or crashes costs a :class:`CorruptFileError`, not the program.

    Protocol on the helper's stdin/stdout: a request is 8 bytes of length + JSON; an answer
    is 16 bytes (JSON length, array length) + JSON + the array as ``.npy`` bytes (read back
    with ``allow_pickle=False``: nothing the helper sends can run code here).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = -1
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        import eofm

        src = str(Path(eofm.__file__).resolve().parents[1])  # so the helper imports this eofm
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from eofm.data.readers import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._proc, self._owner = proc, os.getpid()
        assert proc.stdout is not None
        try:
            ready = _with_timeout(lambda: _read_exact(proc.stdout, 1), 300.0)
        except (EOFError, OSError, TimeoutError):
            ready = b""
        if ready != b"R":
            self.stop()
            raise DataError(None, "the NetCDF-4/HDF5 reader process did not start")
        return proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            proc.kill()
            proc.wait()

    def read(
        self,
        path: Path,
        band_names: Sequence[str] | None,
        variable: str | None,
        band_dim: str,
    ) -> Raster:
        request = json.dumps(
            {
                "path": str(path),
                "band_names": None if band_names is None else list(band_names),
                "variable": variable,
                "band_dim": band_dim,
            }
        ).encode()
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None or self._owner != os.getpid():
                try:
                    proc = self._start()
                except DataError:
                    raise DataError(
                        path,
                        "the NetCDF-4/HDF5 reader process did not start",
                        "set eofm.data.readers.ISOLATE_HDF5 = False to read in this process",
                    ) from None
            assert proc.stdin is not None and proc.stdout is not None
            out = proc.stdout
            try:
                proc.stdin.write(struct.pack("<Q", len(request)) + request)
                proc.stdin.flush()
                head = _with_timeout(lambda: _read_exact(out, 16), HDF5_TIMEOUT_S)
            except TimeoutError:
                self.stop()
                raise CorruptFileError(
                    path,
                    f"reading did not finish within {HDF5_TIMEOUT_S:g} s and was stopped "
                    "(corrupt HDF5 metadata can make the HDF5 library loop forever)",
                ) from None
            except (OSError, EOFError):
                code = proc.poll()
                self.stop()
                raise CorruptFileError(
                    path, f"the HDF5 library crashed reading this file (exit status {code})"
                ) from None
            n_meta, n_data = struct.unpack("<QQ", head)
            meta = json.loads(_read_exact(out, n_meta))
            blob = _read_exact(out, n_data)
        if not meta["ok"]:
            raise _error_from(path, meta)
        data = np.load(io.BytesIO(blob), allow_pickle=False)
        return Raster(data, tuple(str(b) for b in meta["bands"]), str(path))


def _read_exact(stream: Any, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("the reader process closed its output")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _with_timeout(fn: Any, seconds: float) -> Any:
    """``fn()`` in a thread (blocking pipe reads release the interpreter lock); raises
    :class:`TimeoutError` when it has not returned after ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _error_from(path: Path, meta: dict[str, Any]) -> DataError:
    from eofm import errors

    kind = str(meta.get("kind"))
    if kind == "BandMismatchError":
        return BandMismatchError(path, meta["expected"], meta["found"], meta["reason"])
    cls = getattr(errors, kind, CorruptFileError)
    if not (isinstance(cls, type) and issubclass(cls, DataError)) or cls is BandMismatchError:
        cls = CorruptFileError
    return cls(path, str(meta.get("problem")), meta.get("hint"))


def _serve() -> None:
    """The helper process of :class:`_IsolatedReader`: answer read requests until stdin
    closes (when the parent exits, however it exits)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of libraries must not corrupt the answers
    inp = sys.stdin.buffer
    import xarray  # noqa: F401  (imported before "ready")

    out.write(b"R")
    out.flush()
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        req = json.loads(_read_exact(inp, n))
        payload = b""
        path = Path(req["path"])
        try:
            r = _read_xarray_here(
                path, "h5netcdf", req["band_names"], req["variable"], req["band_dim"]
            )
            buf = io.BytesIO()
            np.save(buf, r.data, allow_pickle=False)
            payload = buf.getvalue()
            meta: dict[str, Any] = {"ok": True, "bands": list(r.bands)}
        except DataError as err:
            meta = {"ok": False, "kind": type(err).__name__, "problem": err.problem}
            meta["hint"] = err.hint
            if isinstance(err, BandMismatchError):
                meta.update(expected=err.expected, found=err.found, reason=err.reason)
        except BaseException as err:
            meta = {"ok": False, "kind": "CorruptFileError", "problem": f"cannot be read: {err!r}"}
        blob = json.dumps(meta).encode()
        out.write(struct.pack("<QQ", len(blob), len(payload)) + blob + payload)
        out.flush()


_ISOLATED = _IsolatedReader()


def _xarray_values(
    ds: Any,
    path: Path,
    band_names: Sequence[str] | None,
    variable: str | None,
    band_dim: str,
) -> tuple[Array, list[str]]:
    if variable is not None or any(band_dim in ds[v].dims for v in ds.data_vars):
        var = variable or next(v for v in ds.data_vars if band_dim in ds[v].dims)
        if var not in ds:
            raise DataError(path, f"no variable {var!r}; variables: {list(ds.data_vars)}")
        da = ds[var]
        has_band = band_dim in da.dims
        shape = tuple(da.shape) if has_band else (1, *da.shape)
        if len(shape) != 3:
            raise DataError(path, f"expected (band, y, x) data, got dims {da.dims} {da.shape}")
        _check_dtype(path, np.dtype(da.dtype))
        _check_size(path, shape, np.dtype(da.dtype).itemsize)  # before anything is loaded
        if not has_band:
            return np.asarray(da.values)[None], [str(var)]
        da = da.transpose(band_dim, ...)
        found = [str(b) for b in da[band_dim].values] if band_dim in da.coords else []
        return np.asarray(da.values), found
    vars2d = [v for v in ds.data_vars if ds[v].ndim == 2]
    if not vars2d:
        raise DataError(path, "no 2-D variable or variable with a 'band' dimension")
    want = list(band_names) if band_names else vars2d
    missing = [b for b in want if b not in ds]
    if missing:
        raise BandMismatchError(path, want, vars2d, problem=f"missing bands {missing}")
    shapes = {tuple(ds[v].shape) for v in want}
    if len(shapes) != 1 or any(ds[v].ndim != 2 for v in want):
        raise DataError(path, f"band variables {want} do not share one 2-D grid: {shapes}")
    for v in want:
        _check_dtype(path, np.dtype(ds[v].dtype))
    itemsize = max(np.dtype(ds[v].dtype).itemsize for v in want)
    _check_size(path, (len(want), *next(iter(shapes))), itemsize)
    return np.stack([np.asarray(ds[v].values) for v in want]), [str(v) for v in want]


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
