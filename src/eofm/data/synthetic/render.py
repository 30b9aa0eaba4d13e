"""Render land-cover maps as Sentinel-2 L1C reflectance and Sentinel-1 GRD backscatter.

Each pixel looks its material up in a per-batch table (class signatures jittered per scene,
one mixed signature per agricultural parcel and per urban block), then gets texture
(fine and smooth noise, amplitude set by class), atmosphere (haze, a little cirrus), the
band's spatial resolution (Gaussian PSF of 10, 20 or 60 m) and sensor noise.

Sentinel-1: per-material mean sigma0 in dB, smooth texture, the radar PSF, then
multiplicative speckle (gamma-distributed intensity with :data:`S1_LOOKS` looks) applied in
linear power and converted back to dB.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from eofm.data.sensors import get_sensor
from eofm.data.synthetic._common import (
    F32,
    blur,
    filter_noise,
    gamma_speckle,
    gaussian_transfer,
    power_law_transfer,
    uniform_noise,
)
from eofm.data.synthetic.landcover import (
    FOREST,
    GRASSLAND,
    N_CLASSES,
    WATER,
    Layout,
)

#: Sentinel-2 L1C band names, in file order.
S2_BANDS: tuple[str, ...] = get_sensor("sentinel2_l1c").band_names
#: Sentinel-1 GRD polarisations, in file order.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
#: Equivalent number of looks of the synthetic Sentinel-1 GRD speckle (IW high resolution).
S1_LOOKS = 4.4
#: Centre wavelengths (micrometres) of :data:`S2_BANDS`.
S2_WAVELENGTHS = np.array(
    [get_sensor("sentinel2_l1c").band(b).wavelength_um for b in S2_BANDS], dtype=np.float32
)
_S2_GSD = np.array([get_sensor("sentinel2_l1c").band(b).gsd_m for b in S2_BANDS])

# Top-of-atmosphere reflectance x 10000, bands B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12.
# Path radiance lifts the blue end; B09 sits in a water-vapour absorption band; B10 (cirrus)
# sees almost nothing of the ground.
# fmt: off
SIGNATURES: dict[str, tuple[float, ...]] = {
    "water":        (1150,  900,  720,  480,  380,  330,  300,  270,  240,   90,  8,  110,   70),
    "turbid_water": (1250, 1050, 1000,  800,  640,  470,  410,  370,  330,  120,  8,  170,  110),
    "forest":       (1000,  660,  700,  420,  900, 2000, 2450, 2650, 2800,  900, 14, 1500,  700),
    "green_crop":   (1050,  720,  900,  520, 1250, 2800, 3500, 3800, 3950, 1150, 15, 1900,  900),
    "ripe_crop":    (1250, 1050, 1200, 1350, 1700, 2100, 2350, 2550, 2700,  850, 17, 2900, 2300),
    "soil":         (1300, 1150, 1350, 1650, 1900, 2100, 2250, 2400, 2550,  800, 19, 3300, 2900),
    "grass":        (1100,  800,  980,  740, 1250, 2200, 2650, 2850, 2950,  950, 15, 2300, 1350),
    "roof":         (1500, 1350, 1350, 1450, 1550, 1650, 1750, 1850, 1900,  620, 20, 2300, 2100),
    "pavement":     (1150,  920,  880,  870,  900,  950, 1000, 1050, 1080,  380, 15, 1250, 1150),
}
# fmt: on

# Sentinel-1 mean sigma0 (dB) of each material, VV and VH.
BACKSCATTER_DB: dict[str, tuple[float, float]] = {
    "water": (-21.0, -27.5),
    "turbid_water": (-19.0, -26.5),
    "forest": (-7.5, -13.0),
    "green_crop": (-9.0, -15.0),
    "ripe_crop": (-10.5, -17.0),
    "soil": (-12.5, -20.0),
    "grass": (-11.0, -18.0),
    "roof": (-3.0, -9.0),
    "pavement": (-11.0, -18.5),
}

_COARSE = np.flatnonzero(_S2_GSD > 10)
_COARSE_SIGMA = np.where(_S2_GSD[_COARSE] <= 20, 1.0, 2.5).astype(np.float32)

_CLASS_MATERIAL = ("water", "forest", "green_crop", "grass", "roof", "soil")

# texture amplitudes per class: S2 fine, S2 smooth (relative), S1 smooth (dB)
_TEX_FINE = np.array([0.01, 0.10, 0.03, 0.05, 0.12, 0.04], dtype=np.float32)
_TEX_SMOOTH = np.array([0.03, 0.08, 0.03, 0.07, 0.05, 0.08], dtype=np.float32)
_TEX_S1 = np.array([0.25, 0.6, 0.4, 0.7, 1.2, 0.8], dtype=np.float32)


def _sig(name: str) -> F32:
    return np.asarray(SIGNATURES[name], dtype=np.float32)


def _db(name: str) -> F32:
    return np.asarray(BACKSCATTER_DB[name], dtype=np.float32)


def _table(
    classes: F32, river: F32, crop: F32, soil: F32, blocks: F32, street: F32, offset: F32
) -> F32:
    """Material table in the row order of :attr:`Layout.material_index`, ``(C, rows)``.

    ``offset`` (B, C) is added to every row of its scene.
    """
    c = classes.shape[-1]
    parts = [classes, river[:, None], crop, soil, blocks, street[:, None]]  # each (B, n, C)
    table = np.concatenate([(p + offset[:, None, :]).reshape(-1, c) for p in parts])
    return np.ascontiguousarray(table.T.astype(np.float32))


def _gather(table: F32, idx: npt.NDArray[np.int32], scale: F32 | None = None) -> F32:
    """Per-pixel values ``(B, C, H, W)`` of a ``(C, rows)`` table, optionally times ``scale``."""
    b, h, w = idx.shape
    out = np.empty((b, table.shape[0], h, w), dtype=np.float32)
    for c in range(table.shape[0]):
        if scale is None:
            np.take(table[c], idx, out=out[:, c])
        else:
            np.multiply(np.take(table[c], idx), scale, out=out[:, c])
    return out


def _textures(rng: np.random.Generator, b: int, size: int) -> tuple[F32, F32]:
    """Fine (about 1 px) and smooth (fractal) standard-normal texture fields, (B, H, W) each."""
    transfer = np.stack([gaussian_transfer(size, size, 0.7), power_law_transfer(size, size, 3.0)])
    fields = filter_noise(rng, (b, 2, size, size), transfer)
    return fields[:, 0], fields[:, 1]


def render_s2(rng: np.random.Generator, layout: Layout) -> npt.NDArray[np.uint16]:
    """Sentinel-2 L1C reflectance x 10000, ``(B, 13, H, W)`` uint16 in :data:`S2_BANDS` order."""
    mask = layout.mask
    b, size = mask.shape[0], mask.shape[1]
    nir = (S2_WAVELENGTHS > 0.7) & (S2_WAVELENGTHS < 1.0)

    # per-scene jitter of every class signature: brightness and a slight spectral tilt
    base = np.stack([_sig(m) for m in _CLASS_MATERIAL])  # (K, 13)
    bright = rng.normal(1.0, 0.05, (b, N_CLASSES, 1)).astype(np.float32)
    tilt = rng.normal(0.0, 0.04, (b, N_CLASSES, 1)).astype(np.float32)
    classes = base[None] * bright * (1 + tilt * (S2_WAVELENGTHS - 1.0))
    # vegetation vigour of the season: scales the red-edge/NIR plateau of green classes
    vigour = rng.uniform(0.85, 1.1, (b, 1)).astype(np.float32)
    for c in (FOREST, GRASSLAND):
        classes[:, c, nir] *= vigour
    river = _sig("turbid_water")[None] * rng.normal(1.0, 0.06, (b, 1)).astype(np.float32)

    # fields: mix of green crop, ripe crop and bare soil, per-field brightness
    crop = layout.crop_mix @ np.stack([_sig("green_crop"), _sig("ripe_crop"), _sig("soil")])
    crop[..., nir] *= vigour[:, :, None]
    crop *= rng.normal(1.0, 0.05, (*crop.shape[:2], 1)).astype(np.float32)
    # bare soil: darker when moist (most in the SWIR, where water absorbs)
    swir = (S2_WAVELENGTHS > 1.5).astype(np.float32)
    wet = layout.moisture[..., None]
    soil = _sig("soil")[None, None] * (1 - 0.35 * wet) * (1 - 0.25 * wet * swir)
    # urban blocks: roofs, pavement and gardens
    blocks = layout.block_mix @ np.stack([_sig("roof"), _sig("pavement"), _sig("grass")])
    blocks *= layout.block_bright[..., None]
    street = _sig("pavement")[None] * rng.normal(1.0, 0.05, (b, 1)).astype(np.float32)
    # haze: path radiance added to every material, strongest at short wavelengths
    haze = rng.exponential(100.0, (b, 1)).astype(np.float32) * (0.49 / S2_WAVELENGTHS) ** 2
    haze[:, S2_BANDS.index("B10")] = 0.0

    table = _table(classes, river, crop, soil, blocks, street, haze.astype(np.float32))
    fine, smooth = _textures(rng, b, size)
    tex = 1 + _TEX_FINE[mask] * fine + _TEX_SMOOTH[mask] * smooth
    out = _gather(table, layout.material_index, tex)

    # thin cirrus in some scenes (B10 only)
    cirrus = np.where(rng.random(b) < 0.1, rng.uniform(20, 150, b), 0.0).astype(np.float32)
    b10 = S2_BANDS.index("B10")
    out[:, b10] += cirrus[:, None, None] * np.clip(1 + 0.5 * smooth, 0, None)

    # spatial resolution of the 20 m and 60 m bands (Gaussian PSF); 10 m bands stay sharp
    out[:, _COARSE] = blur(out[:, _COARSE], _COARSE_SIGMA)

    # sensor noise: a floor plus a part growing with the band's signal
    sigma = (6.0 + 0.004 * out.mean(axis=(2, 3))).astype(np.float32) / np.float32(73.9)
    noise = uniform_noise(rng, out.shape)
    out += noise * sigma[:, :, None, None]
    np.clip(out, 1, 65535, out=out)
    out += 0.5
    return out.astype(np.uint16)


def render_s1(rng: np.random.Generator, layout: Layout) -> F32:
    """Sentinel-1 GRD sigma0 in dB, ``(B, 2, H, W)`` float32, bands VV, VH, with speckle."""
    mask = layout.mask
    b, size = mask.shape[0], mask.shape[1]

    classes = np.stack([_db(m) for m in _CLASS_MATERIAL])[None].repeat(b, axis=0)  # (B, K, 2)
    classes += rng.normal(0.0, 0.7, (b, N_CLASSES, 1)).astype(np.float32)  # incidence angle
    # open water: calm (very dark) to wind-roughened
    classes[:, WATER, 0] = -24.0 + 7.0 * layout.water_rough
    classes[:, WATER, 1] = -28.5 + 3.0 * layout.water_rough
    river = _db("turbid_water")[None] + rng.normal(0, 1.0, (b, 1)).astype(np.float32)
    crop = layout.crop_mix @ np.stack([_db("green_crop"), _db("ripe_crop"), _db("soil")])
    crop += rng.normal(0, 1.0, (*crop.shape[:2], 1)).astype(np.float32)
    # wetter soil backscatters more (higher dielectric constant)
    soil = _db("soil")[None, None] + (layout.moisture[..., None] - 0.45) * np.float32(6.0)
    # buildings: double bounce makes some blocks very bright
    blocks = layout.block_mix @ np.stack([_db("roof"), _db("pavement"), _db("grass")])
    blocks += (np.float32(12.0) * np.log10(layout.block_bright))[..., None]
    blocks += rng.normal(0, 2.0, (*blocks.shape[:2], 1)).astype(np.float32)
    street = _db("pavement")[None] + rng.normal(0, 1.0, (b, 1)).astype(np.float32)

    table = _table(classes, river, crop, soil, blocks, street, np.zeros((b, 2), np.float32))
    db = _gather(table, layout.material_index)
    smooth = filter_noise(rng, (b, size, size), power_law_transfer(size, size, 3.0))
    db += (_TEX_S1[mask] * smooth)[:, None]
    db *= np.float32(np.log(10.0) / 10.0)
    linear = np.exp(db, out=db)
    linear += np.float32(10 ** (-2.6))  # thermal noise floor (NESZ about -26 dB)
    linear *= gamma_speckle(rng, linear.shape, S1_LOOKS)
    np.maximum(linear, np.float32(1e-6), out=linear)
    out: F32 = np.log10(linear, out=linear)
    out *= np.float32(10.0)
    return out
