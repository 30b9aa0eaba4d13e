"""Batched augmentation operations on ``(B, C, H, W)`` tensors, on any device.

Every random choice is drawn per image from an explicit :class:`torch.Generator` (on the
tensors' device), so that a seed reproduces a batch of views exactly. Photometric operations
work on normalised (z-scored) values unless said otherwise; SAR operations take the dataset's
mean and standard deviation to go back to physical units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from eofm.data.sensors import Sensor, find_sensor, get_sensor, list_sensors, normalise_band_name
from eofm.errors import ConfigError, UnknownNameError

__all__ = [
    "band_dropout",
    "band_jitter",
    "crop_resize",
    "gaussian_blur",
    "hflip",
    "random_resized_crop_boxes",
    "rgb_color_jitter",
    "rgb_grayscale",
    "rgb_indices",
    "rot90",
    "sar_gain",
    "sar_speckle",
]

SarScale = Literal["linear", "db"]


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(
    shape: Sequence[int], p: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    if p <= 0:
        return torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    if p >= 1:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    return torch.rand(tuple(shape), generator=generator, device=device) < p


# --------------------------------------------------------------------------------------------
# geometry


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> Tensor:
    """``(n, 4)`` integer-valued float boxes ``(x0, y0, x1, y1)`` as torchvision's
    ``RandomResizedCrop`` draws them (area fraction in ``scale``, log-uniform aspect ``ratio``,
    ``attempts`` tries, then a centre crop of the clamped ratio), vectorised over the batch."""
    dev = torch.device(device)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    area = float(height * width)
    shape = (n, attempts)
    target = area * (
        torch.rand(shape, generator=generator, device=dev) * (scale[1] - scale[0]) + scale[0]
    )
    log_r = torch.rand(shape, generator=generator, device=dev) * (
        math.log(ratio[1]) - math.log(ratio[0])
    ) + math.log(ratio[0])
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)  # first valid attempt (0 if none)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    # Fallback: the whole image at the ratio clamped into range (torchvision's rule).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    ux = torch.rand(n, generator=generator, device=dev)
    uy = torch.rand(n, generator=generator, device=dev)
    x0 = torch.floor(ux * (width - w + 1)).clamp(max=width - w)
    y0 = torch.floor(uy * (height - h + 1)).clamp(max=height - h)
    # fallback crops are centred
    x0 = torch.where(any_ok, x0, torch.floor((width - w) / 2))
    y0 = torch.where(any_ok, y0, torch.floor((height - h) / 2))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop each image to its box ``(x0, y0, x1, y1)`` (pixels) and resize it to ``size``.

    Bilinear; identical to ``F.interpolate(image[..., y0:y1, x0:x1], size, mode="bilinear",
    align_corners=False)`` for integer boxes (samples never reach outside the box), but one
    batched :func:`~torch.nn.functional.grid_sample` call for boxes of different sizes.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    b, _, height, width = images.shape
    dev = images.device
    boxes = boxes.to(device=dev, dtype=torch.float32)
    full = torch.tensor([0.0, 0.0, float(width), float(height)], device=dev)
    if (out_h, out_w) == (height, width) and bool((boxes == full).all()):
        return images.clone()  # identity: no resampling error
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    u = torch.arange(out_w, device=dev, dtype=torch.float32)[None] + 0.5
    v = torch.arange(out_h, device=dev, dtype=torch.float32)[None] + 0.5
    # pixel-index coordinates inside the box, clamped to its first/last pixel centre
    xs = (u * (x1 - x0) / out_w - 0.5).clamp(min=0) + x0
    xs = torch.minimum(xs, x1 - 1)
    ys = (v * (y1 - y0) / out_h - 0.5).clamp(min=0) + y0
    ys = torch.minimum(ys, y1 - 1)
    gx = xs * 2 / max(width - 1, 1) - 1  # align_corners=True normalisation
    gy = ys * 2 / max(height - 1, 1) - 1
    grid = torch.stack(
        [gx[:, None, :].expand(b, out_h, out_w), gy[:, :, None].expand(b, out_h, out_w)], dim=-1
    )
    if images.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        images = images.float()
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Flip the images where ``flip`` ``(B,)`` is True (left-right)."""
    if not bool(flip.any()):
        return images
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def rot90(images: Tensor, k: Tensor) -> Tensor:
    """Rotate each square image by ``k[i]`` counter-clockwise quarter turns."""
    k = k.long() % 4
    if not bool(k.any()):
        return images
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"90-degree rotations need square images, got {tuple(images.shape)}")
    out = images.clone()
    for turns in (1, 2, 3):
        sel = k == turns
        if bool(sel.any()):
            out[sel] = torch.rot90(images[sel], turns, dims=(-2, -1))
    return out


# --------------------------------------------------------------------------------------------
# band identification


