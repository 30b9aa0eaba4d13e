"""Shared machinery of the dense protocols (segmentation, change, pixel regression, SR).

- Decoders over :meth:`Backbone.forward_features`: ``linear`` (batch norm + 1x1 convolution
  over all levels resized to the finest), ``fcn`` (two 3x3 convolutions on the deepest map),
  ``upernet`` (UPerNet-lite: pyramid pooling on the deepest map, FPN top-down path, fusion of
  all levels). ViT maps, all at the patch stride, are first turned into a simple feature
  pyramid (ViTDet style: x4, x2, x1, x0.5).
- :class:`DenseModel`: frozen or trainable encoder + decoder, optionally Siamese (two dates
  stacked on channels; the decoder sees ``|f1 - f2|``), output at the input resolution.
- :func:`train_dense`: random crops, flips and 90 degree rotations, AdamW, cosine schedule.
- :func:`predict_sliding`: sliding-window inference with overlap for images of any size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from eofm.data.sample import IGNORE_INDEX, Sample
from eofm.errors import ConfigError
from eofm.evaluation.features import Preprocess
from eofm.models import Backbone

DecoderName = Literal["linear", "fcn", "upernet"]
DECODERS = ("linear", "fcn", "upernet")


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SimplePyramid(nn.Module):
    """Turns equal-stride maps (ViT) into strides s/4, s/2, s, 2s (ViTDet simple pyramid)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c = list(channels)
        self.ops = nn.ModuleList()
        scales = [4, 2, 1, 0.5][-len(c) :] if len(c) < 4 else [4, 2, 1, 0.5] + [1] * (len(c) - 4)
        for ch, s in zip(c, scales):
            if s == 4:
                op: nn.Module = nn.Sequential(
                    nn.ConvTranspose2d(ch, ch, 2, stride=2),
                    nn.BatchNorm2d(ch),
                    nn.GELU(),
                    nn.ConvTranspose2d(ch, ch, 2, stride=2),
                )
            elif s == 2:
                op = nn.ConvTranspose2d(ch, ch, 2, stride=2)
            elif s == 1:
                op = nn.Identity()
            else:
                op = nn.MaxPool2d(2, ceil_mode=True)
            self.ops.append(op)
        self.scales = scales

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [op(f) for op, f in zip(self.ops, feats)]


class LinearDecoder(nn.Module):
    """BN + 1x1 convolution over all levels resized to the finest one."""

    def __init__(self, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        total = sum(channels)
        self.bn = nn.BatchNorm2d(total)
        self.head = nn.Conv2d(total, out_channels, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        ups = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear")
            for f in feats
        ]
        out: Tensor = self.head(self.bn(torch.cat(ups, 1)))
        return out


class FCNDecoder(nn.Module):
    """Two 3x3 conv-BN-ReLU blocks on the deepest map, then a 1x1 classifier."""

    def __init__(self, channels: Sequence[int], out_channels: int, width: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels[-1], width), _conv_bn_relu(width, width), nn.Dropout2d(0.1)
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        out: Tensor = self.head(self.body(feats[-1]))
        return out


class UPerNetLite(nn.Module):
    """UPerNet-style decoder: PPM on the deepest level, FPN top-down, fusion of all levels."""

    def __init__(
        self,
        channels: Sequence[int],
        out_channels: int,
        width: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_bn_relu(channels[-1], width, 1))
            for s in pool_scales
        )
        self.bottleneck = _conv_bn_relu(channels[-1] + len(pool_scales) * width, width)
        self.lateral = nn.ModuleList(_conv_bn_relu(c, width, 1) for c in channels[:-1])
        self.fpn = nn.ModuleList(_conv_bn_relu(width, width) for _ in channels[:-1])
        self.fuse = _conv_bn_relu(len(channels) * width, width)
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(width, out_channels, 1))

    def features(self, feats: list[Tensor]) -> Tensor:
        """Fused ``width``-channel map at the finest level's resolution."""
        top = feats[-1]
        pooled = [
            F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False)
            for p in self.ppm
        ]
        lat = [lat(f) for lat, f in zip(self.lateral, feats[:-1])]
        lat.append(self.bottleneck(torch.cat([top, *pooled], 1)))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [fpn(x) for fpn, x in zip(self.fpn, lat[:-1])] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [
            o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear")
            for o in outs
        ]
        fused: Tensor = self.fuse(torch.cat(outs, 1))
        return fused

    def forward(self, feats: list[Tensor]) -> Tensor:
        out: Tensor = self.head(self.features(feats))
        return out


