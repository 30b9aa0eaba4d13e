"""Multi-view augmentation for self-supervised pretraining, batched on the device.

:class:`MultiViewAugment` turns a normalised batch ``(B, C, H, W)`` into the
:class:`~eofm.methods.base.Views` a method's :class:`~eofm.methods.base.ViewSpec` asks for:

1. geometry (unless ``geometric=False``): random resized crop (boxes in source pixels),
   horizontal flip, 90-degree rotations;
2. photometry by sensor kind:

   - optical: band-wise brightness/contrast jitter; RGB colour jitter and grayscale on the
     red/green/blue bands only, found by name (never on other bands);
   - SAR: a calibration-like gain and multiplicative gamma speckle, both in the linear domain
     (or their dB equivalents for dB data), undoing and redoing the normalisation;

3. Gaussian blur (kornia), then band dropout (whole bands set to the dataset mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from eofm.augment import ops
from eofm.augment.views import Views, ViewSpec
from eofm.data.sensors import Sensor, find_sensor
from eofm.errors import ConfigError

__all__ = ["AugmentConfig", "MultiViewAugment", "sar_scale_of", "sensor_kind_of"]

SensorKind = Literal["auto", "optical", "sar"]


@dataclass
class AugmentConfig:
    """Augmentation settings (the ``augment:`` section of a pretraining recipe).

    Probabilities are per image and view. Brightness/contrast are in units of a band's
    standard deviation (the data are z-scored). Blur sigmas are in pixels of the view.
    """

    #: ``auto``: from the dataset's sensor (SAR sensors -> ``sar``, else ``optical``).
    sensor_kind: SensorKind = "auto"
    #: ``auto``: dB when the sensor's units are dB, else linear.
    sar_scale: Literal["auto", "linear", "db"] = "auto"
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rot90: bool = True
    # multispectral, band-wise
    band_jitter_p: float = 0.8
    band_brightness: float = 0.2
    band_contrast: float = 0.2
    band_dropout_p: float = 0.0
    # RGB bands only
    rgb_jitter_p: float = 0.8
    rgb_brightness: float = 0.4
    rgb_contrast: float = 0.4
    rgb_saturation: float = 0.2
    rgb_hue: float = 0.1
    rgb_grayscale_p: float = 0.2
    # SAR
    speckle_p: float = 0.5
    speckle_looks: tuple[float, float] = (4.0, 50.0)
    sar_gain_p: float = 0.8
    sar_gain_db: float = 1.5
    # blur: probability for global view 1, 2, ... (the last repeats) and for local views
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])
    local_blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def sensor_kind_of(sensor: str | Sensor | None, bands: Sequence[str]) -> Literal["optical", "sar"]:
    """``sar`` for SAR sensors or polarisation band names (VV, VH, HH, HV), else ``optical``."""
    s = find_sensor(sensor)
    if s is not None:
        return "sar" if s.kind == "sar" else "optical"
    pols = {"VV", "VH", "HH", "HV"}
    if bands and all(b.upper() in pols for b in bands):
        return "sar"
    return "optical"


def sar_scale_of(
    sensor: str | Sensor | None, mean: Sequence[float] | Tensor | None = None
) -> Literal["linear", "db"]:
    """``db`` when the sensor's units are decibels, else ``linear``; without a known sensor,
    ``db`` when a band's mean is negative (backscatter in linear power never is)."""
    s = find_sensor(sensor)
    if s is not None:
        return "db" if s.units.lower().startswith("db") else "linear"
    if mean is not None and bool((torch.as_tensor(mean, dtype=torch.float32) < 0).any()):
        return "db"
    return "linear"


