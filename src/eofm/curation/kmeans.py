"""Hierarchical k-means with resampling (Vo et al. 2024) on faiss, for millions of points.

- :func:`kmeans_plusplus`: k-means++ seeding (vectorised, on a random subset of the points).
- :func:`assign`: nearest centroid of every point, in chunks (``faiss.IndexFlatL2``).
- :func:`kmeans`: Lloyd iterations (``faiss.Kmeans``) from k-means++ or random seeds, on a
  random training subset.
- :func:`hierarchical_kmeans`: several levels, each clustering the centroids of the level
  below, each refined by resampling, returned as :class:`HierarchicalClusters`.

Memory is linear in the number of points ``N``: the points may be an ``np.memmap`` and are
read in chunks; only ``(N,)`` labels and distances are held, plus the training subsets.
Everything is float32. faiss runs on the GPU when ``gpu=True`` (default: when torch sees a
CUDA device and faiss was built with GPU support).

Resampling refinement (Vo et al. 2024, ``hierarchical_kmeans_with_resampling``): after the
k-means of a level, ``n_resamples`` times: take ``s`` points of every cluster (the closest to
its centroid, or random ones), move each centroid to the mean of its sample (and, with
``refit_niter > 0``, run that many Lloyd iterations on the union of the samples, as Vo et al.
refit k-means on them), then reassign every point. Clusters then sit on dense, typical modes
rather than being pulled by outliers, and large clusters stop swallowing their neighbours.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from eofm.errors import ConfigError

__all__ = [
    "HierarchicalClusters",
    "assign",
    "auto_clusters",
    "default_sample_sizes",
    "faiss_gpu_available",
    "hierarchical_kmeans",
    "kmeans",
    "kmeans_plusplus",
    "resample_centroids",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]
Strategy = Literal["closest", "random"]

#: Rows per chunk when reading points for assignment (64 Ki rows x 256 dims = 64 MiB).
DEFAULT_CHUNK = 65536


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency of eofm[train]
        raise ConfigError("curation needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def faiss_gpu_available() -> bool:
    """True when torch sees a CUDA device and faiss was built with GPU support."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
    except ImportError:  # pragma: no cover
        return False
    faiss = _faiss()
    return bool(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)


def _use_gpu(gpu: bool | None) -> bool:
    return faiss_gpu_available() if gpu is None else bool(gpu and faiss_gpu_available())


def _rows(x: Array, idx: Array | slice) -> F32:
    """Rows of ``x`` (array or memmap) as a C-contiguous float32 array."""
    return np.ascontiguousarray(x[idx], dtype=np.float32)


