"""Synthetic land-cover scenes and Wave Mode imagettes: shapes, realism, labels, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.ndimage as ndi

from eofm.data.synthetic import (
    CLASS_NAMES,
    S1_LOOKS,
    S2_BANDS,
    WV_CLASS_NAMES,
    WV_PIXEL_M,
    SceneSet,
    WaveModeSet,
    class_fractions,
    directional_spectrum,
    generate_landcover,
    generate_wavemode,
    sea_surface,
    significant_wave_height,
    write_synthetic,
)
from eofm.errors import ConfigError

WATER, FOREST, CROPLAND, GRASSLAND, URBAN, BARE_SOIL = (
    CLASS_NAMES.index(c) for c in ("water", "forest", "cropland", "grassland", "urban", "bare_soil")
)


@pytest.fixture(scope="module")
def scenes() -> SceneSet:
    return generate_landcover(300, 64, seed=7)


@pytest.fixture(scope="module")
def imagettes() -> WaveModeSet:
    return generate_wavemode(150, 128, seed=5)


def band(s: SceneSet, name: str) -> np.ndarray:
    assert s.s2 is not None
    return s.s2[:, S2_BANDS.index(name)].astype(np.float64)


# ------------------------------------------------------------------------------ land cover


def test_landcover_shapes_and_dtypes(scenes: SceneSet) -> None:
    n, k = 300, len(CLASS_NAMES)
    expected = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10")
    assert (*expected, "B11", "B12") == S2_BANDS
    assert scenes.s2 is not None and scenes.s1 is not None
    assert scenes.s2.shape == (n, 13, 64, 64) and scenes.s2.dtype == np.uint16
    assert scenes.s1.shape == (n, 2, 64, 64) and scenes.s1.dtype == np.float32
    assert scenes.masks.shape == (n, 64, 64) and scenes.masks.dtype == np.uint8
    assert scenes.fractions.shape == (n, k) and scenes.fractions.dtype == np.float32
    assert scenes.labels.shape == (n,) and scenes.labels.dtype == np.int64
    assert scenes.class_names == CLASS_NAMES and 6 <= k <= 8
    assert scenes.masks.max() < k
    assert np.isfinite(scenes.s1).all()
    # reflectance x 10000: plausible range, not saturated, not empty
    assert 100 < scenes.s2.mean() < 4000 and scenes.s2.max() < 12000 and scenes.s2.min() >= 1
    # balanced classes without heavy_tail
    counts = np.bincount(scenes.labels, minlength=k)
    assert counts.min() >= 0.6 * n / k, counts


def test_landcover_is_deterministic() -> None:
    a = generate_landcover(20, 32, seed=3)
    b = generate_landcover(20, 32, seed=3)
    c = generate_landcover(20, 32, seed=4)
    assert a.s2 is not None and b.s2 is not None and c.s2 is not None
    np.testing.assert_array_equal(a.s2, b.s2)
    np.testing.assert_array_equal(a.s1, b.s1)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks)
    # one sensor alone renders exactly what it renders alongside the other
    only_s1 = generate_landcover(20, 32, seed=3, sensors=("s1",))
    assert only_s1.s2 is None
    np.testing.assert_array_equal(only_s1.s1, a.s1)  # type: ignore[arg-type]
    np.testing.assert_array_equal(only_s1.masks, a.masks)


def test_spectral_signatures_are_realistic(scenes: SceneSet) -> None:
    m = scenes.masks
    red, green, nir = band(scenes, "B04"), band(scenes, "B03"), band(scenes, "B08")
    for cls in (FOREST, CROPLAND, GRASSLAND):
        assert nir[m == cls].mean() > 2 * red[m == cls].mean(), CLASS_NAMES[cls]
    # red edge: B07 well above B05 for forest
    assert band(scenes, "B07")[m == FOREST].mean() > 1.5 * band(scenes, "B05")[m == FOREST].mean()
    water = m == WATER
    assert nir[water].mean() < green[water].mean()
    assert band(scenes, "B11")[water].mean() < 400
    # bare soil brightens towards the SWIR; urban is flat and bright in the visible
    soil = m == BARE_SOIL
    assert band(scenes, "B11")[soil].mean() > band(scenes, "B04")[soil].mean() > green[soil].mean()
    urban = m == URBAN
    assert 0.8 < nir[urban].mean() / red[urban].mean() < 1.6
    assert red[urban].mean() > red[m == FOREST].mean() * 1.8
    # cirrus band sees (almost) nothing
    assert band(scenes, "B10").mean() < 60


def test_s1_backscatter(scenes: SceneSet) -> None:
    assert scenes.s1 is not None
    vv, vh = scenes.s1[:, 0], scenes.s1[:, 1]
    m = scenes.masks
    water_db = 10 * np.log10(np.mean(10 ** (vv[m == WATER] / 10)))
    urban_db = 10 * np.log10(np.mean(10 ** (vv[m == URBAN] / 10)))
    forest_db = 10 * np.log10(np.mean(10 ** (vv[m == FOREST] / 10)))
    assert water_db < -15 and urban_db > water_db + 5 and forest_db > water_db + 5
    assert urban_db > forest_db
    assert vh.mean() < vv.mean() - 4  # cross-pol is weaker


def test_speckle_statistics(scenes: SceneSet) -> None:
    """Linear intensity over open water has coefficient of variation about 1/sqrt(L)."""
    assert scenes.s1 is not None
    cvs = []
    for i in np.flatnonzero(scenes.labels == WATER):
        core = ndi.binary_erosion(scenes.masks[i] == WATER, iterations=3)
        if core.sum() < 400:
            continue
        intensity = 10 ** (scenes.s1[i, 0][core].astype(np.float64) / 10)
        cvs.append(intensity.std() / intensity.mean())
    assert len(cvs) >= 10
    expected = 1 / np.sqrt(S1_LOOKS)
    assert abs(np.median(cvs) - expected) < 0.1 * expected, (np.median(cvs), expected)


def test_masks_fractions_labels_agree(scenes: SceneSet) -> None:
    np.testing.assert_allclose(scenes.fractions.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(class_fractions(scenes.masks), scenes.fractions)
    for i in range(0, 300, 37):
        counts = np.bincount(scenes.masks[i].ravel(), minlength=len(CLASS_NAMES))
        np.testing.assert_allclose(scenes.fractions[i], counts / counts.sum(), atol=1e-6)
    np.testing.assert_array_equal(scenes.labels, scenes.fractions.argmax(axis=1))
    hot = scenes.multi_hot(0.1)
    assert hot.dtype == np.float32 and hot.shape == scenes.fractions.shape
    np.testing.assert_array_equal(hot == 1, scenes.fractions >= 0.1)
    assert (hot.sum(axis=1) >= 1).all()
    # multi-label content: many scenes hold more than one class
    assert (hot.sum(axis=1) >= 2).mean() > 0.5


def test_spatial_structure(scenes: SceneSet) -> None:
    m = scenes.masks
    same_right = (m[:, :, 1:] == m[:, :, :-1]).mean()
    same_down = (m[:, 1:, :] == m[:, :-1, :]).mean()
    assert same_right > 0.85 and same_down > 0.85
    # regions, not salt and pepper: connected components are large on average
    sizes = []
    for i in range(0, 300, 10):
        for c in np.unique(m[i]):
            _, count = ndi.label(m[i] == c)
            sizes.append((m[i] == c).sum() / count)
    assert np.median(sizes) > 100
    # the theme of a cropland/urban scene is made of straight-edged parcels or blocks: its
    # boundary pixels are far fewer than those of a speckled map of the same fractions
    shuffled = np.random.default_rng(0).permuted(m.reshape(len(m), -1), axis=1).reshape(m.shape)
    assert (shuffled[:, :, 1:] == shuffled[:, :, :-1]).mean() < 0.7


def test_rivers_and_field_variation() -> None:
    s = generate_landcover(120, 64, seed=11)
    # thin water features (rivers) exist: water pixels removed by a 1-px opening
    thin = [
        ((s.masks[i] == WATER) & ~ndi.binary_opening(s.masks[i] == WATER)).sum()
        for i in range(len(s))
    ]
    assert sum(t > 40 for t in thin) >= 10
    # cropland is a mosaic of fields with different crops: its NIR varies much more than
    # that of grassland, which only has fine texture
    nir = band(s, "B08")

    def median_cv(cls: int) -> float:
        cvs = []
        for i in np.flatnonzero(s.labels == cls):
            values = nir[i][s.masks[i] == cls]
            cvs.append(values.std() / values.mean())
        return float(np.median(cvs))

    assert median_cv(CROPLAND) > 1.5 * median_cv(GRASSLAND)


def test_heavy_tail() -> None:
    n = 400
    s = generate_landcover(n, 32, seed=2, heavy_tail=0.8, sensors=("s1",))
    share = (s.labels == CROPLAND).mean()
    assert abs(share - 0.8) <= 0.08, share
    t = generate_landcover(n, 32, seed=2, heavy_tail=0.5, dominant_class="forest", sensors=("s1",))
    assert abs((t.labels == FOREST).mean() - 0.5) <= 0.08
    # the rest is spread over the other classes
    others = np.bincount(s.labels[s.labels != CROPLAND], minlength=len(CLASS_NAMES))
    assert (others[[c for c in range(len(CLASS_NAMES)) if c != CROPLAND]] > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 5, "size": 8}, "size"),
        ({"n": 5, "heavy_tail": 1.5}, "heavy_tail"),
        ({"n": 5, "heavy_tail": -0.1}, "heavy_tail"),
        ({"n": 5, "seed": -1}, "seed"),
        ({"n": 5, "dominant_class": "desert"}, "desert"),
        ({"n": 5, "sensors": ("s3",)}, "sensors"),
    ],
)
def test_landcover_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_landcover(**kwargs)  # type: ignore[arg-type]


def test_wavemode_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_wavemode(0)
    with pytest.raises(ConfigError):
        generate_wavemode(4, size=15)
    with pytest.raises(ConfigError):
        generate_wavemode(4, heavy_tail=2.0)
    with pytest.raises(ConfigError, match="kind"):
        write_synthetic(tmp_path / "x", kind="sentinel3", n=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fmt"):
        write_synthetic(tmp_path / "x", n=2, fmt="zarr")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()  # nothing created for invalid arguments


# ------------------------------------------------------------------------------ wave mode


def test_wavemode_shapes_classes_determinism(imagettes: WaveModeSet) -> None:
    w = imagettes
    assert w.images.shape == (150, 1, 128, 128) and w.images.dtype == np.float32
    assert w.labels.dtype == np.int64 and w.hs.dtype == np.float32
    assert w.wind_speed.dtype == np.float32
    assert w.class_names == WV_CLASS_NAMES and len(WV_CLASS_NAMES) == 10
    assert set(w.labels.tolist()) == set(range(10))
    assert np.isfinite(w.images).all() and (w.images > 0).all()
    again = generate_wavemode(12, 64, seed=9)
    np.testing.assert_array_equal(again.images, generate_wavemode(12, 64, seed=9).images)
    heavy = generate_wavemode(100, 32, seed=1, heavy_tail=0.7)
    assert abs((heavy.labels == 0).mean() - 0.7) <= 0.05


def test_swell_peak_direction_and_wavelength(imagettes: WaveModeSet) -> None:
    w = imagettes
    assert w.swell_direction is not None and w.peak_wavelength is not None
    n = w.images.shape[-1]
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    fr = np.hypot(fx, fy)
    errors, ratios = [], []
    for i in np.flatnonzero(w.labels == WV_CLASS_NAMES.index("pure_ocean_waves")):
        img = w.images[i, 0] / w.images[i, 0].mean() - 1
        power = np.abs(np.fft.fft2(img)) ** 2
        power = np.fft.ifftshift(ndi.uniform_filter(np.fft.fftshift(power), 3, mode="wrap"))
        power[fr < 4 / n] = 0
        j = int(np.argmax(power))
        angle = np.degrees(np.arctan2(fy.flat[j], fx.flat[j]))
        errors.append(abs((angle - w.swell_direction[i] + 90) % 180 - 90))  # 180-deg ambiguity
        ratios.append(WV_PIXEL_M / fr.flat[j] / w.peak_wavelength[i])
    assert len(errors) >= 10
    assert np.mean(np.array(errors) < 20) >= 0.9 and np.median(errors) < 8, errors
    assert np.median(np.abs(np.array(ratios) - 1)) < 0.1, ratios


def test_significant_wave_height_follows_spectrum_energy() -> None:
    spec = directional_spectrum(
        64, [250.0, 250.0, 250.0], [30.0, 30.0, 30.0], alpha=[0.004, 0.008, 0.016]
    )
    hs = significant_wave_height(spec)
    assert hs[0] < hs[1] < hs[2]
    np.testing.assert_allclose(hs[1:] / hs[:-1], np.sqrt(2), rtol=1e-4)
    eta, _ = sea_surface(np.random.default_rng(0), spec)
    np.testing.assert_allclose(4 * eta.std(axis=(1, 2)), hs, rtol=0.02)  # Hs = 4 sqrt(m0)
    # a narrower spread keeps the energy (the directional distribution is normalised)
    narrow = directional_spectrum(64, [250.0], [30.0], alpha=[0.008], spread=60.0)
    assert abs(significant_wave_height(narrow)[0] / hs[1] - 1) < 0.05


def test_wavemode_class_physics(imagettes: WaveModeSet) -> None:
    w = imagettes

    def sel(name: str) -> np.ndarray:
        out: np.ndarray = w.labels == WV_CLASS_NAMES.index(name)
        return out

    assert w.hs[sel("sea_ice")].max() < 0.6
    assert w.hs[sel("pure_ocean_waves")].min() >= 1.5
    assert w.wind_speed[sel("low_wind_area")].mean() < w.wind_speed[sel("wind_streaks")].mean()
    mean_nrcs = w.images.mean(axis=(1, 2, 3))
    assert mean_nrcs[sel("low_wind_area")].mean() < mean_nrcs[sel("wind_streaks")].mean() / 3
    # icebergs: a few pixels far brighter than the sea around them
    peak = w.images.max(axis=(1, 2, 3)) / np.median(w.images, axis=(1, 2, 3))
    assert np.median(peak[sel("icebergs")]) > 3 * np.median(peak[sel("pure_ocean_waves")])
    # slicks damp the sea along filaments: dark patches survive smoothing the speckle away
    smooth = ndi.uniform_filter(w.images[:, 0], (1, 5, 5))
    dark = (smooth < 0.6 * np.median(smooth, axis=(1, 2), keepdims=True)).mean(axis=(1, 2))
    assert dark[sel("biological_slicks")].mean() > 3 * dark[sel("pure_ocean_waves")].mean()
    # swell strength grows with Hs among pure-ocean-wave imagettes
    pow_ = np.flatnonzero(sel("pure_ocean_waves"))
    contrast = [np.std(ndi.uniform_filter(w.images[i, 0] / w.images[i, 0].mean(), 2)) for i in pow_]
    assert np.corrcoef(w.hs[pow_], contrast)[0, 1] > 0.4


# ------------------------------------------------------------------------------ files


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_landcover_geotiffs(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path / "lc", n=12, size=32, seed=4, progress=False)
    ref = generate_landcover(12, 32, seed=4)
    assert ref.s2 is not None and ref.s1 is not None
    rows = read_csv(out / "labels.csv")
    assert len(rows) == 12
    assert list(rows[0]) == ["id", "s2", "s1", "mask", "label", *CLASS_NAMES]
    for i, row in enumerate(rows):
        assert row["id"] == f"scene_{i:06d}"
        assert row["label"] == CLASS_NAMES[ref.labels[i]]
        fracs = np.array([float(row[c]) for c in CLASS_NAMES])
        np.testing.assert_allclose(fracs, ref.fractions[i], atol=1e-5)
    with rasterio.open(out / rows[3]["s2"]) as src:
        assert src.count == 13 and src.dtypes[0] == "uint16"
        assert src.descriptions == S2_BANDS
        assert src.crs.to_epsg() == 32632 and src.res == (10.0, 10.0)
        np.testing.assert_array_equal(src.read(), ref.s2[3])
    with rasterio.open(out / rows[3]["s1"]) as src:
        assert src.descriptions == ("VV", "VH") and src.dtypes[0] == "float32"
        np.testing.assert_array_equal(src.read(), ref.s1[3])
    with rasterio.open(out / rows[3]["mask"]) as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
        np.testing.assert_array_equal(src.read(1), ref.masks[3])
    # scenes are laid out side by side, not on top of each other
    with rasterio.open(out / rows[0]["s2"]) as a, rasterio.open(out / rows[1]["s2"]) as b:
        assert a.bounds != b.bounds
    meta = json.loads((out / "classes.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES) and meta["kind"] == "landcover"
    assert meta["seed"] == 4 and meta["generator"] == "eofm.data.synthetic"
    assert meta["sensors"]["s2"]["bands"] == list(S2_BANDS)

    # writing again (smaller) replaces the set; a foreign non-empty folder is refused
    write_synthetic(out, n=3, size=32, seed=4, progress=False, sensors=("s2",))
    assert len(list((out / "s2").iterdir())) == 3 and not (out / "s1").exists()
    assert list(read_csv(out / "labels.csv")[0]) == ["id", "s2", "mask", "label", *CLASS_NAMES]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic(foreign, n=2, size=32, progress=False)
    assert (foreign / "notes.txt").exists()


def test_write_wavemode_geotiffs(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path / "wv", kind="wavemode", n=11, size=64, seed=2, progress=False)
    ref = generate_wavemode(11, 64, seed=2)
    rows = read_csv(out / "labels.csv")
    assert [list(rows[0])] == [["id", "image", "label", "hs", "wind_speed"]]
    assert len(rows) == 11
    assert [r["label"] for r in rows] == [WV_CLASS_NAMES[c] for c in ref.labels]
    np.testing.assert_allclose([float(r["hs"]) for r in rows], ref.hs, atol=1e-3)
    with rasterio.open(out / rows[5]["image"]) as src:
        assert src.count == 1 and src.descriptions == ("VV",) and src.dtypes[0] == "float32"
        np.testing.assert_array_equal(src.read(), ref.images[5])
    meta = json.loads((out / "classes.json").read_text())
    assert meta["kind"] == "wavemode" and meta["classes"] == list(WV_CLASS_NAMES)


def test_write_shards(tmp_path: Path) -> None:
    shards = pytest.importorskip("eofm.data.shards")
    out = write_synthetic(tmp_path / "sh", n=10, size=32, seed=1, fmt="shards", progress=False)
    ref = generate_landcover(10, 32, seed=1, sensors=("s2",))
    assert ref.s2 is not None
    ds = shards.ShardDataset(out)
    assert len(ds) == 10 and ds.bands == S2_BANDS and ds.class_names == CLASS_NAMES
    sample = ds[4]
    np.testing.assert_array_equal(np.asarray(sample["image"]), ref.s2[4].astype(np.float32))
    assert int(sample["label"]) == ref.labels[4]
    np.testing.assert_array_equal(np.asarray(sample["mask"]), ref.masks[4])
    wv = write_synthetic(
        tmp_path / "wvsh", kind="wavemode", n=6, size=32, fmt="shards", progress=False
    )
    wds = shards.ShardDataset(wv)
    assert len(wds) == 6 and wds.bands == ("VV",)
    ref_wv = generate_wavemode(6, 32)
    np.testing.assert_allclose(float(wds[2]["target"]), ref_wv.hs[2], rtol=1e-6)