def make_decoder(name: str, channels: Sequence[int], out_channels: int) -> nn.Module:
    if name == "linear":
        return LinearDecoder(channels, out_channels)
    if name == "fcn":
        return FCNDecoder(channels, out_channels)
    if name == "upernet":
        return UPerNetLite(channels, out_channels)
    raise ConfigError(f"unknown decoder {name!r}; known: {', '.join(DECODERS)}")


class DenseModel(nn.Module):
    """Encoder (frozen or trained) + decoder; logits at the input resolution.

    ``siamese=True``: the input stacks two dates on channels (``2C``); both go through the
    same encoder and the decoder sees ``|f1 - f2|`` at every level. ``residual``: a function of
    the input added to the output (super-resolution predicts a correction of the upsampled
    image).
    """

    def __init__(
        self,
        encoder: Backbone,
        decoder: str,
        out_channels: int,
        *,
        freeze: bool = True,
        siamese: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze = freeze
        self.siamese = siamese
        channels = list(encoder.feature_channels)
        same = len(set(encoder.feature_strides)) == 1
        self.pyramid: nn.Module | None = None
        if same and decoder == "upernet":
            self.pyramid = SimplePyramid(channels)
        self.decoder = make_decoder(decoder, channels, out_channels)
        strides = list(encoder.feature_strides)
        self.multiple = int(encoder.patch_size or max(strides)) if same else int(max(strides))
        if freeze:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def encode(self, x: Tensor) -> list[Tensor]:
        if self.freeze:
            with torch.no_grad():
                feats = self.encoder.forward_features(x)
        else:
            feats = self.encoder.forward_features(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if self.siamese:
            c = x.shape[1] // 2
            f1, f2 = self.encode(x[:, :c]), self.encode(x[:, c:])
            feats = [(a - b).abs() for a, b in zip(f1, f2)]
        else:
            feats = self.encode(x)
        if self.pyramid is not None:
            feats = self.pyramid(feats)
        out: Tensor = self.decoder(feats)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :h, :w]


# --------------------------------------------------------------------------------------------
# data


@dataclass
class DenseSample:
    """A normalised image (``C`` or ``2C`` channels for pairs) and its dense target."""

    image: Tensor
    target: Tensor
    raw: Tensor | None = None


def _downscale(x: Tensor, y: Tensor, max_size: int | None) -> tuple[Tensor, Tensor]:
    h, w = x.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return x, y
    s = max_size / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    if y.is_floating_point():
        y = F.interpolate(
            y.reshape(1, -1, h, w), size=size, mode="bilinear", antialias=True, align_corners=False
        )[0].reshape(*y.shape[:-2], *size)
    else:
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, y


def load_dense(
    dataset: Dataset[Sample],
    pre: Preprocess,
    kind: str,
    *,
    max_size: int | None = None,
    keep_raw: int = 0,
    progress: bool = False,
    desc: str = "loading",
) -> list[DenseSample]:
    """Read every sample, normalise it, and pair it with its mask (or target) for ``kind``
    (``segmentation``, ``change``, ``pixel_regression``); images larger than ``max_size`` on
    their long side are downscaled (masks with nearest neighbour). ``keep_raw``: keep the
    band-selected raw image of the first N samples (for overlays)."""
    from eofm.progress import progress as tqdm

    out: list[DenseSample] = []
    n = len(dataset)  # type: ignore[arg-type]
    for i in tqdm(range(n), desc=desc, disable=not progress, unit="img"):
        s = dataset[i]
        img = s["image"][None]
        x = pre(img)[0]
        if kind == "change":
            x = torch.cat([x, pre(s["image2"][None])[0]], 0)
            y = s["mask"].long()
        elif kind == "pixel_regression":
            y = s["target"].float()
            if y.ndim == 2:
                y = y[None]
        else:
            y = s["mask"].long()
        raw = pre.select(img)[0] if i < keep_raw else None
        x, y = _downscale(x, y, max_size)
        if raw is not None:
            raw, _ = _downscale(raw, y, max_size)
        out.append(DenseSample(x.float(), y, raw))
    return out


# --------------------------------------------------------------------------------------------
# training and inference


def _augment(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if torch.rand((), generator=gen) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand((), generator=gen) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(torch.randint(0, 4, (), generator=gen))
    if k and x.shape[-1] == x.shape[-2]:
        x, y = x.rot90(k, (-2, -1)), y.rot90(k, (-2, -1))
    return x, y


def _crop(sample: DenseSample, crop: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x, y = sample.image, sample.target
    h, w = x.shape[-2:]
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        x = F.pad(x, (0, pw, 0, ph))
        fill = float("nan") if y.is_floating_point() else IGNORE_INDEX
        y = F.pad(y, (0, pw, 0, ph), value=fill)
        h, w = x.shape[-2:]
    top = int(torch.randint(0, h - crop + 1, (), generator=gen))
    left = int(torch.randint(0, w - crop + 1, (), generator=gen))
    return x[..., top : top + crop, left : left + crop], y[
        ..., top : top + crop, left : left + crop
    ]


def steps_for(samples: Sequence[DenseSample], crop: int, batch_size: int, epochs: float) -> int:
    """Optimiser steps for ``epochs`` passes over the pixels of ``samples`` in crops."""
    crops = sum(max(1.0, s.image.shape[-2] * s.image.shape[-1] / crop**2) for s in samples)
    return max(1, math.ceil(epochs * crops / batch_size))


def train_dense(
    model: nn.Module,
    samples: Sequence[DenseSample],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    crop: int,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    encoder_lr_scale: float = 0.1,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "training",
) -> list[float]:
    """Train on random crops; returns the loss of every step."""
    from eofm.progress import progress as tqdm

    if not samples:
        raise ConfigError("no training samples for the dense protocol")
    dev = torch.device(device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    enc: Any = getattr(model, "encoder", None)
    enc_params = {id(p) for p in enc.parameters()} if enc is not None else set()
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_params]
    body = [p for p in model.parameters() if p.requires_grad and id(p) in enc_params]
    groups: list[dict[str, Any]] = [{"params": head, "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * encoder_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * s / steps))
        ),
    )
    losses: list[float] = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, unit="step"):
        picks = torch.randint(0, len(samples), (batch_size,), generator=gen).tolist()
        xs, ys = zip(*(_augment(*_crop(samples[i], crop, gen), gen) for i in picks))
        x = torch.stack(xs).to(dev)
        y = torch.stack(ys).to(dev)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _positions(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    pos = list(range(0, length - window + 1, stride))
    if pos[-1] != length - window:
        pos.append(length - window)
    return pos


@torch.no_grad()
def predict_sliding(
    model: nn.Module,
    image: Tensor,
    *,
    window: int,
    out_channels: int,
    overlap: float = 0.25,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Model outputs ``(out_channels, H, W)`` for an image of any size.

    Windows of ``window`` pixels overlap by ``overlap``; outputs are averaged where they
    overlap. Images smaller than the window are zero-padded.
    """
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    dev = torch.device(device)
    model.eval()
    x = image
    h, w = x.shape[-2:]
    ph, pw = max(0, window - h), max(0, window - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hp, wp = x.shape[-2:]
    stride = max(1, int(window * (1 - overlap)))
    boxes = [(t, c) for t in _positions(hp, window, stride) for c in _positions(wp, window, stride)]
    acc = torch.zeros(out_channels, hp, wp)
    count = torch.zeros(1, hp, wp)
    for lo in range(0, len(boxes), batch_size):
        chunk = boxes[lo : lo + batch_size]
        batch = torch.stack([x[:, t : t + window, c : c + window] for t, c in chunk]).to(dev)
        out = model(batch).float().cpu()
        for (t, c), o in zip(chunk, out):
            acc[:, t : t + window, c : c + window] += o
            count[:, t : t + window, c : c + window] += 1
    return (acc / count)[:, :h, :w]


def default_crop(backbone: Backbone, samples: Sequence[DenseSample], crop: int | None) -> int:
    """The crop (and sliding window) size: ``crop``, else the backbone's input size, capped by
    the smallest image and rounded down to a multiple of the model's stride (32 at most)."""
    if crop is not None:
        return int(crop)
    size = int(backbone.img_size[0])
    if backbone.family in ("swin", "swinv2"):
        return size  # Swin windows need the size the model was built for
    smallest = min(min(s.image.shape[-2:]) for s in samples) if samples else size
    c = min(size, int(smallest))
    m = min(32, int(backbone.patch_size or 32))
    return max(m, c - c % m)
