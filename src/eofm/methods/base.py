"""The contract between the training engine and the self-supervised methods.

A method is an ``nn.Module`` that owns the backbone being pretrained (``method.backbone``, the
encoder exported at the end) plus its own heads, teachers and losses. The engine:

1. reads a batch of sample dicts (``batch["image"]``: ``(B, C, H, W)``, normalised);
2. asks :attr:`SSLMethod.view_spec` how many views of which size to make, and builds them with
   ``eofm.augment`` on the device, as a :class:`Views`;
3. calls :meth:`SSLMethod.forward_loss` and back-propagates ``out["loss"]``, logging the rest;
4. after each optimiser step calls :meth:`SSLMethod.on_step_end` (EMA teachers, schedules);
5. at the end exports :meth:`SSLMethod.export_backbone` as the model file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eofm.errors import UnknownNameError


@dataclass(frozen=True)
class ViewSpec:
    """What views a method needs from each image.

    ``global_views`` crops of ``global_size`` (``None``: the input size) and ``local_views`` of
    ``local_size`` (multi-crop). ``crop_scale`` bounds the random-resized-crop area fractions.
    ``geometric=False`` keeps views pixel-aligned (photometric changes only), as masked image
    modelling wants; dense methods keep geometry but need :attr:`Views.boxes` to match pixels.
    """

    global_views: int = 2
    local_views: int = 0
    global_size: int | None = None
    local_size: int = 32
    crop_scale: tuple[float, float] = (0.25, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.25)
    geometric: bool = True


@dataclass
class Views:
    """The augmented views of one batch, global views first.

    ``boxes[i]`` is ``(B, 4)`` float ``(x0, y0, x1, y1)`` of view ``i``'s crop in the source
    image, in pixels; ``flips[i]`` is ``(B,)`` bool for a horizontal flip applied after the crop
    and ``rot90[i]`` is ``(B,)`` int64 counter-clockwise quarter turns applied after the flip.
    Together they let dense methods find the same ground location in two views.
    """

    images: list[Tensor]
    boxes: list[Tensor] = field(default_factory=list)
    flips: list[Tensor] = field(default_factory=list)
    rot90: list[Tensor] = field(default_factory=list)
    num_global: int = 2


class SSLMethod(nn.Module):
    """Base class of every pretraining objective (see the module docstring)."""

    name: ClassVar[str] = "base"
    view_spec: ViewSpec = ViewSpec()

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Losses for one batch; ``"loss"`` is back-propagated, other entries are logged."""
        raise NotImplementedError

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called after every optimiser step (EMA updates, momentum and temperature schedules)."""

    def on_before_optimizer_step(self, step: int, max_steps: int) -> None:
        """Called after backward, before the optimiser step (e.g. freezing a head's last layer)."""

    def export_backbone(self) -> nn.Module:
        """The encoder written to the model file at the end (DINO exports its teacher)."""
        return self.backbone

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Pooled embeddings used by curation and probes (the backbone's, by default)."""
        out: Tensor = self.backbone(images)
        return out

    @torch.no_grad()
    def embed_student(self, images: Tensor) -> Tensor:
        """Pooled embeddings of the backbone being trained (``embed`` may use a teacher)."""
        out: Tensor = self.backbone(images)
        return out


_METHODS: dict[str, Callable[..., SSLMethod]] = {}


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    """Class decorator adding a method to the registry under ``name``."""

    def wrap(cls: type[SSLMethod]) -> type[SSLMethod]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def create_method(name: str, backbone: nn.Module, **kwargs: Any) -> SSLMethod:
    """Build the registered method ``name`` around ``backbone``."""
    if name not in _METHODS:
        raise UnknownNameError("pretraining method", name, list_methods())
    return _METHODS[name](backbone, **kwargs)
