"""DINO (Caron et al. 2021): self-distillation with an EMA teacher and multi-crop.

The student (backbone + :class:`DINOProjectionHead`) sees every view (2 global + N local
crops, from the :class:`ViewSpec`); the teacher, an exponential moving average of the student
(momentum 0.996 -> 1 on a cosine schedule), sees the global views only. Lightly's
:class:`~lightly.loss.DINOLoss` does the centring (a running mean of the teacher outputs,
averaged across ranks) and sharpening (teacher temperature, warmed up linearly from
``warmup_teacher_temp``). This is OceanSAR-1's objective (with dynamic pruning on top, see
the curation issue). :meth:`embed` and the exported encoder use the teacher's backbone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import DINOLoss
from torch import Tensor, nn

from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.heads import DINOHead, cosine_schedule, ema_update, freeze


@register_method("dino")
class DINO(SSLMethod):
    """DINO around ``backbone``.

    Args:
        hidden_dim / bottleneck_dim / output_dim: head MLP width, bottleneck and number of
            prototypes K (DINO: 2048 / 256 / 65536).
        batch_norm: BN in the head (DINO: only for ResNets).
        norm_last_layer: weight-normalised last layer with a fixed norm (DINO's default; False
            can do better for ViT-S but is less stable).
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_fraction: teacher
            temperature, linearly from ``warmup_teacher_temp`` over that fraction of the run.
        student_temp: 0.1. center_momentum: 0.9.
        momentum / momentum_end: EMA momentum schedule of the teacher (cosine).
        freeze_last_layer_fraction: no update of the head's last layer during this fraction of
            the run (DINO: the first epoch).
    """

    view_spec = ViewSpec(
        global_views=2,
        local_views=6,
        local_size=32,
        crop_scale=(0.4, 1.0),
        local_crop_scale=(0.05, 0.4),
    )

    step: Tensor
    max_steps: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        output_dim: int = 65536,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_fraction: float = 0.0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        freeze_last_layer_fraction: float = 0.0,
    ) -> None:
        super().__init__(backbone)
        embed_dim = int(getattr(backbone, "embed_dim"))  # noqa: B009 - nn.Module attribute
        self.head = DINOHead(
            embed_dim,
            hidden_dim,
            bottleneck_dim,
            output_dim,
            batch_norm=batch_norm,
            norm_last_layer=norm_last_layer,
        )
        self.teacher_backbone = freeze(copy.deepcopy(backbone))
        self.teacher_head = freeze(copy.deepcopy(self.head))
        self.criterion = DINOLoss(
            output_dim=output_dim,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=0,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_teacher_temp_fraction = float(warmup_teacher_temp_fraction)
        self.momentum = float(momentum)
        self.momentum_end = float(momentum_end)
        self.freeze_last_layer_fraction = float(freeze_last_layer_fraction)
        # progress, saved with the weights so that schedules resume where they were
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("max_steps", torch.zeros((), dtype=torch.long))
        self.current_momentum = self.momentum

    # -- schedules --------------------------------------------------------------------------
    def current_teacher_temp(self) -> float:
        """Teacher temperature at the current step (linear warm-up, then constant)."""
        total = int(self.max_steps)
        warm = int(self.warmup_teacher_temp_fraction * total)
        s = int(self.step)
        if warm <= 0 or s >= warm:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * s / warm

    # -- training ---------------------------------------------------------------------------
    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        """DINO cross-entropy of student views against teacher global views."""
        n_global = views.num_global
        globals_ = views.images[:n_global]
        locals_ = views.images[n_global:]
        b = globals_[0].shape[0]
        with torch.no_grad():
            t_out = self.teacher_head(self.teacher_backbone(torch.cat(globals_))).split(b)
        s_out = list(self.head(self.backbone(torch.cat(globals_))).split(b))
        if locals_:
            s_out += list(self.head(self.backbone(torch.cat(locals_))).split(b))
        temp = self.current_teacher_temp()
        loss = self.criterion(list(t_out), s_out, teacher_temp=temp)
        with torch.no_grad():
            probs = torch.softmax((t_out[0] - self.criterion.center[0]) / temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        return {
            "loss": loss,
            "teacher_temp": torch.tensor(temp),
            "teacher_entropy": entropy,
            "momentum": torch.tensor(self.current_momentum),
        }

    def on_before_optimizer_step(self, step: int, max_steps: int) -> None:
        """Drop the gradients of the head's last layer while it is frozen (engine hook)."""
        if step < int(self.freeze_last_layer_fraction * max_steps):
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher; advance the schedules."""
        self.step.fill_(step)
        self.max_steps.fill_(max_steps)
        self.current_momentum = cosine_schedule(step, max_steps, self.momentum, self.momentum_end)
        ema_update(self.backbone, self.teacher_backbone, self.current_momentum)
        ema_update(self.head, self.teacher_head, self.current_momentum)

    # -- outputs ----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Pooled embeddings of the teacher backbone (DINO's better, smoother encoder)."""
        out: Tensor = self.teacher_backbone(images)
        return out

    def export_backbone(self) -> nn.Module:
        """The encoder to export at the end of training: the teacher's backbone."""
        return self.teacher_backbone
