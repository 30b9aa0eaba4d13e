"""Decode once, train many times: datasets packed into cached shards on first use.

The first time a folder, CSV or glob is read for training, curation or evaluation,
:func:`cached_dataset` decodes it into memory-mapped shards (:mod:`eofm.data.shards`; pixels
in their native dtype, uint8 stays uint8, float images as float16 where lossless enough) under
``$EOFM_CACHE_DIR`` (default ``~/.cache/eofm``) and returns a
:class:`~eofm.data.shards.ShardDataset` over them; later runs find the same shards again.

The cache key is a hash of the dataset's kind and settings and of every source file's path,
size and modification time, so a changed, added or removed file makes a new entry. Entries
are packed into a temporary folder and renamed into place, so a half-written cache is never
read; two processes packing the same data take turns on a lock file (the second waits, then
reuses the first one's shards). A dataset whose decoded size exceeds the disk budget
(``limit``, or the free space) is not packed: the caller streams from the files as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from eofm.data.readers.base import human_bytes
from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError

__all__ = [
    "CacheInfo",
    "batch_reader",
    "cache_dir",
    "cache_enabled",
    "cache_entries",
    "cache_key",
    "cached_dataset",
    "clear_cache",
    "parse_size",
]

#: Bumped when the packed layout or the key's inputs change (old entries are then ignored).
CACHE_VERSION = 1
META_NAME = "eofm_cache.json"
#: Free space left on the cache's disk after packing.
DISK_MARGIN = 1 << 30

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(value: str | int | float | None) -> int | None:
    """Bytes of ``"20GB"``, ``"500MiB"``, ``"1.5T"``, a number of bytes, or ``None``."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"data.cache_limit {value!r} is not a size (e.g. 20GB, 500MiB)")
    power = " kmgt".index(m.group(2).lower() or " ")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**power)


