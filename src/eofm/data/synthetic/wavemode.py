"""Sentinel-1 Wave-Mode-like ocean imagettes for the ten TenGeoP geophysical phenomena.

Every imagette is linear VV normalised radar cross-section (NRCS) on a grid of
:data:`WV_PIXEL_M` metres:

- the mean NRCS follows the wind speed (a CMOD-like power law, very dark below ~3 m/s);
- swell comes from a JONSWAP spectrum with a ``cos^2s`` directional spread, random phases
  and an inverse FFT; the image sees it through a slope (tilt) modulation. The significant
  wave height is ``Hs = 4 * sqrt(m0)`` of that same discretised spectrum;
- each class adds its pattern (streaks, cells, rain cells, slicks, ice floes, icebergs, low
  wind, fronts);
- multiplicative gamma speckle with :data:`WV_LOOKS` looks goes on last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
from scipy.special import gammaln

from eofm.data.synthetic._common import (
    F32,
    I64,
    assign_classes,
    blur,
    check_args,
    chunks,
    filter_noise,
    gamma_speckle,
    power_law_transfer,
    progress_bar,
    resolve_class,
    rng_for,
    rotated_coords,
    worley,
)

#: TenGeoP classes (Wang et al. 2019), in label order.
WV_CLASS_NAMES: tuple[str, ...] = (
    "pure_ocean_waves",
    "wind_streaks",
    "micro_convective_cells",
    "rain_cells",
    "biological_slicks",
    "sea_ice",
    "icebergs",
    "low_wind_area",
    "atmospheric_front",
    "oceanic_front",
)
(POW, WS, MCC, RC, BS, SI, IB, LWA, AF, OF) = range(10)
WV_BANDS: tuple[str, ...] = ("VV",)
#: Ground size of an imagette pixel (metres): 128 px cover 6.4 km.
WV_PIXEL_M = 50.0
#: Equivalent number of looks of the imagette speckle.
WV_LOOKS = 6.0
#: Instrument noise floor (linear NRCS), about -24 dB.
WV_NESZ = 10 ** (-2.4)
GRAVITY = 9.81
_TAG_WAVEMODE = 2
_CHUNK = 128

# per-class ranges: wind speed (m/s), Hs (m), swell modulation strength
_WIND = np.array(
    [[4, 10], [7, 16], [3, 9], [5, 14], [2, 5], [3, 12], [4, 10], [3, 7], [3, 7], [4, 9]],
    dtype=np.float32,
)
_HS = np.array(
    [[1.5, 7], [1, 5], [1, 4], [1, 5], [0.5, 2.5], [0.05, 0.5], [1, 4], [0.5, 3], [1, 4], [1, 4]],
    dtype=np.float32,
)
_MOD = np.array(
    [[12, 18], [2, 5], [3, 6], [3, 6], [4, 8], [0, 0], [4, 8], [1, 3], [3, 6], [3, 6]],
    dtype=np.float32,
)


@dataclass
class WaveModeSet:
    """Synthetic Wave Mode imagettes held in memory."""

    images: F32  # (N, 1, H, W) linear VV NRCS
    labels: I64  # (N,)
    class_names: tuple[str, ...]
    hs: F32  # (N,) significant wave height (m)
    wind_speed: F32  # (N,) mean 10 m wind speed over the imagette (m/s)
    swell_direction: F32 | None = None  # (N,) degrees, see :func:`directional_spectrum`
    peak_wavelength: F32 | None = None  # (N,) metres
    bands: tuple[str, ...] = WV_BANDS
    pixel_m: float = WV_PIXEL_M

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def wavenumbers(size: int, pixel_m: float = WV_PIXEL_M) -> tuple[F32, F32]:
    """Wavenumber grids ``kx, ky`` (rad/m) of a full ``fft2`` of a ``size`` x ``size`` image."""
    k1 = (2 * np.pi * np.fft.fftfreq(size, d=pixel_m)).astype(np.float32)
    kx = np.broadcast_to(k1[None, :], (size, size)).copy()
    ky = np.broadcast_to(k1[:, None], (size, size)).copy()
    return kx, ky


def directional_spectrum(
    size: int,
    peak_wavelength_m: npt.ArrayLike,
    direction_deg: npt.ArrayLike,
    *,
    alpha: npt.ArrayLike = 0.0081,
    spread: npt.ArrayLike = 20.0,
    gamma: float = 3.3,
    pixel_m: float = WV_PIXEL_M,
) -> F32:
    """JONSWAP wavenumber spectrum with a ``cos^2s(dtheta/2)`` spread, ``(B, size, size)``.

    Values are the elevation variance density ``F(kx, ky)`` in m^2 / (rad/m)^2 on the full
    ``fft2`` grid. ``direction_deg`` is the direction the waves travel to, measured from the
    image x axis (columns) towards the y axis (rows). ``alpha`` is the Phillips constant: the
    energy level. Deep water: ``omega^2 = g k``.
    """
    lam = np.atleast_1d(np.asarray(peak_wavelength_m, dtype=np.float64))
    b = lam.shape[0]
    theta0 = np.deg2rad(np.broadcast_to(np.asarray(direction_deg, dtype=np.float64), (b,)))
    alp = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (b,))
    s = np.broadcast_to(np.asarray(spread, dtype=np.float64), (b,))
    kx, ky = wavenumbers(size, pixel_m)
    k = np.hypot(kx, ky).astype(np.float64)[None]
    k_safe = np.where(k > 0, k, 1.0)
    omega = np.sqrt(GRAVITY * k_safe)
    kp = (2 * np.pi / lam)[:, None, None]
    wp = np.sqrt(GRAVITY * kp)
    sigma = np.where(omega <= wp, 0.07, 0.09)
    peak = gamma ** np.exp(-((omega - wp) ** 2) / (2 * sigma**2 * wp**2))
    s_omega = (
        alp[:, None, None] * GRAVITY**2 * omega**-5.0 * np.exp(-1.25 * (wp / omega) ** 4) * peak
    )
    s_k = s_omega * 0.5 * np.sqrt(GRAVITY / k_safe)  # S(k) = S(omega) d(omega)/dk
    theta = np.arctan2(ky, kx).astype(np.float64)[None]
    norm = np.exp(gammaln(s + 1) - gammaln(s + 0.5)) / (2 * np.sqrt(np.pi))
    spread_fn = norm[:, None, None] * np.abs(np.cos((theta - theta0[:, None, None]) / 2)) ** (
        2 * s[:, None, None]
    )
    out = np.where(k > 0, s_k * spread_fn / k_safe, 0.0)
    return out.astype(np.float32)


def significant_wave_height(spectrum: F32, pixel_m: float = WV_PIXEL_M) -> F32:
    """``Hs = 4 sqrt(m0)`` of spectra from :func:`directional_spectrum`, ``(B,)`` metres."""
    size = spectrum.shape[-1]
    dk = 2 * np.pi / (size * pixel_m)
    m0 = spectrum.astype(np.float64).sum(axis=(-2, -1)) * dk * dk
    out: F32 = (4.0 * np.sqrt(m0)).astype(np.float32)
    return out


def sea_surface(
    rng: np.random.Generator, spectrum: F32, pixel_m: float = WV_PIXEL_M
) -> tuple[F32, F32]:
    """Random-phase sea surface of ``spectrum``: elevation (m) and slope along each wave.

    Both ``(B, H, W)``. The elevation variance equals ``m0`` of the spectrum.
    """
    size = spectrum.shape[-1]
    dk = 2 * np.pi / (size * pixel_m)
    phase = rng.uniform(0, 2 * np.pi, spectrum.shape).astype(np.float32)
    amp = np.sqrt(2 * spectrum * np.float32(dk * dk)) * np.exp(1j * phase).astype(np.complex64)
    kx, ky = wavenumbers(size, pixel_m)
    k = np.hypot(kx, ky)
    both = np.stack([amp, amp * (1j * k)], axis=1)  # elevation, slope along propagation
    field = scipy.fft.ifft2(both, workers=-1).real * np.float32(size * size)
    return field[:, 0].astype(np.float32), field[:, 1].astype(np.float32)


def wind_nrcs(wind: npt.ArrayLike) -> F32:
    """Mean VV NRCS (linear) for a 10 m wind speed (m/s), CMOD-like at ~23 deg incidence."""
    u = np.maximum(np.asarray(wind, dtype=np.float32), np.float32(0.2))
    db = -19.15 + 13.8 * np.log10(u) - 10.0 * np.maximum(0.0, 1.0 - u / 3.0) ** 2
    out: F32 = np.power(np.float32(10.0), db / np.float32(10.0)).astype(np.float32)
    return out


def _aniso_transfer(size: int, direction: F32, k_centre: F32, k_width: F32, along: F32) -> F32:
    """rfft2 transfer of a streak field: energy across ``direction``, little along it.

    Frequencies in cycles per pixel; one transfer per image ``(B, H, W // 2 + 1)``.
    """
    fy = np.fft.fftfreq(size).astype(np.float32)[None, :, None]
    fx = np.fft.rfftfreq(size).astype(np.float32)[None, None, :]
    c = np.cos(direction)[:, None, None]
    s = np.sin(direction)[:, None, None]
    k_par = fx * c + fy * s
    k_perp = np.abs(-fx * s + fy * c)
    out = np.exp(-0.5 * (k_par / along[:, None, None]) ** 2) * np.exp(
        -0.5 * ((k_perp - k_centre[:, None, None]) / k_width[:, None, None]) ** 2
    )
    result: F32 = out.astype(np.float32)
    return result


def _streaks(rng: np.random.Generator, m: int, size: int, wind_dir: F32) -> F32:
    """Wind streaks: elongated along the wind, 0.5-1.5 km apart; log-modulation."""
    spacing_px = rng.uniform(400, 1000, m).astype(np.float32) / WV_PIXEL_M
    kc = (1 / spacing_px).astype(np.float32)
    along = (1 / rng.uniform(60, 160, m)).astype(np.float32)
    transfer = _aniso_transfer(size, wind_dir, kc, (0.6 * kc).astype(np.float32), along)
    field = filter_noise(rng, (m, size, size), transfer)
    out: F32 = rng.uniform(0.15, 0.3, m).astype(np.float32)[:, None, None] * field
    return out


def _cells(rng: np.random.Generator, m: int, size: int) -> F32:
    """Micro-convective cells: cellular pattern with bright cell rims; log-modulation."""
    cell = rng.uniform(16, 36, m).astype(np.float32)
    f1, f2, ids = worley(rng, m, size, cell)
    rim = np.exp(-(f2 - f1) / rng.uniform(1.5, 3.5, m).astype(np.float32)[:, None, None])
    per_cell = rng.normal(0, 1, (m, int(ids.max()) + 1)).astype(np.float32)
    inside = per_cell[np.arange(m)[:, None, None], ids]
    pattern = 0.6 * rim + 0.25 * inside - 0.3 * (f1 / cell[:, None, None])
    pattern = blur(pattern.astype(np.float32), 2.2)
    pattern -= pattern.mean(axis=(1, 2), keepdims=True)
    pattern /= pattern.std(axis=(1, 2), keepdims=True) + np.float32(1e-6)
    out: F32 = rng.uniform(0.3, 0.5, m).astype(np.float32)[:, None, None] * pattern
    return out


def _rain(rng: np.random.Generator, m: int, size: int) -> F32:
    """Rain cells: 1-3 circular cells with a bright gust-front rim and a dark or bright core."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((m, size, size), dtype=np.float32)
    n_cells = rng.integers(1, 4, m)
    for j in range(3):
        on = (n_cells > j).astype(np.float32)[:, None, None]
        cy, cx = (rng.uniform(-0.2, 1.2, (2, m)) * size).astype(np.float32)
        radius = rng.uniform(10, 45, m).astype(np.float32)[:, None, None]
        gust = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None, None]
        dy = yy[None] - cy[:, None, None]
        dx = xx[None] - cx[:, None, None]
        r = np.hypot(dy, dx)
        ang = np.arctan2(dy, dx)
        ring = np.exp(-(((r - radius) / (0.25 * radius)) ** 2)) * (1 + 0.6 * np.cos(ang - gust))
        core = np.exp(-((r / (0.7 * radius)) ** 2))
        sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), m)[:, None, None]
        out += on * (
            rng.uniform(0.6, 1.1, m).astype(np.float32)[:, None, None] * ring
            + sign * rng.uniform(0.4, 0.9, m).astype(np.float32)[:, None, None] * core
        )
    return out


