from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eofm.data.catalog import open_dataset
from eofm.data.datasets import (
    BigEarthNet,
    ChangeDetectionDataset,
    ClassificationCSV,
    ClassificationFolder,
    MultiLabelCSV,
    MultiLabelJSON,
    SegmentationDataset,
    UnlabelledPool,
)
from eofm.data.sample import IGNORE_INDEX, collate_samples
from eofm.errors import (
    BandMismatchError,
    CorruptFileError,
    DataError,
    EmptyDatasetError,
    InvalidValuesError,
    MissingLabelError,
)
from tests.data.fakes import bigearthnet_patch, class_folder, write_geotiff, write_png


def test_classification_folder_and_loader(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "cls", ["Forest", "Water"], per_class=3)
    ds = ClassificationFolder(root, bands=["B03", "B01"])
    assert len(ds) == 6 and ds.class_names == ("Forest", "Water")
    s = ds[4]
    assert s["image"].shape == (2, 16, 16) and s["image"].dtype == torch.float32
    assert s["bands"] == ("B03", "B01") and int(s["label"]) == 1
    # band B03 holds 300 + ramp + noise + class offset: check the reorder really happened
    assert 1300 <= float(s["image"][0].mean()) < 1320
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_samples)))
    assert batch["image"].shape == (4, 2, 16, 16) and batch["bands"] == ("B03", "B01")
    assert batch["label"].tolist() == [0, 0, 0, 1]


def test_classification_csv_with_split(tmp_path: Path) -> None:
    root = class_folder(tmp_path, ["A", "B"], per_class=2)
    rows = [
        "path,label,split",
        "A/A_0.tif,A,train",
        "A/A_1.tif,A,test",
        "B/B_0.tif,B,train",
        "B/B_1.tif,B,test",
    ]
    (root / "split.csv").write_text("\n".join(rows))
    ds = ClassificationCSV(root / "split.csv", split="train")
    assert len(ds) == 2 and [int(ds[i]["label"]) for i in range(2)] == [0, 1]
    (root / "bad.csv").write_text("path,label\nA/A_0.tif,\n")
    with pytest.raises(MissingLabelError, match=r"bad\.csv: row 2"):
        ClassificationCSV(root / "bad.csv")


def test_multilabel_csv_columns_and_list(tmp_path: Path) -> None:
    root = class_folder(tmp_path, ["A"], per_class=2)
    (root / "ml.csv").write_text("path,water,forest,urban\nA/A_0.tif,1,0,1\nA/A_1.tif,0,0.3,0\n")
    ds = MultiLabelCSV(root / "ml.csv")
    assert ds.class_names == ("water", "forest", "urban")
    assert ds[0]["label"].tolist() == [1, 0, 1] and ds[1]["label"].tolist() == [0, 1, 0]
    (root / "ml2.csv").write_text('path,labels\nA/A_0.tif,"urban;water"\nA/A_1.tif,forest\n')
    ds2 = MultiLabelCSV(root / "ml2.csv", labels_column="labels")
    assert ds2[0]["label"].tolist() == [0, 1, 1]
    (root / "ml3.csv").write_text("path,water,forest\nA/A_0.tif,1,\n")
    with pytest.raises(MissingLabelError, match="row 2"):
        MultiLabelCSV(root / "ml3.csv")


