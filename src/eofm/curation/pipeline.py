"""One curation pass over embeddings: hierarchical k-means, near-duplicate removal, balanced
sampling, and the statistics of the result. Used by ``eofm curate`` and dynamic pruning.

The k-means hierarchy and the near-duplicate mask (the slow steps) are cached, keyed by a hash
of the embeddings and of the settings they depend on: a curation that is run again (after an
interruption, or with another target or diversity) reuses them. By default the cache sits next
to a memory-mapped embeddings file (``<stem>.curation-cache/``), as ``eofm curate`` makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from eofm.curation.kmeans import (
    HierarchicalClusters,
    auto_clusters,
    hierarchical_kmeans,
)
from eofm.curation.sampling import (
    hierarchical_sampling,
    near_duplicates,
    resolve_target,
    summarize_selection,
)
from eofm.errors import ConfigError

__all__ = ["CurationConfig", "CurationResult", "curate_embeddings", "embeddings_digest"]

I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]


@dataclass
class CurationConfig:
    """Settings of one curation pass (see :func:`curate_embeddings`)."""

    #: Points to keep: a count (``5000``) or a fraction of the pool (``0.3``).
    target: float | int = 0.5
    #: Levels of the hierarchy (used when ``clusters`` is not given).
    levels: int = 2
    #: Clusters per level, finest first (default :func:`~eofm.curation.kmeans.auto_clusters`
    #: of the clustered points: ``sqrt(N)``, then the square root of the level below).
    clusters: list[int] | None = None
    #: Within-cluster diversity eta: 0 = closest to the centroid, 1 = uniform random.
    diversity: float = 0.5
    #: Cosine threshold for near-duplicate removal (``None``: no removal).
    dedup: float | None = None
    #: Cluster a random subset of this many points, then assign every point.
    subsample: int | None = None
    niter: int = 20
    n_resamples: int = 10
    sample_sizes: list[int] | None = None
    resample_strategy: Literal["closest", "random"] = "closest"
    refit_niter: int = 0
    #: Lloyd iterations run on at most this many points per level (default ``256 k``).
    train_size: int | None = None
    seed: int = 0
    #: faiss on the GPU (``None``: when one is available).
    gpu: bool | None = None
    #: k-means across the ranks of the ``torch.distributed`` process group, each on its
    #: chunks of the embeddings (:mod:`eofm.curation.distributed`; the same subset on any
    #: number of ranks, one included). No ``subsample``, ``refit_niter`` or ``dedup``.
    distributed: bool = False

    def resolved_clusters(self, n: int) -> list[int]:
        """Clusters per level for ``n`` points (the clustered subset when ``subsample``)."""
        m = min(n, self.subsample) if self.subsample else n
        if self.clusters:
            ks = [int(k) for k in self.clusters]
            if ks[0] > m:
                raise ConfigError(f"clusters {ks}: cannot make {ks[0]} clusters of {m} points")
            return ks
        return auto_clusters(m, self.levels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CurationResult:
    """What :func:`curate_embeddings` produced."""

    #: Sorted indices of the kept points.
    indices: I64
    clusters: HierarchicalClusters
    #: Points left after near-duplicate removal (``None`` when it was off).
    dedup_keep: npt.NDArray[np.bool_] | None
    #: Sizes and entropies before/after (:func:`~eofm.curation.sampling.summarize_selection`).
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    #: Steps read from the cache instead of computed (``"kmeans"``, ``"dedup"``).
    cached: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])


def embeddings_digest(x: Array, block_rows: int = 65_536) -> str:
    """A hash of the embeddings' shape, dtype and values (read in blocks: memmaps welcome)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(x.shape), np.dtype(x.dtype).str)).encode())
    for lo in range(0, int(x.shape[0]), block_rows):
        h.update(np.ascontiguousarray(x[lo : lo + block_rows]).tobytes())
    return h.hexdigest()


def _cache_dir(x: Array, cache: str | os.PathLike[str] | None) -> Path | None:
    if cache is None:
        return None
    if str(cache) != "auto":
        return Path(cache)
    filename = getattr(x, "filename", None)  # np.memmap
    if isinstance(x, np.memmap) and filename:
        f = Path(filename)
        return f.parent / f"{f.stem}.curation-cache"
    return None


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _load_clusters(path: Path, n: int) -> HierarchicalClusters | None:
    try:
        clusters = HierarchicalClusters.load(path)
    except Exception:  # unreadable or partial cache: compute again
        return None
    return clusters if clusters.num_points == n else None


