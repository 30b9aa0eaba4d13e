"""Spatial land-cover maps: parcels, forest blobs, lakes, rivers, street grids, bare soil.

A map is built per scene around a *theme* class that ends up covering the largest share.
Every class present gets a target share; the theme first, then the others in a fixed order,
each claims the still unclaimed pixels where its own score field is highest (pixels left by
rounding go to the best-scoring class present). Score fields carry the structure:

- water, forest, grassland: FFT-filtered fractal noise (round lakes, ragged forest edges);
- cropland: noise averaged over agricultural parcels, so whole fields are claimed;
- urban: noise averaged over the blocks of a rotated street grid, so towns follow streets;
- bare soil: parcel-averaged (ploughed fields) or smooth (natural bare ground).

Rivers (meandering lines with a width) are drawn over the finished map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from eofm.data.synthetic._common import (
    F32,
    I64,
    Bool,
    filter_noise,
    group_mean,
    power_law_transfer,
    rotated_coords,
)

#: Land-cover classes, in mask index order.
CLASS_NAMES: tuple[str, ...] = ("water", "forest", "cropland", "grassland", "urban", "bare_soil")
WATER, FOREST, CROPLAND, GRASSLAND, URBAN, BARE_SOIL = range(6)
N_CLASSES = len(CLASS_NAMES)

#: Order in which the non-theme classes claim pixels after the theme (lakes stay whole).
_CLAIM_ORDER = (WATER, URBAN, CROPLAND, BARE_SOIL, FOREST, GRASSLAND)


@dataclass
class Layout:
    """A batch of land-cover maps and the structure the renderers need."""

    mask: npt.NDArray[np.uint8]  # (B, H, W) class indices
    parcel: npt.NDArray[np.int32]  # (B, H, W) agricultural parcel id, in [0, n_parcels)
    n_parcels: int
    block: npt.NDArray[np.int32]  # (B, H, W) urban block id, in [0, n_blocks)
    n_blocks: int
    street: Bool  # (B, H, W) street pixels of the urban grid
    margin: Bool  # (B, H, W) field margins (tracks, hedges) between parcels
    river: Bool  # (B, H, W) river pixels (also water in ``mask``)
    theme: I64  # (B,) class each scene was built around
    crop_mix: F32  # (B, n_parcels, 3) per-field weights of green crop, ripe crop, bare soil
    moisture: F32  # (B, n_parcels) per-field soil moisture in [0, 1]
    block_mix: F32  # (B, n_blocks, 3) per-block weights of roofs, paved ground, gardens
    block_bright: F32  # (B, n_blocks) per-block roof brightness factor
    soil_parcels: Bool  # (B,) bare soil follows parcels (ploughed) rather than blobs
    water_rough: F32  # (B,) wind roughness of open water in [0, 1]

    @cached_property
    def material_index(self) -> npt.NDArray[np.int32]:
        """Row of a per-batch material table for each pixel, ``(B, H, W)``.

        Table rows, in order: ``B * K`` class rows (``b * K + k``), ``B`` river rows,
        ``B * n_parcels`` crop-field rows, ``B * n_parcels`` bare-soil-field rows,
        ``B * n_blocks`` urban-block rows and ``B`` street rows.
        """
        b = self.mask.shape[0]
        k, p, nb = N_CLASSES, self.n_parcels, self.n_blocks
        bi = np.arange(b, dtype=np.int32)[:, None, None]
        mask = self.mask
        river0 = b * k
        crop0 = river0 + b
        soil0 = crop0 + b * p
        block0 = soil0 + b * p
        street0 = block0 + b * nb
        idx = bi * k + mask
        crop = mask == CROPLAND
        idx = np.where(crop, crop0 + bi * p + self.parcel, idx)
        soil = (mask == BARE_SOIL) & self.soil_parcels[:, None, None]
        idx = np.where(soil, soil0 + bi * p + self.parcel, idx)
        idx = np.where((crop | soil) & self.margin, bi * k + GRASSLAND, idx)
        urban = mask == URBAN
        idx = np.where(urban, block0 + bi * nb + self.block, idx)
        idx = np.where(urban & self.street, street0 + bi, idx)
        idx = np.where(self.river, river0 + bi, idx)
        return idx.astype(np.int32, copy=False)


def _parcels(
    rng: np.random.Generator, b: int, size: int
) -> tuple[npt.NDArray[np.int32], int, Bool]:
    """Rotated mosaic of rectangular parcels: strips of random width cut at random lengths."""
    angle = rng.uniform(0, np.pi / 2, b).astype(np.float32)
    u, v = rotated_coords(size, angle)
    half = 0.75 * size
    min_w, max_w = 9.0, 26.0
    n_cuts = int(np.ceil(2 * half / min_w)) + 1
    widths = rng.uniform(min_w, max_w, (b, n_cuts)).astype(np.float32)
    cuts = (-half + rng.uniform(0, max_w, (b, 1)) - max_w + np.cumsum(widths, axis=1)).astype(
        np.float32
    )
    col = np.zeros(u.shape, dtype=np.int32)
    for j in range(n_cuts):  # few cuts; each comparison is vectorised over the batch
        col += u > cuts[:, j, None, None]
    # along each strip: parcels of a per-strip length and offset
    lengths = rng.uniform(10.0, 40.0, (b, n_cuts + 1)).astype(np.float32)
    offsets = rng.uniform(0.0, 1.0, (b, n_cuts + 1)).astype(np.float32)
    bi = np.arange(b)[:, None, None]
    length = lengths[bi, col]
    row = np.floor((v + half) / length + offsets[bi, col]).astype(np.int32)
    n_rows = int(np.ceil(2 * half / 10.0)) + 2
    parcel = (col * n_rows + np.clip(row, 0, n_rows - 1)).astype(np.int32)
    n_parcels = (n_cuts + 1) * n_rows
    margin = np.zeros(parcel.shape, dtype=bool)
    margin[:, :, 1:] |= parcel[:, :, 1:] != parcel[:, :, :-1]
    margin[:, 1:, :] |= parcel[:, 1:, :] != parcel[:, :-1, :]
    margin &= (rng.random(b) < 0.6)[:, None, None]  # not every landscape has visible tracks
    return parcel, n_parcels, margin


def _street_grid(
    rng: np.random.Generator, b: int, size: int
) -> tuple[npt.NDArray[np.int32], int, Bool]:
    """Rotated street grid: block ids and street pixels (streets 1-2 px, blocks 4-10 px)."""
    angle = rng.uniform(0, np.pi / 2, b).astype(np.float32)
    u, v = rotated_coords(size, angle)
    half = 0.75 * size
    pitch_u = rng.uniform(5.0, 11.0, b).astype(np.float32)[:, None, None]
    pitch_v = rng.uniform(5.0, 11.0, b).astype(np.float32)[:, None, None]
    width = rng.choice(np.array([1.0, 1.0, 1.5, 2.0], dtype=np.float32), b)[:, None, None]
    su = (u + half) / pitch_u + rng.random(b, dtype=np.float32)[:, None, None]
    sv = (v + half) / pitch_v + rng.random(b, dtype=np.float32)[:, None, None]
    street = ((su % 1.0) * pitch_u < width) | ((sv % 1.0) * pitch_v < width)
    n_side = int(np.ceil(2 * half / 5.0)) + 2
    iu = np.clip(np.floor(su).astype(np.int32), 0, n_side - 1)
    iv = np.clip(np.floor(sv).astype(np.int32), 0, n_side - 1)
    return (iu * n_side + iv).astype(np.int32), n_side * n_side, street


def _rivers(rng: np.random.Generator, b: int, size: int, p: F32) -> Bool:
    """Meandering rivers of 1-4 px width in the scenes drawn with probability ``p`` (B,)."""
    out = np.zeros((b, size, size), dtype=bool)
    present = np.flatnonzero(rng.random(b) < p)
    m = len(present)
    if m == 0:
        return out
    angle = rng.uniform(0, np.pi, m).astype(np.float32)
    centre = np.zeros((m, 2), dtype=np.float32)
    centre[:, 1] = rng.uniform(-0.3, 0.3, m) * size
    u, v = rotated_coords(size, angle, centre)
    path = np.zeros_like(u)
    slope = np.zeros_like(u)
    for _ in range(3):  # sum of sinusoids: meanders at several wavelengths
        wavelength = rng.uniform(0.4, 1.6, m).astype(np.float32)[:, None, None] * size
        amp = wavelength * rng.uniform(0.04, 0.14, m).astype(np.float32)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None, None]
        arg = np.float32(2 * np.pi) * u / wavelength + phase
        path += amp * np.sin(arg)
        slope += amp * np.float32(2 * np.pi) / wavelength * np.cos(arg)
    width = rng.uniform(1.2, 4.0, m).astype(np.float32)[:, None, None]
    out[present] = np.abs(v - path) < (width / 2) * np.sqrt(1 + slope**2)
    return out


def _shares(rng: np.random.Generator, theme: I64) -> F32:
    """Target class shares (B, K): the theme largest, 0-3 other classes present."""
    b = len(theme)
    n_other = rng.choice(4, size=b, p=[0.1, 0.3, 0.4, 0.2])
    keys = rng.random((b, N_CLASSES))
    keys[np.arange(b), theme] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    present = rank < n_other[:, None]
    t = rng.uniform(0.4, 0.9, b)
    weights = rng.gamma(1.0, 1.0, (b, N_CLASSES)) * present
    total = weights.sum(axis=1, keepdims=True)
    shares = np.where(total > 0, weights / np.maximum(total, 1e-12), 0.0) * (1 - t)[:, None]
    shares = np.minimum(shares, 0.8 * t[:, None])  # every other class stays clearly smaller
    shares[np.arange(b), theme] = 1.0 - shares.sum(axis=1)
    return shares.astype(np.float32)


def make_layout(rng: np.random.Generator, theme: I64, size: int) -> Layout:
    """Land-cover maps for a batch of scenes built around ``theme`` (B,) class indices."""
    b = len(theme)
    parcel, n_parcels, margin = _parcels(rng, b, size)
    block, n_blocks, street = _street_grid(rng, b, size)

    # one batched FFT for the score fields of all classes (B, 6, H, W)
    betas = np.array([3.6, 3.0, 3.0, 2.6, 3.8, 3.0], dtype=np.float32)
    transfer = np.stack([power_law_transfer(size, size, float(bt), smooth_px=1.5) for bt in betas])
    fields = filter_noise(rng, (b, N_CLASSES, size, size), transfer)
    score = fields.copy()
    score[:, CROPLAND] = group_mean(fields[:, CROPLAND], parcel, n_parcels)
    score[:, URBAN] = group_mean(fields[:, URBAN], block, n_blocks)
    soil_parcels = group_mean(fields[:, BARE_SOIL], parcel, n_parcels)
    parcel_soil = (rng.random(b) < 0.6)[:, None, None]
    score[:, BARE_SOIL] = np.where(parcel_soil, soil_parcels, fields[:, BARE_SOIL])

    shares = _shares(rng, theme)
    n_pix = size * size
    bi = np.arange(b)
    mask = np.zeros((b, size, size), dtype=np.uint8)
    free = np.ones((b, size, size), dtype=bool)
    # the theme claims first (so fields and towns keep their shape), then the others in order
    steps = [(theme, score[bi, theme], shares[bi, theme])]
    for c in _CLAIM_ORDER:
        cls = np.full(b, c, dtype=np.int64)
        steps.append((cls, score[:, c], np.where(theme == c, 0.0, shares[:, c])))
    for cls, s_c, share in steps:
        want = np.rint(share * n_pix).astype(np.int64)
        if not want.any():
            continue
        s = np.where(free, s_c, -np.inf).reshape(b, n_pix)
        ordered = -np.sort(-s, axis=1)
        thr = ordered[bi, np.clip(want - 1, 0, n_pix - 1)]
        thr = np.where(want > 0, thr, np.inf)[:, None, None]
        claim = free & (s_c >= thr)
        mask[claim] = np.broadcast_to(cls[:, None, None], claim.shape)[claim]
        free &= ~claim
    # pixels left over by rounding and ties go to the best-scoring class present in the scene
    present = (shares > 0)[:, :, None, None]
    best = np.where(present, score, -np.inf).argmax(axis=1).astype(np.uint8)
    mask[free] = best[free]

    p_river = np.where(theme == WATER, 0.5, 0.3).astype(np.float32)
    river = _rivers(rng, b, size, p_river) & (mask != WATER)
    mask[river] = WATER

    # materials, shared by the optical and radar renderers so that both see the same fields
    state = rng.choice(3, size=(b, n_parcels), p=[0.55, 0.2, 0.25])
    crop_mix = rng.gamma(0.3, 1.0, (b, n_parcels, 3)).astype(np.float32)
    crop_mix[np.arange(b)[:, None], np.arange(n_parcels)[None, :], state] += 1.5
    crop_mix /= crop_mix.sum(axis=2, keepdims=True)
    moisture = rng.beta(2.0, 2.5, (b, n_parcels)).astype(np.float32)
    block_mix = np.stack(
        [
            rng.uniform(0.45, 1.0, (b, n_blocks)),
            rng.uniform(0.0, 0.4, (b, n_blocks)),
            rng.uniform(0.0, 0.35, (b, n_blocks)) ** 2,
        ],
        axis=2,
    ).astype(np.float32)
    block_mix /= block_mix.sum(axis=2, keepdims=True)
    block_bright = rng.lognormal(0.0, 0.18, (b, n_blocks)).astype(np.float32)
    return Layout(
        mask=mask,
        parcel=parcel,
        n_parcels=n_parcels,
        block=block,
        n_blocks=n_blocks,
        street=street,
        margin=margin,
        river=river,
        theme=theme,
        crop_mix=crop_mix,
        moisture=moisture,
        block_mix=block_mix,
        block_bright=block_bright,
        soil_parcels=parcel_soil[:, 0, 0],
        water_rough=rng.beta(2.0, 2.0, b).astype(np.float32),
    )


def class_fractions(mask: npt.NDArray[np.uint8], n_classes: int = N_CLASSES) -> F32:
    """Per-scene class fractions (B, K) of a batch of masks (B, H, W)."""
    b = mask.shape[0]
    flat = mask.reshape(b, -1).astype(np.int64) + (np.arange(b) * n_classes)[:, None]
    counts = np.bincount(flat.ravel(), minlength=b * n_classes).reshape(b, n_classes)
    out: F32 = (counts / mask[0].size).astype(np.float32)
    return out


def multi_hot(fractions: F32, threshold: float = 0.05) -> npt.NDArray[np.float32]:
    """Multi-label targets: 1 where a class covers at least ``threshold`` of the scene."""
    out: npt.NDArray[np.float32] = (fractions >= threshold).astype(np.float32)
    return out
