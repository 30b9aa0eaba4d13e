"""Any torchgeo dataset by class name, on local files laid out as torchgeo expects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eofm.data.catalog import open_dataset
from eofm.data.datasets import TorchGeoDataset
from eofm.data.readers import read_raster
from eofm.errors import DataError, UnknownNameError
from tests.conftest import shared_subdir

pytest.importorskip("torchgeo")


def _eurosat_layout(src: Path, root: Path) -> list[Path]:
    """torchgeo's EuroSAT folder layout, linking the real EuroSAT-MS files."""
    base = root / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    files = sorted(src.glob("*/*.tif"))
    for f in files:
        (base / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(f, base / f.parent.name / f.name)
    (root / "eurosat-train.txt").write_text("\n".join(f.name for f in files))
    return files


@pytest.mark.shared_data
def test_torchgeo_eurosat_by_name(shared_data: Path, tmp_path: Path) -> None:
    src = shared_subdir(shared_data, "eurosat_ms_subset/geotorchai/eurosat")
    files = _eurosat_layout(src, tmp_path)
    ds = TorchGeoDataset("EuroSAT", tmp_path, bands=["B04", "B03", "B02", "B8A"])
    assert len(ds) == len(files) == 200
    assert ds.class_names is not None and len(ds.class_names) == 10
    s = ds[0]
    assert s["bands"] == ("B04", "B03", "B02", "B8A") and s["image"].shape == (4, 64, 64)
    assert int(s["label"]) == 0
    # torchgeo's sample, converted: band B8A is the file's last band
    first = sorted((tmp_path / "ds").rglob("*.tif"))[0]
    raw = read_raster(first).data.astype(np.float32)
    np.testing.assert_array_equal(s["image"][3].numpy(), raw[12])
    via_cli = open_dataset(f"torchgeo:EuroSAT:{tmp_path}")
    assert len(via_cli) == 200


def test_torchgeo_unknown_name_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown torchgeo dataset 'EuroSad'"):
        TorchGeoDataset("EuroSad", tmp_path)
    with pytest.raises(DataError, match="torchgeo EuroSAT could not be opened"):
        TorchGeoDataset("EuroSAT", tmp_path / "empty")
