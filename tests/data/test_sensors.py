from __future__ import annotations

import pytest

from eofm.data.sensors import (
    Band,
    Sensor,
    get_sensor,
    list_sensors,
    match_bands,
    normalise_band_name,
    register_sensor,
)
from eofm.errors import BandMismatchError, UnknownNameError


def test_builtin_sensors_have_expected_bands() -> None:
    l1c = get_sensor("sentinel2_l1c")
    assert len(l1c.bands) == 13 and l1c.band_names[8] == "B8A"
    l2a = get_sensor("s2_l2a")
    assert len(l2a.bands) == 12 and "B10" not in l2a.band_names
    assert get_sensor("s1").band_names == ("VV", "VH")
    assert get_sensor("sentinel1_grd_linear").units == "linear power"
    assert get_sensor("wavemode").band_names == ("VV",)
    assert get_sensor("landsat9").band("red").name == "B4"
    assert get_sensor("rgb").band_names == ("red", "green", "blue")
    assert {"sentinel2_l1c", "sentinel1_grd", "landsat_oli", "rgb"} <= set(list_sensors())


def test_wavelengths_increase_along_s2_bands_and_gsd_is_known() -> None:
    s2 = get_sensor("sentinel2_l1c")
    waves = [b.wavelength_um for b in s2.bands]
    assert waves == sorted(waves)
    assert s2.band("B02").gsd_m == 10 and s2.band("B01").gsd_m == 60 and s2.gsd_m == 10
    assert s2.rgb_bands() == ("B04", "B03", "B02")
    assert get_sensor("s1").rgb_bands() is None


def test_band_lookup_by_alias_and_common_name() -> None:
    s2 = get_sensor("s2")
    assert s2.band("B4").name == "B04"
    assert s2.band("nir").name == "B08"
    assert s2.band("b8a").name == "B8A"
    assert s2.canonical(["red", "B3", "blue"]) == ("B04", "B03", "B02")
    with pytest.raises(UnknownNameError, match="B13"):
        s2.band("B13")


def test_normalise_band_name() -> None:
    assert normalise_band_name("b1") == normalise_band_name("B01") == "B01"
    assert normalise_band_name("B8A") == normalise_band_name("B08A")
    assert normalise_band_name("vv") == "VV"


def test_match_bands_by_name_not_position() -> None:
    eurosat_order = [
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
    idx = match_bands(["B8A", "B04"], eurosat_order)
    assert idx == [12, 3]
    assert match_bands(["red", "green", "blue"], eurosat_order, sensor="s2") == [3, 2, 1]


def test_match_bands_error_names_file_and_bands() -> None:
    with pytest.raises(BandMismatchError) as info:
        match_bands(["B04", "B08"], ["VV", "VH"], path="scene.tif")
    msg = str(info.value)
    assert "scene.tif" in msg and "B08" in msg and "VV" in msg


def test_users_can_register_a_sensor() -> None:
    sensor = Sensor("my_drone", "optical", (Band("nir", 0.85, 0.05, "nir"),), units="DN")
    register_sensor(sensor)
    assert get_sensor("MY_DRONE") is sensor
    with pytest.raises(ValueError, match="already registered"):
        register_sensor(sensor)
    register_sensor(sensor, overwrite=True)
    with pytest.raises(UnknownNameError, match="unknown sensor"):
        get_sensor("nope")