def cache_enabled() -> bool:
    """False when ``$EOFM_CACHE`` is ``0``, ``off``, ``false`` or ``no`` (every command)."""
    return os.environ.get("EOFM_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    """``$EOFM_CACHE_DIR``, else ``$XDG_CACHE_HOME/eofm``, else ``~/.cache/eofm``."""
    env = os.environ.get("EOFM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "eofm"


# --------------------------------------------------------------------------------------------
# the key: what the dataset is and every file it reads


class _Uncacheable(Exception):
    """The dataset holds something the key cannot describe (it is then streamed)."""


def _describe(value: Any, files: list[Path], depth: int = 0) -> Any:
    """A JSON-able description of ``value``; paths are collected into ``files``."""
    if depth > 6:
        raise _Uncacheable("nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Path):
        path = Path(os.path.abspath(value))  # the same files from any working folder
        files.append(path)
        return str(path)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.size > 4096:
            return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _describe(v, files, depth + 1) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, (list, tuple)):
        return [_describe(v, files, depth + 1) for v in value]
    if isinstance(value, re.Pattern):
        return value.pattern
    text = repr(value)
    if " at 0x" in text or len(text) > 2000:
        raise _Uncacheable(f"cannot describe {type(value).__name__}")
    return text


#: Attributes that say nothing about the pixels and labels a dataset yields.
_IGNORED = {"skipped", "transform", "on_error", "_reader_cache"}


def _fingerprint(dataset: Any) -> tuple[dict[str, Any], list[Path]]:
    records = getattr(dataset, "records", None)
    if records is None:
        raise _Uncacheable(f"{type(dataset).__name__} lists no records")
    if getattr(dataset, "transform", None) is not None:
        raise _Uncacheable("the dataset has a transform (it may be random)")
    files: list[Path] = []
    state = {
        k: _describe(v, files)
        for k, v in sorted(vars(dataset).items())
        if k not in _IGNORED and k != "records" and not k.startswith("_")  # _: state of reads
    }
    record_files: list[Path] = []
    described = _describe(list(records), record_files)
    files.extend(record_files)
    kind = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    return {"kind": kind, "state": state, "records": described}, files


def _file_stats(files: Sequence[Path]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for path in sorted(set(files)):
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(
                path, "listed by the dataset but missing", "restore it or rebuild the file list"
            ) from None
        except OSError as exc:
            raise DataError(path, f"cannot read file status: {exc.strerror}") from None
        if path.is_dir():
            continue
        out.append([str(path), st.st_size, st.st_mtime_ns])
    return out


def cache_key(dataset: Any, *, float16: bool = True) -> str:
    """The content hash of ``dataset`` (raises ``_Uncacheable`` for datasets without records)."""
    desc, files = _fingerprint(dataset)
    payload = {
        "version": CACHE_VERSION,
        "dataset": desc,
        "files": _file_stats(files),
        "float16": float16,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# entries


@dataclass
class CacheInfo:
    """One cache entry: its folder and what it holds."""

    path: Path
    key: str
    source: str
    num_samples: int
    bytes: int
    dtype: str
    created: str
    pack_seconds: float


def _entry_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def cache_entries(root: Path | None = None) -> list[CacheInfo]:
    """The complete entries under the cache folder, newest first."""
    base = (root or cache_dir()) / "shards"
    out: list[CacheInfo] = []
    if not base.is_dir():
        return out
    for folder in base.iterdir():
        meta_path = folder / META_NAME
        if not folder.is_dir() or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        out.append(
            CacheInfo(
                path=folder,
                key=folder.name,
                source=str(meta.get("source", "")),
                num_samples=int(meta.get("num_samples", 0)),
                bytes=_entry_bytes(folder),
                dtype=str(meta.get("dtype", "")),
                created=str(meta.get("created", "")),
                pack_seconds=float(meta.get("pack_seconds", 0.0)),
            )
        )
    return sorted(out, key=lambda e: e.created, reverse=True)


def clear_cache(root: Path | None = None) -> int:
    """Remove every entry (and left-over partial packs); returns the bytes freed."""
    base = (root or cache_dir()) / "shards"
    freed = 0
    if not base.is_dir():
        return 0
    for folder in base.iterdir():
        if folder.is_dir():
            freed += _entry_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
    return freed


@contextlib.contextmanager
def _locked(path: Path, what: str, quiet: bool) -> Iterator[None]:
    """An exclusive lock on ``path``; says once that it waits for another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"waiting for another process packing {what} ...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _estimate_bytes(dataset: Any, n: int) -> int:
    """Decoded size of ``dataset`` from its first sample (stored dtype, masks included)."""
    from eofm.data.shards import narrow_dtype

    first: Sample = dataset[0]
    image = np.asarray(first["image"])
    per = narrow_dtype(image).nbytes
    if image.dtype.kind == "f" and narrow_dtype(image).dtype.kind == "f":
        per = image.size * 2  # float16 where lossless enough (float32 at worst, see below)
    if first.get("mask") is not None:
        per += np.asarray(first["mask"]).size
    return per * n


def cached_dataset(
    dataset: Any,
    *,
    source: str = "",
    root: Path | None = None,
    limit: int | str | None = None,
    num_workers: int = 0,
    float16: bool = True,
    progress: bool = True,
    quiet: bool = False,
) -> Any | None:
    """A :class:`~eofm.data.shards.ShardDataset` of ``dataset`` packed once into the cache.

    Returns ``None`` when ``dataset`` cannot be cached (no file list, a transform, images of
    different sizes) or does not fit (``limit`` bytes or the disk's free space): the caller
    then streams from the files. Shard datasets are returned as they are.
    """
    from eofm.data.shards import ShardDataset, pack_dataset

    if isinstance(dataset, ShardDataset):
        return dataset
    if not cache_enabled():
        return None
    label = source or getattr(dataset, "root", None) or type(dataset).__name__
    try:
        key = cache_key(dataset, float16=float16)
    except _Uncacheable as exc:
        _note(quiet, f"not cached ({label}): {exc}")
        return None
    base = (root or cache_dir()) / "shards"
    final = base / key
    if (final / META_NAME).is_file():
        return ShardDataset(final)
    n = len(dataset)
    budget = parse_size(limit)
    need = _estimate_bytes(dataset, n)
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free - DISK_MARGIN
    if (budget is not None and need > budget) or need > free:
        over = (
            f"data.cache_limit {human_bytes(budget)}"
            if budget is not None and need > budget
            else f"{human_bytes(max(free, 0))} free on {base}"
        )
        _note(
            quiet, f"not cached ({label}): ~{human_bytes(need)} decoded exceeds {over}; streaming"
        )
        return None
    with _locked(base / f"{key}.lock", str(label), quiet):
        if (final / META_NAME).is_file():  # packed by another process meanwhile
            return ShardDataset(final)
        tmp = base / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            pack_dataset(
                dataset,
                tmp,
                num_workers=num_workers,
                progress=progress,
                float16=float16,
            )
        except DataError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if "differs from" in str(err) and "shape" in str(err):
                _note(quiet, f"not cached ({label}): images differ in size; streaming")
                return None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        if cache_key(dataset, float16=float16) != key:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                label,
                "source files changed while they were being packed into the cache",
                "run again once the files are no longer being written",
            )
        index = json.loads((tmp / "index.json").read_text())
        meta = {
            "source": str(label),
            "key": key,
            "num_samples": int(index["total"]),
            "dtype": index["dtype"],
            "storage": index.get("storage", {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "pack_seconds": round(seconds, 2),
            "cache_version": CACHE_VERSION,
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _note(
            quiet,
            f"cached {n} samples of {label} in {seconds:.1f} s -> {final}"
            f" ({human_bytes(_entry_bytes(final))}, {index['dtype']})",
        )
    return ShardDataset(final)


def _note(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr)


def batch_reader(dataset: Any) -> Callable[..., dict[str, Any]] | None:
    """``get_batch`` of ``dataset`` (shards, array sets) or of its decode-once cache entry;
    ``None`` when it can be read sample by sample only (the caller uses a DataLoader)."""
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        return cast(Callable[..., dict[str, Any]], get_batch)
    cached = cached_dataset(dataset, progress=False, quiet=True)  # decoded once, then reused
    return None if cached is None else cached.get_batch