def _sorted_sample(n: int, size: int, rng: np.random.Generator) -> I64:
    """``size`` distinct indices of ``range(n)`` in increasing order (memmap-friendly)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def _check_points(x: Array, k: int, what: str = "points") -> tuple[int, int]:
    if x.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D array (N, D), got shape {tuple(x.shape)}")
    n, d = int(x.shape[0]), int(x.shape[1])
    if k < 1:
        raise ConfigError(f"the number of clusters must be at least 1, got {k}")
    if k > n:
        raise ConfigError(f"cannot make {k} clusters of {n} {what}; lower the cluster count")
    return n, d


# --------------------------------------------------------------------------------------------
# seeding and Lloyd iterations


def kmeans_plusplus(
    x: Array,
    k: int,
    *,
    seed: int = 0,
    sample_size: int | None = None,
    n_local_trials: int = 1,
) -> F32:
    """k-means++ seeds (Arthur & Vassilvitskii 2007): ``(k, D)`` float32 centroids.

    Seeds are drawn from a random subset of ``sample_size`` points (default
    ``max(20 k, 10000)``; all points when fewer). Each new seed is a point drawn with
    probability proportional to its squared distance to the nearest seed so far;
    ``n_local_trials > 1`` draws that many candidates and keeps the one that lowers the
    potential most (greedy k-means++, as scikit-learn). Distances use
    ``|x|^2 - 2 x.c + |c|^2`` (one matrix-vector product per seed).
    """
    n, _ = _check_points(x, k)
    rng = np.random.default_rng(seed)
    size = max(20 * k, 10_000) if sample_size is None else max(int(sample_size), k)
    pts = _rows(x, _sorted_sample(n, size, rng))
    m = pts.shape[0]
    sq = np.einsum("ij,ij->i", pts, pts, dtype=np.float32)
    first = int(rng.integers(m))
    chosen = [first]
    dist = np.maximum(sq - 2.0 * (pts @ pts[first]) + sq[first], 0.0).astype(np.float32)
    trials = max(1, int(n_local_trials))
    for _ in range(1, k):
        total = float(dist.sum(dtype=np.float64))
        if total <= 0.0:  # fewer distinct points than k: fill with random points
            rest = np.setdiff1d(np.arange(m), np.asarray(chosen))
            extra = rng.choice(rest, size=k - len(chosen), replace=False)
            chosen.extend(int(i) for i in extra)
            break
        cum = np.cumsum(dist, dtype=np.float64)
        cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
        cand = np.minimum(cand, m - 1)
        if trials == 1:
            best = int(cand[0])
            new = np.maximum(sq - 2.0 * (pts @ pts[best]) + sq[best], 0.0)
            dist = np.minimum(dist, new, dtype=np.float32)
        else:
            cd = np.maximum(sq[None, :] - 2.0 * (pts[cand] @ pts.T) + sq[cand, None], 0.0)
            cd = np.minimum(cd, dist[None, :])
            j = int(np.argmin(cd.sum(axis=1, dtype=np.float64)))
            best = int(cand[j])
            dist = cd[j].astype(np.float32)
        chosen.append(best)
    return np.ascontiguousarray(pts[np.asarray(chosen[:k])], dtype=np.float32)


class _Index:
    """A flat L2 index over centroids (GPU when asked), searched in chunks."""

    def __init__(self, centroids: F32, gpu: bool) -> None:
        faiss = _faiss()
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        index = faiss.IndexFlatL2(int(c.shape[1]))
        if gpu:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
        index.add(c)
        self.index = index

    def search(self, rows: F32) -> tuple[F32, I64]:
        d, i = self.index.search(np.ascontiguousarray(rows, dtype=np.float32), 1)
        return d[:, 0].astype(np.float32), i[:, 0].astype(np.int64)


def assign(
    x: Array,
    centroids: Array,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    gpu: bool | None = None,
) -> tuple[I64, F32]:
    """Nearest centroid of every row of ``x``: ``(labels int64 (N,), squared distances)``.

    ``x`` is read ``chunk_size`` rows at a time (it may be an ``np.memmap``).
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    n = int(x.shape[0])
    if x.ndim != 2 or int(x.shape[1]) != int(c.shape[1]):
        raise ConfigError(
            f"points of shape {tuple(x.shape)} do not match centroids of shape {tuple(c.shape)}"
        )
    index = _Index(c, _use_gpu(gpu))
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    step = max(1, int(chunk_size))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        d, i = index.search(_rows(x, slice(lo, hi)))
        labels[lo:hi] = i
        dist[lo:hi] = d
    return labels, dist


