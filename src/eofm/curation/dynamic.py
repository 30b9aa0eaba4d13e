"""Dynamic dataset pruning during pretraining (OceanSAR-1, Kerdreux et al. 2025).

:class:`DynamicPruning` is a Lightning callback for the eofm engine. It trains on the whole
pool for ``warmup_epochs`` (T_w); then, at the end of every ``every_epochs``-th epoch (T_s)
it re-embeds the pool with the model being trained (``method.embed``: DINO's teacher, the
backbone otherwise, so it works with every method and needs no outside feature extractor),
runs hierarchical k-means with resampling on a random sub-sample, assigns every point, keeps a
balanced fraction ``fraction`` (rho) with within-cluster diversity ``diversity`` (eta), and the
next epochs train on that subset until the next refresh.

Under DDP every rank embeds its share of the pool into one shared memory-mapped file (the run
folder must be on a filesystem all ranks see), rank 0 clusters and samples, and the kept
indices are broadcast; every rank then trains on its part of the same subset. The subset, the
epoch of the last refresh and the refresh count are saved in checkpoints (``state_dict``), so
a resumed run trains on the same subset. Logged per epoch: ``curation/subset_size`` (size of
the training set of the next epoch), and at each refresh ``curation/cluster_entropy`` (nats,
kept points over level-1 clusters), ``curation/pool_cluster_entropy`` (the pool's),
``curation/top_cluster_entropy`` (kept points over the top-level clusters) and
``curation/refresh_s``.

Settings come from the ``curation`` section of a recipe (:func:`pruning_from_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import IterableDataset

from eofm.curation.embed import extract_embeddings, load_embeddings
from eofm.curation.pipeline import CurationConfig, curate_embeddings
from eofm.errors import ConfigError

__all__ = ["DynamicPruning", "DynamicPruningConfig", "pruning_from_config"]

#: Names used by earlier recipes (configs/dino_oceansar.yaml) for the same settings.
ALIASES = {
    "resample_every_epochs": "every_epochs",
    "keep_fraction": "fraction",
    "clusters_per_level": "clusters",
}
EMBEDDINGS = ("embed", "teacher_backbone", "backbone")


@dataclass
class DynamicPruningConfig:
    """The ``curation`` section of a recipe (or its ``dynamic_pruning`` sub-section)."""

    enabled: bool = False
    #: T_w: epochs on the whole pool before the first refresh.
    warmup_epochs: int = 1
    #: T_s: epochs between refreshes.
    every_epochs: int = 1
    #: rho: fraction of the pool kept at each refresh.
    fraction: float = 0.5
    #: eta: within-cluster diversity (0 closest to the centroid, 1 uniform random).
    diversity: float = 0.5
    #: Levels of the hierarchical k-means (when ``clusters`` is not given).
    levels: int = 2
    #: Clusters per level, finest first (default: sqrt of the clustered points, then sqrt).
    clusters: list[int] | None = None
    #: Points the k-means runs on (a random sub-sample); every point is then assigned.
    subsample: int | None = 100_000
    niter: int = 20
    n_resamples: int = 10
    #: Cosine threshold for near-duplicate removal before sampling (``None``: off).
    dedup: float | None = None
    #: Images per embedding batch (default: twice ``data.batch_size``).
    batch_size: int | None = None
    #: ``embed`` (``method.embed``: DINO/MoCo teacher, else the backbone; alias
    #: ``teacher_backbone``) or ``backbone`` (the student backbone).
    embedding: str = "embed"
    #: Cluster L2-normalised embeddings.
    l2_normalize: bool = True
    #: Seed of the k-means and the sampling (default: ``trainer.seed``).
    seed: int | None = None
    #: Keep each refresh's embeddings file in ``<run>/curation`` (else deleted after use).
    keep_embeddings: bool = False


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def parse_pruning_config(section: Mapping[str, Any] | None) -> DynamicPruningConfig:
    """A checked :class:`DynamicPruningConfig` from a recipe's ``curation`` mapping.

    The settings may sit in ``curation`` itself or in ``curation.dynamic_pruning``; ``null``
    values mean the default; the older names ``resample_every_epochs``, ``keep_fraction`` and
    ``clusters_per_level`` are accepted.
    """
    values: dict[str, Any] = dict(section or {})
    if "dynamic_pruning" in values:
        inner = values.pop("dynamic_pruning")
        if values:
            raise ConfigError(
                f"curation: put every setting under curation.dynamic_pruning, not {sorted(values)}"
            )
        values = dict(inner or {})
    fields = {f.name: f for f in dataclasses.fields(DynamicPruningConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name not in fields:
            raise ConfigError(f"unknown field 'curation.{key}'{_suggest(key, [*fields, *ALIASES])}")
        if value is None:
            continue
        kwargs[name] = value
    try:
        cfg = DynamicPruningConfig(**kwargs)
    except TypeError as exc:  # pragma: no cover - all names checked above
        raise ConfigError(f"curation: {exc}") from None
    _check(cfg)
    return cfg


def _check(cfg: DynamicPruningConfig) -> None:
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise ConfigError(f"curation.{text}")

    for name in ("warmup_epochs", "every_epochs", "levels", "niter", "n_resamples"):
        value = getattr(cfg, name)
        need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer")
    need(isinstance(cfg.enabled, bool), "enabled must be true or false")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(cfg.every_epochs >= 1, f"every_epochs must be >= 1, got {cfg.every_epochs}")
    need(cfg.levels >= 1, f"levels must be >= 1, got {cfg.levels}")
    try:
        cfg.fraction = float(cfg.fraction)
        cfg.diversity = float(cfg.diversity)
    except (TypeError, ValueError):
        raise ConfigError("curation.fraction and curation.diversity must be numbers") from None
    need(0.0 < cfg.fraction <= 1.0, f"fraction (rho) must lie in (0, 1], got {cfg.fraction}")
    need(0.0 <= cfg.diversity <= 1.0, f"diversity (eta) must lie in [0, 1], got {cfg.diversity}")
    if cfg.clusters is not None:
        need(
            isinstance(cfg.clusters, list) and all(isinstance(k, int) for k in cfg.clusters),
            f"clusters must be a list of integers, got {cfg.clusters!r}",
        )
        cfg.levels = len(cfg.clusters)
    need(cfg.subsample is None or int(cfg.subsample) >= 2, "subsample must be >= 2")
    need(cfg.dedup is None or -1.0 <= float(cfg.dedup) <= 1.0, "dedup must be a cosine")
    need(
        cfg.embedding in EMBEDDINGS,
        f"embedding={cfg.embedding!r} is not known{_suggest(str(cfg.embedding), list(EMBEDDINGS))}",
    )


class DynamicPruning(Callback):
    """Re-curate the training set with the model being trained (see the module docstring).

    Works with any eofm method (it only calls ``pl_module.method.embed``) and needs the
    engine's :class:`~eofm.training.data.PretrainDataModule` (``set_subset``) on map-style
    data; it turns on the trainer's ``reload_dataloaders_every_n_epochs=1`` (the engine does
    so when the recipe's ``curation`` section enables it).
    """

    def __init__(
        self,
        *,
        warmup_epochs: int = 1,
        every_epochs: int = 1,
        fraction: float = 0.5,
        diversity: float = 0.5,
        levels: int = 2,
        clusters: list[int] | None = None,
        subsample: int | None = 100_000,
        niter: int = 20,
        n_resamples: int = 10,
        dedup: float | None = None,
        batch_size: int | None = None,
        embedding: str = "embed",
        l2_normalize: bool = True,
        seed: int = 0,
        work_dir: str | Path | None = None,
        keep_embeddings: bool = False,
    ) -> None:
        cfg = DynamicPruningConfig(
            enabled=True,
            warmup_epochs=warmup_epochs,
            every_epochs=every_epochs,
            fraction=fraction,
            diversity=diversity,
            levels=levels,
            clusters=list(clusters) if clusters is not None else None,
            subsample=subsample,
            niter=niter,
            n_resamples=n_resamples,
            dedup=dedup,
            batch_size=batch_size,
            embedding=embedding,
            l2_normalize=l2_normalize,
            seed=seed,
            keep_embeddings=keep_embeddings,
        )
        _check(cfg)
        self.cfg = cfg
        self.seed = int(seed)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        #: Current training subset (sorted dataset indices); ``None`` during warm-up.
        self.subset: list[int] | None = None
        self.last_refresh_epoch: int | None = None
        self.refreshes = 0
        #: One entry per refresh: epoch, subset size, entropies, seconds.
        self.history: list[dict[str, Any]] = []
        self._datamodule: Any = None
        self._pending_logs: list[tuple[str, float]] = []

    # -- schedule ---------------------------------------------------------------------------
    def due(self, epoch: int) -> bool:
        """Whether a refresh runs at the end of (0-based) ``epoch``."""
        done = epoch + 1
        tw, ts = self.cfg.warmup_epochs, self.cfg.every_epochs
        return done >= max(1, tw) and (done - tw) % ts == 0

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        subset = (
            torch.as_tensor(np.asarray(self.subset, dtype=np.int64))
            if self.subset is not None
            else None
        )
        return {
            "subset": subset,
            "last_refresh_epoch": self.last_refresh_epoch,
            "refreshes": self.refreshes,
            "seed": self.seed,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        subset = state_dict.get("subset")
        self.subset = None if subset is None else [int(i) for i in torch.as_tensor(subset)]
        last = state_dict.get("last_refresh_epoch")
        self.last_refresh_epoch = None if last is None else int(last)
        self.refreshes = int(state_dict.get("refreshes", 0))
        self.history = [dict(h) for h in state_dict.get("history", [])]
        if self._datamodule is not None:  # restored after setup, before the first dataloader
            self._datamodule.set_subset(self.subset)

    # -- hooks ------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not callable(getattr(dm, "set_subset", None)):
            raise ConfigError(
                "DynamicPruning needs the eofm PretrainDataModule (run it with run_pretraining)"
            )
        if isinstance(dm.dataset, IterableDataset) and not getattr(dm, "streamed", False):
            raise ConfigError(
                "dynamic pruning needs map-style data: set data.iterable=false (shards are then "
                "read by index)"
            )
        if not getattr(trainer, "reload_dataloaders_every_n_epochs", 0):
            # the train dataloader must be rebuilt after a refresh (run_pretraining sets this)
            trainer.reload_dataloaders_every_n_epochs = 1  # type: ignore[attr-defined]
        if trainer.max_steps is None or trainer.max_steps <= 0:
            rank_zero_warn(
                "dynamic pruning shortens the epochs after warm-up: set trainer.max_steps so "
                "that the learning-rate schedule matches the run's length"
            )
        self._datamodule = dm
        if self.subset is not None:
            dm.set_subset(self.subset)

    def _should_refresh(self, trainer: pl.Trainer, epoch: int) -> bool:
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
        last_step = 0 < trainer.max_steps <= trainer.global_step
        return (
            self.due(epoch)
            and self.last_refresh_epoch != epoch
            and not last_epoch
            and not last_step
            and not trainer.should_stop
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A checkpoint saved after the last batch of an epoch (a periodic one, or last.ckpt
        # after a crash) resumes at the next epoch: Lightning does not call
        # on_train_epoch_end for the finished epoch, so its refresh would be lost and the run
        # would train on the wrong subset. Run it now, before the epoch's dataloader is made.
        self._pending_logs = []
        epoch = int(trainer.current_epoch) - 1
        resumed = getattr(self._datamodule, "resumed_from", None)
        if resumed is None or int(resumed["epoch"]) != epoch:
            return  # a fresh run, or resumed in the middle of the current epoch
        if not self._should_refresh(trainer, epoch):
            return
        rank_zero_info(f"dynamic pruning: running the refresh of epoch {epoch} missed on resume")
        self.refresh(trainer, pl_module, epoch, log=False)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, value in self._pending_logs:
            _log(pl_module, name, value)
        self._pending_logs = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # pending logs (no epoch start on resume)
        epoch = int(trainer.current_epoch)
        if self._should_refresh(trainer, epoch):
            self.refresh(trainer, pl_module, epoch)
        dm = self._datamodule
        size = len(self.subset) if self.subset is not None else len(dm.dataset)
        _log(pl_module, "curation/subset_size", float(size))

    # -- the work ---------------------------------------------------------------------------
    def _embedder(self, pl_module: pl.LightningModule) -> Any:
        method = getattr(pl_module, "method", None)
        if method is None:
            raise ConfigError("DynamicPruning needs a module with a .method (eofm PretrainModule)")
        # through the method's own functions, around which FSDP gathers the parameters
        return method.embed_student if self.cfg.embedding == "backbone" else method.embed

    def refresh(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, log: bool = True
    ) -> None:
        """Embed the pool, cluster, sample, and set the training subset for the next epochs
        (``log=False``: the metrics are logged at the next epoch start instead)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        strategy = trainer.strategy
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        dm = self._datamodule
        # a streamed pool is embedded through its map-style view, in index order
        dataset = getattr(dm, "indexed_dataset", dm.dataset)
        n = len(dataset)
        work = self.work_dir or Path(trainer.default_root_dir) / "curation"
        path = work / f"embeddings-epoch{epoch:05d}.npy"
        if rank == 0:
            work.mkdir(parents=True, exist_ok=True)
            _remove(path)  # stale files of an interrupted refresh
        strategy.barrier("dynamic_pruning_start")
        normalizer = getattr(pl_module, "normalizer", None)
        batch = cfg.batch_size or 2 * int(getattr(dm.cfg, "batch_size", 128))
        was_training = pl_module.training
        pl_module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                extract_embeddings(
                    self._embedder(pl_module),
                    dataset,
                    path,
                    batch_size=batch,
                    normalizer=normalizer,
                    rank=rank,
                    world_size=world,
                    device=pl_module.device,
                    l2_normalize=cfg.l2_normalize,
                    progress=False,
                    barrier=False,
                )
        finally:
            pl_module.train(was_training)
        strategy.barrier("dynamic_pruning_embedded")
        payload: dict[str, Any] | None = None
        if rank == 0:
            x = load_embeddings(path)
            target = max(1, round(cfg.fraction * n))
            ccfg = CurationConfig(
                target=target,
                levels=cfg.levels,
                clusters=cfg.clusters,
                diversity=cfg.diversity,
                dedup=cfg.dedup,
                subsample=cfg.subsample,
                niter=cfg.niter,
                n_resamples=cfg.n_resamples,
                seed=self.seed * 1_000_003 + epoch,
            )
            result = curate_embeddings(x, ccfg, cache=None)  # a new model each refresh
            del x
            level1 = result.stats["level1"]
            top = result.stats[f"level{result.clusters.levels}"]
            payload = {
                "indices": result.indices.tolist(),
                "entropy": float(level1["entropy_after"]),
                "pool_entropy": float(level1["entropy_before"]),
                "top_entropy": float(top["entropy_after"]),
                "top_pool_entropy": float(top["entropy_before"]),
                "clusters": result.clusters.clusters,
            }
            if not cfg.keep_embeddings:
                _remove(path)
        payload = strategy.broadcast(payload, src=0)
        assert payload is not None
        self.subset = [int(i) for i in payload["indices"]]
        dm.set_subset(self.subset)
        self.last_refresh_epoch = epoch
        self.refreshes += 1
        seconds = time.perf_counter() - t0
        entry = {
            "epoch": epoch,
            "subset_size": len(self.subset),
            "cluster_entropy": payload["entropy"],
            "pool_cluster_entropy": payload["pool_entropy"],
            "top_cluster_entropy": payload["top_entropy"],
            "pool_top_cluster_entropy": payload["top_pool_entropy"],
            "clusters": list(payload["clusters"]),
            "seconds": seconds,
        }
        self.history.append(entry)
        logs = [
            ("curation/cluster_entropy", entry["cluster_entropy"]),
            ("curation/pool_cluster_entropy", entry["pool_cluster_entropy"]),
            ("curation/top_cluster_entropy", entry["top_cluster_entropy"]),
            ("curation/refresh_s", seconds),
        ]
        if log:
            for name, value in logs:
                _log(pl_module, name, value)
        else:  # Lightning allows no logging in on_train_start
            self._pending_logs = [*logs, ("curation/subset_size", float(len(self.subset)))]
        rank_zero_info(
            f"dynamic pruning at epoch {epoch}: {len(self.subset)} of {n} samples kept "
            f"({payload['clusters']} clusters; entropy, level 1: "
            f"{entry['pool_cluster_entropy']:.3f} -> {entry['cluster_entropy']:.3f} nats, top "
            f"level: {entry['pool_top_cluster_entropy']:.3f} -> "
            f"{entry['top_cluster_entropy']:.3f}; {seconds:.1f} s)"
        )