def rgb_indices(
    bands: Sequence[str], sensor: str | Sensor | None = None
) -> tuple[int, int, int] | None:
    """Channel indices of the red, green and blue bands in ``bands``, matched by name.

    A band counts as red/green/blue when it is called so (``red``, ``R``...) or when the sensor
    (given, or else the first registered optical sensor that knows every band name) gives it
    that common name (Sentinel-2 ``B04``/``B03``/``B02``). None when any of the three is missing.
    """
    plain = {"RED": "red", "R": "red", "GREEN": "green", "G": "green", "BLUE": "blue", "B": "blue"}
    candidates: list[Sensor] = []
    given = find_sensor(sensor)
    if given is not None:
        candidates.append(given)
    else:
        for name in list_sensors():
            s = get_sensor(name)
            if s.kind != "optical":
                continue
            try:
                s.canonical(bands)
            except UnknownNameError:
                continue
            candidates.append(s)
            break

    def colour(band: str) -> str | None:
        key = normalise_band_name(band)
        if key in plain:
            return plain[key]
        for s in candidates:
            try:
                common = s.band(band).common_name
            except UnknownNameError:
                continue
            if common in ("red", "green", "blue"):
                return common
        return None

    found: dict[str, int] = {}
    for i, band in enumerate(bands):
        c = colour(band)
        if c is not None and c not in found:
            found[c] = i
    if len(found) != 3:
        return None
    return found["red"], found["green"], found["blue"]


# --------------------------------------------------------------------------------------------
# photometric, multispectral