def kmeans(
    x: Array,
    k: int,
    *,
    niter: int = 20,
    init: Literal["k-means++", "random"] | Array = "k-means++",
    seed: int = 0,
    train_size: int | None = None,
    gpu: bool | None = None,
    verbose: bool = False,
) -> F32:
    """``(k, D)`` centroids after ``niter`` Lloyd iterations (``faiss.Kmeans``).

    The iterations run on a random subset of ``train_size`` points (default
    ``min(N, 256 k)``, faiss' own default cap). ``init``: ``"k-means++"`` (seeded on a
    subset, see :func:`kmeans_plusplus`), ``"random"`` (``k`` distinct random points) or an
    array of initial centroids. Empty clusters are re-seeded by faiss (splitting large ones).
    """
    faiss = _faiss()
    n, d = _check_points(x, k)
    rng = np.random.default_rng(seed)
    size = min(n, 256 * k) if train_size is None else min(n, max(int(train_size), k))
    train = _rows(x, _sorted_sample(n, size, rng))
    if isinstance(init, str):
        if init == "k-means++":
            start = kmeans_plusplus(train, k, seed=seed + 1)
        elif init == "random":
            start = np.ascontiguousarray(train[rng.choice(train.shape[0], k, replace=False)])
        else:
            raise ConfigError(f"init={init!r}: use 'k-means++', 'random' or an array")
    else:
        start = np.ascontiguousarray(init, dtype=np.float32)
        if start.shape != (k, d):
            raise ConfigError(f"initial centroids must have shape {(k, d)}, got {start.shape}")
    if niter <= 0:
        out0: F32 = start.copy()
        return out0
    km = faiss.Kmeans(
        d,
        k,
        niter=int(niter),
        seed=int(seed) & 0x7FFFFFFF,
        gpu=_use_gpu(gpu),
        verbose=verbose,
        max_points_per_centroid=max(1, math.ceil(train.shape[0] / k)) + 1,
        min_points_per_centroid=1,
    )
    km.train(train, init_centroids=start)
    out: F32 = np.ascontiguousarray(km.centroids, dtype=np.float32)
    return out


def _group_starts(sorted_labels: I64, k: int) -> I64:
    out: I64 = np.searchsorted(sorted_labels, np.arange(k, dtype=np.int64)).astype(np.int64)
    return out


