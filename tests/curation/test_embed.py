"""Embedding extraction: memory-mapped output, resuming after an interruption, ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from eofm.curation import embedding_progress, extract_embeddings, load_embeddings
from eofm.curation.embed import BandStatistics
from eofm.data.shards import ShardDataset
from eofm.data.stats import Normalizer
from eofm.errors import ConfigError, DataError
from eofm.models import create_backbone


class Failing(nn.Module):
    """Wraps a model and raises after ``calls`` batches (an interruption mid-way)."""

    def __init__(self, model: nn.Module, calls: int) -> None:
        super().__init__()
        self.model = model
        self.calls = calls

    def forward(self, x: Tensor) -> Tensor:
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        out: Tensor = self.model(x)
        return out


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit_test", bands=["red", "green", "blue"], img_size=16)


def test_resume_after_interruption_equals_an_uninterrupted_run(
    tmp_path: Path, colour_pool: Path, model: nn.Module
) -> None:
    ds = ShardDataset(colour_pool)
    norm = Normalizer([100.0] * 3, [60.0] * 3, bands=ds.bands)
    kw = {"batch_size": 32, "chunk_size": 96, "normalizer": norm, "progress": False}
    full = np.array(load_embeddings(extract_embeddings(model, ds, tmp_path / "full.npy", **kw)))
    assert full.shape == (500, model.embed_dim) and full.dtype == np.float32
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(Failing(model, 7), ds, tmp_path / "part.npy", **kw)
    info = embedding_progress(tmp_path / "part.npy")
    assert info["done"] == [0, 1] and not info["complete"]  # 7 batches = 2 whole chunks
    with pytest.raises(DataError, match="unfinished"):
        load_embeddings(tmp_path / "part.npy")
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    extract_embeddings(model, ds, tmp_path / "part.npy", **kw)
    assert sum(calls) == 500 - 2 * 96  # only the missing chunks were embedded
    np.testing.assert_array_equal(np.array(load_embeddings(tmp_path / "part.npy")), full)
    # a finished extraction is not redone; other settings are refused
    extract_embeddings(model, ds, tmp_path / "part.npy", **kw)
    assert sum(calls) == 500 - 2 * 96
    hook.remove()
    with pytest.raises(ConfigError, match="other settings"):
        extract_embeddings(model, ds, tmp_path / "part.npy", **{**kw, "l2_normalize": True})


def test_ranks_split_the_work_into_one_file(
    tmp_path: Path, colour_pool: Path, model: nn.Module
) -> None:
    ds = ShardDataset(colour_pool)
    kw = {"batch_size": 50, "chunk_size": 100, "progress": False, "l2_normalize": True}
    ref = np.array(load_embeddings(extract_embeddings(model, ds, tmp_path / "ref.npy", **kw)))
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, rtol=1e-5)
    out = tmp_path / "ranks.npy"
    extract_embeddings(model, ds, out, rank=1, world_size=2, **kw)
    assert embedding_progress(out)["done"] == [1, 3]
    extract_embeddings(model, ds, out, rank=0, world_size=2, **kw)
    assert embedding_progress(out)["complete"]
    np.testing.assert_array_equal(np.array(load_embeddings(out)), ref)
    # a resumed extraction may use another number of ranks
    out3 = tmp_path / "three.npy"
    extract_embeddings(model, ds, out3, rank=2, world_size=3, **kw)
    extract_embeddings(model, ds, out3, **kw)
    np.testing.assert_array_equal(np.array(load_embeddings(out3)), ref)


class Plain(torch.utils.data.Dataset[dict[str, Any]]):
    """A dataset without ``get_batch``, with images of two sizes (read via a DataLoader)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = [
            rng.random((2, 12 if i % 2 else 10, 12)).astype(np.float32) for i in range(20)
        ]
        self.images[0][0, 0, 0] = np.nan

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.from_numpy(self.images[i]), "bands": ("VV", "VH")}


def test_any_dataset_with_resizing_and_band_statistics(tmp_path: Path) -> None:
    ds = Plain()
    out = extract_embeddings(
        BandStatistics(), ds, tmp_path / "bs.npy", batch_size=8, image_size=8, progress=False
    )
    x = np.array(load_embeddings(out))
    assert x.shape == (20, 4) and np.isfinite(x).all()
    torch.manual_seed(0)
    vit = create_backbone("vit_test", bands=["VV", "VH"], img_size=8)
    y = np.array(
        load_embeddings(
            extract_embeddings(
                vit, ds, tmp_path / "vit.npy", batch_size=8, image_size=8, progress=False
            )
        )
    )
    assert y.shape == (20, vit.embed_dim)
    assert vit.training  # the model's mode is restored
