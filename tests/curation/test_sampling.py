"""Balanced hierarchical sampling, the diversity rule, near-duplicate removal, entropies."""

from __future__ import annotations

import numpy as np
import pytest

from eofm.curation import (
    HierarchicalClusters,
    balanced_cut,
    entropy,
    hierarchical_sampling,
    near_duplicates,
    resolve_target,
    select_within_clusters,
)
from eofm.errors import ConfigError


def flat(sizes: list[int], seed: int = 0) -> HierarchicalClusters:
    """A one-level hierarchy with clusters of the given sizes and random distances."""
    rng = np.random.default_rng(seed + 100)
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    rng.shuffle(labels)
    d = rng.random(labels.shape[0]).astype(np.float32)
    return HierarchicalClusters([np.zeros((len(sizes), 2), np.float32)], labels, d)


def test_balanced_cut_on_a_known_mixture() -> None:
    rng = np.random.default_rng(0)
    # the largest cut t with min(t,1000) + min(t,100) + min(t,10) <= 300 is 190
    np.testing.assert_array_equal(balanced_cut(np.array([1000, 100, 10]), 300, rng), [190, 100, 10])
    np.testing.assert_array_equal(
        balanced_cut(np.array([1000, 1000, 10]), 300, rng), [145, 145, 10]
    )
    # a remainder goes one by one to random clusters larger than the cut
    q = balanced_cut(np.array([50, 50, 50, 3]), 100, rng)
    assert q.sum() == 100 and q[3] == 3 and sorted(q[:3].tolist()) == [32, 32, 33]
    np.testing.assert_array_equal(balanced_cut(np.array([5, 7]), 100, rng), [5, 7])
    np.testing.assert_array_equal(balanced_cut(np.array([5, 7]), 0, rng), [0, 0])


@pytest.mark.parametrize("diversity", [0.0, 0.5, 1.0])
def test_hierarchical_sampling_keeps_the_expected_number_per_cluster(diversity: float) -> None:
    h = flat([1000, 100, 10])
    chosen = hierarchical_sampling(h, 300, diversity=diversity, seed=1)
    assert len(chosen) == 300 and len(np.unique(chosen)) == 300
    assert np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(np.bincount(h.labels[chosen], minlength=3), [190, 100, 10])
    # a fraction of the pool
    assert len(hierarchical_sampling(h, 0.1, diversity=diversity)) == 111


def test_two_level_sampling_balances_the_top_level_first() -> None:
    # level-1 clusters 0..5 with sizes, grouped into two level-2 clusters {0,1,2} and {3,4,5}
    sizes = [500, 300, 200, 50, 40, 10]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), sizes).astype(np.int64)
    d = rng.random(labels.shape[0]).astype(np.float32)
    h = HierarchicalClusters(
        [np.zeros((6, 2), np.float32), np.zeros((2, 2), np.float32)],
        labels,
        d,
        [np.array([0, 0, 0, 1, 1, 1])],
    )
    chosen = hierarchical_sampling(h, 300)
    per = np.bincount(labels[chosen], minlength=6)
    # top level: group 2 holds only 100 points -> kept whole; group 1 gets 200 split evenly
    np.testing.assert_array_equal(per[3:], [50, 40, 10])
    assert per[:3].sum() == 200 and per[:3].max() - per[:3].min() <= 1


def test_diversity_rule_from_closest_to_uniform() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros(2000, dtype=np.int64)
    dist = np.random.default_rng(7).random(2000)
    means = {}
    for eta in (0.0, 0.5, 1.0):
        chosen = select_within_clusters(labels, dist, np.array([200]), diversity=eta, rng=rng)
        assert len(chosen) == 200
        means[eta] = dist[chosen].mean()
        if eta == 0.0:
            np.testing.assert_array_equal(np.sort(chosen), np.sort(np.argsort(dist)[:200]))
    assert means[0.0] < means[0.5] < means[1.0]
    assert abs(means[1.0] - 0.5) < 0.06  # uniform random
    with pytest.raises(ConfigError, match="diversity"):
        select_within_clusters(labels, dist, np.array([5]), diversity=1.5, rng=rng)


def test_eligible_mask_excludes_points() -> None:
    h = flat([100, 100])
    eligible = np.ones(200, dtype=bool)
    eligible[h.labels == 1] = False
    eligible[np.flatnonzero(h.labels == 1)[:5]] = True
    chosen = hierarchical_sampling(h, 50, eligible=eligible)
    assert eligible[chosen].all() and len(chosen) == 50
    assert np.bincount(h.labels[chosen], minlength=2).tolist() == [45, 5]


def test_near_duplicates_removes_exact_and_near_copies_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    x[100] = x[10]  # exact copy
    x[101] = 3.0 * x[10]  # same direction, other norm: cosine 1
    x[102] = x[11] + 0.01 * rng.normal(size=32).astype(np.float32)  # near copy
    x[103] = x[12] + 0.5 * rng.normal(size=32).astype(np.float32)  # related, not a duplicate
    keep = near_duplicates(x, 0.98)
    assert sorted(np.flatnonzero(~keep).tolist()) == [100, 101, 102]
    assert keep[[10, 11, 12, 103]].all()
    # within groups: a copy in another group is not compared
    groups = np.zeros(300, dtype=np.int64)
    groups[100] = 1
    keep_g = near_duplicates(x, 0.98, groups=groups)
    assert sorted(np.flatnonzero(~keep_g).tolist()) == [101, 102]
    # small blocks give the same answer
    np.testing.assert_array_equal(near_duplicates(x, 0.98, block_elements=1000), keep)
    with pytest.raises(ConfigError, match="cosine"):
        near_duplicates(x, 2.0)


def test_entropy_and_targets() -> None:
    assert entropy([5, 5]) == pytest.approx(np.log(2))
    assert entropy([10, 0]) == 0.0
    assert entropy([1, 1, 1, 1], normalized=True) == pytest.approx(1.0)
    assert entropy([]) == 0.0
    assert resolve_target(0.3, 1000) == 300
    assert resolve_target(500, 1000) == 500
    assert resolve_target(5000, 1000) == 1000
    assert resolve_target("0.25", 100) == 25 and resolve_target("40", 100) == 40
    with pytest.raises(ConfigError):
        resolve_target(-1, 10)
    with pytest.raises(ConfigError):
        resolve_target("many", 10)
