"""Pretraining shards: a few memory-mapped ``.npy`` files instead of one file per image.

Layout of a shard folder::

    root/index.json                      format, bands, sensor, dtype, shapes, labels, shard list
    root/shard-00000.images.npy          (N, C, H, W) in the original dtype (uint8 stays uint8)
    root/shard-00000.labels.npy          (N,) int64 class indices or (N, K) float32 multi-hot
    root/shard-00000.masks.npy           (N, H, W) segmentation masks
    root/shard-00000.targets.npy         (N, ...) float32 regression targets
    root/shard-00000.paths.json          the source path of every sample

Every file is written under a temporary name and moved into place with :func:`os.replace`, and
``index.json`` is written last: a folder with an ``index.json`` is always complete.

- :class:`ShardWriter` writes shards sample by sample (constant memory).
- :func:`pack_dataset` packs any map-style eofm dataset.
- :class:`ShardDataset` reads them back by index (memory-mapped, opened lazily per worker).
- :class:`ShardIterableDataset` streams them shard by shard, split across DDP ranks and workers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from eofm.data.sample import Sample
from eofm.data.sensors import Sensor, get_sensor, match_bands
from eofm.errors import (
    BandMismatchError,
    CorruptFileError,
    DataError,
    EmptyDatasetError,
    UnknownNameError,
)

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "ShardBatches",
    "ShardDataset",
    "ShardIterableDataset",
    "ShardWriter",
    "pack_dataset",
    "read_index",
]

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


# --------------------------------------------------------------------------------------------
# writer


class ShardWriter:
    """Write samples into shards of ``shard_size`` samples; use as a context manager.

    The image dtype is taken from the first image and widened (with a rewrite of what was
    already written) only when a later image cannot be stored exactly, so a round trip is
    bit-identical. Labels: an integer scalar is a class index (int64), a 1-D vector a multi-hot
    label (float32); regression values go to ``target``. ``close()`` writes ``index.json``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        bands: Sequence[str],
        *,
        sensor: str | Sensor | None = None,
        shard_size: int = 4096,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        if isinstance(bands, str) or not bands:
            raise ValueError(f"bands must be a non-empty sequence of names, got {bands!r}")
        self.root = Path(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        # Until close() the folder is not a valid shard set.
        (self.root / INDEX_NAME).unlink(missing_ok=True)
        self.bands = tuple(str(b) for b in bands)
        self.sensor = sensor.name if isinstance(sensor, Sensor) else sensor
        self.shard_size = shard_size
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fields: tuple[str, ...] | None = None  # array fields, fixed by the first sample
        self._label_kind: LabelKind = "none"
        self._shards: list[dict[str, Any]] = []
        self._open: dict[str, _NpyAppender] = {}
        self._paths: list[PathEntry] = []
        self._total = 0
        self._closed = False
        #: How images are stored, when a packer chose a lossy dtype (written to the index).
        self.storage: dict[str, Any] = {}

    # -- context manager
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def count(self) -> int:
        """Samples added so far."""
        return self._total

    # -- adding
    def add(
        self,
        image: Any,
        *,
        label: Any = None,
        mask: Any = None,
        target: Any = None,
        path: str | Sequence[str] | None = None,
    ) -> None:
        """Add one ``(C, H, W)`` image with its optional label, mask, target and source path."""
        img = _to_numpy(image)
        if img.ndim != 3:
            raise DataError(_path_text(path), f"image must be (C, H, W), got shape {img.shape}")
        self._append(
            img[None],
            labels=None if label is None else _to_numpy(label)[None],
            masks=None if mask is None else _to_numpy(mask)[None],
            targets=None if target is None else _to_numpy(target)[None],
            paths=[_path_entry(path)],
        )

    def add_batch(
        self,
        images: Any,
        *,
        labels: Any = None,
        masks: Any = None,
        targets: Any = None,
        paths: Sequence[str | Sequence[str] | None] | None = None,
    ) -> None:
        """Add ``(N, C, H, W)`` images with optional per-sample labels, masks, targets, paths."""
        imgs = _to_numpy(images)
        if imgs.ndim != 4:
            raise DataError(None, f"images must be (N, C, H, W), got shape {imgs.shape}")
        n = imgs.shape[0]
        path_list: list[PathEntry] = (
            [None] * n if paths is None else [_path_entry(p) for p in paths]
        )
        arrays = {
            "labels": None if labels is None else _to_numpy(labels),
            "masks": None if masks is None else _to_numpy(masks),
            "targets": None if targets is None else _to_numpy(targets),
        }
        for name, arr in arrays.items():
            if arr is not None and (arr.ndim == 0 or arr.shape[0] != n):
                raise DataError(None, f"{name} has {arr.shape} rows for {n} images")
        if len(path_list) != n:
            raise DataError(None, f"{len(path_list)} paths for {n} images")
        self._append(imgs, paths=path_list, **arrays)

    def _append(
        self,
        images: Array,
        *,
        labels: Array | None,
        masks: Array | None,
        targets: Array | None,
        paths: list[PathEntry],
    ) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        where = _path_text(paths[0]) if paths else None
        if images.shape[1] != len(self.bands):
            raise BandMismatchError(
                where,
                self.bands,
                [f"<{images.shape[1]} channels>"],
                problem="image channels do not match the writer's bands",
            )
        if labels is not None:
            labels = self._labels(labels, where)
        given = {"images": images, "labels": labels, "masks": masks, "targets": targets}
        present = tuple(k for k in _ARRAY_FIELDS if given[k] is not None)
        if self._fields is None:
            self._fields = present
            for key in present:
                self._shapes[key] = tuple(cast(Array, given[key]).shape[1:])
            if masks is not None and masks.shape[1:] != images.shape[2:]:
                raise DataError(where, f"mask shape {masks.shape[1:]} != image {images.shape[2:]}")
        elif present != self._fields:
            missing = sorted(set(self._fields) ^ set(present))
            raise DataError(
                where,
                f"sample has fields {list(present)} but earlier samples had {list(self._fields)}"
                f" (differ in {missing})",
            )
        for key in present:
            arr = cast(Array, given[key])
            if tuple(arr.shape[1:]) != self._shapes[key]:
                what = "image" if key == "images" else key[:-1]
                raise DataError(
                    where,
                    f"{what} shape {tuple(arr.shape[1:])} differs from {self._shapes[key]} of the"
                    " first sample",
                    "pack_dataset(..., size=N) crops/resizes every image to N x N",
                )
            given[key] = self._fit_dtype(key, arr)

        n = images.shape[0]
        start = 0
        while start < n:
            if not self._open:
                self._start_shard()
            stop = min(n, start + self.shard_size - self._open["images"].count)
            for key in present:
                self._open[key].append(cast(Array, given[key])[start:stop])
            self._paths.extend(paths[start:stop])
            self._total += stop - start
            start = stop
            if self._open["images"].count >= self.shard_size:
                self._finish_shard()

    def _labels(self, labels: Array, where: str | None) -> Array:
        kind: LabelKind
        if labels.ndim == 1:
            kind = "class"
            if labels.dtype.kind == "f":
                if not np.array_equal(labels, np.trunc(labels)):
                    raise DataError(
                        where,
                        f"label {labels.tolist()[:4]} is not a class index",
                        "pass regression values as target=",
                    )
            elif labels.dtype.kind not in "iub":
                raise DataError(where, f"label dtype {labels.dtype} is not numeric")
            out = labels.astype(np.int64)
            if self.class_names is not None and (
                out.min() < 0 or out.max() >= len(self.class_names)
            ):
                raise DataError(
                    where, f"class index {out.tolist()[:4]} outside 0..{len(self.class_names) - 1}"
                )
        elif labels.ndim == 2:
            kind = "multilabel"
            out = labels.astype(np.float32)
            if self.class_names is not None and out.shape[1] != len(self.class_names):
                raise DataError(
                    where,
                    f"multi-label vector has {out.shape[1]} entries for"
                    f" {len(self.class_names)} class names",
                )
        else:
            raise DataError(where, f"label must be a scalar or a vector, got {labels.shape[1:]}")
        if self._fields is None:
            self._label_kind = kind
        elif kind != self._label_kind:
            raise DataError(
                where, f"{kind} label but earlier samples had {self._label_kind} labels"
            )
        return out

    def _fit_dtype(self, key: str, arr: Array) -> Array:
        if key == "labels":
            return arr
        if key == "targets":
            return arr.astype(np.float32)
        current = self._dtypes.get(key)
        if current is None:
            self._dtypes[key] = arr.dtype
            return arr
        if arr.dtype == current:
            return arr
        if np.can_cast(arr.dtype, current, "safe"):
            return arr.astype(current)
        exact = _lossless_cast(arr, current)
        if exact is not None:
            return exact
        wider = np.promote_types(current, arr.dtype)
        self._promote(key, wider)
        return arr.astype(wider)

    def _promote(self, key: str, dtype: np.dtype[Any]) -> None:
        """Rewrite everything already written for ``key`` in the wider ``dtype``."""
        for entry in self._shards:
            path = self.root / entry["files"][key]
            _atomic_save_npy(path, np.load(path).astype(dtype))
        if key in self._open:
            self._open[key].retype(dtype)
        self._dtypes[key] = dtype

    def _start_shard(self) -> None:
        assert self._fields is not None
        name = _shard_name(len(self._shards))
        for key in self._fields:
            if key in self._dtypes:
                dtype = self._dtypes[key]
            elif key == "labels" and self._label_kind == "class":
                dtype = np.dtype(np.int64)
            else:  # multi-hot labels and regression targets
                dtype = np.dtype(np.float32)
            self._open[key] = _NpyAppender(
                self.root / f"{name}.{key}.npy", dtype, self._shapes[key], self.shard_size
            )
        self._paths = []

    def _finish_shard(self) -> None:
        name = _shard_name(len(self._shards))
        count = self._open["images"].count
        files: dict[str, str] = {}
        for key, app in self._open.items():
            app.finish()
            files[key] = app.final.name
        paths_file = f"{name}.paths.json"
        _atomic_write_text(self.root / paths_file, json.dumps(self._paths))
        files["paths"] = paths_file
        self._shards.append({"name": name, "count": count, "files": files})
        self._open = {}
        self._paths = []

    # -- finishing
    def index(self) -> dict[str, Any]:
        """The index as it will be written (shards finished so far)."""
        fields = self._fields or ()
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "bands": list(self.bands),
            "sensor": self.sensor,
            "dtype": str(self._dtypes["images"]) if "images" in self._dtypes else None,
            "image_shape": [len(self.bands), *self._shapes.get("images", ())[1:]],
            "class_names": None if self.class_names is None else list(self.class_names),
            "label_kind": self._label_kind,
            "label_shape": list(self._shapes.get("labels", ())),
            "has_masks": "masks" in fields,
            "mask_dtype": str(self._dtypes["masks"]) if "masks" in self._dtypes else None,
            "has_targets": "targets" in fields,
            "target_shape": list(self._shapes["targets"]) if "targets" in fields else None,
            "shard_size": self.shard_size,
            "shards": self._shards,
            "total": sum(s["count"] for s in self._shards),
            "storage": dict(self.storage),
        }

    def close(self) -> Path:
        """Finish the last shard, write ``index.json`` and return the shard folder."""
        if self._closed:
            return self.root
        if self._open and self._open["images"].count > 0:
            self._finish_shard()
        if self._total == 0:
            self.abort()
            raise EmptyDatasetError(self.root, "no samples were written to the shard folder")
        self._closed = True
        index = self.index()
        keep = {f for s in self._shards for f in s["files"].values()}
        for entry in self.root.iterdir():
            if (_OUR_FILE.match(entry.name) and entry.name not in keep) or _OUR_TEMP.match(
                entry.name
            ):
                entry.unlink(missing_ok=True)
        _atomic_write_text(self.root / INDEX_NAME, json.dumps(index, indent=1))
        return self.root

    def abort(self) -> None:
        """Drop the shard in progress (its temporary files); write no index."""
        for app in self._open.values():
            app.abort()
        self._open = {}
        self._closed = True