def _log(pl_module: pl.LightningModule, name: str, value: float) -> None:
    # equal on every rank (the subset is broadcast); sync_dist averages identical values
    pl_module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=True)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    for f in path.parent.glob(f"{path.stem}.progress.*.json"):
        f.unlink(missing_ok=True)


def pruning_from_config(
    section: Mapping[str, Any] | None, *, seed: int = 0, work_dir: str | Path | None = None
) -> DynamicPruning | None:
    """The callback for a recipe's ``curation`` section, or ``None`` when not enabled."""
    cfg = parse_pruning_config(section)
    if not cfg.enabled:
        return None
    return DynamicPruning(
        warmup_epochs=cfg.warmup_epochs,
        every_epochs=cfg.every_epochs,
        fraction=cfg.fraction,
        diversity=cfg.diversity,
        levels=cfg.levels,
        clusters=cfg.clusters,
        subsample=cfg.subsample,
        niter=cfg.niter,
        n_resamples=cfg.n_resamples,
        dedup=cfg.dedup,
        batch_size=cfg.batch_size,
        embedding=cfg.embedding,
        l2_normalize=cfg.l2_normalize,
        seed=cfg.seed if cfg.seed is not None else seed,
        work_dir=work_dir,
        keep_embeddings=cfg.keep_embeddings,
    )
