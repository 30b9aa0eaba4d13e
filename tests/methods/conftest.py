"""Shared fixtures for the masked-image and dense/soft contrastive method tests (MAE, SimMIM,
GFM, SoftCon, dense): a small fixed set of structured images with multi-labels, a minimal
view maker that records crop boxes, flips and quarter turns as :class:`Views` documents, and a
short AdamW training loop. Nothing here depends on the training engine or ``eofm.augment``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from eofm.methods.base import SSLMethod, Views

N_IMAGES = 32
SIZE = 32


@dataclass
class ImageSet:
    """Normalised images ``(N, 13, H, W)`` and multi-hot labels ``(N, K)``."""

    images: Tensor
    labels: Tensor

    def bands(self, count: int) -> Tensor:
        """The first ``count`` bands (repeated when more than 13 are asked for)."""
        idx = [i % self.images.shape[1] for i in range(count)]
        return self.images[:, idx].contiguous()


def _structured_fallback(n: int, size: int, seed: int) -> ImageSet:
    """Smooth random fields with a few classes of blobs (when the synthetic scenes are absent)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 13, 4, 4, generator=gen)
    images = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    labels = (torch.rand(n, 6, generator=gen) > 0.6).float()
    return ImageSet(images, labels)


@pytest.fixture(scope="session")
def image_set() -> ImageSet:
    """32 synthetic Sentinel-2 land-cover scenes at 32 px, standardised per band."""
    try:
        from eofm.data.synthetic import generate_landcover
    except ImportError:  # pragma: no cover - the colleague's module is absent
        return _structured_fallback(N_IMAGES, SIZE, 0)
    scenes = generate_landcover(N_IMAGES, SIZE, seed=0, sensors=("s2",))
    assert scenes.s2 is not None
    x = torch.from_numpy(scenes.s2.astype("float32"))
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1.0)
    labels = torch.from_numpy(scenes.multi_hot())
    return ImageSet((x - mean) / std, labels)


def make_views(
    images: Tensor,
    n_views: int,
    size: int | None = None,
    *,
    scale: tuple[float, float] = (0.4, 1.0),
    geometric: bool = True,
    generator: torch.Generator | None = None,
) -> Views:
    """Random integer crop boxes resized to ``size``, then horizontal flip, then ``rot90``.

    Boxes are ``(x0, y0, x1, y1)`` with exclusive ``x1``/``y1``; rotations are counter-clockwise
    ``torch.rot90(view, k, dims=(-2, -1))`` (the conventions of ``eofm.methods.dense``).
    """
    b, _, h, w = images.shape
    size = size or h
    out, boxes, flips, rots = [], [], [], []
    for _ in range(n_views):
        if not geometric:
            out.append(F.interpolate(images, size=(size, size), mode="bilinear"))
            boxes.append(torch.tensor([[0.0, 0.0, w, h]]).repeat(b, 1))
            flips.append(torch.zeros(b, dtype=torch.bool))
            rots.append(torch.zeros(b, dtype=torch.long))
            continue
        area = torch.empty(b).uniform_(*scale, generator=generator) * h * w
        side = area.sqrt().round().clamp(4, min(h, w)).long()
        views, bx = [], []
        flip = torch.rand(b, generator=generator) < 0.5
        rot = torch.randint(0, 4, (b,), generator=generator)
        for i in range(b):
            s = int(side[i])
            x0 = int(torch.randint(0, w - s + 1, (1,), generator=generator))
            y0 = int(torch.randint(0, h - s + 1, (1,), generator=generator))
            crop = images[i : i + 1, :, y0 : y0 + s, x0 : x0 + s]
            v = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
            if flip[i]:
                v = v.flip(-1)
            views.append(torch.rot90(v, int(rot[i]), dims=(-2, -1)))
            bx.append([x0, y0, x0 + s, y0 + s])
        out.append(torch.cat(views))
        boxes.append(torch.tensor(bx, dtype=torch.float32))
        flips.append(flip)
        rots.append(rot)
    return Views(images=out, boxes=boxes, flips=flips, rot90=rots, num_global=n_views)


def train_losses(
    method: SSLMethod,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    geometric: bool = True,
    scale: tuple[float, float] = (0.4, 1.0),
    seed: int = 0,
) -> list[float]:
    """``steps`` AdamW steps on the fixed set (whole set per batch); the loss of each step."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    method.train()
    losses = []
    for step in range(steps):
        views = make_views(
            images,
            method.view_spec.global_views,
            scale=scale,
            geometric=geometric,
            generator=gen,
        )
        batch = {"image": images} if labels is None else {"image": images, "label": labels}
        out = method.forward_loss(views, batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_step_end(step, steps)
        losses.append(float(out["loss"].detach()))
    return losses


def unused_parameters(method: SSLMethod) -> list[str]:
    """Trainable parameters without a gradient after a backward pass (DDP without
    ``find_unused_parameters`` fails on any)."""
    return [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]


def assert_loss_falls(losses: list[float], factor: float = 0.9) -> None:
    """The mean of the last 5 losses is at least ``1 - factor`` of ``|first|`` below the mean
    of the first 5 (losses may turn negative, as GFM's cosine term does)."""
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    margin = (1.0 - factor) * abs(first)
    assert last < first - margin, f"loss did not fall: first 5 {first:.4f}, last 5 {last:.4f}"
