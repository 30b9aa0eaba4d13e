"""The protocols on the real sets in ../shared/data (skipped when absent); small and fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eofm.evaluation import run_evaluation
from eofm.evaluation.data import resolve_data
from tests.conftest import shared_subdir

pytestmark = pytest.mark.shared_data


def test_eurosat_rgb_split_csv(shared_data: Path, quick: dict[str, Any]) -> None:
    root = shared_subdir(shared_data, "eurosat_rgb")
    data = resolve_data(f"eurosat-rgb:{root}", "classification", cache_dir=quick["cache_dir"])
    assert data.sizes() == {"train": 18900, "val": 4050, "test": 4050}
    assert "split column" in data.split_note and data.num_classes == 10
    result = run_evaluation(
        "random:vit_test",
        "linear",
        str(root),
        max_train=300,
        max_test=100,
        probe_epochs=30,
        **quick,
    )
    m = result["models"][0]["metrics"]
    assert result["data"]["splits"] == {"train": 300, "test": 100, "val": 100}
    assert m["top1"] > 0.2  # 10 classes: random-init features still beat chance
    knn = run_evaluation(
        "random:resnet_test", "knn", f"eurosat-rgb:{root}", max_train=300, max_test=100, **quick
    )
    assert knn["models"][0]["metrics"]["top1"] > 0.15


def test_eurosat_ms_13_bands(shared_data: Path, quick: dict[str, Any]) -> None:
    root = shared_subdir(shared_data, "eurosat_ms_subset")
    result = run_evaluation("random:vit_test", "knn", f"eurosat-ms:{root}", **quick)
    assert result["data"]["splits"] == {"train": 216, "test": 54}
    assert len(result["models"][0]["bands"]) == 13
    assert 0 <= result["models"][0]["metrics"]["top1"] <= 1


def test_dubai_segmentation_fixed_tile_split(shared_data: Path, quick: dict[str, Any]) -> None:
    root = shared_subdir(shared_data, "dubai_aerial_semseg/Semantic segmentation dataset")
    data = resolve_data(f"dubai:{root}", "segmentation", cache_dir=quick["cache_dir"])
    assert data.sizes() == {"train": 54, "val": 9, "test": 9}
    result = run_evaluation(
        "random:resnet_test",
        "segmentation",
        f"dubai:{root}",
        max_train=2,
        max_test=1,
        max_size=96,
        crop=64,
        epochs=1,
        decoder="fcn",
        **quick,
    )
    m = result["models"][0]["metrics"]
    assert 0 <= m["miou"] <= 1
    per = result["models"][0]["details"]["per_class"]
    assert set(per) == {"water", "land", "road", "building", "vegetation", "unlabeled"}


def test_bigearthnet_multilabel(shared_data: Path, quick: dict[str, Any]) -> None:
    root = shared_subdir(shared_data, "bigearthnet_samples/BigEarthNet-S2-Example")
    result = run_evaluation(
        "random:vit_test", "linear", f"bigearthnet-s2:{root}", img_size=32, **quick
    )
    m = result["models"][0]["metrics"]
    assert result["data"]["kind"] == "multilabel"
    assert result["data"]["splits"] == {"train": 4, "test": 2}
    assert 0 < m["map_micro"] <= 1
    s1 = shared_subdir(shared_data, "bigearthnet_samples/BigEarthNet-S1-Example")
    r1 = run_evaluation("random:vit_test", "knn", f"bigearthnet-s1:{s1}", img_size=32, k=3, **quick)
    assert r1["models"][0]["bands"] == ["VV", "VH"]


def test_wavemode_multilabel(shared_data: Path, quick: dict[str, Any]) -> None:
    root = shared_subdir(shared_data, "s1_wavemode_wvnet_samples")
    result = run_evaluation("random:vit_test", "knn", f"wavemode:{root}", img_size=64, k=5, **quick)
    assert result["data"]["kind"] == "multilabel"
    assert result["data"]["splits"] == {"train": 10, "test": 5}
    assert 0 < result["models"][0]["metrics"]["map_micro"] <= 1