def _slicks(rng: np.random.Generator, m: int, size: int) -> F32:
    """Biological slicks: dark meandering filaments (zero contours of smooth noise); factor."""
    direction = rng.uniform(0, np.pi, m).astype(np.float32)
    base = power_law_transfer(size, size, 3.8, smooth_px=1.0)[None]
    fy = np.fft.fftfreq(size).astype(np.float32)[None, :, None]
    fx = np.fft.rfftfreq(size).astype(np.float32)[None, None, :]
    along = fx * np.cos(direction)[:, None, None] + fy * np.sin(direction)[:, None, None]
    stretch = np.exp(-((along * size / 6) ** 2))  # filaments elongated along ``direction``
    fields = filter_noise(rng, (m, 2, size, size), (base * stretch)[:, None])
    width = rng.uniform(0.06, 0.16, m).astype(np.float32)[:, None, None]
    filaments = np.maximum(
        np.exp(-((fields[:, 0] / width) ** 2)), 0.7 * np.exp(-((fields[:, 1] / width) ** 2))
    )
    depth = rng.uniform(0.5, 0.85, m).astype(np.float32)[:, None, None]
    out: F32 = (1 - depth * filaments).astype(np.float32)
    return out


def _sea_ice(rng: np.random.Generator, m: int, size: int) -> F32:
    """Sea ice: floes of varied brightness, dark or bright leads, optional open water; NRCS."""
    cell = rng.uniform(6, 24, m).astype(np.float32)
    f1, f2, ids = worley(rng, m, size, cell)
    level = rng.uniform(-17, -9, m).astype(np.float32)[:, None, None]
    per_floe = rng.normal(0, 2.5, (m, int(ids.max()) + 1)).astype(np.float32)
    db = level + per_floe[np.arange(m)[:, None, None], ids]
    lead = np.exp(-(((f2 - f1) / rng.uniform(0.8, 2.0, m).astype(np.float32)[:, None, None]) ** 2))
    lead_db = rng.choice(np.array([-8.0, 5.0], dtype=np.float32), m)[:, None, None]
    db += lead * lead_db
    texture = filter_noise(rng, (m, size, size), power_law_transfer(size, size, 2.0))
    db += 1.2 * texture
    ice = np.power(np.float32(10), db / 10).astype(np.float32)
    # marginal ice zone in some imagettes: open, wind-roughened water beyond a smooth edge
    edge_field = filter_noise(rng, (m, size, size), power_law_transfer(size, size, 4.0))
    has_edge = (rng.random(m) < 0.4)[:, None, None]
    water = edge_field > rng.uniform(-0.3, 0.6, m).astype(np.float32)[:, None, None]
    water_nrcs = wind_nrcs(rng.uniform(4, 10, m))[:, None, None]
    out: F32 = np.where(has_edge & water, water_nrcs, ice).astype(np.float32)
    return out


