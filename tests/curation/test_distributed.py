"""Distributed hierarchical k-means: 2 CPU processes (gloo), each reading only its chunks of
the embeddings, give exactly the clusters and the curated subset of 1 process."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eofm.curation.distributed import distributed_hierarchical_kmeans, shard_chunks
from eofm.curation.pipeline import CurationConfig, curate_embeddings
from eofm.errors import ConfigError

N, D, CHUNK = 3000, 16, 256
KS = [24, 4]


def _points(path: Path) -> Path:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, D)).astype(np.float32) * 3
    x = centres[rng.integers(0, 12, N)] + rng.normal(size=(N, D)).astype(np.float32)
    np.save(path, x.astype(np.float32))
    return path


def _config(strategy: str) -> CurationConfig:
    return CurationConfig(
        target=0.3,
        clusters=KS,
        niter=5,
        n_resamples=2,
        resample_strategy=strategy,  # type: ignore[arg-type]
        train_size=2000,
        seed=3,
        distributed=True,
        gpu=False,
    )


def _curate(points: Path, strategy: str, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    x = np.load(points, mmap_mode="r")
    clusters = distributed_hierarchical_kmeans(
        x,
        KS,
        niter=5,
        n_resamples=2,
        resample_strategy=strategy,
        train_size=2000,
        seed=3,
        gpu=False,
        chunk_size=chunk,
    )
    subset = curate_embeddings(x, _config(strategy), cache=None).indices
    return {
        "labels": clusters.labels,
        "sqdist": clusters.sqdist,
        "centroids": clusters.centroids[0],
        "top": clusters.centroids[1],
        "parents": clusters.parents[0],
        "subset": subset,
    }


def _worker(rank: int, port: int, points: str, out: str, strategy: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        got = _curate(Path(points), strategy)
        np.savez(f"{out}.{rank}.npz", **got)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shards_cover_every_row_once() -> None:
    rows = [
        r for rank in range(3) for lo, hi in shard_chunks(1000, 64, rank, 3) for r in range(lo, hi)
    ]
    assert sorted(rows) == list(range(1000))
    assert shard_chunks(1000, 64, 1, 3)[0] == (64, 128)


@pytest.mark.parametrize("strategy", ["closest", "random"])
def test_two_ranks_give_exactly_the_subset_of_one(tmp_path: Path, strategy: str) -> None:
    torch.set_num_threads(1)
    points = _points(tmp_path / "x.npy")
    one = _curate(points, strategy)
    out = tmp_path / "two"
    mp.spawn(_worker, args=(_free_port(), str(points), str(out), strategy), nprocs=2)
    for rank in range(2):
        with np.load(f"{out}.{rank}.npz") as two:
            for key, value in one.items():
                np.testing.assert_array_equal(two[key], value, err_msg=f"{key} on rank {rank}")
    # it is a real clustering: the points sit near their centroids, every cluster is used
    x = np.load(points)
    own = ((x - one["centroids"][one["labels"]]) ** 2).sum(1)
    np.testing.assert_allclose(own, one["sqdist"], rtol=1e-4, atol=1e-3)
    assert np.bincount(one["labels"], minlength=KS[0]).min() > 0
    assert one["subset"].shape[0] == int(0.3 * N) and np.all(np.diff(one["subset"]) > 0)


def test_another_seed_gives_other_centroids(tmp_path: Path) -> None:
    points = _points(tmp_path / "x.npy")
    a = _curate(points, "closest", chunk=CHUNK)
    x = np.load(points, mmap_mode="r")
    b = distributed_hierarchical_kmeans(
        x, KS, niter=5, n_resamples=2, train_size=2000, seed=4, gpu=False, chunk_size=CHUNK
    )
    assert not np.array_equal(a["centroids"], b.centroids[0])  # the seed matters


def test_unsupported_options_are_named() -> None:
    x = np.zeros((50, 4), dtype=np.float32)
    cfg = CurationConfig(clusters=[4], distributed=True, dedup=0.9, subsample=20)
    with pytest.raises(ConfigError, match="subsample, dedup"):
        curate_embeddings(x, cfg, cache=None)
    with pytest.raises(ConfigError, match="cannot make 80 clusters of 50"):
        distributed_hierarchical_kmeans(x, [80])
