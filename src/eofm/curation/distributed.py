"""Hierarchical k-means across ranks (``torch.distributed``): every rank reads only its share.

The ``N`` points (an array or the shared ``np.memmap`` that :func:`~eofm.curation.embed.
extract_embeddings` writes) are cut into chunks of ``chunk_size`` rows; rank ``r`` of ``w``
owns the chunks ``r, r + w, ...`` (the split the embedding extraction uses). Level 1:

- seeds: k-means++ on a sample of the points whose global indices come from the seed; each
  rank fills the rows it owns and a sum all-reduce hands the same sample to every rank;
- Lloyd iterations on a global training sample (``train_size``, indices from the seed): each
  rank assigns its sampled rows with faiss, and the per-centroid sums and counts are
  all-reduced;
- resampling (Vo et al. 2024): every rank sends its ``s`` best candidates per cluster
  (label, key, index: no embeddings), every rank picks the same global ``s`` per cluster, and
  the sums of the chosen rows are all-reduced; then every rank reassigns its share.

Levels above 1 cluster the (small, replicated) centroids with :mod:`eofm.curation.kmeans` on
every rank. The result does not depend on the number of ranks, exactly: faiss searches the
same chunk of rows whatever the rank count, sums are fixed-point int64 (integer addition does
not care about order), ties go to the lowest global index and random keys are drawn per chunk.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from eofm.curation.kmeans import (
    DEFAULT_CHUNK,
    HierarchicalClusters,
    _Index,
    _rows,
    _sorted_sample,
    _use_gpu,
    assign,
    default_sample_sizes,
    kmeans,
    kmeans_plusplus,
    resample_centroids,
)
from eofm.errors import ConfigError

__all__ = ["distributed_hierarchical_kmeans", "shard_chunks"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]


def shard_chunks(n: int, chunk_size: int, rank: int, world: int) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of the chunks rank ``rank`` of ``world`` owns."""
    step = max(1, int(chunk_size))
    return [(lo, min(n, lo + step)) for lo in range(rank * step, n, world * step)]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum(a: Array) -> Array:
    """Element-wise sum over ranks (exact for integers)."""
    if _world()[1] == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))
    dist.all_reduce(t)
    return t.numpy()


def _max(value: float) -> float:
    if _world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _gather_rows(a: Array) -> Array:
    """Rows of every rank, concatenated in rank order (variable lengths)."""
    if _world()[1] == 1:
        return a
    world = _world()[1]
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([a.shape[0]], dtype=torch.int64))
    most = max(int(s.item()) for s in sizes)
    padded = np.zeros((most, *a.shape[1:]), dtype=a.dtype)
    padded[: a.shape[0]] = a
    out = [torch.zeros(padded.shape, dtype=torch.from_numpy(padded).dtype) for _ in range(world)]
    dist.all_gather(out, torch.from_numpy(padded))
    return np.concatenate([o.numpy()[: int(s.item())] for o, s in zip(out, sizes)])


class _Share:
    """This rank's chunks of ``x``, with fixed-point sums of rows per centroid."""

    def __init__(self, x: Array, chunk_size: int, gpu: bool) -> None:
        self.x = x
        self.n, self.dim = int(x.shape[0]), int(x.shape[1])
        rank, world = _world()
        self.chunks = shard_chunks(self.n, chunk_size, rank, world)
        self.gpu = gpu
        self.rows = sum(hi - lo for lo, hi in self.chunks)
        self.index: I64 = (
            np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in self.chunks])
            if self.chunks
            else np.zeros(0, dtype=np.int64)
        )
        biggest = 0.0
        for lo, hi in self.chunks:
            biggest = max(biggest, float(np.abs(_rows(x, slice(lo, hi))).max(initial=0.0)))
        biggest = max(_max(biggest), 1e-30)
        # fixed point: |sum over all N points| stays below 2^62
        self.shift = int(min(40, math.floor(math.log2(2.0**62 / (self.n * biggest)))))

    def fixed(self, rows: F32) -> I64:
        out: I64 = np.rint(rows.astype(np.float64) * 2.0**self.shift).astype(np.int64)
        return out

    def picked(self, sample: I64) -> list[tuple[I64, F32]]:
        """Per owned chunk: the sorted global indices of ``sample`` in it, and their rows."""
        out = []
        for lo, hi in self.chunks:
            a, b = np.searchsorted(sample, [lo, hi])
            if b > a:
                idx = sample[a:b]
                out.append((idx, _rows(self.x, idx)))
        return out

    def centroids(self, sums: I64, counts: I64, old: F32) -> F32:
        sums, counts = _sum(sums), _sum(counts)
        new: F32 = old.copy()
        nz = counts > 0  # an empty cluster keeps its centroid
        new[nz] = (sums[nz] / 2.0**self.shift / counts[nz, None]).astype(np.float32)
        return new

    def accumulate(self, sums: I64, counts: I64, rows: F32, labels: I64) -> None:
        if labels.shape[0] == 0:
            return
        order = np.argsort(labels, kind="stable")
        lab = labels[order]
        cut = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        sums[lab[cut]] += np.add.reduceat(self.fixed(rows[order]), cut, axis=0)
        counts += np.bincount(labels, minlength=counts.shape[0])

    def assign(self, c: F32) -> tuple[I64, F32]:
        """Labels and squared distances of the owned rows (in ``self.index`` order)."""
        index = _Index(c, self.gpu)
        labels, sqd = [], []
        for lo, hi in self.chunks:
            d, i = index.search(_rows(self.x, slice(lo, hi)))
            labels.append(i)
            sqd.append(d)
        if not labels:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(labels), np.concatenate(sqd)