def _path_entry(path: str | os.PathLike[str] | Sequence[str] | None) -> PathEntry:
    if path is None:
        return None
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return [os.fspath(p) for p in path]


def _path_text(path: PathEntry | Sequence[str]) -> str | None:
    if path is None or isinstance(path, str):
        return path
    return ", ".join(str(p) for p in path)


# --------------------------------------------------------------------------------------------
# pack_dataset


def _numpy_samples(batch: list[Sample]) -> list[Sample]:
    """Collate for packing: tensors become numpy arrays, which cross from DataLoader workers
    by plain pickling (one shared-memory segment per small tensor is far slower)."""
    return [
        {k: (_to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for s in batch
    ]


def _resample(image: Array, mask: Array | None, h: int, w: int) -> tuple[Array, Array | None]:
    """Resample to ``h`` x ``w``: images by area averaging when shrinking both sides, else
    bilinear (anti-aliased along a shrinking side); integral images stay integral; masks
    nearest."""
    integral = narrow_dtype(image).dtype.kind in "iu"
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if h <= image.shape[1] and w <= image.shape[2]:
        out = F.interpolate(t, size=(h, w), mode="area")
    else:
        shrink = h < image.shape[1] or w < image.shape[2]
        out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    resized = out[0].numpy()
    image = np.round(resized) if integral else resized
    if mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        mask = F.interpolate(m, size=(h, w), mode="nearest")[0, 0].numpy().astype(np.int64)
    return image, mask


def _fit_size(
    image: Array, mask: Array | None, size: int, fit: str = "crop"
) -> tuple[Array, Array | None]:
    """Bring an image (and its mask) to ``size`` x ``size``.

    ``fit="crop"`` center-crops, upsampling first images whose shorter side is below
    ``size``; ``fit="resize"`` resamples the whole image to ``size`` x ``size`` (the aspect
    ratio changes for non-square images)."""
    _, h, w = image.shape
    if fit == "resize":
        return (image, mask) if (h, w) == (size, size) else _resample(image, mask, size, size)
    if h < size or w < size:
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        image, mask = _resample(image, mask, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    image = image[:, top : top + size, left : left + size]
    if mask is not None:
        mask = mask[top : top + size, left : left + size]
    return image, mask


#: Largest error float16 storage may add, relative to ``max(|value|, std of the image)``.
FLOAT16_TOLERANCE = 1e-3


def float16_if_close(image: Array, tolerance: float = FLOAT16_TOLERANCE) -> tuple[Array, float]:
    """``image`` as float16 with its worst relative error, or unchanged with ``inf``.

    The error of each value is taken relative to ``max(|value|, std of the image)``, so values
    near zero (dB around 0, dark linear backscatter) are judged against the image's spread.
    NaN (nodata) stays NaN; values beyond float16's range keep the image in its dtype.
    """
    if image.dtype.kind != "f" or image.dtype.itemsize <= 2 or image.size == 0:
        return image, float("inf")
    finite = np.isfinite(image)
    if not finite.any():
        return image, float("inf")
    values = image[finite].astype(np.float64)
    if np.abs(values).max() >= 65504.0 or np.isinf(image).any():
        return image, float("inf")
    half = image.astype(np.float16)
    err = np.abs(half[finite].astype(np.float64) - values)
    scale = np.maximum(np.abs(values), max(float(values.std()), 1e-12))
    worst = float((err / scale).max())
    return (half, worst) if worst <= tolerance else (image, worst)


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_binary(arr: Array) -> bool:
    return arr.dtype.kind == "b" or bool(np.isin(arr, (0, 1)).all())


def pack_dataset(
    dataset: Dataset[Sample],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = 4096,
    num_workers: int = 0,
    progress: bool = True,
    size: int | None = None,
    fit: str = "crop",
    float16: bool = False,
) -> Path:
    """Pack a map-style dataset of sample dicts into shards under ``out_dir``; return the folder.

    Images must share one shape; otherwise a :class:`DataError` names the first odd file, and
    ``size=N`` brings every image and mask to N x N: ``fit="crop"`` center-crops (upsampling
    smaller images first), ``fit="resize"`` resamples the whole image (masks nearest).
    Float images whose values are all integral are stored in the smallest integer dtype that
    holds them (JPEG pixels read as float32 0..255 are stored as uint8), so round trips are
    bit-identical. Labels: integer scalars are classes, 0/1 vectors multi-hot labels, anything
    else (float scalars, other vectors) goes to ``target``; a ``target`` key is kept as is.
    The dataset's ``sensor`` and ``class_names`` (or ``classes``) attributes are recorded.
    Only ``image``, ``label``, ``mask``, ``target`` and ``path`` are stored.
    ``float16=True`` stores non-integral float images (SAR backscatter, reflectance) as float16
    when :func:`float16_if_close` finds them lossless enough for every image (else float32);
    the choice and the worst relative error go to the index's ``storage`` entry.
    A full disk aborts the pack (its partial files removed) with a :class:`DataError` naming
    ``out_dir``.
    """
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError("pack_dataset needs a map-style dataset with __len__") from exc
    root_hint = getattr(dataset, "root", None)
    if total == 0:
        raise EmptyDatasetError(root_hint, "dataset has no samples to pack")
    if fit not in ("crop", "resize"):
        raise ValueError(f"fit must be 'crop' or 'resize', got {fit!r}")
    sensor_attr = getattr(dataset, "sensor", None)
    sensor = sensor_attr.name if isinstance(sensor_attr, Sensor) else sensor_attr
    class_names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
    if class_names is not None and not all(isinstance(c, str) for c in class_names):
        class_names = None
    loader: DataLoader[Sample] = DataLoader(
        dataset,
        batch_size=32,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_numpy_samples,
    )
    samples = (s for batch in loader for s in batch)
    writer: ShardWriter | None = None
    first_shape: tuple[int, ...] | None = None
    first_path: str | None = None
    label_kind: str | None = None
    source_dtype: str | None = None
    worst_f16 = 0.0
    try:
        for sample in tqdm(samples, total=total, disable=not progress, desc="packing", unit="img"):
            path = _path_entry(sample.get("path"))
            where = _path_text(path)
            image = _to_numpy(sample["image"])
            bands = tuple(sample.get("bands") or getattr(dataset, "bands", ()) or ())
            if not bands:
                raise DataError(where, "sample has no 'bands' and the dataset no .bands")
            mask = None if sample.get("mask") is None else _to_numpy(sample["mask"])
            if image.ndim != 3:
                raise DataError(where, f"image must be (C, H, W), got shape {image.shape}")
            if size is not None:
                image, mask = _fit_size(image, mask, size, fit)
            elif first_shape is not None and image.shape != first_shape:
                raise DataError(
                    where,
                    f"image shape {image.shape} differs from {first_shape} of the first sample"
                    f" ({first_path})",
                    "pass size=N to center-crop/resize every image to N x N",
                )
            if writer is None:
                first_shape, first_path = image.shape, where
                writer = ShardWriter(
                    out_dir, bands, sensor=sensor, shard_size=shard_size, class_names=class_names
                )
            elif bands != writer.bands:
                raise BandMismatchError(where, writer.bands, bands, "samples differ in bands")
            label, target = None, sample.get("target")
            raw = sample.get("label")
            if raw is not None:
                arr = _to_numpy(raw)
                kind = (
                    "class"
                    if arr.ndim == 0 and arr.dtype.kind in "iub"
                    else "multilabel"
                    if arr.ndim == 1 and _is_binary(arr)
                    else "target"
                )
                if label_kind is None:
                    label_kind = kind
                elif kind != label_kind and not (label_kind == "target" and kind != "class"):
                    raise DataError(
                        where,
                        f"label {arr.tolist()} is a {kind} but earlier ones were {label_kind}",
                    )
                if label_kind == "target":
                    if target is not None:
                        raise DataError(where, "sample has both a regression label and a target")
                    target = arr.astype(np.float32)
                else:
                    label = arr
            stored = narrow_dtype(np.ascontiguousarray(image))
            if float16 and stored.dtype.kind == "f":
                source_dtype = source_dtype or str(stored.dtype)
                stored, err = float16_if_close(stored)
                worst_f16 = max(worst_f16, err)
            writer.add(
                stored,
                label=label,
                mask=None if mask is None else narrow_dtype(mask),
                target=target,
                path=path,
            )
        assert writer is not None
        if source_dtype is not None:
            final = writer.index()["dtype"]
            writer.storage = {
                "source_dtype": source_dtype,
                "dtype": final,
                "float16": final == "float16",
                "max_relative_error": worst_f16 if final == "float16" else 0.0,
                "tolerance": FLOAT16_TOLERANCE,
            }
        return writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if _disk_full(exc):
            raise DataError(
                out_dir,
                f"disk full while packing ({os.strerror(errno.ENOSPC)}); the partial shards were"
                " removed",
                "free space there, point EOFM_CACHE_DIR elsewhere, or set data.cache: false",
            ) from exc
        raise


# --------------------------------------------------------------------------------------------
# readers


class _ShardStore:
    """Index, band selection and lazily opened memory maps shared by both readers."""

    def __init__(self, root: str | os.PathLike[str], bands: Sequence[str] | None) -> None:
        self.root = Path(root)
        self.index = read_index(self.root)
        index_path = str(self.root / INDEX_NAME)
        if self.index["total"] == 0 or not self.index["shards"]:
            raise EmptyDatasetError(index_path, "shard folder holds no samples")
        self.stored_bands: tuple[str, ...] = tuple(self.index["bands"])
        self.sensor: str | None = self.index.get("sensor")
        sensor: Sensor | None = None
        if self.sensor is not None:
            try:
                sensor = get_sensor(self.sensor)
            except UnknownNameError:
                sensor = None
        self.band_index: list[int] | None = None
        self.bands = self.stored_bands
        if bands is not None:
            if isinstance(bands, str):
                raise TypeError("bands must be a sequence of band names, not one string")
            idx = match_bands(bands, self.stored_bands, sensor=sensor, path=index_path)
            self.bands = tuple(self.stored_bands[i] for i in idx)
            if idx != list(range(len(self.stored_bands))):
                self.band_index = idx
        self.label_kind: LabelKind = self.index["label_kind"]
        self.class_names: tuple[str, ...] | None = (
            None if self.index.get("class_names") is None else tuple(self.index["class_names"])
        )
        self.image_shape = tuple(int(s) for s in self.index["image_shape"])
        self.counts = [int(s["count"]) for s in self.index["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self._expected: dict[str, tuple[tuple[int, ...], np.dtype[Any] | None]] = {
            "images": (self.image_shape, np.dtype(self.index["dtype"]))
        }
        if self.label_kind == "class":
            self._expected["labels"] = ((), np.dtype(np.int64))
        elif self.label_kind == "multilabel":
            self._expected["labels"] = (tuple(self.index.get("label_shape") or ()), None)
        if self.index["has_masks"]:
            self._expected["masks"] = (self.image_shape[1:], None)
        if self.index.get("has_targets"):
            self._expected["targets"] = (tuple(self.index.get("target_shape") or ()), None)
        for entry in self.index["shards"]:
            files = entry["files"]
            for key, (item_shape, dtype) in self._expected.items():
                if key not in files:
                    raise CorruptFileError(index_path, f"shard {entry['name']} lists no {key} file")
                _check_npy(self.root / files[key], (entry["count"], *item_shape), dtype)
        self._arrays: dict[int, dict[str, Array]] = {}
        self._paths: dict[int, list[PathEntry]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps are reopened in each worker process
        state["_paths"] = {}
        return state

    def arrays(self, shard: int) -> dict[str, Array]:
        arrays = self._arrays.get(shard)
        if arrays is None:
            arrays = {}
            files = self.index["shards"][shard]["files"]
            for key in self._expected:
                path = self.root / files[key]
                try:
                    arrays[key] = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise CorruptFileError(path, f"cannot memory-map shard file: {exc}") from exc
                if arrays[key].shape[0] != self.counts[shard]:
                    raise CorruptFileError(path, "shard file changed since the index was read")
            self._arrays[shard] = arrays
        return arrays

    def paths(self, shard: int) -> list[PathEntry]:
        paths = self._paths.get(shard)
        if paths is None:
            name = self.index["shards"][shard]["files"].get("paths")
            if name is None:
                paths = [None] * self.counts[shard]
            else:
                path = self.root / name
                try:
                    paths = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise CorruptFileError(path, f"cannot read source paths: {exc}") from exc
                if not isinstance(paths, list) or len(paths) != self.counts[shard]:
                    raise CorruptFileError(
                        path, f"does not hold {self.counts[shard]} paths as index.json says"
                    )
            self._paths[shard] = paths
        return paths

    def locate(self, index: int) -> tuple[int, int, int]:
        i = int(index)
        if i < 0:
            i += self.total
        if not 0 <= i < self.total:
            raise IndexError(f"index {index} out of range for {self.total} samples")
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return shard, i - int(self.offsets[shard]), i

    def sample(self, shard: int, local: int, global_index: int) -> Sample:
        arrays = self.arrays(shard)
        img = arrays["images"][local]
        if self.band_index is not None:
            img = img[self.band_index]
        out: Sample = {
            "image": torch.from_numpy(np.array(img, dtype=np.float32)),
            "bands": self.bands,
        }
        if self.label_kind == "class":
            out["label"] = torch.tensor(int(arrays["labels"][local]), dtype=torch.int64)
        elif self.label_kind == "multilabel":
            out["label"] = torch.from_numpy(np.array(arrays["labels"][local], dtype=np.float32))
        if "masks" in arrays:
            out["mask"] = torch.from_numpy(np.array(arrays["masks"][local], dtype=np.int64))
        if "targets" in arrays:
            out["target"] = torch.from_numpy(np.array(arrays["targets"][local], dtype=np.float32))
        out["path"] = self.paths(shard)[local]
        out["index"] = global_index
        return out

    def batch(
        self,
        indices: Sequence[int] | Array | torch.Tensor,
        *,
        native: bool = False,
        paths: bool = True,
    ) -> dict[str, Any]:
        idx = np.asarray(_to_numpy(indices), dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.total, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.total):
            raise IndexError(f"indices out of range for {self.total} samples")
        n = idx.size
        c = len(self.bands)
        h, w = self.image_shape[1:]
        dtype = np.dtype(self.index["dtype"]) if native else np.dtype(np.float32)
        images = np.empty((n, c, h, w), dtype=dtype)
        labels: Array | None = None
        if self.label_kind == "class":
            labels = np.empty(n, dtype=np.int64)
        elif self.label_kind == "multilabel":
            labels = np.empty((n, *self._expected["labels"][0]), dtype=np.float32)
        masks = np.empty((n, h, w), dtype=np.int64) if "masks" in self._expected else None
        targets = (
            np.empty((n, *self._expected["targets"][0]), dtype=np.float32)
            if "targets" in self._expected
            else None
        )
        path_list: list[PathEntry] = [None] * n
        shards = np.searchsorted(self.offsets, idx, side="right") - 1
        for shard in np.unique(shards):
            pos = np.flatnonzero(shards == shard)
            local = idx[pos] - self.offsets[shard]
            order = np.argsort(local, kind="stable")
            pos, local = pos[order], local[order]
            arrays = self.arrays(int(shard))
            rows = arrays["images"][local]
            images[pos] = rows if self.band_index is None else rows[:, self.band_index]
            if labels is not None:
                labels[pos] = arrays["labels"][local]
            if masks is not None:
                masks[pos] = arrays["masks"][local]
            if targets is not None:
                targets[pos] = arrays["targets"][local]
            if paths:
                shard_paths = self.paths(int(shard))
                for p, j in zip(pos.tolist(), local.tolist(), strict=True):
                    path_list[p] = shard_paths[j]
        out: dict[str, Any] = {"image": torch.from_numpy(images), "bands": self.bands}
        if labels is not None:
            out["label"] = torch.from_numpy(labels)
        if masks is not None:
            out["mask"] = torch.from_numpy(masks)
        if targets is not None:
            out["target"] = torch.from_numpy(targets)
        if paths:
            out["path"] = path_list
        out["index"] = torch.from_numpy(idx)
        return out


class ShardDataset(Dataset[Sample]):
    """Map-style reader of a shard folder; samples are read from memory maps.

    ``bands`` selects and reorders channels by name (sensor aliases such as ``red`` work when
    the shards record a registered sensor). Memory maps are opened on first use in each
    process, so the dataset is cheap to send to DataLoader workers. Batched reads through a
    DataLoader use :meth:`get_batch` (via ``__getitems__``) and are vectorised per shard.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        bands: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self._store = _ShardStore(root, bands)
        self.root = self._store.root
        self.transform = transform

    @property
    def bands(self) -> tuple[str, ...]:
        return self._store.bands

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._store.class_names

    @property
    def sensor(self) -> str | None:
        return self._store.sensor

    @property
    def label_kind(self) -> LabelKind:
        return self._store.label_kind

    @property
    def index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        return self._store.index

    @property
    def shard_counts(self) -> list[int]:
        return list(self._store.counts)

    def __len__(self) -> int:
        return self._store.total

    def __getitem__(self, index: int) -> Sample:
        shard, local, i = self._store.locate(index)
        sample = self._store.sample(shard, local, i)
        return self.transform(sample) if self.transform is not None else sample

    def get_batch(
        self,
        indices: Sequence[int] | Array | torch.Tensor,
        *,
        native: bool = False,
        paths: bool = True,
    ) -> dict[str, Any]:
        """Read many samples at once, stacked like :func:`collate_samples` output.

        ``image`` is ``(B, C, H, W)`` float32 (``native=True``: the stored dtype, e.g. uint8,
        for a cast on the training device), ``label``/``mask``/``target`` are stacked,
        ``path`` is a list (left out with ``paths=False``) and ``index`` an int64 tensor.
        ``transform`` is not applied.
        """
        return self._store.batch(indices, native=native, paths=paths)

    @property
    def stored_dtype(self) -> np.dtype[Any]:
        """The dtype images are stored in (``get_batch(native=True)`` returns it)."""
        dtype: np.dtype[Any] = np.dtype(self._store.index["dtype"])
        return dtype

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """DataLoader hook: one vectorised read per batch, split back into samples."""
        batch = self._store.batch(indices)
        out: list[Sample] = []
        for k in range(len(indices)):
            sample: Sample = {"image": batch["image"][k], "bands": self.bands}
            for key in ("label", "mask", "target"):
                if key in batch:
                    sample[key] = batch[key][k]
            sample["path"] = batch["path"][k]
            sample["index"] = int(batch["index"][k])
            out.append(self.transform(sample) if self.transform is not None else sample)
        return out


class ShardBatches(Dataset[dict[str, Any]]):
    """Whole batches of a :class:`ShardDataset`: ``batches[list_of_indices]`` is one batch.

    Made for a DataLoader with ``batch_size=None`` and a batch sampler as ``sampler``: each
    batch is one vectorised read per shard (no per-sample Python), images in their stored
    dtype (uint8 stays uint8, cast to float on the training device), without source paths.
    """

    def __init__(self, dataset: ShardDataset, *, native: bool = True, paths: bool = False):
        if dataset.transform is not None:
            raise ValueError("ShardBatches reads raw batches; the dataset has a transform")
        self.dataset = dataset
        self.native = native
        self.paths = paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.dataset.get_batch(indices, native=self.native, paths=self.paths)


class ShardIterableDataset(IterableDataset[Sample]):
    """Streams shards one after another, for pretraining on many samples.

    Each epoch (see :meth:`set_epoch`) shuffles the shard order and the order within each
    shard, from ``seed`` and the epoch, identically on every rank. Rank ``r`` of ``w`` reads
    shards ``r, r + w, ...`` of that order; DataLoader workers split the rank's shards the same
    way. Where there are fewer shards than ranks (or than a rank's workers), the samples of
    each shard are split instead, so every sample is read exactly once per epoch. Ranks may get
    different numbers of samples when shards differ in size: with DDP, prefer a shard count
    that is a multiple of the world size, or cap steps per epoch.

    ``rank``/``world_size`` given explicitly win; otherwise they come from
    :mod:`torch.distributed` when it is initialised, else 0 and 1.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        bands: Sequence[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        self._store = _ShardStore(root, bands)
        self.root = self._store.root
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self.epoch = 0

    @property
    def bands(self) -> tuple[str, ...]:
        return self._store.bands

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._store.class_names

    @property
    def num_samples(self) -> int:
        """Samples over all ranks."""
        return self._store.total

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the shuffle (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def _rank_world(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world = dist.get_world_size() if world is None else world
        rank = 0 if rank is None else rank
        world = 1 if world is None else world
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside 0..{world - 1}")
        return rank, world

    def assignment(
        self, worker: int | None = None, num_workers: int | None = None
    ) -> list[tuple[int, Array]]:
        """``(shard, local indices)`` this rank and worker reads this epoch, in order."""
        if worker is None or num_workers is None:
            info = get_worker_info()
            worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self._rank_world()
        n_shards = len(self._store.counts)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n_shards)
        else:
            order = np.arange(n_shards)
        units: list[tuple[int, Array]] = [
            (int(s), np.arange(self._store.counts[s], dtype=np.int64)) for s in order
        ]
        units = _split(_split(units, rank, world), worker, num_workers)
        if self.shuffle:
            units = [
                (s, np.random.default_rng([self.seed, self.epoch, s, 1]).permutation(local))
                for s, local in units
            ]
        return units

    def __iter__(self) -> Iterator[Sample]:
        store = self._store
        for shard, local in self.assignment():
            base = int(store.offsets[shard])
            for j in local.tolist():
                sample = store.sample(shard, j, base + j)
                yield self.transform(sample) if self.transform is not None else sample


def _split(units: list[tuple[int, Array]], part: int, parts: int) -> list[tuple[int, Array]]:
    """Part ``part`` of ``parts``: whole shards when there are enough, else strided samples."""
    if parts == 1:
        return units
    if len(units) >= parts:
        return units[part::parts]
    return [(s, local[part::parts]) for s, local in units if local[part::parts].size]
