"""Pack a dataset into a streamable pool in object storage (litdata chunks + dataset card).

The dataset is first packed into eofm shards (:func:`~eofm.data.shards.pack_dataset`: one
image shape, narrowest lossless dtype, labels checked) in a local staging folder (a shard
folder is used as it is); ``litdata.optimize`` writes its chunks there, in dataset order; they
are uploaded, checked, and eofm's pool description (``eofm_pool.json``, with the dataset card)
is uploaded last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from eofm.data.card import DatasetCard
from eofm.data.sample import Sample
from eofm.data.stats import CARD_NAME, compute_stats
from eofm.data.stream.remote import (
    LITDATA_INDEX,
    POOL_META,
    PoolURL,
    check_pool,
    check_writable,
    parse_url,
    upload,
)

__all__ = ["POOL_FORMAT", "pack_to_url"]

#: ``format`` of ``eofm_pool.json``.
POOL_FORMAT = "eofm-stream"
_STAGING_ENV = "DATA_OPTIMIZER_CACHE_FOLDER"


class _ShardRows:
    """litdata's ``fn``: the samples of one index range of a shard folder, in order."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._dataset: Any = None

    def __call__(self, rows: tuple[int, int]) -> Iterator[dict[str, Any]]:
        from eofm.data.shards import ShardDataset

        if self._dataset is None:  # first call in this (spawned) worker process
            self._dataset = ShardDataset(self.root)
        batch = self._dataset.get_batch(list(range(*rows)), native=True, paths=True)
        for j in range(rows[1] - rows[0]):
            item: dict[str, Any] = {
                "index": int(batch["index"][j]),
                "image": np.ascontiguousarray(batch["image"][j].numpy()),
            }
            for key in ("label", "mask", "target"):
                if key in batch:
                    item[key] = np.ascontiguousarray(batch[key][j].numpy())
            path = batch["path"][j]
            item["path"] = json.dumps(path) if isinstance(path, list) else str(path or "")
            yield item


def pack_to_url(
    dataset: Dataset[Sample],
    url: str,
    *,
    shard_size: int = 4096,
    num_workers: int = 1,
    progress: bool = True,
    size: int | None = None,
    fit: str = "crop",
    card: DatasetCard | None = None,
) -> PoolURL:
    """Write ``dataset`` as a streamable pool to ``url`` (``s3://bucket/prefix``, ``gs://``).

    ``shard_size`` samples per chunk; ``card``: the dataset card to store (default: the
    shard folder's ``eofm_card.json``, else computed from up to 2000 samples).
    """
    import litdata

    from eofm.data.shards import ShardDataset, pack_dataset

    pool = parse_url(url)
    check_writable(pool)
    with tempfile.TemporaryDirectory(prefix="eofm-pack-") as staging:
        if isinstance(dataset, ShardDataset) and dataset.transform is None:
            shards = dataset
        else:
            root = pack_dataset(
                dataset,
                Path(staging) / "shards",
                shard_size=shard_size,
                progress=progress,
                size=size,
                fit=fit,
            )
            shards = ShardDataset(root)
        n = len(shards)
        step = max(1, min(shard_size, -(-n // max(1, num_workers))))
        rows = [(start, min(n, start + step)) for start in range(0, n, step)]
        # chunks are written locally, then uploaded here: litdata's own uploader processes
        # log a failed upload and carry on, and cannot be told to allow an http:// endpoint.
        # It stages chunks in $DATA_OPTIMIZER_CACHE_FOLDER (default /tmp/chunks, shared by
        # every run on the machine): ours, in the staging folder, for this pack.
        chunks = Path(staging) / "chunks"
        old = os.environ.get(_STAGING_ENV)
        os.environ[_STAGING_ENV] = os.path.join(staging, "litdata-cache")
        start_method = multiprocessing.get_start_method(allow_none=True)
        try:
            litdata.optimize(
                fn=_ShardRows(str(shards.root)),
                inputs=rows,
                output_dir=str(chunks),
                chunk_size=shard_size,
                num_workers=max(1, num_workers),
                keep_data_ordered=True,
                reorder_files=False,
                verbose=progress,
            )
        finally:
            # optimize switches the whole process to "spawn"; give the caller its own back
            multiprocessing.set_start_method(start_method, force=True)
            if old is None:
                os.environ.pop(_STAGING_ENV, None)
            else:
                os.environ[_STAGING_ENV] = old
        index = json.loads((chunks / LITDATA_INDEX).read_text(encoding="utf-8"))
        names = [c["filename"] for c in index["chunks"]]
        for name in tqdm(names, disable=not progress, desc="uploading", unit="chunk"):
            upload(pool, str(chunks / name), name)
        upload(pool, str(chunks / LITDATA_INDEX), LITDATA_INDEX)
        if card is None:
            local_card = shards.root / CARD_NAME
            card = (
                DatasetCard.from_json(local_card)
                if local_card.is_file()
                else compute_stats(shards, max_samples=2000, progress=False)
            )
        index = shards.index
        meta: dict[str, Any] = {
            "format": POOL_FORMAT,
            "version": 1,
            "num_samples": n,
            **{
                k: index.get(k)
                for k in (
                    "bands",
                    "sensor",
                    "class_names",
                    "dtype",
                    "image_shape",
                    "label_kind",
                    "label_shape",
                    "has_masks",
                    "has_targets",
                    "target_shape",
                    "storage",
                )
            },
        }
        meta_path = os.path.join(staging, POOL_META)
        Path(meta_path).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        card_path = os.path.join(staging, CARD_NAME)
        card.to_json(card_path)
        upload(pool, card_path, CARD_NAME)
        check_pool(pool, meta=False)  # every chunk arrived whole
        upload(pool, meta_path, POOL_META)  # last: a pool with eofm_pool.json is complete
    return pool
