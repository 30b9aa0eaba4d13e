"""NumPy ``.npy`` / ``.npz``, read from their headers without pickles (``allow_pickle=False``)."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data.readers import base
from eofm.data.readers.base import (
    RASTER_KINDS,
    Array,
    Raster,
    _check_dtype,
    _check_exists,
    _check_size,
    _resolve_names,
)
from eofm.errors import (
    CorruptFileError,
    DataError,
)


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
    if info.file_size > max(base.SMALL_BYTES, base.MAX_RATIO["npz"] * max(1, info.compress_size)):
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
