"""Reading shards back: by index (:class:`ShardDataset`), whole batches
(:class:`ShardBatches`) and as a stream split over ranks and workers
(:class:`ShardIterableDataset`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from eofm.data.sample import Sample
from eofm.data.sensors import Sensor, get_sensor, match_bands
from eofm.data.shards.format import (
    INDEX_NAME,
    Array,
    LabelKind,
    PathEntry,
    Transform,
    _check_npy,
    _to_numpy,
    read_index,
)
from eofm.errors import (
    CorruptFileError,
    EmptyDatasetError,
    UnknownNameError,
)

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
