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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eofm.augment.views import Views, ViewSpec
from eofm.errors import UnknownNameError

__all__ = [
    "SSLMethod",
    "ViewSpec",
    "Views",
    "create_method",
    "list_methods",
    "register_method",
]


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
