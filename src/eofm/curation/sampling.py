"""Hierarchical balanced sampling (Vo et al. 2024), within-cluster diversity, near-duplicates.

Balanced sampling to a target size ``T`` over a hierarchy of clusters
(:class:`~eofm.curation.kmeans.HierarchicalClusters`):

1. at the top level, find the largest cut ``t`` with ``sum_i min(t, |C_i|) <= T`` (binary
   search); every cluster gets ``min(t, |C_i|)`` points and the remainder goes, one point
   each, to randomly chosen clusters larger than ``t`` (:func:`balanced_cut`);
2. each cluster's quota is split over its sub-clusters the same way, down to level 1;
3. in each level-1 cluster, ``quota`` points are chosen by the diversity rule below.

Small clusters are kept whole and large ones are capped, so the kept subset is spread
evenly over the modes of the data instead of following its heavy tail.

**Diversity** ``eta`` in ``[0, 1]`` (:func:`select_within_clusters`): every point gets the
key ``-(1 - eta) * d / m + eta * g``, with ``d`` its distance to the level-1 centroid, ``m``
the mean of ``d`` in its cluster and ``g`` a standard Gumbel draw; each cluster keeps its
``quota`` largest keys. ``eta = 0`` keeps the points closest to the centroid (Vo et al.'s
``"c"``), ``eta = 1`` a uniform random subset (``"r"``); in between this is sampling without
replacement with weights ``exp(-(1 - eta) / eta * d / m)`` (the Gumbel-top-k trick), so
typical points are favoured more the lower ``eta``.

**Near-duplicates** (:func:`near_duplicates`): cosine similarity of L2-normalised
embeddings above a threshold links two points; of every connected group the point with the
lowest index is kept. Comparisons run inside groups (level-1 clusters: near-duplicates
almost always share a cluster), which keeps the cost near ``N x cluster size``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from eofm.curation.kmeans import HierarchicalClusters
from eofm.errors import ConfigError

__all__ = [
    "balanced_cut",
    "class_counts",
    "entropy",
    "hierarchical_sampling",
    "near_duplicates",
    "resolve_target",
    "select_within_clusters",
    "summarize_selection",
]

I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]


def resolve_target(target: float | int | str, n: int) -> int:
    """A target size from a count (``5000``) or a fraction of ``n`` (``0.3``)."""
    if isinstance(target, str):
        text = target.strip()
        try:
            value: float = float(text)
        except ValueError:
            raise ConfigError(f"target {target!r} is neither a count nor a fraction") from None
        if value.is_integer() and "." not in text and "e" not in text.lower():
            return resolve_target(int(value), n)
        return resolve_target(value, n)
    if isinstance(target, bool):
        raise ConfigError(f"target must be a count or a fraction, got {target!r}")
    if isinstance(target, (int, np.integer)):
        if target < 0:
            raise ConfigError(f"target must be non-negative, got {target}")
        return min(int(target), int(n))
    value = float(target)
    if not 0.0 <= value <= 1.0:
        if value.is_integer() and value > 1:
            return min(int(value), int(n))
        raise ConfigError(f"target fraction must lie in [0, 1], got {target}")
    return round(value * n)


def entropy(counts: Array, *, normalized: bool = False) -> float:
    """Shannon entropy (nats) of a distribution given by counts; ``normalized`` divides by
    the log of the number of categories (1.0 = uniform)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    h = float(-(p * np.log(p)).sum())
    if normalized:
        k = c.shape[0]
        return h / math.log(k) if k > 1 else 0.0
    return h


def balanced_cut(sizes: Array, target: int, rng: np.random.Generator) -> I64:
    """Quotas ``<= sizes`` summing to ``min(target, sum(sizes))``, as flat as possible.

    The largest integer cut ``t`` with ``sum(min(t, sizes)) <= target`` is found by binary
    search; the remainder goes one point each to random clusters larger than ``t``.
    """
    s = np.asarray(sizes, dtype=np.int64)
    target = int(target)
    if target < 0:
        raise ConfigError(f"target must be non-negative, got {target}")
    if s.size == 0 or target >= int(s.sum()):
        whole: I64 = s.copy()
        return whole
    lo, hi = 0, int(s.max())  # sum(min(lo)) <= target < sum(min(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.minimum(s, mid).sum()) <= target:
            lo = mid
        else:
            hi = mid
    quota = np.minimum(s, lo)
    rest = target - int(quota.sum())
    if rest > 0:
        cand = np.flatnonzero(s > lo)
        quota[rng.choice(cand, size=rest, replace=False)] += 1
    return quota.astype(np.int64)


