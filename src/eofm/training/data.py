"""Datasets, normalisation and the Lightning data module of a pretraining run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler

from eofm.data.sample import Sample, collate_samples
from eofm.data.stats import CARD_NAME, DatasetCard, Normalizer, load_or_compute_card
from eofm.data.stream.remote import is_remote
from eofm.errors import ConfigError, DataError
from eofm.training.config import DataConfig

__all__ = [
    "DatasetInfo",
    "EpochBatchSampler",
    "EpochShuffleSampler",
    "PretrainDataModule",
    "build_dataset",
    "build_normalizer",
    "parse_synthetic",
]

SYNTHETIC_KEYS = ("n", "size", "seed", "heavy_tail")


def parse_synthetic(spec: str) -> dict[str, Any]:
    """``synthetic[:kind][:key=value...]`` -> ``{"kind", "n", "size", "seed", "heavy_tail"}``."""
    parts = spec.split(":")
    if parts[0] != "synthetic":
        raise ConfigError(f"not a synthetic data spec: {spec!r}")
    out: dict[str, Any] = {"kind": "landcover", "n": 512, "size": 64, "seed": 0, "heavy_tail": None}
    for part in parts[1:]:
        if not part:
            continue
        if "=" not in part:
            if part not in ("landcover", "wavemode"):
                raise ConfigError(
                    f"data.path {spec!r}: unknown synthetic kind {part!r} (landcover, wavemode)"
                )
            out["kind"] = part
            continue
        key, value = part.split("=", 1)
        if key not in SYNTHETIC_KEYS:
            raise ConfigError(
                f"data.path {spec!r}: unknown key {key!r}; use {', '.join(SYNTHETIC_KEYS)}"
            )
        try:
            out[key] = float(value) if key == "heavy_tail" else int(value)
        except ValueError:
            raise ConfigError(f"data.path {spec!r}: {key}={value!r} is not a number") from None
    return out


def _synthetic_folder(spec: str, run_dir: Path) -> Path:
    """Generate (once) the synthetic shards of ``spec`` under ``run_dir/synthetic``."""
    from eofm.data.synthetic import write_synthetic

    params = parse_synthetic(spec)
    root = run_dir / "synthetic"
    meta_path = root / "eofm_synthetic_spec.json"
    if (root / "index.json").is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == params:
                return root
        except ValueError:
            pass
    write_synthetic(
        root,
        kind=params["kind"],
        n=params["n"],
        size=params["size"],
        seed=params["seed"],
        heavy_tail=params["heavy_tail"],
        fmt="shards",
        progress=False,
    )
    meta_path.write_text(json.dumps(params))
    return root


@dataclass
class DatasetInfo:
    """What the engine needs to know about the training data."""

    dataset: Dataset[Sample]
    root: Path | None
    bands: tuple[str, ...]
    sensor: str | None
    image_size: tuple[int, int]
    spec: str
    num_samples: int | None
    #: The decode-once cache entry the data are read from (``None``: read from the files).
    cache: Path | None = None


def pack_workers() -> int:
    """Processes decoding files while the cache is packed: every core but none to spare."""
    return min(8, available_cores())


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loader_workers(cfg: DataConfig, dataset: Dataset[Sample]) -> int:
    """``data.num_workers``, with ``auto`` resolved (see :class:`DataConfig`).

    Cached shards need no workers: a batch is one memory-mapped slice (measured on 2 cores,
    ``benchmarks/bench_data_path.py``: workers only take cores from the model). Files are
    decoded by up to 4 workers where there are more than 2 cores, else in the training process.
    """
    from eofm.data.shards import ShardDataset

    if cfg.num_workers != "auto":
        return int(cfg.num_workers)
    if isinstance(dataset, ShardDataset):
        return 0
    cores = available_cores()
    return 0 if cores <= 2 else min(4, cores // 2)


def build_dataset(
    cfg: DataConfig, run_dir: Path, *, seed: int = 0, progress: bool = True
) -> DatasetInfo:
    """Open the dataset of ``cfg`` (generating synthetic data into ``run_dir`` if asked);
    folders, CSVs and globs are read from the decode-once cache (``data.cache``)."""
    from eofm.data.cache import cached_dataset
    from eofm.data.catalog import open_dataset
    from eofm.data.shards import ShardDataset, ShardIterableDataset

    spec = cfg.path
    if not spec:
        raise ConfigError("data.path is empty; give a dataset folder, torchgeo:... or synthetic")
    if is_remote(spec):
        return _streamed_dataset(cfg, seed)
    root: Path | None = None
    if spec.startswith("synthetic"):
        root = _synthetic_folder(spec, run_dir)
        location = str(root)
    else:
        location = spec
        if not spec.startswith("torchgeo:"):
            p = Path(spec).expanduser()
            if not p.exists() and not any(ch in spec for ch in "*?["):
                raise DataError(
                    p, "data.path does not exist", "set data.path=... or use data.path=synthetic"
                )
            root = p if p.is_dir() else p.parent
            location = str(p)
    bands = list(cfg.bands) if cfg.bands is not None else None
    cache_path: Path | None = None
    is_shards = root is not None and (Path(location) / "index.json").is_file()
    dataset: Dataset[Sample]
    if is_shards:
        if cfg.iterable:
            dataset = ShardIterableDataset(location, bands=bands, shuffle=cfg.shuffle, seed=seed)
        else:
            dataset = ShardDataset(location, bands=bands)
    else:
        if cfg.iterable:
            raise ConfigError("data.iterable=true works with shard folders only")
        kwargs: dict[str, Any] = dict(cfg.options)
        if bands is not None:
            kwargs["bands"] = bands
        if cfg.band_names is not None:
            kwargs["band_names"] = list(cfg.band_names)
        if cfg.sensor is not None:
            kwargs["sensor"] = cfg.sensor
        if cfg.split is not None:
            kwargs["split"] = cfg.split
        try:
            dataset = open_dataset(location, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"data.options/split do not fit the dataset at {location}: {exc}"
            ) from None
        if cfg.cache and not isinstance(dataset, (ShardDataset, IterableDataset)):
            cached = cached_dataset(
                dataset,
                source=spec + (f" (split {cfg.split})" if cfg.split else ""),
                limit=cfg.cache_limit,
                num_workers=pack_workers(),
                progress=progress,
            )
            if cached is not None:
                cache_path = cached.root
                dataset = cached
    first = next(iter(dataset)) if isinstance(dataset, IterableDataset) else dataset[0]
    image = first["image"]
    if image.ndim != 3:
        raise DataError(location, f"expected (C, H, W) images, got shape {tuple(image.shape)}")
    sensor = cfg.sensor or getattr(dataset, "sensor", None)
    n: int | None = (
        dataset.num_samples if isinstance(dataset, ShardIterableDataset) else len(dataset)  # type: ignore[arg-type]
    )
    return DatasetInfo(
        dataset=dataset,
        root=Path(location) if root is not None and Path(location).is_dir() else root,
        bands=tuple(first["bands"]),
        sensor=str(sensor) if sensor is not None else None,
        image_size=(int(image.shape[-2]), int(image.shape[-1])),
        spec=spec,
        num_samples=n,
        cache=cache_path,
    )


def _streamed_dataset(cfg: DataConfig, seed: int) -> DatasetInfo:
    """A pool in object storage (``s3://...``), streamed (``eofm.data.stream``)."""
    from eofm.data.stream.pool import StreamedPool

    pool = StreamedPool(
        cfg.path,
        bands=list(cfg.bands) if cfg.bands is not None else None,
        cache_limit=cfg.cache_limit,
        shuffle=cfg.shuffle,
        seed=seed,
    )
    first = pool[0]
    image = first["image"]
    return DatasetInfo(
        dataset=pool,
        root=None,
        bands=tuple(first["bands"]),
        sensor=cfg.sensor or pool.sensor,
        image_size=(int(image.shape[-2]), int(image.shape[-1])),
        spec=cfg.path,
        num_samples=len(pool),
    )


def load_card(cfg: DataConfig, info: DatasetInfo, run_dir: Path) -> DatasetCard:
    """The dataset card: ``data.card``, else the data folder's, else computed into the run."""
    # bands=None: the dataset's own bands (compute_stats asserts when given the same list)
    kw: dict[str, Any] = {
        "max_samples": cfg.stats_max_samples,
        "nodata": cfg.nodata,
        "progress": False,
        "sensor": info.sensor,
    }
    if isinstance(info.dataset, IterableDataset) and cfg.stats_max_samples is None:
        kw["max_samples"] = 2000
    if cfg.card is not None:
        card = DatasetCard.from_json(cfg.card)
        card.mean_std(info.bands)  # raises a BandMismatchError naming the card if bands differ
        return card
    if is_remote(info.spec):  # the card packed with the pool, kept in the run folder
        pool_card: DatasetCard = info.dataset.card()  # type: ignore[attr-defined]
        pool_card.mean_std(info.bands)
        pool_card.to_json(run_dir / CARD_NAME)
        return pool_card
    if info.root is not None and (info.root / CARD_NAME).is_file():
        try:
            card = DatasetCard.from_json(info.root / CARD_NAME)
            card.mean_std(info.bands)
            return card
        except (DataError, KeyError):
            pass
    card = load_or_compute_card(run_dir / CARD_NAME, info.dataset, **kw)
    storage = getattr(info.dataset, "index", {}).get("storage") if info.cache else None
    if storage and card.extra.get("storage") != storage:
        card.extra["storage"] = storage  # how the decode-once cache stores the pixels
        card.to_json(run_dir / CARD_NAME)
    return card


def build_normalizer(
    cfg: DataConfig, info: DatasetInfo, run_dir: Path
) -> tuple[Normalizer | None, DatasetCard | None]:
    """The normaliser for ``data.normalize`` and the card it comes from."""
    if cfg.normalize == "none":
        return None, None
    card = load_card(cfg, info, run_dir)
    norm = Normalizer.from_card(card, bands=list(info.bands), method=cfg.normalize)
    bad = [b for b, s in zip(info.bands, norm.std.tolist()) if not math.isfinite(s)]
    if bad:
        raise DataError(card.source or None, f"dataset card has no valid std for bands {bad}")
    return norm, card


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochShuffleSampler(Sampler[int]):
    """This rank's share of a permutation drawn from ``(seed, epoch)``, resumable mid-epoch.

    Every rank draws the same permutation and takes every ``world``-th index (padded by
    wrapping around to a multiple of the world size, as ``DistributedSampler``), so the
    order depends only on the seed and the epoch. :meth:`resume_from` skips the samples this
    rank already trained on in that epoch: a resumed run sees the batches an uninterrupted run
    would have seen.
    """

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, indices: Sequence[int] | None = None
    ) -> None:
        #: Dataset indices to draw from (a training subset); ``None``: ``range(n)``.
        self.indices = None if indices is None else [int(i) for i in indices]
        self.n = len(self.indices) if self.indices is not None else int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._resume_epoch = -1
        self._resume_skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_from(self, epoch: int, samples: int) -> None:
        """Skip the first ``samples`` of this rank's share in ``epoch``."""
        self._resume_epoch = int(epoch)
        self._resume_skip = max(0, int(samples))

    def __len__(self) -> int:
        _, world = _rank_world()
        return math.ceil(self.n / world)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        order: list[int] = torch.randperm(self.n, generator=g).tolist()
        return order

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_world()
        order = self._order()
        if world > 1:
            total = math.ceil(self.n / world) * world
            order = (order * math.ceil(total / max(1, len(order))))[:total][rank::world]
        skip = self._resume_skip if self.epoch == self._resume_epoch else 0
        if self.indices is not None:
            return iter([self.indices[i] for i in order[skip:]])
        return iter(order[skip:])


