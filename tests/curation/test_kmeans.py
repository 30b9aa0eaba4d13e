"""Hierarchical k-means: recovery of separated clusters, k-means++, resampling, subsampling,
memmaps, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from eofm.curation import (
    HierarchicalClusters,
    assign,
    auto_clusters,
    hierarchical_kmeans,
    kmeans,
    kmeans_plusplus,
)
from eofm.curation.kmeans import resample_centroids
from eofm.errors import ConfigError


def blobs(n: int = 4000, centers: int = 20, dim: int = 16, seed: int = 0) -> tuple:
    x, y = make_blobs(
        n, n_features=dim, centers=centers, cluster_std=0.5, center_box=(-20, 20), random_state=seed
    )
    return x.astype(np.float32), y


def test_hierarchical_kmeans_recovers_separated_blobs() -> None:
    x, y = blobs()
    h = hierarchical_kmeans(x, [20, 4], seed=0)
    assert adjusted_rand_score(y, h.labels) >= 0.95
    assert h.clusters == [20, 4] and h.levels == 2
    assert h.centroids[0].shape == (20, 16) and h.centroids[0].dtype == np.float32
    assert h.parents[0].shape == (20,) and set(h.parents[0].tolist()) <= set(range(4))
    # level 2 groups whole level-1 clusters: every blob lies in one top cluster
    top = h.point_labels(2)
    for blob in range(20):
        assert len(np.unique(top[y == blob])) == 1
    assert h.sizes(1).sum() == len(x) and h.sizes(2).sum() == len(x)
    # distances are those to the assigned centroid
    d = ((x - h.centroids[0][h.labels]) ** 2).sum(1)
    np.testing.assert_allclose(h.sqdist, d, rtol=1e-3, atol=1e-3)


def test_kmeans_plus_plus_beats_random_initialisation() -> None:
    # many small, far-apart blobs: random seeds put several centroids in one blob and miss
    # others; k-means++ spreads them out
    x, _ = make_blobs(
        3000, n_features=8, centers=60, cluster_std=0.3, center_box=(-30, 30), random_state=1
    )
    x = x.astype(np.float32)
    inertia = {}
    for init in ("k-means++", "random"):
        values = []
        for seed in range(3):
            c = kmeans(x, 60, niter=10, init=init, seed=seed)
            values.append(float(assign(x, c)[1].mean()))
        inertia[init] = np.mean(values)
    assert inertia["k-means++"] < 0.5 * inertia["random"]
    seeds = kmeans_plusplus(x, 60, seed=0)
    assert seeds.shape == (60, 8) and len(np.unique(seeds, axis=0)) == 60


def test_kmeans_plus_plus_with_fewer_distinct_points_than_k() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    seeds = kmeans_plusplus(x, 5, seed=0)
    assert seeds.shape == (5, 3)
    assert len(np.unique(seeds, axis=0)) == 3  # every distinct point is a seed


def test_resampling_moves_centroids_to_cluster_cores() -> None:
    rng = np.random.default_rng(0)
    core = rng.normal(0, 0.1, size=(500, 2)).astype(np.float32)
    outliers = rng.normal(0, 0.1, size=(50, 2)).astype(np.float32) + np.float32([8.0, 0.0])
    x = np.concatenate([core, outliers])
    labels = np.zeros(len(x), dtype=np.int64)  # one cluster holding core and outliers
    centroids = x.mean(0, keepdims=True)
    sqdist = ((x - centroids) ** 2).sum(1).astype(np.float32)
    new = resample_centroids(x, labels, sqdist, centroids, 100, strategy="closest", rng=rng)
    assert abs(float(new[0, 0])) < abs(float(centroids[0, 0]))  # pulled towards the core
    rand = resample_centroids(x, labels, sqdist, centroids, 100, strategy="random", rng=rng)
    assert rand.shape == (1, 2)
    refit = resample_centroids(
        x, labels, sqdist, centroids, 100, strategy="closest", rng=rng, refit_niter=3
    )
    assert np.isfinite(refit).all()
    with pytest.raises(ConfigError, match="strategy"):
        resample_centroids(x, labels, sqdist, centroids, 10, strategy="far", rng=rng)  # type: ignore[arg-type]


def test_resampling_runs_and_keeps_recovery() -> None:
    x, y = blobs(seed=3)
    for strategy in ("closest", "random"):
        h = hierarchical_kmeans(
            x, [20, 5], n_resamples=3, resample_strategy=strategy, refit_niter=2, seed=1
        )
        assert h.info["n_resamples"] == 3 and h.info["sample_sizes"] == [100, 2]
        assert adjusted_rand_score(y, h.labels) >= 0.95


def test_subsample_then_assign_every_point_and_memmap_input(tmp_path: Path) -> None:
    x, y = blobs(n=6000, centers=10)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    h = hierarchical_kmeans(ro, [10, 3], subsample=1000, chunk_size=512, seed=0)
    assert h.info["fitted_on"] == 1000
    assert h.labels.shape == (6000,) and h.sqdist.shape == (6000,)
    assert adjusted_rand_score(y, h.labels) >= 0.95
    # the same clusters when assigning again
    again = h.assign(x)
    np.testing.assert_array_equal(again.labels, h.labels)
    # save / load round trip
    path = h.save(tmp_path / "clusters.npz")
    back = HierarchicalClusters.load(path)
    np.testing.assert_array_equal(back.labels, h.labels)
    np.testing.assert_array_equal(back.parents[0], h.parents[0])
    assert back.info["clusters"] == [10, 3]


def test_deterministic_for_a_seed() -> None:
    x, _ = blobs(n=2000, centers=8)
    a = hierarchical_kmeans(x, [12, 3], seed=5)
    b = hierarchical_kmeans(x, [12, 3], seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.parents[0], b.parents[0])


def test_errors_and_auto_clusters() -> None:
    x, _ = blobs(n=100, centers=3)
    with pytest.raises(ConfigError, match="cannot make 200 clusters"):
        hierarchical_kmeans(x, [200])
    with pytest.raises(ConfigError, match="at most as many clusters"):
        hierarchical_kmeans(x, [5, 10])
    with pytest.raises(ConfigError, match="2-D"):
        kmeans(x[0], 2)
    assert auto_clusters(1_000_000, 2) == [1000, 32]
    assert auto_clusters(100, 3) == [10, 3, 2]
    assert auto_clusters(3, 1) == [1] or auto_clusters(3, 1) == [2]
