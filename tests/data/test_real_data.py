"""The readers on the real files in ../shared/data (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eofm.data.catalog import open_dataset
from eofm.data.datasets import (
    DUBAI_CLASSES,
    EUROSAT_MS_BANDS,
    BigEarthNet,
    ClassificationCSV,
    ClassificationFolder,
    MultiLabelCSV,
    Sen1Floods11,
    dubai_segmentation,
)
from eofm.data.readers import read_raster
from eofm.data.shards import ShardDataset, pack_dataset
from tests.conftest import shared_subdir

pytestmark = pytest.mark.shared_data


def test_eurosat_ms_bands_matched_by_name(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "eurosat_ms_subset/shrey160/train")
    ds = ClassificationFolder(
        root,
        band_names=EUROSAT_MS_BANDS,
        sensor="sentinel2_l1c",
        bands=["B02", "B03", "B04", "B08", "B8A", "B10"],
    )
    assert len(ds) == 216 and len(ds.class_names) == 10
    river = next(i for i, (p, _) in enumerate(ds.records) if "River" in p.name)
    s = ds[river]
    raw = read_raster(ds.records[river][0]).data.astype(np.float32)
    # B8A is stored last (index 12) and B10 at index 9 in EuroSAT-MS files
    np.testing.assert_array_equal(s["image"][4].numpy(), raw[12])
    np.testing.assert_array_equal(s["image"][5].numpy(), raw[9])
    means = s["image"].reshape(6, -1).mean(1)
    assert means[5] < 50  # cirrus is near zero over land


def test_eurosat_rgb_split_csv(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "eurosat_rgb")
    test = ClassificationCSV(root / "splits_seed42.csv", split="test")
    assert len(test) == 4050 and len(test.class_names) == 10
    s = test[0]
    assert s["bands"] == ("red", "green", "blue") and s["image"].shape == (3, 64, 64)
    ref = np.asarray(Image.open(test.records[0][0]).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(s["image"].numpy(), ref.astype(np.float32))
    assert isinstance(open_dataset(root), ClassificationCSV)


def test_bigearthnet_s2_resampled_with_labels(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "bigearthnet_samples/BigEarthNet-S2-Example")
    ds = BigEarthNet(root)
    assert len(ds) == 6
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (12, 120, 120) and "B10" not in s["bands"]
        assert s["label"].sum() >= 1
    forest = next(i for i, (p, _) in enumerate(ds.records) if "69_24" in p.name)
    s = ds[forest]
    names = [ds.class_names[j] for j in torch.nonzero(s["label"]).flatten()]
    assert "Coniferous forest" in names and "Water bodies" in names
    b = {n: s["image"][k] for k, n in enumerate(s["bands"])}
    assert b["B08"].mean() > b["B04"].mean()  # vegetation: NIR above red


def test_bigearthnet_s1(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "bigearthnet_samples/BigEarthNet-S1-Example")
    ds = open_dataset(root)
    assert isinstance(ds, BigEarthNet)
    s = ds[0]
    assert s["bands"] == ("VV", "VH") and s["image"].shape == (2, 120, 120)
    assert float(s["image"].max()) < 30 and float(s["image"].mean()) < -5  # dB, not linear


def test_dubai_colour_masks(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "dubai_aerial_semseg/Semantic segmentation dataset")
    ds = dubai_segmentation(root)
    assert len(ds) == 72 and ds.class_names == DUBAI_CLASSES
    seen: set[int] = set()
    for i in range(0, 72, 9):
        s = ds[i]
        assert s["mask"].shape == s["image"].shape[1:]
        seen |= set(torch.unique(s["mask"]).tolist())
    assert seen <= {-1, 0, 1, 2, 3, 4, 5} and {0, 1, 3} <= seen


def test_dubai_packed_resized_keeps_unlabelled_pixels(shared_data: Path, tmp_path: Path) -> None:
    """Tile 0's mask fits uint8; tile 23 has unlabelled (-1) pixels, which must stay -1."""
    root = shared_subdir(shared_data, "dubai_aerial_semseg/Semantic segmentation dataset")
    ds = dubai_segmentation(root)
    picked = torch.utils.data.Subset(ds, [0, 23])
    picked.bands = ds.bands  # type: ignore[attr-defined]
    packed = ShardDataset(pack_dataset(picked, tmp_path, size=96, fit="resize", progress=False))
    assert packed.index["image_shape"] == [3, 96, 96]
    masks = [packed[i]["mask"] for i in range(2)]
    assert int(masks[0].min()) >= 0 and int(masks[1].min()) == -1
    assert int(torch.stack(masks).max()) <= 5


def test_sen1floods11_s1_s2_labels_with_nodata(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "sen1floods11_sample")
    s1 = Sen1Floods11(root, modality="s1")[0]
    assert s1["bands"] == ("VV", "VH")
    values, counts = torch.unique(s1["mask"], return_counts=True)
    assert values.tolist() == [-1, 0, 1]
    assert 0.2 < counts[2] / counts.sum() < 0.4  # ~30 % water
    s2 = Sen1Floods11(root, modality="s2", bands=["B04", "B08", "B10"])[0]
    assert s2["bands"] == ("B04", "B08", "B10") and s2["image"].shape == (3, 512, 512)
    both = Sen1Floods11(root, modality="s1s2")[0]
    assert both["image"].shape[0] == 15 and both["bands"][:3] == ("VV", "VH", "B01")


def test_wavemode_pngs_with_csv_labels(shared_data: Path) -> None:
    root = shared_subdir(shared_data, "s1_wavemode_wvnet_samples")
    ds = MultiLabelCSV(
        root / "sample_data.csv", path_column="filename", band_names=["VV"], sensor="sentinel1_wv"
    )
    assert len(ds) == 15 and len(ds.class_names) == 21
    counts = torch.stack([ds[i]["label"] for i in range(len(ds))]).sum(0)
    freq = dict(zip(ds.class_names, counts.tolist()))
    assert freq["UN"] == 6 and freq["MC"] == 6 and freq["WS"] == 4
    s = ds[0]
    assert s["bands"] == ("VV",) and s["image"].ndim == 3 and s["image"].shape[0] == 1