def band_jitter(
    images: Tensor,
    brightness: float,
    contrast: float,
    p: float = 1.0,
    *,
    bands: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Independent brightness and contrast jitter per band, for normalised multispectral data.

    With probability ``p`` per image, each band ``b`` becomes
    ``(x_b - m_b) * c_b + m_b + d_b`` with ``m_b`` the image's band mean, ``c_b`` uniform in
    ``1 +- contrast`` and ``d_b`` uniform in ``+-brightness`` (units of the band's std).
    ``bands`` restricts the change to those channels.
    """
    b, c = images.shape[:2]
    dev = images.device
    idx = list(range(c)) if bands is None else list(bands)
    if not idx or (brightness <= 0 and contrast <= 0):
        return images
    n = len(idx)
    gain = _uniform(b * n, 1 - contrast, 1 + contrast, generator, dev).view(b, n, 1, 1)
    shift = _uniform(b * n, -brightness, brightness, generator, dev).view(b, n, 1, 1)
    apply = _bernoulli((b,), p, generator, dev).view(b, 1, 1, 1)
    if p <= 0:  # after the draws, so the random stream is the same whatever p is
        return images
    x = images[:, idx]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    jittered = (x - mean) * gain.to(x.dtype) + mean + shift.to(x.dtype)
    out = images.clone()
    out[:, idx] = torch.where(apply, jittered, x)
    return out


def band_dropout(
    images: Tensor,
    p: float,
    *,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Set whole bands to ``fill`` (0 = the dataset mean after z-scoring), each band of each
    image with probability ``p``; at least one band of every image is kept.

    Returns the images and the ``(B, C)`` bool mask of dropped bands.
    """
    b, c = images.shape[:2]
    dev = images.device
    if p <= 0 or c < 2:
        return images, torch.zeros(b, c, dtype=torch.bool, device=dev)
    drop = _bernoulli((b, c), p, generator, dev)
    keep_one = torch.randint(0, c, (b,), generator=generator, device=dev)
    all_dropped = drop.all(dim=1)
    drop[all_dropped, keep_one[all_dropped]] = False
    out = torch.where(drop[:, :, None, None], torch.full_like(images, fill), images)
    return out, drop


def gaussian_blur(
    images: Tensor,
    sigma: tuple[float, float],
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian blur (kornia) with sigma uniform in ``sigma`` pixels, per image with prob ``p``."""
    from kornia.filters import gaussian_blur2d

    b = images.shape[0]
    dev = images.device
    apply = _bernoulli((b,), p, generator, dev)
    s = _uniform(b, sigma[0], sigma[1], generator, dev)
    if not bool(apply.any()) or sigma[1] <= 0:
        return images
    size = min(images.shape[-2:])
    k = 2 * math.ceil(3 * sigma[1]) + 1
    k = max(3, min(k, size - 1 if size % 2 == 0 else size))
    sel = apply.nonzero()[:, 0]
    sig = s[sel].to(images.dtype)[:, None].expand(-1, 2).contiguous()
    out = images.clone()
    out[sel] = gaussian_blur2d(images[sel], (k, k), sig, border_type="reflect").to(out.dtype)
    return out


# --------------------------------------------------------------------------------------------
# photometric, RGB only

#: RGB -> YIQ (NTSC) and back; hue rotations turn the I/Q chroma plane.
_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_color_jitter(
    images: Tensor,
    rgb: tuple[int, int, int],
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SimCLR-style colour jitter on the red, green and blue channels ``rgb`` only.

    Works on normalised values with linear operations shared by the three channels:
    brightness adds ``U(+-brightness)`` (std units), contrast scales around the image's mean
    grey by ``U(1 +- contrast)``, saturation blends with the pixel's grey by
    ``U(1 +- saturation)``, hue turns the YIQ chroma plane by ``U(+-hue)`` turns. Every other
    channel is returned untouched (bit for bit).
    """
    b = images.shape[0]
    dev = images.device
    apply = _bernoulli((b,), p, generator, dev).view(b, 1, 1, 1)
    bri = _uniform(b, -brightness, brightness, generator, dev).view(b, 1, 1, 1)
    con = _uniform(b, 1 - contrast, 1 + contrast, generator, dev).view(b, 1, 1, 1)
    sat = _uniform(b, 1 - saturation, 1 + saturation, generator, dev).view(b, 1, 1, 1)
    ang = _uniform(b, -hue, hue, generator, dev) * 2 * math.pi
    if p <= 0:  # after the draws, so the random stream is the same whatever p is
        return images
    idx = list(rgb)
    x = images[:, idx].float()
    x = x + bri
    grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(
        1, keepdim=True
    )
    x = (x - grey.mean(dim=(-2, -1), keepdim=True)) * con + grey.mean(dim=(-2, -1), keepdim=True)
    grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(
        1, keepdim=True
    )
    x = (x - grey) * sat + grey
    if hue > 0:
        yiq = _YIQ.to(dev)
        cos, sin = torch.cos(ang), torch.sin(ang)
        rot = torch.zeros(b, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
        rot[:, 2, 1], rot[:, 2, 2] = sin, cos
        m = torch.linalg.inv(yiq) @ rot @ yiq  # (B, 3, 3)
        x = torch.einsum("bij,bjhw->bihw", m, x)
    out = images.clone()
    out[:, idx] = torch.where(apply, x.to(images.dtype), images[:, idx])
    return out


def rgb_grayscale(
    images: Tensor,
    rgb: tuple[int, int, int],
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace the red, green and blue channels by their luma with probability ``p``."""
    b = images.shape[0]
    apply = _bernoulli((b,), p, generator, images.device).view(b, 1, 1, 1)
    if p <= 0:
        return images
    idx = list(rgb)
    x = images[:, idx]
    w = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=x.dtype)
    grey = (x * w.view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    out = images.clone()
    out[:, idx] = torch.where(apply, grey, x)
    return out


# --------------------------------------------------------------------------------------------
# SAR


def _denorm(images: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    if mean is None or std is None:
        return images
    return images * std.view(1, -1, 1, 1).to(images) + mean.view(1, -1, 1, 1).to(images)


def _renorm(images: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    if mean is None or std is None:
        return images
    return (images - mean.view(1, -1, 1, 1).to(images)) / std.view(1, -1, 1, 1).to(images)


def sar_speckle(
    images: Tensor,
    looks: tuple[float, float],
    p: float,
    *,
    scale: SarScale = "linear",
    mean: Tensor | None = None,
    std: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiplicative speckle: intensity times Gamma(L, 1/L) noise (mean 1, variance 1/L).

    ``L`` (equivalent number of looks) is drawn log-uniformly in ``looks`` per image; each
    pixel and polarisation gets its own noise, so the expected intensity in the linear domain
    is unchanged. ``scale="db"``: the data are decibels and ``10 log10(gamma)`` is added
    instead. ``mean``/``std`` (per band): the images are normalised with them; they are
    undone before and redone after.
    """
    b = images.shape[0]
    dev = images.device
    apply = _bernoulli((b,), p, generator, dev)
    lo, hi = math.log(looks[0]), math.log(looks[1])
    enl = torch.exp(_uniform(b, lo, hi, generator, dev))
    if not bool(apply.any()):
        return images
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())
    raw = _denorm(images.float(), mean, std)
    conc = enl.view(b, 1, 1, 1).expand_as(raw).contiguous()
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        gamma = torch.distributions.Gamma(conc, conc).sample()  # shape L, rate L: mean 1
    db = scale == "db"
    noisy = raw + 10 * torch.log10(gamma.clamp_min(1e-12)) if db else raw * gamma
    out = _renorm(noisy, mean, std).to(images.dtype)
    return torch.where(apply.view(b, 1, 1, 1), out, images)


def sar_gain(
    images: Tensor,
    max_db: float,
    p: float,
    *,
    scale: SarScale = "linear",
    mean: Tensor | None = None,
    std: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Calibration-like intensity change: a gain of ``U(+-max_db)`` dB per image, the same for
    every polarisation (multiplicative in linear power, additive in dB)."""
    b = images.shape[0]
    dev = images.device
    apply = _bernoulli((b,), p, generator, dev).view(b, 1, 1, 1)
    g_db = _uniform(b, -max_db, max_db, generator, dev).view(b, 1, 1, 1)
    if max_db <= 0:
        return images
    raw = _denorm(images.float(), mean, std)
    changed = raw + g_db if scale == "db" else raw * torch.pow(10.0, g_db / 10)
    out = _renorm(changed, mean, std).to(images.dtype)
    return torch.where(apply, out, images)
