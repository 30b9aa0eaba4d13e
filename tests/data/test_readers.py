from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eofm.data.readers import check_values, read_band_files, read_raster
from eofm.errors import BandMismatchError, CorruptFileError, DataError, InvalidValuesError
from tests.data.fakes import band_ramp, write_geotiff, write_png

S2_EUROSAT_ORDER = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
]


def test_geotiff_bands_from_descriptions_selected_by_name(tmp_path: Path) -> None:
    data = band_ramp(13)
    path = write_geotiff(tmp_path / "a.tif", data, descriptions=S2_EUROSAT_ORDER)
    r = read_raster(path, bands=["B8A", "B04", "B03", "B02"])
    assert r.bands == ("B8A", "B04", "B03", "B02")
    np.testing.assert_array_equal(r.data, data[[12, 3, 2, 1]])
    assert r.crs == "EPSG:32632" and r.data.dtype == np.uint16


def test_geotiff_without_descriptions_uses_declared_order(tmp_path: Path) -> None:
    data = band_ramp(13)
    path = write_geotiff(tmp_path / "a.tif", data)
    r = read_raster(path, band_names=S2_EUROSAT_ORDER, bands=["red", "nir08"], sensor="s2")
    assert r.bands == ("B04", "B8A")
    np.testing.assert_array_equal(r.data, data[[3, 12]])
    assert read_raster(path).bands[0] == "band_1"


def test_sensor_canonicalises_file_band_names(tmp_path: Path) -> None:
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    path = write_geotiff(tmp_path / "a.tif", band_ramp(13), descriptions=names)
    assert read_raster(path, sensor="sentinel2_l1c").bands[:2] == ("B01", "B02")


def test_windowed_read(tmp_path: Path) -> None:
    data = band_ramp(2, 32, 32)
    path = write_geotiff(tmp_path / "a.tif", data, descriptions=["VV", "VH"])
    r = read_raster(path, window=(4, 8, 10, 12))
    assert r.data.shape == (2, 10, 12)
    np.testing.assert_array_equal(r.data, data[:, 4:14, 8:20])


def test_wrong_band_count_names_file_expected_and_found(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "short.tif", band_ramp(4))
    with pytest.raises(BandMismatchError) as info:
        read_raster(path, band_names=S2_EUROSAT_ORDER)
    msg = str(info.value)
    assert "short.tif" in msg and "wrong band count" in msg and "B8A" in msg


def test_missing_band_names_file(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "s1.tif", band_ramp(2), descriptions=["VV", "VH"])
    with pytest.raises(BandMismatchError, match=r"s1\.tif.*missing bands \['B04'\]"):
        read_raster(path, bands=["VV", "B04"])


def test_png_and_jpeg(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    r = read_raster(write_png(tmp_path / "a.png", rgb))
    assert r.bands == ("red", "green", "blue")
    np.testing.assert_array_equal(r.data, rgb.transpose(2, 0, 1))
    grey = read_raster(write_png(tmp_path / "g.png", rgb[..., 0]), band_names=["VV"])
    assert grey.bands == ("VV",) and grey.data.shape == (1, 8, 9)


def test_numpy_arrays(tmp_path: Path) -> None:
    arr = band_ramp(3, dtype="float32")
    np.save(tmp_path / "a.npy", arr)
    r = read_raster(tmp_path / "a.npy", band_names=["VV", "VH", "ratio"], bands=["VH"])
    np.testing.assert_array_equal(r.data, arr[1:2])
    np.savez(tmp_path / "b.npz", image=arr, bands=np.array(["B02", "B03", "B04"]))
    assert read_raster(tmp_path / "b.npz", bands=["B04"]).bands == ("B04",)


def test_netcdf_and_zarr_with_band_dimension(tmp_path: Path) -> None:
    arr = band_ramp(3, dtype="float32")
    da = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": ["B04", "B03", "B02"]})
    da.to_dataset(name="reflectance").to_netcdf(tmp_path / "a.nc")
    r = read_raster(tmp_path / "a.nc", bands=["B02", "B04"])
    np.testing.assert_array_equal(r.data, arr[[2, 0]])
    xr.Dataset({"VV": (("y", "x"), arr[0]), "VH": (("y", "x"), arr[1])}).to_zarr(
        tmp_path / "b.zarr"
    )
    r = read_raster(tmp_path / "b.zarr")
    assert set(r.bands) == {"VV", "VH"}
    np.testing.assert_array_equal(r.select(["VH"]).data[0], arr[1])


def test_band_files_resampled_to_one_grid(tmp_path: Path) -> None:
    files = {
        "B02": write_geotiff(tmp_path / "B02.tif", np.full((1, 12, 12), 10, "uint16")),
        "B05": write_geotiff(tmp_path / "B05.tif", np.full((1, 6, 6), 20, "uint16"), gsd=20),
        "B01": write_geotiff(tmp_path / "B01.tif", np.full((1, 2, 2), 30, "uint16"), gsd=60),
    }
    r = read_band_files(files, bands=["B01", "B02", "B05"])
    assert r.data.shape == (3, 12, 12) and r.bands == ("B01", "B02", "B05")
    assert (r.data[0] == 30).all() and (r.data[2] == 20).all()


def test_nan_and_nodata_are_explicit(tmp_path: Path) -> None:
    data = np.ones((2, 4, 4), dtype="float32")
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = -9999
    r = read_raster(write_geotiff(tmp_path / "a.tif", data, nodata=-9999))
    valid = check_values(r)
    assert not valid[0, 0] and not valid[1, 1] and valid.sum() == 14
    with pytest.raises(InvalidValuesError, match="more than the allowed"):
        check_values(r, max_invalid_fraction=0.1)
    allnan = write_geotiff(tmp_path / "nan.tif", np.full((1, 4, 4), np.nan, "float32"))
    with pytest.raises(InvalidValuesError, match=r"nan\.tif: every pixel"):
        check_values(read_raster(allnan))


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg", ".npy", ".nc"])
def test_corrupt_and_truncated_files_raise_clear_errors(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CorruptFileError, match=f"broken\\{suffix}"):
        read_raster(path)


def test_truncated_geotiff(tmp_path: Path) -> None:
    good = write_geotiff(tmp_path / "good.tif", band_ramp(13, 64, 64))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CorruptFileError, match="cut.tif"):
        read_raster(cut)


def test_missing_empty_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_raster(tmp_path / "nope.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        read_raster(tmp_path / "empty.tif")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_raster(tmp_path / "a.xyz")
