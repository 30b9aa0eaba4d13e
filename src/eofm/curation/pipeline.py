"""One curation pass over embeddings: hierarchical k-means, near-duplicate removal, balanced
sampling, and the statistics of the result. Used by ``eofm curate`` and dynamic pruning."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
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

__all__ = ["CurationConfig", "CurationResult", "curate_embeddings"]

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

    @property
    def size(self) -> int:
        return int(self.indices.shape[0])


def curate_embeddings(
    x: Array,
    config: CurationConfig,
    *,
    labels: Array | None = None,
    num_classes: int | None = None,
    progress: bool = False,
) -> CurationResult:
    """Cluster the embeddings ``x`` ``(N, D)`` (array or memmap), drop near-duplicates when
    ``config.dedup`` is set, and keep a balanced subset of ``config.target`` points.

    ``labels`` (optional, class indices or multi-hot rows) only feed the statistics.
    """
    n = int(x.shape[0])
    ks = config.resolved_clusters(n)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
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
    times["kmeans_s"] = time.perf_counter() - t0
    keep: npt.NDArray[np.bool_] | None = None
    if config.dedup is not None:
        t0 = time.perf_counter()
        keep = near_duplicates(x, float(config.dedup), groups=clusters.labels)
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
    return CurationResult(indices, clusters, keep, stats, times)
