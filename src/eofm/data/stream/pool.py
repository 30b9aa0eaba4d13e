"""A pool in object storage read as an eofm dataset: ``litdata.StreamingDataset`` yielding
eofm samples, with a bounded local chunk cache, rank x worker sharding, resumable state and
training subsets (dynamic pruning) that stream only the chosen samples."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset

from eofm.data.card import DatasetCard
from eofm.data.sample import Sample
from eofm.data.stats import CARD_NAME
from eofm.data.stream.pack import POOL_FORMAT
from eofm.data.stream.remote import (
    PoolURL,
    check_pool,
    parse_url,
    prepare_process,
    storage_options,
)
from eofm.errors import BandMismatchError, CorruptFileError, DataError

__all__ = ["StreamedPool", "ToSample", "stream_cache_dir"]


def stream_cache_dir() -> Path:
    """Where streamed chunks are cached: ``$EOFM_CACHE_DIR/streams`` (``~/.cache/eofm``)."""
    from eofm.data.cache import cache_dir

    return cache_dir() / "streams"


class ToSample:
    """litdata item -> eofm sample (image in the stored dtype when ``native``, else float32)."""

    def __init__(self, bands: tuple[str, ...], band_index: list[int] | None) -> None:
        self.bands = bands
        self.band_index = band_index
        #: Keep the stored dtype (uint8 stays uint8; the training step casts on the device).
        self.native = False
        #: Keep the source path of each sample (left out of training batches).
        self.paths = True

    def __call__(self, item: dict[str, Any]) -> Sample:
        image = item["image"]
        if self.band_index is not None:
            image = image[self.band_index]
        if not self.native:
            image = image.astype(np.float32)
        out: Sample = {"image": torch.from_numpy(np.ascontiguousarray(image)), "bands": self.bands}
        if "label" in item:
            label = np.asarray(item["label"])
            out["label"] = torch.from_numpy(
                label.astype(np.int64 if label.ndim == 0 else np.float32)
            )
        if "mask" in item:
            out["mask"] = torch.from_numpy(np.asarray(item["mask"], dtype=np.int64))
        if "target" in item:
            out["target"] = torch.from_numpy(np.asarray(item["target"], dtype=np.float32))
        if self.paths:
            out["path"] = item.get("path", "")
        out["index"] = int(item["index"])
        return out


class StreamedPool(StreamingDataset):  # type: ignore[misc]
    """The pool at ``url`` (``s3://bucket/prefix``, ``gs://``, ``az://``) as eofm samples.

    ``cache_limit``: bytes of downloaded chunks kept on local disk (``"2GB"``; litdata evicts
    the oldest beyond it), under ``cache_dir`` (default :func:`stream_cache_dir`).
    ``bands`` selects and reorders channels by name. Sharding over ranks and DataLoader
    workers, shuffling (chunk order and within chunks, from ``seed`` and the epoch) and the
    resumable state are litdata's; read it through ``litdata.StreamingDataLoader``.
    :meth:`subset` keeps only some dataset indices (the stream then downloads and yields
    only those).
    """

    def __init__(
        self,
        url: str,
        *,
        bands: Sequence[str] | None = None,
        cache_limit: str | int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
    ) -> None:
        from eofm.data.cache import parse_size

        pool = parse_url(url)
        meta = check_pool(pool)
        if meta.get("format") != POOL_FORMAT:
            raise CorruptFileError(pool.url, f"not an {POOL_FORMAT} pool (eofm_pool.json)")
        stored = tuple(str(b) for b in meta["bands"])
        band_index: list[int] | None = None
        chosen = stored
        if bands is not None:
            missing = [b for b in bands if b not in stored]
            if missing:
                raise BandMismatchError(pool.url, tuple(bands), stored, f"no bands {missing}")
            band_index = [stored.index(b) for b in bands]
            chosen = tuple(bands)
        root = Path(cache_dir) if cache_dir is not None else stream_cache_dir()
        # one folder per pool: litdata's own cache key changes with the index's timestamps
        local = root / hashlib.sha256(pool.litdata_url.encode()).hexdigest()[:16]
        local.mkdir(parents=True, exist_ok=True)
        limit = parse_size(cache_limit)
        super().__init__(
            pool.litdata_url,
            cache_dir=str(local),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            max_cache_size=limit if limit is not None else "10GB",
            storage_options=storage_options(pool),
            transform=ToSample(chosen, band_index),
        )
        self.url = pool.url
        self.pool: PoolURL = pool
        self.meta = meta
        self.bands: tuple[str, ...] = chosen
        self.sensor: str | None = meta.get("sensor")
        names = meta.get("class_names")
        self.class_names: tuple[str, ...] | None = None if names is None else tuple(names)
        self.num_samples = int(meta["num_samples"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        prepare_process()  # a spawned DataLoader worker

    @property
    def to_sample(self) -> ToSample:
        """The conversion applied to every item (set ``native``/``paths`` before loading)."""
        transform = self.transform
        out = transform[0] if isinstance(transform, list) else transform
        assert isinstance(out, ToSample)
        return out

    def card(self) -> DatasetCard:
        """The dataset card stored with the pool."""
        from eofm.data.stream.remote import download_text

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / CARD_NAME
            path.write_text(download_text(self.pool, CARD_NAME), encoding="utf-8")
            card = DatasetCard.from_json(path)
        card.source = card.source or self.url
        return card

    def subset(self, indices: Sequence[int] | slice) -> StreamedPool:
        """A copy that streams only ``indices`` (dataset order; sorted, duplicates dropped)."""
        if not isinstance(indices, slice):
            indices = sorted({int(i) for i in indices})
            if indices and (indices[0] < 0 or indices[-1] >= self.num_samples):
                raise DataError(
                    self.url,
                    f"subset index out of range 0..{self.num_samples - 1}",
                    "pass dataset indices of this pool",
                )
        out = super().subset(indices)
        assert isinstance(out, StreamedPool)
        return out

    def __getitem__(self, index: Any) -> Any:
        try:
            return super().__getitem__(index)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                self.url,
                f"cannot read sample {getattr(index, 'index', index)} of the stream: "
                f"{type(exc).__name__}: {exc}",
                "check the store (a chunk may be missing or damaged: pack the pool again)",
            ) from exc

    def __len__(self) -> int:
        return int(super().__len__())

    def __repr__(self) -> str:
        return f"StreamedPool({self.url!r}, {len(self)} samples, bands={list(self.bands)})"
