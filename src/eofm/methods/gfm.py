"""GFM (Mendieta et al., ICCV 2023): SimMIM plus feature distillation from a frozen teacher.

The student (randomly initialised: GFM found an "unbiased student" best) is trained with
SimMIM on the masked image. The same masked forward pass is tapped at an intermediate level
(Swin: stage 3 incl. the following patch merging, GFM's ``layers[:-1]``; ViT: the block at 2/3
depth), average-pooled and projected by ``nn.Linear`` to the teacher's width. The frozen
teacher (e.g. ImageNet-22k Swin-B) sees the *unmasked* image, resized to its own image size,
and is tapped and pooled the same way. Loss: ``L_MIM + alpha * (-cos(P(f_S), f_T))``.

The teacher is a registered sub-module (so ``.to(device)`` moves it) with ``requires_grad``
False and is kept in eval mode; optimisers must take only ``p.requires_grad`` parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.errors import ConfigError
from eofm.methods.base import Views, register_method
from eofm.methods.simmim import MaskedEncoder, SimMIM
from eofm.models import Backbone, create_backbone

__all__ = ["GFM"]


@register_method("gfm")
class GFM(SimMIM):
    """GFM continual pretraining: SimMIM on the student + distillation to a frozen teacher.

    Args:
        backbone: the student (ViT or Swin), randomly initialised in GFM.
        teacher_checkpoint: checkpoint of the teacher, loaded with
            :func:`eofm.models.load_pretrained` (an RGB checkpoint is adapted to the student's
            bands). Required unless ``allow_random_teacher`` (smoke tests only).
        teacher_arch: registry name of the teacher (default: the student's architecture, with
            timm's default options, e.g. window 7 for ``swin_base``).
        teacher_img_size: the teacher's input size (GFM: 224; default: the student's size).
        teacher_source_bands, teacher_source_sensor, teacher_strict: passed to the loader.
        teacher_timm_kwargs: extra timm options for the teacher.
        alpha: weight of the distillation term (1.0).
        student_level, teacher_level: tapped level, blocks (ViT) or stages (Swin) run
            (default: stage 3 of 4; ViT: 2/3 of the depth).
        merge: for Swin, apply the next stage's patch merging after the tap (GFM's code).
        mask_ratio, mask_patch_size: as :class:`~eofm.methods.simmim.SimMIM`.
        allow_random_teacher: build a random frozen teacher when no checkpoint is given.
    """

    def __init__(
        self,
        backbone: Backbone,
        teacher_checkpoint: str | PathLike[str] | None = None,
        *,
        teacher_arch: str | None = None,
        teacher_img_size: int | None = None,
        teacher_source_bands: Sequence[str] | None = None,
        teacher_source_sensor: str | None = None,
        teacher_strict: bool = True,
        teacher_timm_kwargs: dict[str, Any] | None = None,
        alpha: float = 1.0,
        student_level: int | None = None,
        teacher_level: int | None = None,
        merge: bool = True,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 32,
        allow_random_teacher: bool = False,
    ) -> None:
        super().__init__(backbone, mask_ratio, mask_patch_size)
        if teacher_checkpoint is None and not allow_random_teacher:
            raise ConfigError(
                "gfm needs teacher_checkpoint (GFM: ImageNet-22k Swin-B); set "
                "allow_random_teacher: true only for smoke tests"
            )
        if teacher_checkpoint is None:
            warnings.warn(
                "gfm: no teacher_checkpoint; distilling from a random frozen teacher",
                stacklevel=2,
            )
        teacher = create_backbone(
            teacher_arch or backbone.arch,
            bands=backbone.bands,
            img_size=teacher_img_size or backbone.img_size,
            pretrained=teacher_checkpoint,
            sensor=backbone.sensor,
            source_bands=teacher_source_bands,
            source_sensor=teacher_source_sensor,
            strict=teacher_strict,
            **(teacher_timm_kwargs or {}),
        )
        self.teacher = teacher
        self.teacher_encoder = MaskedEncoder(teacher, mask_token=False)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.alpha = float(alpha)
        self.merge = bool(merge)
        s_level = student_level if student_level is not None else self.encoder.default_tap()
        t_level = teacher_level if teacher_level is not None else self.teacher_encoder.default_tap()
        self.student_level = self.encoder.check_tap(int(s_level))
        self.teacher_level = self.teacher_encoder.check_tap(int(t_level))
        s_dim = self.encoder.tap_channels(backbone, self.student_level, self.merge)
        t_dim = self.teacher_encoder.tap_channels(teacher, self.teacher_level, self.merge)
        self.projector = nn.Linear(s_dim, t_dim)

    def train(self, mode: bool = True) -> GFM:
        """Switch the student; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> Tensor:
        """The teacher's pooled feature ``(B, C_T)`` of the unmasked, resized image."""
        size = self.teacher.img_size
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out: tuple[Tensor | None, Tensor | None] = self.teacher_encoder(
            self.teacher.model, images, tap=self.teacher_level, merge=self.merge, final=False
        )
        pooled = out[1]
        assert pooled is not None
        return pooled

    def forward_masked(
        self, images: Tensor, token_mask: Tensor, target: Tensor | None = None
    ) -> dict[str, Tensor]:
        fmap, pooled = self.encoder(
            self.backbone.model, images, token_mask, tap=self.student_level, merge=self.merge
        )
        assert fmap is not None and pooled is not None
        loss_mim, _ = self.reconstruction_loss(
            fmap, token_mask, images if target is None else target
        )
        f_t = self.teacher_features(images)
        cos = F.cosine_similarity(self.projector(pooled), f_t.to(pooled.dtype), dim=-1)
        loss_distill = -cos.mean()
        return {
            "loss": loss_mim + self.alpha * loss_distill,
            "loss_mim": loss_mim.detach(),
            "loss_distill": loss_distill.detach(),
            "mask_ratio": token_mask.float().mean().detach(),
        }

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = views.images[0]
        return self.forward_masked(images, self.make_mask(images))
