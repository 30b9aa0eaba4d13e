"""Helpers shared by the SimCLR, MoCo v3 and DINO tests: a short training loop with the real
``eofm.augment`` views on a fixed batch, as the engine runs it (without Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from eofm.augment import AugmentConfig, MultiViewAugment
from eofm.methods.base import SSLMethod, ViewSpec

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11")
S2_BANDS = (*S2_BANDS, "B12")


def augment_for(bands: Sequence[str], sensor: str | None = None) -> MultiViewAugment:
    """Moderate augmentations (small images, short runs)."""
    cfg = AugmentConfig(blur_p=[0.2], local_blur_p=0.2, blur_sigma=(0.1, 1.0))
    return MultiViewAugment(bands, cfg, sensor=sensor)


def ssl_losses(
    method: SSLMethod,
    images: Tensor,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    spec: ViewSpec | None = None,
    bands: Sequence[str] = S2_BANDS,
    seed: int = 0,
) -> list[float]:
    """``steps`` AdamW steps on the whole of ``images``; the loss of every step."""
    torch.manual_seed(seed)
    aug = augment_for(bands)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    method.train()
    losses: list[float] = []
    for step in range(steps):
        views = aug(images, spec or method.view_spec, seed=seed * 10_000 + step)
        out = method.forward_loss(views, {"image": images})
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        hook = getattr(method, "on_before_optimizer_step", None)
        if callable(hook):
            hook(step, steps)
        opt.step()
        method.on_step_end(step + 1, steps)
        losses.append(float(out["loss"].detach()))
    return losses
