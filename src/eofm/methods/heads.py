"""Shared pieces of the self-supervised methods: heads, EMA teachers, schedules, gathers.

Heads come from lightly where it has them (:class:`SimCLRProjectionHead`,
:class:`DINOProjectionHead`, :class:`MoCoProjectionHead`, :class:`BYOLPredictionHead`);
:func:`mlp` builds the MoCo v3 projector/predictor layout (BN on every layer, optional
affine-free BN on the output). The distributed helpers work without ``torch.distributed``
(one process) and gather across ranks when it is initialised.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import (
    BYOLPredictionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.utils.dist import gather as _lightly_gather
from torch import Tensor, nn

__all__ = [
    "BYOLPredictionHead",
    "DINOHead",
    "DINOProjectionHead",
    "MoCoProjectionHead",
    "SimCLRProjectionHead",
    "WeightNormLinear",
    "concat_all_gather",
    "cosine_schedule",
    "ema_update",
    "freeze",
    "gather_with_grad",
    "info_nce",
    "mlp",
    "rank",
    "world_size",
]


class WeightNormLinear(nn.Module):
    """``y = x W^T`` with ``W = g * V / ||V||`` row by row (``weight_g``, ``weight_v``, as the
    DINO checkpoints name them); plain parameters, so it deep-copies and pickles."""

    def __init__(self, in_features: int, out_features: int, fixed_norm: bool = True) -> None:
        super().__init__()
        ref = nn.Linear(in_features, out_features, bias=False)  # default init, as in DINO
        self.weight_v = nn.Parameter(ref.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fixed_norm)

    @property
    def weight(self) -> Tensor:
        w: Tensor = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return w

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(DINOProjectionHead):  # type: ignore[misc]
    """Lightly's :class:`DINOProjectionHead` (same MLP, initialisation and
    ``norm_last_layer`` behaviour) with the weight-normalised last layer as a
    :class:`WeightNormLinear` instead of the deprecated ``nn.utils.weight_norm``, whose modules
    can be neither deep-copied (EMA teachers) nor pickled (``ddp_spawn``)."""

    def __init__(
        self,
        input_dim: int = 2048,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        output_dim: int = 65536,
        batch_norm: bool = False,
        freeze_last_layer: int = -1,
        norm_last_layer: bool = True,
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(
                input_dim,
                hidden_dim,
                bottleneck_dim,
                output_dim,
                batch_norm=batch_norm,
                freeze_last_layer=freeze_last_layer,
                norm_last_layer=norm_last_layer,
            )
        self.last_layer = WeightNormLinear(bottleneck_dim, output_dim, norm_last_layer)


def mlp(
    input_dim: int,
    hidden_dim: int,
    output_dim: int,
    num_layers: int = 2,
    *,
    batch_norm: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """``num_layers`` linear layers with BN + ReLU between them (MoCo v3's ``_build_mlp``).

    ``last_bn`` adds an affine-free BatchNorm after the output layer (MoCo v3's projector).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = input_dim
    for i in range(num_layers):
        last = i == num_layers - 1
        out = output_dim if last else hidden_dim
        layers.append(nn.Linear(dim, out, bias=not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn and batch_norm:
            layers.append(nn.BatchNorm1d(out, affine=False))
        dim = out
    return nn.Sequential(*layers)


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter of ``module`` (EMA teachers)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    s_params = list(student.parameters())
    t_params = list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError("student and teacher have different parameter lists")
    if not s_params:
        return
    t_data = [t.data for t in t_params]
    torch._foreach_mul_(t_data, momentum)
    torch._foreach_add_(t_data, [s.data for s in s_params], alpha=1 - momentum)


def cosine_schedule(step: int, max_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``max_steps``); ``end`` afterwards."""
    if max_steps <= 0 or step >= max_steps:
        return end
    return end - (end - start) * (math.cos(math.pi * step / max_steps) + 1) / 2


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """``x`` from every rank, concatenated in rank order, with gradients flowing back to
    each rank's own part (lightly's ``GatherLayer``: the backward pass sums the gradients
    of all ranks, which with DDP's averaging gives the gradient of the global loss)."""
    if not _distributed():
        return x
    return torch.cat(_lightly_gather(x.contiguous()), dim=0)


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """``x`` from every rank, concatenated in rank order, without gradients."""
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def info_nce(query: Tensor, key: Tensor, temperature: float, *, scale: bool = True) -> Tensor:
    """MoCo v3 contrastive loss of local ``query`` ``(N, D)`` against ``key`` of all ranks.

    Keys (from a momentum encoder, no gradient) are gathered across ranks, so each query has
    ``N * world - 1`` negatives; the positive of query ``i`` on rank ``r`` is key
    ``r * N + i``. ``scale`` multiplies by ``2 * temperature`` as MoCo v3 does.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    k_all = concat_all_gather(k.detach()) if not k.requires_grad else gather_with_grad(k)
    logits = q @ k_all.t() / temperature
    n = q.shape[0]
    labels = torch.arange(n, device=q.device) + rank() * n
    loss = F.cross_entropy(logits, labels)
    return loss * (2 * temperature) if scale else loss