def _load_mask(path: Path, n: int) -> npt.NDArray[np.bool_] | None:
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception:
        return None
    if mask.dtype != np.bool_ or mask.shape != (n,):
        return None
    out: npt.NDArray[np.bool_] = mask
    return out


def _save_mask(path: Path, mask: npt.NDArray[np.bool_]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, mask)
    os.replace(tmp, path)


def _distributed_clusters(x: Array, ks: list[int], config: CurationConfig) -> HierarchicalClusters:
    from eofm.curation.distributed import distributed_hierarchical_kmeans

    unsupported = {
        "subsample": config.subsample,
        "refit_niter": config.refit_niter or None,
        "dedup": config.dedup,
    }
    named = [k for k, v in unsupported.items() if v is not None]
    if named:
        raise ConfigError(
            f"distributed curation does not support {', '.join(named)}; unset them "
            "(train_size bounds the Lloyd sample instead of subsample)"
        )
    return distributed_hierarchical_kmeans(
        x,
        ks,
        niter=config.niter,
        n_resamples=config.n_resamples,
        sample_sizes=config.sample_sizes,
        resample_strategy=config.resample_strategy,
        train_size=config.train_size,
        seed=config.seed,
        gpu=config.gpu,
    )


def curate_embeddings(
    x: Array,
    config: CurationConfig,
    *,
    labels: Array | None = None,
    num_classes: int | None = None,
    progress: bool = False,
    cache: str | os.PathLike[str] | None = "auto",
) -> CurationResult:
    """Cluster the embeddings ``x`` ``(N, D)`` (array or memmap), drop near-duplicates when
    ``config.dedup`` is set, and keep a balanced subset of ``config.target`` points.

    ``labels`` (optional, class indices or multi-hot rows) only feed the statistics.
    ``cache``: folder for the k-means and near-duplicate results (see the module docstring);
    ``"auto"``: next to a memory-mapped ``x``, none for an in-memory array; ``None``: none.
    """
    n = int(x.shape[0])
    ks = config.resolved_clusters(n)
    times: dict[str, float] = {}
    cached: list[str] = []
    folder = _cache_dir(x, cache)
    kmeans_file = dedup_file = None
    if folder is not None:
        t0 = time.perf_counter()
        digest = embeddings_digest(x)
        times["hash_s"] = time.perf_counter() - t0
        settings = {
            k: v
            for k, v in asdict(config).items()
            if k not in ("target", "diversity", "dedup", "gpu")
        }
        kmeans_key = _key(digest, ks, settings)
        kmeans_file = folder / f"kmeans-{kmeans_key}.npz"
        dedup_file = folder / f"dedup-{_key(kmeans_key, config.dedup)}.npy"
    t0 = time.perf_counter()
    clusters = _load_clusters(kmeans_file, n) if kmeans_file and kmeans_file.is_file() else None
    if clusters is not None:
        cached.append("kmeans")
    elif config.distributed:
        clusters = _distributed_clusters(x, ks, config)
    else:
        clusters = hierarchical_kmeans(
            x,
            ks,
            niter=config.niter,
            n_resamples=config.n_resamples,
            sample_sizes=config.sample_sizes,
            resample_strategy=config.resample_strategy,
            refit_niter=config.refit_niter,
            subsample=config.subsample,
            train_size=config.train_size,
            seed=config.seed,
            gpu=config.gpu,
            progress=progress,
        )
        if kmeans_file is not None and clusters.info.get("writer", True):
            kmeans_file.parent.mkdir(parents=True, exist_ok=True)
            clusters.save(kmeans_file)  # written to a temporary name, then renamed
    times["kmeans_s"] = time.perf_counter() - t0
    keep: npt.NDArray[np.bool_] | None = None
    if config.dedup is not None:
        t0 = time.perf_counter()
        keep = _load_mask(dedup_file, n) if dedup_file and dedup_file.is_file() else None
        if keep is not None:
            cached.append("dedup")
        else:
            keep = near_duplicates(x, float(config.dedup), groups=clusters.labels)
            if dedup_file is not None:
                _save_mask(dedup_file, keep)
        times["dedup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = n if keep is None else int(keep.sum())
    target = resolve_target(config.target, pool)
    indices = hierarchical_sampling(
        clusters, target, diversity=config.diversity, seed=config.seed + 1, eligible=keep
    )
    times["sampling_s"] = time.perf_counter() - t0
    stats = summarize_selection(clusters, indices, labels, num_classes)
    stats["target"] = target
    stats["clusters"] = ks
    if keep is not None:
        stats["near_duplicates_removed"] = int(n - keep.sum())
    return CurationResult(indices, clusters, keep, stats, times, cached)