def _lloyd(share: _Share, c: F32, train: I64, niter: int) -> F32:
    k = int(c.shape[0])
    parts = share.picked(train)
    for _ in range(niter):
        index = _Index(c, share.gpu)
        sums = np.zeros((k, share.dim), dtype=np.int64)
        counts = np.zeros(k, dtype=np.int64)
        for _idx, rows in parts:
            _, lab = index.search(rows)
            share.accumulate(sums, counts, rows, lab)
        c = share.centroids(sums, counts, c)
    return c


def _resample(
    share: _Share,
    labels: I64,
    sqd: F32,
    c: F32,
    s: int,
    strategy: Literal["closest", "random"],
    seed: int,
) -> F32:
    k = int(c.shape[0])
    if strategy == "closest":
        key = sqd.astype(np.float64)
    elif strategy == "random":  # per chunk, so that the keys do not depend on the rank count
        key = np.concatenate(
            [np.random.default_rng([seed, lo]).random(hi - lo) for lo, hi in share.chunks]
            or [np.zeros(0)]
        )
    else:
        raise ConfigError(f"resample strategy {strategy!r}: use 'closest' or 'random'")
    # this rank's best s per cluster (lexsort is stable: ties go to the lower global index)
    order = np.lexsort((share.index, key, labels))
    sl = labels[order]
    within = np.arange(order.shape[0]) - np.searchsorted(sl, sl)
    mine = order[within < s]
    cand = _gather_rows(
        np.stack(
            [labels[mine].astype(np.float64), key[mine], share.index[mine].astype(np.float64)]
        ).T.copy()
    )
    # the global best s per cluster, the same on every rank
    glab, gkey, gidx = cand[:, 0].astype(np.int64), cand[:, 1], cand[:, 2].astype(np.int64)
    gorder = np.lexsort((gidx, gkey, glab))
    gl = glab[gorder]
    gwithin = np.arange(gorder.shape[0]) - np.searchsorted(gl, gl)
    chosen = np.sort(gidx[gorder[gwithin < s]])
    sums = np.zeros((k, share.dim), dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    owned = np.flatnonzero(np.isin(share.index, chosen, assume_unique=True))
    for lo in range(0, owned.shape[0], DEFAULT_CHUNK):
        pos = owned[lo : lo + DEFAULT_CHUNK]
        rows = _rows(share.x, share.index[pos])
        share.accumulate(sums, counts, rows, labels[pos])
    return share.centroids(sums, counts, c)


def distributed_hierarchical_kmeans(
    x: Array,
    clusters: Sequence[int],
    *,
    niter: int = 20,
    n_resamples: int = 10,
    sample_sizes: Sequence[int] | None = None,
    resample_strategy: Literal["closest", "random"] = "closest",
    train_size: int | None = None,
    seed_sample: int | None = None,
    seed: int = 0,
    gpu: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    gather: bool = True,
) -> HierarchicalClusters:
    """Hierarchical k-means with resampling of ``x`` ``(N, D)``, each rank on its chunks.

    Every rank passes the same ``x`` (typically the shared memmap) and reads only its chunks
    (see the module docstring). ``train_size``: points of the global Lloyd sample (default
    ``min(N, 256 k)``); ``seed_sample``: points k-means++ draws seeds from (default
    ``max(20 k, 10000)``). ``gather``: every rank gets the labels and distances of all points
    (12 bytes a point, for the sampling that follows); else only those of its own rows, in
    chunk order. Without a process group this runs on one rank.
    """
    ks = [int(k) for k in clusters]
    if not ks:
        raise ConfigError("clusters must list at least one level, e.g. [100, 10]")
    if x.ndim != 2:
        raise ConfigError(f"points must be a 2-D array (N, D), got shape {tuple(x.shape)}")
    n = int(x.shape[0])
    if not 1 <= ks[0] <= n:
        raise ConfigError(f"cannot make {ks[0]} clusters of {n} points; lower the cluster count")
    for lo, hi in itertools.pairwise(ks):
        if hi > lo:
            raise ConfigError(f"clusters {ks}: each level must have at most as many as below")
    sizes = list(sample_sizes) if sample_sizes is not None else default_sample_sizes(n, ks)
    if len(sizes) != len(ks):
        raise ConfigError(f"sample_sizes {list(sizes)} must have one entry per level {ks}")
    gpu_on = _use_gpu(gpu)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    share = _Share(x, chunk_size, gpu_on)
    times["scan_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    k = ks[0]

    # level 1: seeds from a sample every rank sees, then Lloyd on the global training sample
    seeds_idx = _sorted_sample(n, max(20 * k, 10_000) if seed_sample is None else seed_sample, rng)
    pts = np.zeros((seeds_idx.shape[0], share.dim), dtype=np.float32)
    for idx, rows in share.picked(seeds_idx):
        pts[np.searchsorted(seeds_idx, idx)] = rows
    pts = _sum(pts)  # one rank owns each row, the others add zeros: exact
    c = kmeans_plusplus(pts, k, seed=int(rng.integers(2**31)), sample_size=pts.shape[0])
    times["seed_s"] = time.perf_counter() - t0 - times["scan_s"]
    t1 = time.perf_counter()
    train = _sorted_sample(n, min(n, 256 * k) if train_size is None else int(train_size), rng)
    c = _lloyd(share, c, train, int(niter))
    times["lloyd_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    labels, sqd = share.assign(c)
    passes = 1
    times["resample_s"] = 0.0
    if sizes[0] > 1:
        for _ in range(int(n_resamples)):
            step_seed = int(rng.integers(2**31))
            t2 = time.perf_counter()
            c = _resample(share, labels, sqd, c, int(sizes[0]), resample_strategy, step_seed)
            times["resample_s"] += time.perf_counter() - t2
            labels, sqd = share.assign(c)
            passes += 1
    times["assign_s"] = time.perf_counter() - t1 - times["resample_s"]
    times["assign_passes"] = passes
    t1 = time.perf_counter()
    centroids: list[F32] = [c]
    parents: list[I64] = []

    # higher levels: the centroids below, the same on every rank
    for kl, sl in zip(ks[1:], sizes[1:]):
        below = centroids[-1]
        seed_l = int(rng.integers(2**31))
        cl = kmeans(below, kl, niter=niter, seed=seed_l, gpu=gpu_on)
        lab, d = assign(below, cl, gpu=gpu_on)
        for _ in range(int(n_resamples) if sl > 1 else 0):
            cl = resample_centroids(below, lab, d, cl, int(sl), strategy=resample_strategy, rng=rng)
            lab, d = assign(below, cl, gpu=gpu_on)
        centroids.append(cl)
        parents.append(lab)
    times["upper_levels_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()

    if gather:
        every = _gather_rows(
            np.stack([share.index.astype(np.float64), labels.astype(np.float64), sqd]).T.copy()
        )
        order = np.argsort(every[:, 0], kind="stable")
        labels = every[order, 1].astype(np.int64)
        sqd = every[order, 2].astype(np.float32)
    times["gather_s"] = time.perf_counter() - t1
    times["total_s"] = time.perf_counter() - t0
    rank, world = _world()
    info = {
        "clusters": ks,
        "niter": int(niter),
        "n_resamples": int(n_resamples),
        "sample_sizes": [int(v) for v in sizes],
        "resample_strategy": resample_strategy,
        "fitted_on": n,
        "train_size": int(train.shape[0]),
        "seed": int(seed),
        "gpu": gpu_on,
        "world_size": world,
        "chunk_size": int(chunk_size),
        "gathered": bool(gather),
        "writer": rank == 0,  # the rank that saves shared results
        "timings": {k: round(v, 3) for k, v in times.items()},
    }
    return HierarchicalClusters(centroids, labels, sqd, parents, info)