def resample_centroids(
    x: Array,
    labels: I64,
    sqdist: F32,
    centroids: F32,
    sample_size: int,
    *,
    strategy: Strategy = "closest",
    rng: np.random.Generator,
    refit_niter: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    gpu: bool | None = None,
) -> F32:
    """One resampling step: new centroids from ``sample_size`` points of every cluster.

    ``strategy="closest"`` takes each cluster's points nearest its centroid, ``"random"``
    random ones. Each centroid moves to the mean of its sample (an empty cluster keeps its
    centroid); ``refit_niter > 0`` then runs Lloyd iterations on the union of the samples.
    """
    k = int(centroids.shape[0])
    n = int(labels.shape[0])
    if strategy not in ("closest", "random"):
        raise ConfigError(f"resample strategy {strategy!r}: use 'closest' or 'random'")
    key = sqdist if strategy == "closest" else rng.random(n, dtype=np.float32)
    order = np.lexsort((key, labels))
    sl = labels[order]
    starts = _group_starts(sl, k)
    rank = np.arange(n, dtype=np.int64) - starts[sl]
    keep = rank < int(sample_size)
    sel = order[keep]  # grouped by label, in increasing label order
    sel_labels = sl[keep]
    d = int(centroids.shape[1])
    sums = np.zeros((k, d), dtype=np.float64)
    counts = np.bincount(sel_labels, minlength=k)
    step = max(1, int(chunk_size))
    for lo in range(0, sel.shape[0], step):
        idx = sel[lo : lo + step]
        lab = sel_labels[lo : lo + step]
        rows = _rows(x, np.sort(idx))[np.argsort(np.argsort(idx))]  # sorted read, then reorder
        cut = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        sums[lab[cut]] += np.add.reduceat(rows, cut, axis=0, dtype=np.float64)
    new: F32 = centroids.astype(np.float32).copy()
    nz = counts > 0
    new[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
    if refit_niter > 0 and sel.shape[0] >= k:
        sample = _rows(x, np.sort(sel))
        new = kmeans(
            sample,
            k,
            niter=refit_niter,
            init=new,
            seed=int(rng.integers(2**31)),
            train_size=sample.shape[0],
            gpu=gpu,
        )
    return new


# --------------------------------------------------------------------------------------------
# hierarchy


@dataclass
class HierarchicalClusters:
    """The result of :func:`hierarchical_kmeans`.

    ``centroids[l]``: ``(k_{l+1}, D)`` centroids of level ``l + 1`` (level 1 clusters points);
    ``labels``: ``(N,)`` level-1 cluster of every point; ``sqdist``: ``(N,)`` squared L2
    distance of every point to its level-1 centroid; ``parents[l]``: ``(k_{l+1},)`` the
    level-``l + 2`` cluster of every level-``l + 1`` cluster (one array per level above 1).
    """

    centroids: list[F32]
    labels: I64
    sqdist: F32
    parents: list[I64] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.centroids)

    @property
    def clusters(self) -> list[int]:
        """Clusters per level, bottom (level 1) first."""
        return [int(c.shape[0]) for c in self.centroids]

    @property
    def num_points(self) -> int:
        return int(self.labels.shape[0])

    def point_labels(self, level: int = 1) -> I64:
        """``(N,)`` cluster of every point at ``level`` (1 = the finest)."""
        if not 1 <= level <= self.levels:
            raise ConfigError(f"level must be in 1..{self.levels}, got {level}")
        out = self.labels
        for parent in self.parents[: level - 1]:
            out = parent[out]
        return out

    def sizes(self, level: int = 1, mask: Array | None = None) -> I64:
        """Points per cluster at ``level`` (only those where ``mask`` is True, if given)."""
        lab = self.point_labels(level)
        if mask is not None:
            lab = lab[np.asarray(mask, dtype=bool)]
        out: I64 = np.bincount(lab, minlength=self.clusters[level - 1]).astype(np.int64)
        return out

    def assign(
        self, x: Array, *, chunk_size: int = DEFAULT_CHUNK, gpu: bool | None = None
    ) -> HierarchicalClusters:
        """The same hierarchy with every row of ``x`` assigned to its nearest level-1 centroid."""
        labels, sqdist = assign(x, self.centroids[0], chunk_size=chunk_size, gpu=gpu)
        return HierarchicalClusters(
            centroids=self.centroids,
            labels=labels,
            sqdist=sqdist,
            parents=self.parents,
            info=dict(self.info),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write everything to one ``.npz`` file (``info`` as JSON)."""
        import json

        out = Path(path)
        arrays: dict[str, Array] = {"labels": self.labels, "sqdist": self.sqdist}
        for i, c in enumerate(self.centroids):
            arrays[f"centroids_{i}"] = c
        for i, p in enumerate(self.parents):
            arrays[f"parents_{i}"] = p
        arrays["info"] = np.asarray(json.dumps(self.info, default=str))
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HierarchicalClusters:
        import json

        with np.load(path) as z:
            levels = sum(1 for key in z.files if key.startswith("centroids_"))
            return cls(
                centroids=[z[f"centroids_{i}"] for i in range(levels)],
                labels=z["labels"],
                sqdist=z["sqdist"],
                parents=[z[f"parents_{i}"] for i in range(levels - 1)],
                info=json.loads(str(z["info"])),
            )


def auto_clusters(n: int, levels: int = 2) -> list[int]:
    """Default clusters per level: ``round(sqrt(n))`` at level 1 (at most ``n // 2``, at least
    2), then the square root of the level below (at least 2), e.g. 10^6 points: [1000, 32]."""
    out: list[int] = []
    m = int(n)
    for _ in range(max(1, int(levels))):
        k = max(2, min(round(math.sqrt(m)), max(2, m // 2)))
        k = min(k, m)
        out.append(int(k))
        m = k
    return out


def default_sample_sizes(n: int, clusters: Sequence[int]) -> list[int]:
    """Resampling sample size per level: half the mean cluster size (Vo et al.'s rule), at
    least 2."""
    out: list[int] = []
    m = int(n)
    for k in clusters:
        out.append(max(2, (m // max(1, int(k))) // 2))
        m = int(k)
    return out


def hierarchical_kmeans(
    x: Array,
    clusters: Sequence[int],
    *,
    niter: int = 20,
    n_resamples: int = 10,
    sample_sizes: Sequence[int] | None = None,
    resample_strategy: Strategy = "closest",
    refit_niter: int = 0,
    init: Literal["k-means++", "random"] = "k-means++",
    subsample: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    gpu: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> HierarchicalClusters:
    """Hierarchical k-means with resampling of ``x`` ``(N, D)`` (array or memmap).

    ``clusters``: clusters per level, finest first (``[1000, 100]``: 1000 clusters of points,
    grouped into 100). Level 1 clusters the points, level ``l > 1`` the centroids of level
    ``l - 1``. Each level runs k-means (``niter`` Lloyd iterations from k-means++ seeds on a
    training subset of ``train_size`` points) and then ``n_resamples`` resampling steps with
    ``sample_sizes[l]`` points per cluster (default: half the mean cluster size; a size of 1
    or less skips resampling), see the module docstring.

    ``subsample``: run the whole hierarchy on a random subset of that many points, then assign
    every point of ``x`` to its nearest level-1 centroid (what dynamic pruning does).
    """
    from eofm.progress import progress as progress_bar

    ks = [int(k) for k in clusters]
    if not ks:
        raise ConfigError("clusters must list at least one level, e.g. [100, 10]")
    n_all, _ = _check_points(x, ks[0])
    for lo, hi in itertools.pairwise(ks):
        if hi > lo:
            raise ConfigError(
                f"clusters {ks}: each level must have at most as many clusters as the one below"
            )
    rng = np.random.default_rng(seed)
    data: Array = x
    if subsample is not None and int(subsample) < n_all:
        if int(subsample) < ks[0]:
            raise ConfigError(f"subsample={subsample} is smaller than the {ks[0]} clusters")
        data = _rows(x, _sorted_sample(n_all, int(subsample), rng))
    n = int(data.shape[0])
    sizes = list(sample_sizes) if sample_sizes is not None else default_sample_sizes(n, ks)
    if len(sizes) != len(ks):
        raise ConfigError(f"sample_sizes {list(sizes)} must have one entry per level {ks}")
    gpu_on = _use_gpu(gpu)
    centroids: list[F32] = []
    parents: list[I64] = []
    labels0: I64 | None = None
    dist0: F32 | None = None
    bar = progress_bar(
        total=len(ks) * (1 + n_resamples), desc="hierarchical k-means", disable=not progress
    )
    level_data: Array = data
    for level, (k, s) in enumerate(zip(ks, sizes)):
        seed_l = int(rng.integers(2**31))
        c = kmeans(
            level_data, k, niter=niter, init=init, seed=seed_l, train_size=train_size, gpu=gpu_on
        )
        lab, dist = assign(level_data, c, chunk_size=chunk_size, gpu=gpu_on)
        bar.update(1)
        if s > 1:
            for _ in range(int(n_resamples)):
                c = resample_centroids(
                    level_data,
                    lab,
                    dist,
                    c,
                    int(s),
                    strategy=resample_strategy,
                    rng=rng,
                    refit_niter=refit_niter,
                    chunk_size=chunk_size,
                    gpu=gpu_on,
                )
                lab, dist = assign(level_data, c, chunk_size=chunk_size, gpu=gpu_on)
                bar.update(1)
        else:
            bar.update(int(n_resamples))
        centroids.append(c)
        if level == 0:
            labels0, dist0 = lab, dist
        else:
            parents.append(lab)
        level_data = c
    bar.close()
    assert labels0 is not None and dist0 is not None
    info = {
        "clusters": ks,
        "niter": int(niter),
        "n_resamples": int(n_resamples),
        "sample_sizes": [int(v) for v in sizes],
        "resample_strategy": resample_strategy,
        "refit_niter": int(refit_niter),
        "init": init,
        "fitted_on": n,
        "seed": int(seed),
        "gpu": gpu_on,
    }
    result = HierarchicalClusters(centroids, labels0, dist0, parents, info)
    if n < n_all:
        result = result.assign(x, chunk_size=chunk_size, gpu=gpu_on)
    return result