def select_within_clusters(
    labels: Array,
    distances: Array,
    quotas: Array,
    *,
    diversity: float = 0.0,
    rng: np.random.Generator,
    eligible: Array | None = None,
) -> I64:
    """Indices (sorted) of ``quotas[c]`` points of every cluster ``c``, by the diversity rule
    of the module docstring. ``distances``: distance (not squared) to the centroid."""
    eta = float(diversity)
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"diversity must lie in [0, 1], got {diversity}")
    lab = np.asarray(labels, dtype=np.int64)
    n = lab.shape[0]
    k = int(np.asarray(quotas).shape[0])
    pool = np.arange(n, dtype=np.int64)
    if eligible is not None:
        pool = pool[np.asarray(eligible, dtype=bool)]
    lab = lab[pool]
    d = np.asarray(distances, dtype=np.float64)[pool]
    if eta >= 1.0:
        key = rng.gumbel(size=pool.shape[0])
    else:
        counts = np.bincount(lab, minlength=k).astype(np.float64)
        mean = np.bincount(lab, weights=d, minlength=k) / np.maximum(counts, 1.0)
        scaled = d / np.maximum(mean[lab], 1e-12)
        key = -(1.0 - eta) * scaled
        if eta > 0.0:
            key = key + eta * rng.gumbel(size=pool.shape[0])
    order = np.lexsort((-key, lab))
    sl = lab[order]
    starts = np.searchsorted(sl, np.arange(k, dtype=np.int64))
    rank = np.arange(sl.shape[0], dtype=np.int64) - starts[sl]
    chosen = pool[order[rank < np.asarray(quotas, dtype=np.int64)[sl]]]
    out: I64 = np.sort(chosen).astype(np.int64)
    return out


def hierarchical_sampling(
    clusters: HierarchicalClusters,
    target: float | int | str,
    *,
    diversity: float = 0.0,
    seed: int = 0,
    eligible: Array | None = None,
) -> I64:
    """Sorted indices of a balanced subset of ``target`` points (count or fraction of the
    eligible points) over the hierarchy ``clusters`` (see the module docstring).

    ``eligible``: boolean ``(N,)`` mask of points that may be kept (e.g. after
    near-duplicate removal); cluster sizes count eligible points only.
    """
    rng = np.random.default_rng(seed)
    mask = None if eligible is None else np.asarray(eligible, dtype=bool)
    n_eligible = clusters.num_points if mask is None else int(mask.sum())
    total = resolve_target(target, n_eligible)
    levels = clusters.levels
    # points under every cluster of every level
    sizes: list[I64] = [clusters.sizes(1, mask)]
    for parent, k in zip(clusters.parents, clusters.clusters[1:]):
        sizes.append(np.bincount(parent, weights=sizes[-1], minlength=k).astype(np.int64))
    quota = balanced_cut(sizes[levels - 1], total, rng)
    for level in range(levels - 1, 0, -1):  # split level (level + 1) quotas over level `level`
        parent = clusters.parents[level - 1]  # level `level` cluster -> level `level + 1`
        child_quota = np.zeros(clusters.clusters[level - 1], dtype=np.int64)
        order = np.argsort(parent, kind="stable")
        starts = np.searchsorted(parent[order], np.arange(quota.shape[0] + 1))
        for c in np.flatnonzero(quota > 0):
            children = order[starts[c] : starts[c + 1]]
            child_quota[children] = balanced_cut(sizes[level - 1][children], int(quota[c]), rng)
        quota = child_quota
    dist = np.sqrt(np.maximum(clusters.sqdist.astype(np.float64), 0.0))
    return select_within_clusters(
        clusters.labels, dist, quota, diversity=diversity, rng=rng, eligible=mask
    )