class MultiViewAugment:
    """Callable making :class:`Views` from a normalised ``(B, C, H, W)`` batch.

    ``bands`` names the channels (to find red/green/blue and to decide the sensor kind);
    ``mean``/``std`` are the per-band statistics the batch was z-scored with (needed for SAR
    speckle and gain in physical units; without them the batch is taken as physical values).
    """

    def __init__(
        self,
        bands: Sequence[str],
        config: AugmentConfig | None = None,
        *,
        sensor: str | Sensor | None = None,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
    ) -> None:
        self.bands = tuple(bands)
        self.config = config or AugmentConfig()
        cfg = self.config
        self.kind: Literal["optical", "sar"] = (
            sensor_kind_of(sensor, self.bands) if cfg.sensor_kind == "auto" else cfg.sensor_kind
        )
        if cfg.sensor_kind not in ("auto", "optical", "sar"):
            raise ConfigError(
                f"augment.sensor_kind must be auto, optical or sar: {cfg.sensor_kind}"
            )
        self.sar_scale: Literal["linear", "db"] = (
            sar_scale_of(sensor, mean) if cfg.sar_scale == "auto" else cfg.sar_scale
        )
        self.rgb = ops.rgb_indices(self.bands, sensor) if self.kind == "optical" else None
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        for name, t in (("mean", self.mean), ("std", self.std)):
            if t is not None and t.numel() != len(self.bands):
                raise ConfigError(f"{len(self.bands)} bands but {t.numel()} {name} values")

    def __repr__(self) -> str:
        return (
            f"MultiViewAugment(kind={self.kind}, bands={list(self.bands)}, rgb={self.rgb}, "
            f"sar_scale={self.sar_scale})"
        )

    def __call__(
        self,
        images: Tensor,
        spec: ViewSpec,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Views:
        """Views of ``images`` for ``spec``; ``seed`` (or a ``generator`` on the images'
        device) makes them reproducible."""
        if images.ndim != 4 or images.shape[1] != len(self.bands):
            raise ConfigError(
                f"augmentation expects (B, {len(self.bands)}, H, W) for bands "
                f"{list(self.bands)}; got {tuple(images.shape)}"
            )
        if generator is None and seed is not None:
            generator = torch.Generator(device=images.device)
            generator.manual_seed(int(seed))
        _, _, h, w = images.shape
        out = Views(images=[], num_global=spec.global_views)
        g_size = spec.global_size if spec.global_size is not None else None
        for i in range(spec.global_views + spec.local_views):
            local = i >= spec.global_views
            if local:
                size: tuple[int, int] = (spec.local_size, spec.local_size)
                scale = spec.local_crop_scale
                blur_p = self.config.local_blur_p
            else:
                size = (g_size, g_size) if g_size is not None else (h, w)
                scale = spec.crop_scale
                ps = self.config.blur_p or [0.0]
                blur_p = ps[min(i, len(ps) - 1)]
            view, box, flip, rot = self._geometry(images, size, scale, spec.geometric, generator)
            view = self._photometric(view, blur_p, generator)
            out.images.append(view)
            out.boxes.append(box)
            out.flips.append(flip)
            out.rot90.append(rot)
        return out

    # -- pieces ---------------------------------------------------------------------------
    def _geometry(
        self,
        images: Tensor,
        size: tuple[int, int],
        scale: tuple[float, float],
        geometric: bool,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, _, h, w = images.shape
        dev = images.device
        cfg = self.config
        if geometric:
            boxes = ops.random_resized_crop_boxes(
                b,
                h,
                w,
                (scale[0], scale[1]),
                (cfg.crop_ratio[0], cfg.crop_ratio[1]),
                generator=generator,
                device=dev,
            )
            flip = torch.rand(b, generator=generator, device=dev) < cfg.flip_p
            square = size[0] == size[1]
            if cfg.rot90 and square:
                rot = torch.randint(0, 4, (b,), generator=generator, device=dev)
            else:
                rot = torch.zeros(b, dtype=torch.long, device=dev)
        else:
            boxes = torch.tensor([0.0, 0.0, float(w), float(h)], device=dev).expand(b, 4).clone()
            flip = torch.zeros(b, dtype=torch.bool, device=dev)
            rot = torch.zeros(b, dtype=torch.long, device=dev)
        identity = not geometric and size == (h, w)
        view = images if identity else ops.crop_resize(images, boxes, size)
        view = ops.hflip(view, flip)
        view = ops.rot90(view, rot)
        return view, boxes, flip, rot

    def _photometric(
        self, view: Tensor, blur_p: float, generator: torch.Generator | None
    ) -> Tensor:
        cfg = self.config
        if self.kind == "sar":
            mean = None if self.mean is None else self.mean.to(view.device)
            std = None if self.std is None else self.std.to(view.device)
            view = ops.sar_gain(
                view,
                cfg.sar_gain_db,
                cfg.sar_gain_p,
                scale=self.sar_scale,
                mean=mean,
                std=std,
                generator=generator,
            )
            view = ops.sar_speckle(
                view,
                (cfg.speckle_looks[0], cfg.speckle_looks[1]),
                cfg.speckle_p,
                scale=self.sar_scale,
                mean=mean,
                std=std,
                generator=generator,
            )
        else:
            others = [i for i in range(view.shape[1]) if self.rgb is None or i not in self.rgb]
            if self.rgb is not None:
                view = ops.rgb_color_jitter(
                    view,
                    self.rgb,
                    brightness=cfg.rgb_brightness,
                    contrast=cfg.rgb_contrast,
                    saturation=cfg.rgb_saturation,
                    hue=cfg.rgb_hue,
                    p=cfg.rgb_jitter_p,
                    generator=generator,
                )
                view = ops.rgb_grayscale(view, self.rgb, cfg.rgb_grayscale_p, generator=generator)
            view = ops.band_jitter(
                view,
                cfg.band_brightness,
                cfg.band_contrast,
                cfg.band_jitter_p,
                bands=others,
                generator=generator,
            )
        view = ops.gaussian_blur(
            view, (cfg.blur_sigma[0], cfg.blur_sigma[1]), blur_p, generator=generator
        )
        view, _ = ops.band_dropout(view, cfg.band_dropout_p, generator=generator)
        return view
