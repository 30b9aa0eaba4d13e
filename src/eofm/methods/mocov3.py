"""MoCo v3 (Chen, Xie, He 2021): query encoder + predictor against an EMA key encoder.

The base encoder is the backbone plus a 3-layer projector; the momentum (key) encoder is an
exponential moving average of both, with a momentum rising from ``momentum`` (0.99) to
``momentum_end`` (1.0) on a cosine schedule. The loss is the symmetrised InfoNCE
``ctr(q1, k2) + ctr(q2, k1)`` scaled by ``2 * temperature``, with the keys of every rank as
negatives (keys carry no gradient; queries are local, so DDP's gradient averaging gives the
gradient of the global-batch loss).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.heads import cosine_schedule, ema_update, freeze, info_nce, mlp


@register_method("mocov3")
class MoCoV3(SSLMethod):
    """MoCo v3 around ``backbone``.

    Args:
        hidden_dim / output_dim: MLP widths (MoCo v3: 4096 / 256).
        projector_layers / predictor_layers: 3 and 2 in MoCo v3 (ViT and ResNet).
        batch_norm: BN in the MLPs (use ``trainer.sync_batchnorm`` with DDP).
        temperature: 0.2 for ViTs (MoCo v3), 1.0 for ResNets in the paper.
        momentum / momentum_end: EMA momentum at the start and end (cosine schedule).
        freeze_patch_embed: keep a ViT's patch projection at its random init (MoCo v3's
            stability trick for ViTs).
    """

    view_spec = ViewSpec(global_views=2, crop_scale=(0.08, 1.0))

    def __init__(
        self,
        backbone: nn.Module,
        *,
        hidden_dim: int = 4096,
        output_dim: int = 256,
        projector_layers: int = 3,
        predictor_layers: int = 2,
        batch_norm: bool = True,
        temperature: float = 0.2,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        freeze_patch_embed: bool = False,
    ) -> None:
        super().__init__(backbone)
        embed_dim = int(getattr(backbone, "embed_dim"))  # noqa: B009 - nn.Module attribute
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.momentum_end = float(momentum_end)
        self.projector = mlp(
            embed_dim,
            hidden_dim,
            output_dim,
            projector_layers,
            batch_norm=batch_norm,
            last_bn=True,
        )
        self.predictor = mlp(
            output_dim, hidden_dim, output_dim, predictor_layers, batch_norm=batch_norm
        )
        if freeze_patch_embed:
            patch_embed = getattr(getattr(backbone, "model", backbone), "patch_embed", None)
            if patch_embed is not None:
                freeze(patch_embed)
        self.momentum_backbone = freeze(copy.deepcopy(backbone))
        self.momentum_projector = freeze(copy.deepcopy(self.projector))
        self.current_momentum = self.momentum

    def _query(self, images: Tensor) -> Tensor:
        out: Tensor = self.predictor(self.projector(self.backbone(images)))
        return out

    @torch.no_grad()
    def _key(self, images: Tensor) -> Tensor:
        out: Tensor = self.momentum_projector(self.momentum_backbone(images))
        return out

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Symmetrised InfoNCE between the two global views."""
        v1, v2 = views.images[0], views.images[1]
        q1, q2 = self._query(v1), self._query(v2)
        k1, k2 = self._key(v1), self._key(v2)
        loss = info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature)
        with torch.no_grad():
            pos = F.cosine_similarity(q1, k2, dim=1).mean() + F.cosine_similarity(q2, k1).mean()
        return {
            "loss": loss,
            "pos_similarity": pos / 2,
            "momentum": torch.tensor(self.current_momentum),
        }

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the key encoder with the cosine momentum of ``step``."""
        self.current_momentum = cosine_schedule(step, max_steps, self.momentum, self.momentum_end)
        ema_update(self.backbone, self.momentum_backbone, self.current_momentum)
        ema_update(self.projector, self.momentum_projector, self.current_momentum)