def _normalise(rows: Array) -> npt.NDArray[np.float32]:
    r = np.asarray(rows, dtype=np.float32)
    norm = np.linalg.norm(r, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = r / np.maximum(norm, 1e-12)
    return out


def near_duplicates(
    x: Array,
    threshold: float = 0.98,
    *,
    groups: Array | None = None,
    block_elements: int = 1 << 24,
) -> npt.NDArray[np.bool_]:
    """Boolean ``(N,)`` mask of the points to **keep** after near-duplicate removal.

    Two points are near-duplicates when the cosine similarity of their embeddings exceeds
    ``threshold``; every connected group of near-duplicates keeps its lowest index. With
    ``groups`` (e.g. level-1 cluster labels) only points of the same group are compared;
    without, all pairs are (quadratic: for up to about 10^5 points). ``x`` may be a memmap;
    each group is read once, similarities are computed in blocks of ``block_elements``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"near-duplicate threshold must be a cosine in [-1, 1], got {threshold}")
    n = int(x.shape[0])
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    g = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    order = np.argsort(g, kind="stable")
    cuts = np.flatnonzero(np.r_[True, g[order][1:] != g[order][:-1], True])
    for a, b in itertools.pairwise(cuts):
        members = np.sort(order[a:b])
        m = members.shape[0]
        if m < 2:
            continue
        emb = _normalise(x[members])
        rows_i: list[Array] = []
        rows_j: list[Array] = []
        step = max(1, int(block_elements) // m)
        for lo in range(0, m, step):
            sim = emb[lo : lo + step] @ emb.T
            i, j = np.nonzero(sim > threshold)
            i = i + lo
            upper = j > i
            rows_i.append(i[upper])
            rows_j.append(j[upper])
        ii = np.concatenate(rows_i)
        if ii.size == 0:
            continue
        jj = np.concatenate(rows_j)
        graph = coo_matrix((np.ones(ii.size, dtype=np.int8), (ii, jj)), shape=(m, m))
        _, comp = connected_components(graph, directed=False)
        # members are sorted: the first occurrence of each component is its lowest index
        _, first = np.unique(comp, return_index=True)
        local_keep = np.zeros(m, dtype=bool)
        local_keep[first] = True
        keep[members] = local_keep
    return keep


def class_counts(labels: Array, num_classes: int | None = None) -> I64:
    """Counts per class of integer labels (or of multi-hot rows, summed)."""
    y = np.asarray(labels)
    if y.ndim == 2:
        out: I64 = y.sum(axis=0).astype(np.int64)
        return out
    k = int(num_classes) if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
    res: I64 = np.bincount(y.astype(np.int64), minlength=k).astype(np.int64)
    return res


def summarize_selection(
    clusters: HierarchicalClusters,
    selected: Sequence[int] | Array,
    labels: Array | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Sizes and entropies before and after selection (cluster entropy at every level, and
    class entropy when ``labels`` are given)."""
    sel = np.asarray(selected, dtype=np.int64)
    mask = np.zeros(clusters.num_points, dtype=bool)
    mask[sel] = True
    out: dict[str, Any] = {"pool_size": clusters.num_points, "subset_size": int(sel.size)}
    for level in range(1, clusters.levels + 1):
        before = clusters.sizes(level)
        after = clusters.sizes(level, mask)
        out[f"level{level}"] = {
            "clusters": int(before.shape[0]),
            "nonempty_before": int((before > 0).sum()),
            "nonempty_after": int((after > 0).sum()),
            "entropy_before": entropy(before),
            "entropy_after": entropy(after),
            "normalized_entropy_before": entropy(before, normalized=True),
            "normalized_entropy_after": entropy(after, normalized=True),
            "max_size_before": int(before.max()) if before.size else 0,
            "max_size_after": int(after.max()) if after.size else 0,
        }
    if labels is not None:
        y = np.asarray(labels)
        k = num_classes if num_classes is not None else (y.shape[1] if y.ndim == 2 else None)
        before_c = class_counts(y, k)
        after_c = class_counts(y[sel], before_c.shape[0])
        out["classes"] = {
            "counts_before": before_c.tolist(),
            "counts_after": after_c.tolist(),
            "entropy_before": entropy(before_c),
            "entropy_after": entropy(after_c),
            "normalized_entropy_before": entropy(before_c, normalized=True),
            "normalized_entropy_after": entropy(after_c, normalized=True),
        }
    return out
