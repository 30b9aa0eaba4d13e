"""NetCDF and Zarr (xarray).

NetCDF is read with the pure-Python ``scipy`` backend (NetCDF-3) or ``h5netcdf``
(NetCDF-4/HDF5), not the netCDF4 C library, which crashes the interpreter on some corrupt
NetCDF-3 files. NetCDF-4/HDF5 files are read in a helper process with a time limit
(:data:`HDF5_TIMEOUT_S`): the HDF5 C library loops forever, holding the interpreter lock, on
some corrupt files.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data.readers.base import (
    Array,
    Raster,
    _check_dtype,
    _check_exists,
    _check_size,
    _resolve_names,
)
from eofm.errors import (
    BandMismatchError,
    CorruptFileError,
    DataError,
)

#: NetCDF-4/HDF5 files are read in a helper process (started once per process) and given up
#: after this many seconds: corrupt HDF5 metadata can make the HDF5 library loop forever.
HDF5_TIMEOUT_S = 120.0


#: Read NetCDF-4/HDF5 in the helper process (``False``: in this process; trusted data only).
ISOLATE_HDF5 = True


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
            [sys.executable, "-c", "from eofm.data.readers.netcdf import _serve; _serve()"],
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
