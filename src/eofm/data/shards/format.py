"""The shard format: constants, ``.npy`` files streamed with a patched header, the dtype
rules that keep round trips exact, and :func:`read_index` (which checks ``index.json``)."""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch

from eofm.data.sample import Sample
from eofm.errors import (
    CorruptFileError,
)

FORMAT_NAME = "eofm-shards"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"

LabelKind = Literal["none", "class", "multilabel"]
Array = npt.NDArray[Any]
Transform = Callable[[Sample], Sample]
PathEntry = str | list[str] | None

_ARRAY_FIELDS = ("images", "labels", "masks", "targets")
_OUR_FILE = re.compile(r"^shard-\d{5,}\.(?:(?:images|labels|masks|targets)\.npy|paths\.json)$")
_OUR_TEMP = re.compile(r"^shard-\d{5,}\..*\.tmp\d*$")
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
#: Integer dtypes tried, smallest first, when a float image holds only integral values.
_INT_LADDER: tuple[type[np.integer[Any]], ...] = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


# --------------------------------------------------------------------------------------------
# small helpers


def _to_numpy(value: Any) -> Array:
    if isinstance(value, torch.Tensor):
        out: Array = value.detach().cpu().numpy()
        return out
    return np.asarray(value)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save_npy(path: Path, array: Array) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _header_text(dtype: np.dtype[Any], shape: tuple[int, ...]) -> str:
    shape = tuple(int(s) for s in shape)
    descr = np.lib.format.dtype_to_descr(dtype)
    return f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"


def _reserved_header_len(dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
    need = len(_NPY_MAGIC) + 2 + len(_header_text(dtype, shape)) + 1
    return -(-need // 64) * 64


def _header_bytes(dtype: np.dtype[Any], shape: tuple[int, ...], total: int) -> bytes:
    text = _header_text(dtype, shape)
    body_len = total - len(_NPY_MAGIC) - 2
    if len(text) + 1 > body_len:  # cannot happen: the reservation used the largest shape
        raise ValueError("npy header does not fit its reservation")
    body = text.ljust(body_len - 1) + "\n"
    return _NPY_MAGIC + struct.pack("<H", body_len) + body.encode("latin1")


class _NpyAppender:
    """Streams rows into a ``.npy`` file whose header is patched with the final count."""

    def __init__(
        self, final: Path, dtype: np.dtype[Any], item_shape: tuple[int, ...], capacity: int
    ) -> None:
        self.final = final
        self.tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
        self.dtype = dtype
        self.item_shape = item_shape
        self.capacity = capacity
        self.count = 0
        self._open_new()

    def _open_new(self) -> None:
        self.header_len = _reserved_header_len(self.dtype, (self.capacity, *self.item_shape))
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self.fh.write(b"\0" * self.header_len)

    def append(self, rows: Array) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        self.fh.write(rows.data)
        self.count += rows.shape[0]

    def retype(self, dtype: np.dtype[Any]) -> None:
        """Rewrite the rows written so far in a wider ``dtype``."""
        self.fh.close()
        n = self.count * int(np.prod(self.item_shape, dtype=np.int64))
        data = np.fromfile(self.tmp, dtype=self.dtype, count=n, offset=self.header_len)
        self.dtype = dtype
        self._open_new()
        self.fh.write(np.ascontiguousarray(data.astype(dtype)).data)

    def finish(self) -> None:
        self.fh.seek(0)
        self.fh.write(_header_bytes(self.dtype, (self.count, *self.item_shape), self.header_len))
        self.fh.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _lossless_cast(array: Array, dtype: np.dtype[Any]) -> Array | None:
    """``array`` in ``dtype`` if every value survives the round trip, else None.

    Integer targets are range-checked first: a round trip alone would accept wrapped values
    (-1 -> uint8 255 -> int8 -1)."""
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            if not (info.min <= array.min() and array.max() <= info.max):  # NaN fails too
                return None
    with np.errstate(invalid="ignore", over="ignore"):
        out = array.astype(dtype)
        if np.array_equal(out.astype(array.dtype), array):
            return out
    return None


def narrow_dtype(array: Array) -> Array:
    """The smallest integer dtype holding ``array`` exactly, or ``array`` unchanged.

    Float images whose values are all finite and integral (JPEG pixels read as float32 0..255)
    become uint8/int8/uint16/int16/int32, so that shards keep them bit-identical and small.
    """
    if array.size == 0 or array.dtype.kind not in "fiu":
        return array
    if array.dtype.kind == "f" and (
        not np.isfinite(array).all() or not np.array_equal(array, np.trunc(array))
    ):
        return array
    lo, hi = array.min(), array.max()
    for dt in _INT_LADDER:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return array.astype(dt)
    return array


# --------------------------------------------------------------------------------------------
# index


def read_index(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``root/index.json``; raises :class:`CorruptFileError` naming the file."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise CorruptFileError(
            path, "shard index is missing", "not a shard folder; write one with pack_dataset"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(path, f"shard index cannot be read: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise CorruptFileError(path, f"not an {FORMAT_NAME} index")
    if index.get("version") != FORMAT_VERSION:
        raise CorruptFileError(path, f"unsupported shard format version {index.get('version')!r}")
    required = {
        "bands": list,
        "dtype": str,
        "image_shape": list,
        "label_kind": str,
        "has_masks": bool,
        "shards": list,
        "total": int,
    }
    for key, kind in required.items():
        if not isinstance(index.get(key), kind):
            raise CorruptFileError(path, f"index field {key!r} is missing or not a {kind.__name__}")
    if index["label_kind"] not in ("none", "class", "multilabel"):
        raise CorruptFileError(path, f"unknown label_kind {index['label_kind']!r}")
    if len(index["image_shape"]) != 3 or index["image_shape"][0] != len(index["bands"]):
        raise CorruptFileError(path, "image_shape does not agree with the band list")
    counts = []
    for entry in index["shards"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("count"), int)
            or not isinstance(entry.get("files"), dict)
            or "images" not in entry["files"]
        ):
            raise CorruptFileError(path, f"malformed shard entry {entry!r}")
        counts.append(entry["count"])
    if sum(counts) != index["total"]:
        raise CorruptFileError(
            path, f"shard counts sum to {sum(counts)}, not total {index['total']}"
        )
    return cast(dict[str, Any], index)


def _check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any] | None) -> None:
    """Check a ``.npy`` header and file size against the index, without reading the data."""
    if not path.is_file():
        raise CorruptFileError(path, "shard file listed in index.json is missing")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(fh)
            data_start = fh.tell()
    except (OSError, ValueError) as exc:
        raise CorruptFileError(path, f"not a readable .npy file: {exc}") from exc
    if tuple(found_shape) != shape:
        raise CorruptFileError(path, f"holds shape {tuple(found_shape)}, index.json says {shape}")
    if dtype is not None and found_dtype != dtype:
        raise CorruptFileError(path, f"holds dtype {found_dtype}, index.json says {dtype}")
    if fortran:
        raise CorruptFileError(path, "Fortran-ordered arrays are not supported in shards")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * found_dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise CorruptFileError(path, f"file is {size} bytes, expected {expected} (truncated?)")