class EpochBatchSampler(BatchSampler):
    """Batches of an :class:`EpochShuffleSampler`; forwards ``set_epoch`` (Lightning calls it
    on the DataLoader's ``sampler``, which is this one when batches are read whole)."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class PretrainDataModule(pl.LightningDataModule):
    """DataLoader over the training dataset with :func:`collate_samples` and ``drop_last``.

    Map-style datasets are read through an :class:`EpochShuffleSampler` (this module splits
    them across ranks; the trainer runs with ``use_distributed_sampler=False``); shard
    streams (:class:`~eofm.data.shards.ShardIterableDataset`) split themselves by rank and
    restart their epoch when resumed mid-epoch.
    """

    def __init__(self, dataset: Dataset[Sample], cfg: DataConfig, seed: int = 0) -> None:
        super().__init__()
        self.dataset = dataset
        self.cfg = cfg
        self.seed = seed
        self._resume: dict[str, int] | None = None
        #: Training subset (dataset indices) set by curation callbacks; ``None``: everything.
        self.subset: list[int] | None = None
        #: A streamed pool's loader and the state it resumes from (``eofm.data.stream``).
        self._stream_loader: Any = None
        self._stream_state: dict[str, Any] | None = None

    @property
    def streamed(self) -> bool:
        """Whether the data are a pool in object storage (streamed; subsets allowed)."""
        from eofm.data.stream.remote import is_remote

        return is_remote(str(getattr(self.dataset, "url", "")))

    @property
    def indexed_dataset(self) -> Dataset[Sample]:
        """The data read by index (a streamed pool through a map-style view)."""
        if self.streamed:
            from eofm.data.stream.loader import PoolByIndex

            return PoolByIndex(self.dataset)  # type: ignore[arg-type]
        return self.dataset

    def set_subset(self, indices: Sequence[int] | None) -> None:
        """Train on these dataset indices from the next train dataloader on (``None``: all)."""
        if indices is not None and isinstance(self.dataset, IterableDataset) and not self.streamed:
            raise ConfigError("a training subset needs map-style data (data.iterable=false)")
        self.subset = None if indices is None else [int(i) for i in indices]

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch stands: batches this rank has trained on (saved with
        every checkpoint, so that a resumed run skips them)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        state: dict[str, Any] = {
            "epoch": int(trainer.current_epoch),
            # batches whose training step ran this epoch ("processed" counts the batch whose
            # on_train_batch_end saves the checkpoint)
            "samples": self._trained_batches() * int(self.cfg.batch_size),
        }
        if self._stream_loader is not None:
            # litdata's stream position, counted in trained batches (ResumableStreamLoader)
            state["stream"] = self._stream_loader.state_dict()
        return state

    def _trained_batches(self) -> int:
        if self.trainer is None:
            return 0
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return int(getattr(progress, "processed", 0))

    @property
    def resumed_from(self) -> dict[str, int] | None:
        """``{"epoch", "samples"}`` of the checkpoint this run resumed from (``None``: a fresh
        run). ``epoch`` below the trainer's current epoch means that the checkpoint was saved
        after the last batch of that epoch."""
        return None if self._resume is None else dict(self._resume)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "epoch" in state_dict and "samples" in state_dict:
            self._resume = {
                "epoch": int(state_dict["epoch"]),
                "samples": int(state_dict["samples"]),
            }
        self._stream_state = state_dict.get("stream")

    def _stream_dataloader(self, common: dict[str, Any]) -> DataLoader[Any]:
        """litdata's loader over the streamed pool (only the subset's indices, if one is set);
        resumes from the checkpoint's stream state once."""
        from eofm.data.stream.loader import ResumableStreamLoader

        pool: Any = self.dataset
        if self.subset is not None:
            pool = pool.subset(self.subset)
        n = len(pool)
        if n < self.cfg.batch_size:
            raise ConfigError(
                f"the streamed pool {pool.url} has {n} samples (after the subset), fewer than "
                f"data.batch_size={self.cfg.batch_size}"
            )
        pool.to_sample.native = True  # uint8 stays uint8 to the device
        pool.to_sample.paths = False
        for key in ("drop_last", "persistent_workers"):
            common.pop(key)
        loader = ResumableStreamLoader(pool, **common)
        loader.trained_batches = self._trained_batches
        if self._stream_state is not None:
            loader.load_state_dict(self._stream_state)
            self._stream_state = None
        elif self.trainer is not None:  # a loader made anew each epoch shuffles by the epoch
            loader.current_epoch = int(self.trainer.current_epoch)
        self._stream_loader = loader
        return loader

    def train_dataloader(self) -> DataLoader[Any]:
        from eofm.data.shards import ShardBatches, ShardDataset

        cfg = self.cfg
        workers = loader_workers(cfg, self.dataset)
        common: dict[str, Any] = {
            "batch_size": cfg.batch_size,
            "num_workers": workers,
            "collate_fn": collate_samples,
            "drop_last": cfg.drop_last,
            "pin_memory": cfg.pin_memory,
            "persistent_workers": bool(cfg.persistent_workers and workers > 0),
        }
        if self.streamed:
            return self._stream_dataloader(common)
        if isinstance(self.dataset, IterableDataset):
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
            return DataLoader(self.dataset, **common)
        n = len(self.dataset) if self.subset is None else len(self.subset)  # type: ignore[arg-type]
        if n < cfg.batch_size and cfg.drop_last:
            what = "dataset" if self.subset is None else "training subset"
            raise ConfigError(
                f"the {what} has {n} samples, fewer than data.batch_size={cfg.batch_size} "
                "(with data.drop_last=true no batch would be made)"
            )
        sampler = EpochShuffleSampler(n, seed=self.seed, shuffle=cfg.shuffle, indices=self.subset)
        if self._resume is not None:
            sampler.resume_from(self._resume["epoch"], self._resume["samples"])
        if isinstance(self.dataset, ShardDataset) and self.dataset.transform is None:
            # one vectorised read per batch in the stored dtype; cast on the training device
            batches = EpochBatchSampler(sampler, batch_size=cfg.batch_size, drop_last=cfg.drop_last)
            for key in ("batch_size", "collate_fn", "drop_last"):
                del common[key]
            return DataLoader(
                ShardBatches(self.dataset), batch_size=None, sampler=batches, **common
            )
        return DataLoader(self.dataset, sampler=sampler, **common)
