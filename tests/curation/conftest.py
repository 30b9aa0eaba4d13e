"""Curation tests run on one torch thread (small models on a shared 2-core machine are many
times faster without competing OpenMP threads) and share small synthetic pools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

COLOURS = np.array(
    [[200, 60, 40], [30, 160, 60], [40, 60, 200], [220, 220, 40], [120, 30, 160]],
    dtype=np.float32,
)


def write_colour_pool(root: Path, counts: list[int], size: int = 16, seed: int = 0) -> Path:
    """Shards of RGB images whose class is a distinct mean colour (plus texture noise), with
    ``counts[c]`` images of class ``c``, shuffled; labels and paths recorded."""
    from eofm.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    n = labels.shape[0]
    noise = rng.normal(0.0, 12.0, size=(n, 3, size, size)).astype(np.float32)
    images = np.clip(COLOURS[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    names = tuple(f"class{c}" for c in range(len(counts)))
    with ShardWriter(root, ("red", "green", "blue"), class_names=names, shard_size=256) as w:
        w.add_batch(images, labels=labels, paths=[f"img_{i:05d}.png" for i in range(n)])
    return root


@pytest.fixture(scope="session")
def colour_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A heavy-tailed pool: 400 images of class 0, 25 of each of 4 other classes."""
    return write_colour_pool(tmp_path_factory.mktemp("pool") / "shards", [400, 25, 25, 25, 25])
