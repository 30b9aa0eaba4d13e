"""The decode-once cache: packed on first use, reused, invalidated, and safe on bad input."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eofm.data.cache import (
    META_NAME,
    cache_entries,
    cache_key,
    cached_dataset,
    clear_cache,
    parse_size,
)
from eofm.data.datasets import ClassificationCSV, ClassificationFolder
from eofm.data.shards import ShardDataset
from eofm.errors import ConfigError, DataError
from tests.data.fakes import write_geotiff, write_png


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EOFM_CACHE_DIR", str(root))
    monkeypatch.delenv("EOFM_CACHE", raising=False)
    return root


def png_folder(root: Path, per_class: int = 3, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in ("Forest", "River"):
        for i in range(per_class):
            write_png(
                root / name / f"{name}_{i}.png", rng.integers(0, 256, (size, size, 3), np.uint8)
            )
    return root


def test_packed_once_then_reused_with_the_same_pixels(tmp_path: Path, cache: Path) -> None:
    ds = ClassificationFolder(png_folder(tmp_path / "data"))
    first = cached_dataset(ds, progress=False, quiet=True)
    assert isinstance(first, ShardDataset)
    assert first.stored_dtype == np.uint8  # JPEG/PNG pixels stay uint8
    assert first.root.parent == cache / "shards"
    meta = json.loads((first.root / META_NAME).read_text())
    assert meta["num_samples"] == len(ds) == 6
    for i in range(len(ds)):
        a, b = ds[i], first[i]
        assert torch.equal(a["image"], b["image"]) and int(a["label"]) == int(b["label"])
        assert str(a["path"]) == b["path"]
    assert first.class_names == ds.class_names
    again = cached_dataset(ClassificationFolder(tmp_path / "data"), progress=False, quiet=True)
    assert again is not None and again.root == first.root
    assert json.loads((again.root / META_NAME).read_text())["created"] == meta["created"]
    assert [e.path for e in cache_entries()] == [first.root]
    # a batch is one read in the stored dtype, ready for a cast on the device
    batch = first.get_batch([5, 0, 3], native=True, paths=False)
    assert batch["image"].dtype == torch.uint8 and "path" not in batch
    assert torch.equal(batch["image"][1], ds[0]["image"].to(torch.uint8))


def test_a_changed_added_or_missing_file_is_noticed(tmp_path: Path, cache: Path) -> None:
    root = png_folder(tmp_path / "data")
    first = cached_dataset(ClassificationFolder(root), progress=False, quiet=True)
    assert first is not None
    target = root / "River" / "River_0.png"
    write_png(target, np.full((8, 8, 3), 7, np.uint8))
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = cached_dataset(ClassificationFolder(root), progress=False, quiet=True)
    assert second is not None and second.root != first.root
    k = next(i for i in range(len(second)) if second[i]["path"] == str(target))
    assert float(second[k]["image"].max()) == 7.0
    write_png(root / "River" / "River_9.png", np.zeros((8, 8, 3), np.uint8))
    third = cached_dataset(ClassificationFolder(root), progress=False, quiet=True)
    assert third is not None and len(third) == 7
    # a CSV naming a file that was removed: the error names the file
    (tmp_path / "list.csv").write_text(
        "path,label\nForest/Forest_0.png,Forest\nForest/gone.png,Forest\n"
    )
    listed = ClassificationCSV(tmp_path / "list.csv", root=root)
    with pytest.raises(DataError, match=r"gone\.png.*missing"):
        cached_dataset(listed, progress=False, quiet=True)


def test_opt_out_limit_and_uncacheable(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = ClassificationFolder(png_folder(tmp_path / "data"))
    assert cached_dataset(ds, limit="100B", progress=False) is None  # 6 x 192 B decoded
    assert "exceeds data.cache_limit" in capsys.readouterr().err
    assert not (cache / "shards").exists() or not any((cache / "shards").iterdir())
    with_transform = ClassificationFolder(tmp_path / "data", transform=lambda s: s)
    assert cached_dataset(with_transform, progress=False, quiet=True) is None
    monkeypatch.setenv("EOFM_CACHE", "off")
    assert cached_dataset(ds, progress=False, quiet=True) is None
    assert parse_size("2GiB") == 2 * 1024**3 and parse_size("1.5 GB") == 1_500_000_000
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("lots")


def test_disk_full_while_packing_leaves_no_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eofm.data import shards

    ds = ClassificationFolder(png_folder(tmp_path / "data"))
    calls = {"n": 0}
    real_add = shards.ShardWriter.add

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(shards.ShardWriter, "add", full_disk)
    with pytest.raises(DataError, match="disk full while packing") as info:
        cached_dataset(ds, progress=False, quiet=True)
    assert "EOFM_CACHE_DIR" in str(info.value)
    assert list((cache / "shards").iterdir()) == [] or all(
        p.suffix == ".lock" for p in (cache / "shards").iterdir()
    )
    monkeypatch.setattr(shards.ShardWriter, "add", real_add)
    assert cached_dataset(ds, progress=False, quiet=True) is not None  # nothing half-written


class _Touching(ClassificationFolder):
    """Touches one of its files while the last sample is read (a file written meanwhile)."""

    def load(self, index: int) -> Any:
        if index == len(self) - 1:
            path = Path(self.sample_path(0))
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
        return super().load(index)


def test_a_file_changing_during_packing_is_an_error(tmp_path: Path, cache: Path) -> None:
    ds = _Touching(png_folder(tmp_path / "data"))
    with pytest.raises(DataError, match="changed while they were being packed"):
        cached_dataset(ds, progress=False, quiet=True)
    assert not any(p.is_dir() for p in (cache / "shards").iterdir())


class _Slow(ClassificationFolder):
    """Slow to read; records every full pass (one per packing) in ``marker``."""

    marker: Path

    def load(self, index: int) -> Any:
        time.sleep(0.05)
        if index == len(self) - 1:
            with open(self.marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        return super().load(index)


def _pack_in_child(root: str, marker: str, cache_root: str, out: Any) -> None:
    os.environ["EOFM_CACHE_DIR"] = cache_root
    _Slow.marker = Path(marker)  # a class attribute: not part of the dataset's key
    ds = _Slow(root)
    got = cached_dataset(ds, progress=False, quiet=True)
    out.put(str(got.root) if got is not None else None)


def test_two_processes_packing_the_same_folder_take_turns(tmp_path: Path, cache: Path) -> None:
    root = png_folder(tmp_path / "data", per_class=6)
    marker = tmp_path / "passes.txt"
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_pack_in_child, args=(str(root), str(marker), str(cache), out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = {out.get(timeout=5), out.get(timeout=5)}
    assert len(paths) == 1 and None not in paths
    assert len(marker.read_text().split()) == 1  # packed once; the other waited and reused it
    assert not list((cache / "shards").glob("*.partial-*"))


def test_float_sar_is_stored_as_float16_when_close_enough(tmp_path: Path, cache: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("calm", "rough"):
        for i in range(2):
            db = rng.normal(-15, 4, (2, 8, 8)).astype(np.float32)  # VV/VH in dB
            write_geotiff(tmp_path / "sar" / name / f"{i}.tif", db, descriptions=["VV", "VH"])
    ds = ClassificationFolder(tmp_path / "sar")
    packed = cached_dataset(ds, progress=False, quiet=True)
    assert packed is not None and packed.stored_dtype == np.float16
    storage = packed.index["storage"]
    assert storage["float16"] and storage["source_dtype"] == "float32"
    assert 0 < storage["max_relative_error"] <= storage["tolerance"]
    for i in range(len(ds)):
        np.testing.assert_allclose(packed[i]["image"], ds[i]["image"], rtol=1e-3, atol=1e-2)
    # a value float16 cannot hold keeps the whole set in float32
    wide = np.full((2, 8, 8), 1e6, np.float32)
    wide[0, 0, 0] = 0.123
    write_geotiff(tmp_path / "sar" / "rough" / "9.tif", wide, descriptions=["VV", "VH"])
    again = cached_dataset(ClassificationFolder(tmp_path / "sar"), progress=False, quiet=True)
    assert again is not None and again.stored_dtype == np.float32
    assert not again.index["storage"]["float16"]


def test_pretraining_reads_the_cache_with_whole_batches(tmp_path: Path, cache: Path) -> None:
    from eofm.training.config import load_config
    from eofm.training.data import PretrainDataModule, build_dataset

    root = png_folder(tmp_path / "data", per_class=8)
    cfg = load_config(None, [f"data.path={root}", "data.batch_size=4"])
    info = build_dataset(cfg.data, tmp_path / "run", progress=False)
    assert isinstance(info.dataset, ShardDataset) and info.cache == info.dataset.root
    assert info.root == root  # the folder's own dataset card is still found there
    loader = PretrainDataModule(info.dataset, cfg.data).train_dataloader()
    assert loader.num_workers == 0  # auto: a cached batch is one array slice
    batches = list(loader)
    assert len(batches) == 4
    assert all(
        b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 8, 8) for b in batches
    )
    seen = torch.cat([b["index"] for b in batches]).sort().values
    assert torch.equal(seen, torch.arange(16))
    off = load_config(None, [f"data.path={root}", "data.cache=false"])
    plain = build_dataset(off.data, tmp_path / "run2", progress=False)
    assert not isinstance(plain.dataset, ShardDataset) and plain.cache is None


def test_key_depends_on_settings_and_clear_removes_entries(tmp_path: Path, cache: Path) -> None:
    root = png_folder(tmp_path / "data")
    rgb = ClassificationFolder(root)
    two = ClassificationFolder(root, bands=["red", "green"])
    assert cache_key(rgb) != cache_key(two)
    assert cache_key(rgb) == cache_key(ClassificationFolder(root))
    for ds in (rgb, two):
        assert cached_dataset(ds, progress=False, quiet=True) is not None
    assert len(cache_entries()) == 2
    assert clear_cache() > 0 and cache_entries() == []


def test_the_run_card_records_how_the_cache_stores_pixels(tmp_path: Path, cache: Path) -> None:
    from eofm.training.config import load_config
    from eofm.training.data import build_dataset, build_normalizer

    rng = np.random.default_rng(2)
    for name in ("calm", "rough"):
        for i in range(3):
            db = rng.normal(-15, 4, (2, 8, 8)).astype(np.float32)
            write_geotiff(tmp_path / "sar" / name / f"{i}.tif", db, descriptions=["VV", "VH"])
    cfg = load_config(None, [f"data.path={tmp_path / 'sar'}", "data.batch_size=2"])
    info = build_dataset(cfg.data, tmp_path / "run", progress=False)
    _, card = build_normalizer(cfg.data, info, tmp_path / "run")
    assert card is not None and card.extra["storage"]["dtype"] == "float16"
    saved = json.loads((tmp_path / "run" / "eofm_card.json").read_text())
    assert saved["extra"]["storage"]["float16"] is True