def _icebergs(rng: np.random.Generator, m: int, size: int) -> F32:
    """Icebergs: 1-4 small very bright targets (50-250 m); additive, relative to the sea."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((m, size, size), dtype=np.float32)
    count = rng.integers(1, 5, m)
    for j in range(4):
        on = (count > j).astype(np.float32)[:, None, None]
        cy, cx = (rng.uniform(0.1, 0.9, (2, m)) * size).astype(np.float32)
        rad = rng.uniform(0.6, 2.5, m).astype(np.float32)[:, None, None]
        gain = 10 ** (rng.uniform(10, 18, m) / 10).astype(np.float32)[:, None, None]
        r2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        out += on * gain * np.exp(-r2 / rad**2)
    return out


def _front_line(rng: np.random.Generator, m: int, size: int, meander: float) -> F32:
    """Signed distance (px) to a straight or meandering line across the imagette."""
    angle = rng.uniform(0, np.pi, m).astype(np.float32)
    centre = np.zeros((m, 2), dtype=np.float32)
    centre[:, 1] = rng.uniform(-0.25, 0.25, m) * size
    u, v = rotated_coords(size, angle, centre)
    path = np.zeros_like(u)
    for _ in range(2):
        wavelength = rng.uniform(0.5, 2.0, m).astype(np.float32)[:, None, None] * size
        amp = meander * wavelength * rng.uniform(0.02, 0.1, m).astype(np.float32)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None, None]
        path += amp * np.sin(np.float32(2 * np.pi) * u / wavelength + phase)
    out: F32 = (v - path).astype(np.float32)
    return out


def _sigmoid(x: F32) -> F32:
    out: F32 = (0.5 * (1 + np.tanh(0.5 * x))).astype(np.float32)
    return out


def _chunk(rng: np.random.Generator, labels: I64, size: int) -> WaveModeSet:
    """Imagettes for one batch of class labels."""
    b = len(labels)
    u01 = rng.random((4, b)).astype(np.float32)
    wind = _WIND[labels, 0] + u01[0] * (_WIND[labels, 1] - _WIND[labels, 0])
    hs_target = _HS[labels, 0] + u01[1] * (_HS[labels, 1] - _HS[labels, 0])
    mod = _MOD[labels, 0] + u01[2] * (_MOD[labels, 1] - _MOD[labels, 0])
    wind_dir = rng.uniform(0, 2 * np.pi, b).astype(np.float32)
    # swell: resolved wavelengths (>= 3 px) with a narrow spread
    lam = rng.uniform(max(180.0, 3.2 * WV_PIXEL_M), 420.0, b).astype(np.float32)
    direction = rng.uniform(-180, 180, b).astype(np.float32)
    spread = rng.uniform(10, 40, b).astype(np.float32)
    unit = directional_spectrum(size, lam, direction, alpha=1.0, spread=spread)
    hs_unit = significant_wave_height(unit)
    alpha = (hs_target / hs_unit) ** 2  # energy level giving the wanted Hs
    spectrum = unit * alpha[:, None, None]
    hs = significant_wave_height(spectrum)
    _, slope = sea_surface(rng, spectrum)
    swell = np.clip(1 + mod[:, None, None] * slope, 0.1, None)

    wind_map = np.broadcast_to(wind[:, None, None], (b, size, size)).copy()
    log_mod = 0.06 * filter_noise(rng, (b, size, size), power_law_transfer(size, size, 3.0))
    factor = np.ones((b, size, size), dtype=np.float32)
    extra = np.zeros((b, size, size), dtype=np.float32)
    nrcs_override: dict[int, F32] = {}

    for cls in range(len(WV_CLASS_NAMES)):
        sel = np.flatnonzero(labels == cls)
        m = len(sel)
        if m == 0:
            continue
        if cls == WS:
            log_mod[sel] += _streaks(rng, m, size, wind_dir[sel])
        elif cls == MCC:
            log_mod[sel] += _cells(rng, m, size)
        elif cls == RC:
            log_mod[sel] += _rain(rng, m, size)
        elif cls == BS:
            factor[sel] *= _slicks(rng, m, size)
        elif cls == SI:
            nrcs_override[cls] = _sea_ice(rng, m, size)
        elif cls == IB:
            extra[sel] += _icebergs(rng, m, size)
        elif cls == LWA:
            field = filter_noise(rng, (m, size, size), power_law_transfer(size, size, 4.0))
            cover = rng.uniform(0.5, 1.0, m)
            ordered = np.sort(field.reshape(m, -1), axis=1)
            thr = ordered[np.arange(m), (cover * (ordered.shape[1] - 1)).astype(np.int64)]
            low = rng.uniform(0.5, 2.5, m).astype(np.float32)[:, None, None]
            inside = _sigmoid((thr[:, None, None] - field) / np.float32(0.08))
            wind_map[sel] = low + (wind_map[sel] - low) * (1 - inside)
        elif cls == AF:
            dist = _front_line(rng, m, size, meander=0.4)
            width = rng.uniform(0.5, 3.0, m).astype(np.float32)[:, None, None]
            ratio = rng.uniform(1.6, 2.8, m).astype(np.float32)[:, None, None]
            side = _sigmoid(dist / width)
            wind_map[sel] = wind_map[sel] * (1 + (ratio - 1) * side)
        elif cls == OF:
            dist = _front_line(rng, m, size, meander=1.5)
            step_db = rng.uniform(0.6, 1.8, m).astype(np.float32)[:, None, None]
            line_db = rng.choice(np.array([-4.0, 3.0], dtype=np.float32), m)[:, None, None]
            width = rng.uniform(0.8, 2.0, m).astype(np.float32)[:, None, None]
            db = step_db * _sigmoid(dist / 1.5) + line_db * np.exp(-((dist / width) ** 2))
            log_mod[sel] += db * np.float32(np.log(10) / 10)

    nrcs = wind_nrcs(wind_map) * np.exp(log_mod) * factor * swell
    nrcs += extra * wind_nrcs(wind)[:, None, None]
    for cls, ice in nrcs_override.items():
        nrcs[labels == cls] = ice
    nrcs += np.float32(WV_NESZ)
    nrcs *= gamma_speckle(rng, nrcs.shape, WV_LOOKS)
    return WaveModeSet(
        images=nrcs[:, None].astype(np.float32),
        labels=labels.astype(np.int64),
        class_names=WV_CLASS_NAMES,
        hs=hs,
        wind_speed=wind_map.mean(axis=(1, 2)).astype(np.float32),
        swell_direction=direction,
        peak_wavelength=lam,
    )


def iter_wavemode(
    n: int,
    size: int = 128,
    *,
    seed: int = 0,
    heavy_tail: float | None = None,
    dominant_class: str | int = "pure_ocean_waves",
) -> list[tuple[int, int, int, I64]]:
    """Batches ``(chunk_index, start, stop, labels)``; build each with :func:`wavemode_chunk`."""
    check_args(n, size, seed, heavy_tail)
    dominant = resolve_class(dominant_class, WV_CLASS_NAMES)
    labels = assign_classes(seed, _TAG_WAVEMODE, n, len(WV_CLASS_NAMES), heavy_tail, dominant)
    return [(i, s, e, labels[s:e]) for i, s, e in chunks(n, _CHUNK)]


def wavemode_chunk(seed: int, index: int, labels: I64, size: int) -> WaveModeSet:
    """The imagettes of batch ``index`` (deterministic for ``seed``)."""
    return _chunk(rng_for(seed, _TAG_WAVEMODE, index), labels, size)


def generate_wavemode(
    n: int,
    size: int = 128,
    *,
    seed: int = 0,
    heavy_tail: float | None = None,
    dominant_class: str | int = "pure_ocean_waves",
    progress: bool = False,
) -> WaveModeSet:
    """Generate ``n`` Wave-Mode-like imagettes (``size`` x ``size``, 50 m pixels).

    Classes are balanced by default; with ``heavy_tail=h`` a share ``h`` of the imagettes
    shows ``dominant_class``. Deterministic for a given ``seed``.
    """
    batches = iter_wavemode(
        n, size, seed=seed, heavy_tail=heavy_tail, dominant_class=dominant_class
    )
    parts: list[WaveModeSet] = []
    with progress_bar(n, progress, "wave-mode imagettes") as bar:
        for index, _, _, labels in batches:
            parts.append(wavemode_chunk(seed, index, labels, size))
            bar.update(len(labels))
    return concat_wavemode(parts)


def concat_wavemode(parts: list[WaveModeSet]) -> WaveModeSet:
    """Join batches into one set."""

    def cat(name: str) -> F32:
        out: F32 = np.concatenate([getattr(p, name) for p in parts])
        return out

    return WaveModeSet(
        images=cat("images"),
        labels=np.concatenate([p.labels for p in parts]),
        class_names=parts[0].class_names,
        hs=cat("hs"),
        wind_speed=cat("wind_speed"),
        swell_direction=cat("swell_direction"),
        peak_wavelength=cat("peak_wavelength"),
    )
