"""Shard format: writer, readers (map-style and streaming), pack_dataset, errors, real EuroSAT."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from eofm.data.sample import collate_samples
from eofm.data.shards import (
    INDEX_NAME,
    ShardDataset,
    ShardIterableDataset,
    ShardWriter,
    pack_dataset,
    read_index,
)
from eofm.errors import BandMismatchError, CorruptFileError, DataError, EmptyDatasetError
from tests.conftest import shared_subdir

S2_BANDS = ("B02", "B03", "B04", "B08")


def _images(dtype: str, n: int = 10, c: int = 4, h: int = 6, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "float32":
        return rng.normal(0, 3, (n, c, h, w)).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (n, c, h, w), endpoint=True, dtype=dtype)


def _write(root: Path, images: np.ndarray, shard_size: int = 4, **kw: Any) -> Path:
    n = images.shape[0]
    with ShardWriter(root, S2_BANDS, sensor="sentinel2_l2a", shard_size=shard_size, **kw) as w:
        for i in range(n):
            w.add(
                images[i],
                label=i % 3,
                mask=np.full(images.shape[2:], i % 5 - 1, dtype=np.int64),
                target=np.array([i * 0.5, -i], dtype=np.float32),
                path=f"img{i}.tif",
            )
    return root


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip_bit_identical(tmp_path: Path, dtype: str) -> None:
    images = _images(dtype)
    _write(tmp_path, images)
    index = read_index(tmp_path)
    assert index["dtype"] == dtype
    assert index["total"] == 10 and [s["count"] for s in index["shards"]] == [4, 4, 2]
    assert index["label_kind"] == "class" and index["has_masks"] and index["has_targets"]
    stored = np.concatenate(
        [np.load(tmp_path / s["files"]["images"]) for s in index["shards"]], axis=0
    )
    assert stored.dtype == np.dtype(dtype)
    assert np.array_equal(stored, images)  # bit-identical on disk

    ds = ShardDataset(tmp_path)
    assert len(ds) == 10 and ds.bands == S2_BANDS and ds.sensor == "sentinel2_l2a"
    for i in range(10):
        s = ds[i]
        assert s["image"].dtype == torch.float32
        assert np.array_equal(s["image"].numpy(), images[i].astype(np.float32))
        assert s["label"].dtype == torch.int64 and int(s["label"]) == i % 3
        assert s["mask"].dtype == torch.int64 and bool((s["mask"] == i % 5 - 1).all())
        assert s["target"].tolist() == [i * 0.5, -i]
        assert s["path"] == f"img{i}.tif" and s["index"] == i and s["bands"] == S2_BANDS
    assert np.array_equal(ds[-1]["image"].numpy(), images[-1].astype(np.float32))
    with pytest.raises(IndexError):
        ds[10]


def test_multilabel_add_batch_and_class_names(tmp_path: Path) -> None:
    images = _images("uint16", n=7)
    labels = (np.random.default_rng(1).random((7, 3)) > 0.5).astype(np.float32)
    with ShardWriter(tmp_path, S2_BANDS, shard_size=3, class_names=["a", "b", "c"]) as w:
        w.add_batch(images[:5], labels=labels[:5], paths=[f"p{i}" for i in range(5)])
        w.add_batch(torch.from_numpy(images[5:].astype(np.int64)), labels=labels[5:])
    ds = ShardDataset(tmp_path)
    assert ds.label_kind == "multilabel" and ds.class_names == ("a", "b", "c")
    assert ds.index["dtype"] == "uint16"  # int64 values that fit were stored as uint16
    batch = ds.get_batch(range(7))
    assert np.array_equal(batch["image"].numpy(), images.astype(np.float32))
    assert np.array_equal(batch["label"].numpy(), labels)
    assert batch["path"] == ["p0", "p1", "p2", "p3", "p4", None, None]


def test_dtype_widens_and_rewrites_earlier_shards(tmp_path: Path) -> None:
    small = np.full((3, 4, 2, 2), 200, dtype=np.uint8)
    big = np.full((2, 4, 2, 2), 1000, dtype=np.uint16)
    frac = np.full((1, 4, 2, 2), 0.5, dtype=np.float32)
    with ShardWriter(tmp_path, S2_BANDS, shard_size=2) as w:
        w.add_batch(small)
        w.add_batch(big)
        w.add_batch(frac)
    ds = ShardDataset(tmp_path)
    assert ds.index["dtype"] == "float32"
    values = ds.get_batch(range(6))["image"][:, 0, 0, 0].tolist()
    assert values == [200, 200, 200, 1000, 1000, 0.5]


def test_no_index_until_close_and_abort_on_error(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, S2_BANDS, shard_size=2)
    w.add_batch(_images("uint8", n=3))
    assert not (tmp_path / INDEX_NAME).exists()  # not a valid shard folder yet
    w.close()
    assert read_index(tmp_path)["total"] == 3

    out = tmp_path / "failed"
    with pytest.raises(RuntimeError), ShardWriter(out, S2_BANDS, shard_size=2) as w2:
        w2.add_batch(_images("uint8", n=3))
        raise RuntimeError("boom")
    assert not (out / INDEX_NAME).exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    with pytest.raises(EmptyDatasetError):
        ShardWriter(tmp_path / "empty", S2_BANDS).close()


def test_rewrite_removes_stale_shards(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=10), shard_size=2)  # 5 shards
    _write(tmp_path, _images("uint8", n=3), shard_size=2)  # 2 shards
    assert sorted(p.name for p in tmp_path.glob("*.images.npy")) == [
        "shard-00000.images.npy",
        "shard-00001.images.npy",
    ]
    assert len(ShardDataset(tmp_path)) == 3


def test_writer_rejects_inconsistent_samples(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, S2_BANDS) as w:
        w.add(np.zeros((4, 3, 3), np.uint8), label=1, path="a.tif")
        with pytest.raises(DataError, match=r"b\.tif.*shape"):
            w.add(np.zeros((4, 4, 4), np.uint8), label=1, path="b.tif")
        with pytest.raises(DataError, match=r"c\.tif.*fields"):
            w.add(np.zeros((4, 3, 3), np.uint8), path="c.tif")
        with pytest.raises(BandMismatchError):
            w.add(np.zeros((3, 3, 3), np.uint8), label=0)
        with pytest.raises(DataError, match="target"):
            w.add(np.zeros((4, 3, 3), np.uint8), label=0.5)


# ---------------------------------------------------------------------------- bands


def test_band_selection_by_name(tmp_path: Path) -> None:
    images = _images("uint16")
    _write(tmp_path, images)
    ds = ShardDataset(tmp_path, bands=["B08", "B02", "B04"])
    assert ds.bands == ("B08", "B02", "B04")
    assert np.array_equal(ds[3]["image"].numpy(), images[3][[3, 0, 2]].astype(np.float32))
    batch = ds.get_batch([9, 0, 5])
    assert np.array_equal(batch["image"].numpy(), images[[9, 0, 5]][:, [3, 0, 2]])
    # sensor aliases and unpadded names resolve through the registry
    alias = ShardDataset(tmp_path, bands=["nir", "red", "B2"])
    assert alias.bands == ("B08", "B04", "B02")
    with pytest.raises(BandMismatchError, match="B11"):
        ShardDataset(tmp_path, bands=["B11", "B02"])
    it = ShardIterableDataset(tmp_path, bands=["B04"], shuffle=False)
    first = next(iter(it))
    assert np.array_equal(first["image"].numpy(), images[0][[2]].astype(np.float32))


# ---------------------------------------------------------------------------- loaders


def test_dataloader_batches_use_vectorised_reads(tmp_path: Path) -> None:
    images = _images("uint8", n=11)
    _write(tmp_path, images, shard_size=3)
    ds = ShardDataset(tmp_path)
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_samples)
    seen: list[int] = []
    for batch in loader:
        idx = batch["index"].tolist()
        assert np.array_equal(batch["image"].numpy(), images[idx].astype(np.float32))
        assert batch["label"].tolist() == [i % 3 for i in idx]
        assert batch["path"] == [f"img{i}.tif" for i in idx]
        seen += idx
    assert sorted(seen) == list(range(11))


def test_dataloader_workers_map_style(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=9), shard_size=4)
    ds = ShardDataset(tmp_path, transform=lambda s: {**s, "image": s["image"] * 0})
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(9))
    assert all(float(b["image"].abs().sum()) == 0 for b in batches)


def test_iterable_ranks_cover_disjoint_shards(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=23), shard_size=3)  # 8 shards
    offsets = np.cumsum([0, *ShardDataset(tmp_path).shard_counts])
    per_rank = []
    for rank in (0, 1):
        ds = ShardIterableDataset(tmp_path, rank=rank, world_size=2, seed=3)
        ds.set_epoch(1)
        idx = [s["index"] for s in ds]
        shards = {int(np.searchsorted(offsets, i, side="right")) - 1 for i in idx}
        per_rank.append((idx, shards))
    (idx0, shards0), (idx1, shards1) = per_rank
    assert not shards0 & shards1 and len(shards0) == len(shards1) == 4
    assert not set(idx0) & set(idx1)
    assert sorted(idx0 + idx1) == list(range(23))


def test_iterable_epochs_shuffle_deterministically(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=12), shard_size=4)
    ds = ShardIterableDataset(tmp_path, seed=0)
    ds.set_epoch(0)
    e0 = [s["index"] for s in ds]
    ds.set_epoch(1)
    e1 = [s["index"] for s in ds]
    ds.set_epoch(0)
    assert [s["index"] for s in ds] == e0
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(12))
    plain = ShardIterableDataset(tmp_path, shuffle=False)
    assert [s["index"] for s in plain] == list(range(12))


def test_iterable_workers_split_each_sample_once(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=14), shard_size=3)  # 5 shards
    for rank in (0, 1):
        ds = ShardIterableDataset(tmp_path, rank=rank, world_size=2)
        alone = sorted(s["index"] for s in ds)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples)
        counts = Counter(i for b in loader for i in b["index"].tolist())
        assert set(counts.values()) == {1}
        assert sorted(counts) == alone


def test_iterable_fewer_shards_than_readers(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=5), shard_size=8)  # one shard
    seen: list[int] = []
    for rank in range(3):
        ds = ShardIterableDataset(tmp_path, rank=rank, world_size=3)
        for worker in range(2):
            for shard, local in ds.assignment(worker, 2):
                seen += (local + shard).tolist()
    assert sorted(seen) == list(range(5))
    with pytest.raises(ValueError):
        list(ShardIterableDataset(tmp_path, rank=2, world_size=2))


# ---------------------------------------------------------------------------- corruption


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint16"), shard_size=4)
    victim = tmp_path / "shard-00001.images.npy"
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match=r"shard-00001\.images\.npy.*truncated"):
        ShardDataset(tmp_path)


def test_count_mismatch_and_missing_files(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8"), shard_size=4)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["shards"][0]["count"] = 5
    index["total"] = 11
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match=r"shard-00000\.images\.npy.*shape"):
        ShardDataset(tmp_path)
    index["shards"][0]["count"] = 4
    index["total"] = 10
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    (tmp_path / "shard-00002.masks.npy").unlink()
    with pytest.raises(CorruptFileError, match=r"shard-00002\.masks\.npy.*missing"):
        ShardIterableDataset(tmp_path)


def test_bad_or_missing_index(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match=r"index\.json.*missing"):
        ShardDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"index\.json"):
        ShardDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format": "eofm-shards", "version": 1}))
    with pytest.raises(CorruptFileError, match="bands"):
        ShardDataset(tmp_path)


def test_garbage_npy_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=4), shard_size=4)
    (tmp_path / "shard-00000.labels.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match=r"shard-00000\.labels\.npy"):
        ShardDataset(tmp_path)


def test_paths_file_mismatch(tmp_path: Path) -> None:
    _write(tmp_path, _images("uint8", n=4), shard_size=4)
    (tmp_path / "shard-00000.paths.json").write_text("[]")
    ds = ShardDataset(tmp_path)
    with pytest.raises(CorruptFileError, match=r"paths\.json"):
        ds[0]


# ---------------------------------------------------------------------------- pack_dataset


class _ListDataset(Dataset[dict[str, Any]]):
    """A tiny map-style eofm dataset over in-memory sample dicts."""

    sensor = "rgb"
    class_names = ("water", "forest", "city")

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def _rgb_samples(n: int, h: int = 8, w: int = 8) -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (3, h, w)).astype(np.float32)  # JPEG-like float32 0..255
        out.append(
            {
                "image": torch.from_numpy(img),
                "bands": ("red", "green", "blue"),
                "label": torch.tensor(i % 3),
                "mask": torch.from_numpy(rng.integers(-1, 3, (h, w))),
                "path": f"tile_{i}.jpg",
            }
        )
    return out


def test_pack_dataset_keeps_uint8(tmp_path: Path) -> None:
    samples = _rgb_samples(9)
    root = pack_dataset(_ListDataset(samples), tmp_path / "s", shard_size=4, progress=False)
    index = read_index(root)
    assert index["dtype"] == "uint8" and index["mask_dtype"] == "int8"
    assert index["sensor"] == "rgb" and index["class_names"] == ["water", "forest", "city"]
    ds = ShardDataset(root, bands=["blue", "red"])
    for i, s in enumerate(samples):
        got = ds[i]
        assert torch.equal(got["image"], s["image"][[2, 0]])
        assert torch.equal(got["mask"], s["mask"]) and int(got["label"]) == i % 3
        assert got["path"] == s["path"]


def test_pack_dataset_regression_and_multilabel(tmp_path: Path) -> None:
    base = _rgb_samples(4)
    reg = [{**s, "label": torch.tensor(0.25 * i), "mask": None} for i, s in enumerate(base)]
    for s in reg:
        s["image"] = s["image"] / 7  # not integral: stays float32
    ds = ShardDataset(pack_dataset(_ListDataset(reg), tmp_path / "r", progress=False))
    assert ds.index["dtype"] == "float32" and ds.label_kind == "none"
    assert [float(ds[i]["target"]) for i in range(4)] == [0.0, 0.25, 0.5, 0.75]
    assert torch.equal(ds[1]["image"], reg[1]["image"])

    multi = [
        {**s, "label": torch.tensor([1.0, 0.0, float(i % 2)]), "mask": None}
        for i, s in enumerate(base)
    ]
    ds = ShardDataset(pack_dataset(_ListDataset(multi), tmp_path / "m", progress=False))
    assert ds.label_kind == "multilabel" and ds[1]["label"].tolist() == [1.0, 0.0, 1.0]


def test_pack_dataset_shape_mismatch_and_size(tmp_path: Path) -> None:
    samples = _rgb_samples(3) + _rgb_samples(1, h=12, w=10) + _rgb_samples(1, h=4, w=6)
    samples[3]["path"] = "odd_one.jpg"
    with pytest.raises(DataError, match=r"odd_one\.jpg.*size="):
        pack_dataset(_ListDataset(samples), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / INDEX_NAME).exists()

    root = pack_dataset(_ListDataset(samples), tmp_path / "b", size=8, progress=False)
    ds = ShardDataset(root)
    assert ds.index["image_shape"] == [3, 8, 8] and len(ds) == 5
    assert torch.equal(ds[0]["image"], samples[0]["image"])  # already 8x8: untouched
    assert torch.equal(ds[3]["image"], samples[3]["image"][:, 2:10, 1:9])  # centre crop
    assert ds.index["dtype"] == "uint8"  # upsampled integral image was rounded


def test_negative_mask_values_after_unsigned_ones_are_kept(tmp_path: Path) -> None:
    """A first mask of 0..2 is stored as uint8; a later -1 (ignore index) must not wrap to 255."""
    first, second = _rgb_samples(2)
    first["mask"] = torch.randint(0, 3, (8, 8))
    second["mask"] = torch.full((8, 8), -1)
    ds = ShardDataset(pack_dataset(_ListDataset([first, second]), tmp_path, progress=False))
    assert torch.equal(ds[0]["mask"], first["mask"])
    assert torch.equal(ds[1]["mask"], second["mask"])


def test_pack_dataset_resize_keeps_the_whole_scene(tmp_path: Path) -> None:
    big = _rgb_samples(1, h=16, w=16)[0]
    blocks = torch.arange(64, dtype=torch.float32).view(1, 8, 8)  # 2x2 blocks of one value
    big["image"] = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2).expand(3, -1, -1) * 3
    big["mask"] = (blocks[0] % 3).long().repeat_interleave(2, 0).repeat_interleave(2, 1)
    small = _rgb_samples(1, h=4, w=6)[0]
    root = pack_dataset(
        _ListDataset([big, small]), tmp_path / "r", size=8, fit="resize", progress=False
    )
    ds = ShardDataset(root)
    assert ds.index["image_shape"] == [3, 8, 8] and ds.index["dtype"] == "uint8"
    # Halving a 2x2-block image gives the blocks back: the whole scene, not its centre.
    assert torch.equal(ds[0]["image"].float(), blocks.expand(3, -1, -1) * 3)
    assert torch.equal(ds[0]["mask"], (blocks[0] % 3).long())
    assert ds[1]["mask"].shape == (8, 8)  # 4x6 stretched to 8x8, mask nearest
    assert set(ds[1]["mask"].unique().tolist()) <= set(small["mask"].unique().tolist())
    with pytest.raises(ValueError, match="fit"):
        pack_dataset(_ListDataset([big]), tmp_path / "x", size=8, fit="pad", progress=False)


def test_pack_dataset_with_workers_and_band_mismatch(tmp_path: Path) -> None:
    samples = _rgb_samples(6)
    root = pack_dataset(_ListDataset(samples), tmp_path / "w", num_workers=2, progress=False)
    assert [ShardDataset(root)[i]["path"] for i in range(6)] == [s["path"] for s in samples]
    samples[4]["bands"] = ("blue", "green", "red")
    with pytest.raises(BandMismatchError, match="tile_4"):
        pack_dataset(_ListDataset(samples), tmp_path / "x", progress=False)
    with pytest.raises(EmptyDatasetError):
        pack_dataset(_ListDataset([]), tmp_path / "y", progress=False)


# ---------------------------------------------------------------------------- real data

EUROSAT_CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)


class _PilJpegDataset(Dataset[dict[str, Any]]):
    """Minimal EuroSAT RGB reader for this test (the real reader lives elsewhere)."""

    sensor = "rgb"
    class_names = EUROSAT_CLASSES

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(arr)),
            "bands": ("red", "green", "blue"),
            "label": torch.tensor(label),
            "path": str(path),
        }


def _eurosat_files(shared_data: Path, per_class: int | None) -> list[tuple[Path, int]]:
    root = shared_subdir(shared_data, "eurosat_rgb/2750")
    files = []
    for k, name in enumerate(EUROSAT_CLASSES):
        jpgs = sorted((root / name).glob("*.jpg"))[:per_class]
        files += [(p, k) for p in jpgs]
    return files


def _check_eurosat_round_trip(files: list[tuple[Path, int]], root: Path) -> None:
    from PIL import Image

    ds = ShardDataset(root)
    assert len(ds) == len(files) and ds.index["dtype"] == "uint8"
    assert ds.class_names == EUROSAT_CLASSES
    stored = np.concatenate([np.load(root / s["files"]["images"]) for s in ds.index["shards"]])
    labels = np.concatenate([np.load(root / s["files"]["labels"]) for s in ds.index["shards"]])
    assert labels.tolist() == [label for _, label in files]
    for i, (path, _) in enumerate(files):
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(stored[i], expected), path
    sample = ds[len(files) - 1]
    assert sample["path"] == str(files[-1][0]) and int(sample["label"]) == files[-1][1]


@pytest.mark.shared_data
def test_eurosat_rgb_subset_round_trip(shared_data: Path, tmp_path: Path) -> None:
    files = _eurosat_files(shared_data, per_class=30)
    assert len(files) == 300
    root = pack_dataset(_PilJpegDataset(files), tmp_path, shard_size=128, progress=False)
    _check_eurosat_round_trip(files, root)


@pytest.mark.slow
@pytest.mark.shared_data
def test_eurosat_rgb_full_round_trip(shared_data: Path, tmp_path: Path) -> None:
    files = _eurosat_files(shared_data, per_class=None)
    assert len(files) == 27000
    root = pack_dataset(_PilJpegDataset(files), tmp_path, num_workers=2, progress=False)
    _check_eurosat_round_trip(files, root)
    it = ShardIterableDataset(root, rank=0, world_size=1)
    assert sum(1 for _ in it) == 27000
