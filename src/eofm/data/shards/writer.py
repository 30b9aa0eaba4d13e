"""``ShardWriter``: samples into shards of ``shard_size``, constant memory, atomic files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np

from eofm.data.sensors import Sensor
from eofm.data.shards.format import (
    _ARRAY_FIELDS,
    _OUR_FILE,
    _OUR_TEMP,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    Array,
    LabelKind,
    PathEntry,
    _atomic_save_npy,
    _atomic_write_text,
    _lossless_cast,
    _NpyAppender,
    _shard_name,
    _to_numpy,
)
from eofm.errors import (
    BandMismatchError,
    DataError,
    EmptyDatasetError,
)

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
