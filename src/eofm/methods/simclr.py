"""SimCLR (Chen et al. 2020): two views, a projection MLP and the NT-Xent loss.

Negatives are every other view in the global batch: with ``torch.distributed`` initialised,
lightly's :class:`~lightly.loss.NTXentLoss` gathers the projections of all ranks *with*
gradients (its ``GatherLayer`` sums the gradients of every rank in the backward pass), so a
DDP run of ``W`` processes holding ``N`` images each computes the loss and gradients of one
process holding all ``W * N`` (checked in ``tests/methods/test_ddp_contrastive.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import Tensor, nn

from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.heads import SimCLRProjectionHead


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR around ``backbone`` (any :class:`~eofm.models.Backbone`).

    Args:
        hidden_dim / output_dim / num_layers: projection MLP (SimCLR v1: 2048 / 128 / 2).
        batch_norm: BN in the projection head (use ``trainer.sync_batchnorm`` with DDP).
        temperature: NT-Xent temperature (0.1 for large batches, 0.5 for small ones).
        gather_distributed: negatives from every rank (with gradients).
    """

    view_spec = ViewSpec(global_views=2, crop_scale=(0.08, 1.0))

    def __init__(
        self,
        backbone: nn.Module,
        *,
        hidden_dim: int = 2048,
        output_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        temperature: float = 0.5,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(backbone)
        embed_dim = int(getattr(backbone, "embed_dim"))  # noqa: B009 - nn.Module attribute
        self.projection_head = SimCLRProjectionHead(
            embed_dim, hidden_dim, output_dim, num_layers=num_layers, batch_norm=batch_norm
        )
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def project(self, images: Tensor) -> Tensor:
        """Projections ``(B, output_dim)`` of a batch of views."""
        out: Tensor = self.projection_head(self.backbone(images))
        return out

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        """NT-Xent over the first two global views (averaged over pairs if there are more)."""
        n = max(2, views.num_global)
        imgs = views.images[:n]
        b = imgs[0].shape[0]
        z = torch.split(self.project(torch.cat(imgs)), b)
        losses = [self.criterion(z[i], z[j]) for i in range(n) for j in range(i + 1, n)]
        loss = torch.stack(losses).mean()
        with torch.no_grad():
            pos = F.cosine_similarity(z[0], z[1], dim=1).mean()
        return {"loss": loss, "pos_similarity": pos}