def test_multilabel_json(tmp_path: Path) -> None:
    root = class_folder(tmp_path, ["A"], per_class=2)
    (root / "l.json").write_text(json.dumps({"A/A_0.tif": ["x", "y"], "A/A_1.tif": ["y"]}))
    ds = MultiLabelJSON(root / "l.json")
    assert ds.class_names == ("x", "y") and ds[1]["label"].tolist() == [0, 1]
    (root / "bad.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"bad\.json"):
        MultiLabelJSON(root / "bad.json")


def test_bigearthnet_resamples_band_files(tmp_path: Path) -> None:
    bigearthnet_patch(tmp_path, "S2A_patch_1", ["Pastures", "Water bodies"])
    bigearthnet_patch(tmp_path, "S2A_patch_2", ["Coniferous forest"])
    ds = BigEarthNet(tmp_path, size=12)
    s = ds[0]
    assert s["image"].shape == (12, 12, 12)
    assert s["bands"][8] == "B8A" and s["label"].sum() == 2
    assert float(s["image"][0].mean()) == 100  # B01 (60 m, 2x2) upsampled
    names = [ds.class_names[i] for i in torch.nonzero(s["label"]).flatten()]
    assert names == ["Pastures", "Water bodies"]
    sub = BigEarthNet(tmp_path, size=12, bands=["B04", "B03", "B02"])
    assert sub[0]["bands"] == ("B04", "B03", "B02")
    assert sub[0]["image"][0].mean() == 400
    (tmp_path / "S2A_patch_2" / "S2A_patch_2_labels_metadata.json").unlink()
    with pytest.raises(MissingLabelError, match="S2A_patch_2_labels_metadata.json"):
        BigEarthNet(tmp_path)


def test_segmentation_integer_and_colour_masks(tmp_path: Path) -> None:
    img = np.zeros((3, 8, 8), "uint8")
    write_geotiff(tmp_path / "img" / "t1.tif", img, descriptions=["red", "green", "blue"])
    mask = np.zeros((1, 8, 8), "int16")
    mask[0, :4] = 1
    mask[0, 0, 0] = -1
    write_geotiff(tmp_path / "msk" / "t1.tif", mask)
    ds = SegmentationDataset(tmp_path / "img", tmp_path / "msk", mask_nodata=(-1,))
    m = ds[0]["mask"]
    assert m.dtype == torch.int64 and m[0, 0] == IGNORE_INDEX and m[1, 0] == 1 and m[5, 0] == 0

    colours = np.zeros((8, 8, 3), "uint8")
    colours[:, :] = (0xE2, 0xA9, 0x29)
    colours[:2] = (0x3C, 0x10, 0x98)
    write_png(tmp_path / "cimg" / "a.png", np.zeros((8, 8, 3), "uint8"))
    write_png(tmp_path / "cmsk" / "a.png", colours)
    table = {"#E2A929": 0, "#3C1098": 3}
    ds2 = SegmentationDataset(tmp_path / "cimg", tmp_path / "cmsk", colour_table=table)
    m2 = ds2[0]["mask"]
    assert (m2[:2] == 3).all() and (m2[2:] == 0).all()
    ds3 = SegmentationDataset(tmp_path / "cimg", tmp_path / "cmsk", colour_table={"#E2A929": 0})
    with pytest.raises(DataError, match=r"a\.png: mask has colours \['#3C1098'\]"):
        ds3[0]


def test_segmentation_missing_mask(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", np.zeros((4, 4, 3), "uint8"))
    write_png(tmp_path / "img" / "b.png", np.zeros((4, 4, 3), "uint8"))
    write_png(tmp_path / "msk" / "a.png", np.zeros((4, 4), "uint8"))
    with pytest.raises(MissingLabelError, match=r"b\.png: no mask"):
        SegmentationDataset(tmp_path / "img", tmp_path / "msk")


def test_change_detection_pairs(tmp_path: Path) -> None:
    for d, v in (("A", 1), ("B", 2)):
        write_geotiff(tmp_path / d / "x.tif", np.full((3, 8, 8), v, "uint8"))
    write_png(tmp_path / "label" / "x.png", (np.eye(8) * 255).astype("uint8"))
    ds = ChangeDetectionDataset(tmp_path)
    s = ds[0]
    assert s["image"].mean() == 1 and s["image2"].mean() == 2
    assert s["mask"].sum() == 8 and s["mask"].max() == 1
    assert isinstance(open_dataset(tmp_path), ChangeDetectionDataset)


def test_unlabelled_pool_from_glob(tmp_path: Path) -> None:
    for i in range(3):
        write_geotiff(tmp_path / "pool" / f"sub{i}" / f"{i}.tif", np.ones((2, 4, 4), "float32"))
    ds = UnlabelledPool(str(tmp_path / "pool" / "**" / "*.tif"), band_names=["VV", "VH"])
    assert len(ds) == 3 and ds[2]["bands"] == ("VV", "VH") and "label" not in ds[0]
    with pytest.raises(EmptyDatasetError, match="matched no image"):
        UnlabelledPool(str(tmp_path / "nothing" / "*.tif"))


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(EmptyDatasetError, match="no image files"):
        ClassificationFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        ClassificationFolder(tmp_path / "missing")


def test_nan_image_and_wrong_bands_in_a_dataset(tmp_path: Path) -> None:
    root = class_folder(tmp_path, ["A"], per_class=2)
    write_geotiff(root / "A" / "nan.tif", np.full((4, 16, 16), np.nan, "float32"))
    ds = ClassificationFolder(root)
    with pytest.raises(InvalidValuesError, match=r"nan\.tif"):
        [ds[i] for i in range(len(ds))]
    write_geotiff(root / "A" / "nan.tif", np.ones((2, 16, 16), "float32"))
    ds = ClassificationFolder(root, band_names=["B01", "B02", "B03", "B04"])
    with pytest.raises(BandMismatchError, match=r"nan\.tif: wrong band count"):
        [ds[i] for i in range(len(ds))]


def test_partial_nan_becomes_invalid_pixels(tmp_path: Path) -> None:
    data = np.ones((2, 4, 4), "float32")
    data[:, 0, 0] = np.nan
    write_geotiff(tmp_path / "p" / "a.tif", data)
    s = UnlabelledPool(tmp_path / "p")[0]
    assert not s["valid"][0, 0] and s["valid"].sum() == 15 and torch.isnan(s["image"][0, 0, 0])


def test_corrupt_file_in_large_folder_is_skipped_and_counted(tmp_path: Path) -> None:
    root = class_folder(tmp_path, ["A", "B"], per_class=20)
    (root / "B" / "B_3.tif").write_bytes(b"II*\x00broken")
    strict = ClassificationFolder(root)
    with pytest.raises(CorruptFileError, match="B_3.tif"):
        [strict[i] for i in range(len(strict))]
    lenient = ClassificationFolder(root, on_error="skip")
    with pytest.warns(UserWarning, match="skipped .*B_3.tif"):
        images = [lenient[i]["path"] for i in range(len(lenient))]
    assert len(lenient.skipped) == 1 and not any("B_3.tif" in p for p in images)
    verified = ClassificationFolder(root, on_error="skip")
    with pytest.warns(UserWarning):
        assert verified.verify() == 1
    assert len(verified) == 39


def test_open_dataset_recognises_layouts(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "folder", ["A", "B"], per_class=1)
    assert isinstance(open_dataset(root), ClassificationFolder)
    bigearthnet_patch(tmp_path / "ben", "S2A_p", ["Pastures"])
    assert isinstance(open_dataset(tmp_path / "ben"), BigEarthNet)
    write_png(tmp_path / "seg" / "images" / "a.png", np.zeros((4, 4, 3), "uint8"))
    write_png(tmp_path / "seg" / "masks" / "a.png", np.zeros((4, 4), "uint8"))
    assert isinstance(open_dataset(tmp_path / "seg"), SegmentationDataset)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")


def test_missing_masks_are_skipped_and_counted_with_on_error_skip(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_png(tmp_path / "img" / f"{name}.png", np.zeros((4, 4, 3), "uint8"))
        write_geotiff(tmp_path / "A" / f"{name}.tif", np.ones((3, 4, 4), "uint8"))
        write_geotiff(tmp_path / "B" / f"{name}.tif", np.ones((3, 4, 4), "uint8"))
    for name in ("a", "c"):  # b has no mask
        write_png(tmp_path / "msk" / f"{name}.png", np.zeros((4, 4), "uint8"))
        write_png(tmp_path / "label" / f"{name}.png", np.zeros((4, 4), "uint8"))
    with pytest.raises(MissingLabelError, match=r"b\.tif: no change mask"):
        ChangeDetectionDataset(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped .*b\.tif"):
        change = ChangeDetectionDataset(tmp_path, on_error="skip")
    assert len(change) == 2 and list(change.skipped) == [str(tmp_path / "A" / "b.tif")]
    with pytest.warns(UserWarning, match=r"skipped .*b\.png"):
        seg = SegmentationDataset(tmp_path / "img", tmp_path / "msk", on_error="skip")
    assert len(seg) == 2 and "no mask" in seg.skipped[str(tmp_path / "img" / "b.png")]


def test_mixed_band_counts_name_a_file_of_each_kind(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "p" / "a.tif", np.ones((2, 4, 4), "float32"))
    write_geotiff(tmp_path / "p" / "b.tif", np.ones((1, 4, 4), "float32"))
    pool = UnlabelledPool(tmp_path / "p")
    assert pool[0]["image"].shape[0] == 2
    with pytest.raises(
        BandMismatchError,
        match=r"b\.tif: the dataset mixes 2-band files \(like .*a\.tif\) and 1-band files",
    ):
        pool[1]
    assert UnlabelledPool(tmp_path / "p", bands=["band_1"])[1]["image"].shape[0] == 1
