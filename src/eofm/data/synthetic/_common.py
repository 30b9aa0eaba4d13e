"""Shared helpers: argument checks, seeding, class assignment and FFT-filtered noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from eofm.errors import ConfigError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

#: Scenes generated per batch; also the unit of seeding, so results do not depend on progress.
CHUNK = 256
#: Smallest image side accepted.
MIN_SIZE = 16


def check_args(n: int, size: int, seed: int, heavy_tail: float | None) -> None:
    """Raise :class:`ConfigError` for arguments no generator accepts."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if heavy_tail is not None:
        try:
            h = float(heavy_tail)
        except (TypeError, ValueError):
            raise ConfigError(
                f"heavy_tail must be a number in [0, 1], got {heavy_tail!r}"
            ) from None
        if not 0.0 <= h <= 1.0:
            raise ConfigError(f"heavy_tail must lie in [0, 1], got {heavy_tail!r}")


def resolve_class(value: str | int, names: Sequence[str], what: str = "dominant_class") -> int:
    """Index of a class given by name or index."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(names):
            return int(value)
        raise ConfigError(f"{what} index {value} is out of range 0..{len(names) - 1}")
    if isinstance(value, str) and value in names:
        return list(names).index(value)
    raise ConfigError(f"unknown {what} {value!r}; known: {', '.join(names)}")


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for ``seed`` and a tuple of integer keys."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


def assign_classes(
    seed: int, tag: int, n: int, k: int, heavy_tail: float | None, dominant: int
) -> I64:
    """One class per scene: balanced, or ``heavy_tail`` of them ``dominant``.

    Without ``heavy_tail`` every class gets ``n // k`` or ``n // k + 1`` scenes. With it,
    ``round(heavy_tail * n)`` scenes get ``dominant`` and the rest are spread evenly over the
    other classes. The order is shuffled.
    """
    rng = rng_for(seed, tag, 999_983)
    if heavy_tail is None:
        out = np.arange(n, dtype=np.int64) % k
    else:
        n_dom = round(float(heavy_tail) * n)
        others = np.array([c for c in range(k) if c != dominant], dtype=np.int64)
        rest = others[np.arange(n - n_dom) % len(others)] if len(others) else others[:0]
        out = np.concatenate([np.full(n_dom, dominant, dtype=np.int64), rest])
    rng.shuffle(out)
    return out


def chunks(n: int, chunk: int = CHUNK) -> list[tuple[int, int, int]]:
    """``(chunk_index, start, stop)`` for each batch of ``n`` items."""
    return [(i, s, min(s + chunk, n)) for i, s in enumerate(range(0, n, chunk))]


def freq_grid(h: int, w: int, *, full: bool = False) -> tuple[F32, F32]:
    """Spatial frequencies (cycles per pixel) ``fy, fx`` of an (r)fft2 of an ``(h, w)`` image."""
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = (np.fft.fftfreq(w) if full else np.fft.rfftfreq(w)).astype(np.float32)[None, :]
    shape = (h, fx.shape[1])
    return np.broadcast_to(fy, shape).copy(), np.broadcast_to(fx, shape).copy()


def filter_noise(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    transfer: npt.ArrayLike,
    *,
    standardise: bool = True,
) -> F32:
    """Gaussian noise of ``shape`` (..., H, W) with amplitude spectrum ``transfer``.

    White complex coefficients are drawn directly in the rfft2 domain, multiplied by
    ``transfer`` (broadcasting against ``(..., H, W // 2 + 1)``) and inverse-transformed. The
    coefficients are uniform (cheap); each output pixel sums many of them, so it is Gaussian.
    With ``standardise`` each image is rescaled to zero mean and unit variance.
    """
    h, w = shape[-2:]
    fshape = (*shape[:-2], h, w // 2 + 1)
    raw = uniform_noise(rng, (*fshape, 2)).astype(np.float32)
    coeffs = raw.view(np.complex64)[..., 0]
    coeffs *= np.asarray(transfer, dtype=np.float32)
    out: F32 = scipy.fft.irfft2(coeffs, s=(h, w), workers=-1).astype(np.float32, copy=False)
    if standardise:
        out -= out.mean(axis=(-2, -1), keepdims=True)
        out /= out.std(axis=(-2, -1), keepdims=True) + np.float32(1e-12)
    return out


def power_law_transfer(
    h: int, w: int, beta: float, *, low_cut: float = 1 / 128, smooth_px: float = 0.0
) -> F32:
    """Amplitude transfer giving a power spectrum ~ f**-beta (a fractal, blob-like field).

    ``low_cut`` (cycles/pixel) flattens the spectrum below it; ``smooth_px`` adds a Gaussian
    low-pass of that standard deviation in pixels.
    """
    fy, fx = freq_grid(h, w)
    f2 = fy**2 + fx**2 + np.float32(low_cut**2)
    out = f2 ** np.float32(-beta / 4)
    if smooth_px > 0:
        out *= np.exp(np.float32(-2 * np.pi**2 * smooth_px**2) * (fy**2 + fx**2))
    out[0, 0] = 0.0
    result: F32 = out.astype(np.float32)
    return result


def gaussian_transfer(h: int, w: int, sigma_px: npt.ArrayLike) -> F32:
    """Transfer function of a Gaussian blur; ``sigma_px`` may be an array (adds leading dims)."""
    fy, fx = freq_grid(h, w)
    sig = np.asarray(sigma_px, dtype=np.float32)[..., None, None]
    out: F32 = np.exp(np.float32(-2 * np.pi**2) * sig**2 * (fy**2 + fx**2)).astype(np.float32)
    return out


def blur(images: F32, sigma_px: npt.ArrayLike) -> F32:
    """Gaussian blur of the last two axes via FFT (periodic boundary)."""
    h, w = images.shape[-2:]
    spec = scipy.fft.rfft2(images, workers=-1)
    spec *= gaussian_transfer(h, w, sigma_px)
    out: F32 = scipy.fft.irfft2(spec, s=(h, w), workers=-1).astype(np.float32, copy=False)
    return out


def uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.int8]:
    """Uniform integer noise in [-128, 127] (standard deviation about 73.9), very cheap."""
    count = int(np.prod(shape))
    return np.frombuffer(rng.bytes(count), dtype=np.int8).reshape(shape)


def gamma_speckle(rng: np.random.Generator, shape: tuple[int, ...], looks: float) -> F32:
    """Multiplicative speckle: unit-mean gamma(looks) intensity (Wilson-Hilferty transform).

    Mean 1 and variance ``1 / looks`` to well under 1 %; ~4x faster than ``rng.gamma``.
    """
    c = np.float32(1.0 / (9.0 * looks))
    z = rng.standard_normal(shape, dtype=np.float32)
    z *= np.sqrt(c)
    z += 1 - c
    np.maximum(z, 0, out=z)
    out: F32 = z * z * z
    return out


def group_mean(values: F32, ids: npt.NDArray[np.integer[Any]], n_ids: int) -> F32:
    """Replace each value by the mean over the pixels sharing its id, per image.

    ``values`` and ``ids`` are ``(B, H, W)``; ids lie in ``[0, n_ids)``.
    """
    b = values.shape[0]
    flat = (ids.astype(np.int64) + (np.arange(b, dtype=np.int64) * n_ids)[:, None, None]).ravel()
    sums = np.bincount(flat, weights=values.ravel(), minlength=b * n_ids)
    counts = np.bincount(flat, minlength=b * n_ids)
    means = (sums / np.maximum(counts, 1)).astype(np.float32)
    out: F32 = means[flat].reshape(values.shape)
    return out


def rotated_coords(size: int, angle: F32, centre: F32 | None = None) -> tuple[F32, F32]:
    """Per-image rotated pixel coordinates ``u`` (along ``angle``) and ``v`` (across it).

    ``angle`` is ``(B,)`` radians; returns two ``(B, H, W)`` arrays centred on the image.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = np.float32((size - 1) / 2)
    xx = xx - c
    yy = yy - c
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    u = xx * cos + yy * sin
    v = -xx * sin + yy * cos
    if centre is not None:
        u = u - centre[:, 0, None, None]
        v = v - centre[:, 1, None, None]
    return u.astype(np.float32), v.astype(np.float32)


def worley(
    rng: np.random.Generator, b: int, size: int, cell_px: F32
) -> tuple[F32, F32, npt.NDArray[np.int64]]:
    """Cellular (Worley) noise on a jittered grid with per-image cell size ``cell_px`` (B,).

    Returns ``F1`` and ``F2`` (distance to the nearest and second-nearest seed point, in
    pixels) and the id of the nearest cell, each ``(B, H, W)``.
    """
    n_cells = int(np.ceil(size / float(cell_px.min()))) + 3
    jitter = rng.random((b, n_cells, n_cells, 2), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = (1.0 / cell_px).astype(np.float32)[:, None, None]
    gy = yy[None] * scale + 1.0  # +1 leaves room for the -1 neighbour
    gx = xx[None] * scale + 1.0
    iy = np.floor(gy).astype(np.int64)
    ix = np.floor(gx).astype(np.int64)
    bidx = np.arange(b)[:, None, None]
    best1 = np.full((b, size, size), np.inf, dtype=np.float32)
    best2 = np.full((b, size, size), np.inf, dtype=np.float32)
    ids = np.zeros((b, size, size), dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cy = np.clip(iy + dy, 0, n_cells - 1)
            cx = np.clip(ix + dx, 0, n_cells - 1)
            jit = jitter[bidx, cy, cx]
            d = np.hypot(cy + jit[..., 0] - gy, cx + jit[..., 1] - gx).astype(np.float32)
            closer = d < best1
            best2 = np.where(closer, best1, np.minimum(best2, d))
            ids = np.where(closer, cy * n_cells + cx, ids)
            best1 = np.where(closer, d, best1)
    cell = cell_px.astype(np.float32)[:, None, None]
    return best1 * cell, best2 * cell, ids


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A progress bar, or plain lines off a terminal (disabled unless ``enabled``)."""
    from eofm.progress import progress

    return progress(total=total, disable=not enabled, desc=desc, unit="scene")
