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
- :class:`ShardBatches` hands a DataLoader whole batches (one vectorised read each).

Modules: ``format`` (constants, ``.npy`` streaming, dtype rules, ``read_index``), ``writer``,
``pack``, ``reader``.
"""

from eofm.data.shards.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    narrow_dtype,
    read_index,
)
from eofm.data.shards.pack import FLOAT16_TOLERANCE, float16_if_close, pack_dataset
from eofm.data.shards.reader import ShardBatches, ShardDataset, ShardIterableDataset
from eofm.data.shards.writer import ShardWriter

__all__ = [
    "FLOAT16_TOLERANCE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "ShardBatches",
    "ShardDataset",
    "ShardIterableDataset",
    "ShardWriter",
    "float16_if_close",
    "narrow_dtype",
    "pack_dataset",
    "read_index",
]
