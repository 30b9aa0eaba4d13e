"""SoftCon (Wang, Albrecht, Zhu 2024): multi-label guided soft contrastive learning.

MoCo-v3-style branches: the trainable branch (backbone + projector + predictor) sees view 1
with *Siamese masking* (random patches hidden on this branch only: dropped tokens for ViT,
zeroed pixel blocks otherwise); the EMA branch (backbone + projector, momentum 0.99 -> 1 on a
cosine schedule) sees view 2 unmasked. With ``q_i`` and ``k_j`` the normalised embeddings,
``logits_ij = q_i . k_j / tau`` and

``L = CE(logits, identity) + lambda * mean_{i labelled} -sum_j s_ij log softmax_j(logits_ij)``

where ``s_ij = cos(y_i, y_j) / sum_j cos(y_i, y_j)`` from the multi-label vectors ``y``
(``batch["label"]``, ``(B, K)``). Rows without any label (all-zero vector, or no labels in the
batch) keep only the hard term. The soft cross-entropy is one of the two formulations the
sources allow (the other: regress the similarity onto ``cos(y_i, y_j)``); see docs/methods.md.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import update_momentum
from torch import Tensor

from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.masking import (
    adapt_mask_patch,
    check_ratio,
    random_block_mask,
    random_token_mask,
    upsample_mask,
    vit_embed,
    vit_keep_tokens,
    vit_run_blocks,
)
from eofm.models import Backbone

__all__ = ["SoftCon", "cosine_momentum", "label_vectors", "soft_targets"]


def cosine_momentum(step: int, max_steps: int, start: float, end: float = 1.0) -> float:
    """EMA momentum rising from ``start`` to ``end`` on a half-cosine over ``max_steps``."""
    if max_steps <= 0:
        return end
    t = min(max(step / max_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * t) + 1.0) / 2.0


def label_vectors(labels: Any, batch_size: int, threshold: float | None = None) -> Tensor | None:
    """Multi-label vectors ``(B, K)`` from ``batch["label"]``, or ``None`` when there are none.

    A ``(B, K)`` multi-hot (or graded) tensor is used as it is (NaN counts as 0), or binarised
    at ``threshold`` (class fractions -> multi-hot); a ``(B,)`` integer tensor of class indices
    becomes one-hot rows (negative indices: no label).
    """
    if not isinstance(labels, Tensor) or labels.ndim == 0 or labels.shape[0] != batch_size:
        return None
    if labels.ndim == 2:
        y = torch.nan_to_num(labels.float(), nan=0.0).clamp_min(0.0)
        return (y >= threshold).float() if threshold is not None else y
    if labels.ndim == 1 and not labels.is_floating_point():
        known = labels >= 0
        if not bool(known.any()):
            return labels.new_zeros(batch_size, 1).float()
        onehot = F.one_hot(labels.clamp_min(0), int(labels.max()) + 1).float()
        return onehot * known.unsqueeze(1).float()
    return None


def soft_targets(labels: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
    """``(targets (B, B), labelled (B,))``: row-normalised cosine similarity of the labels.

    Row ``i`` is ``cos(y_i, y_j) / sum_j cos(y_i, y_j)`` for labelled rows; rows without labels
    are zero and ``labelled`` is False there (they fall back to the hard target).
    """
    if labels is None:
        return torch.zeros(batch_size, batch_size), torch.zeros(batch_size, dtype=torch.bool)
    y = F.normalize(labels.float(), dim=1)
    sim = (y @ y.T).clamp_min(0.0)
    labelled = labels.float().abs().sum(dim=1) > 0
    sim = sim * labelled.unsqueeze(1).float()
    targets = sim / sim.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return targets, labelled


@register_method("softcon")
class SoftCon(SSLMethod):
    """Soft contrastive learning guided by multi-labels, with Siamese masking.

    Args:
        backbone: any :class:`~eofm.models.Backbone` (SoftCon: DINOv2 ViT-S/14 or ResNet-50,
            continually pretrained from an RGB checkpoint adapted to the bands).
        temperature: ``tau`` of the logits (0.2, MoCo v3 default; inferred).
        soft_weight: ``lambda`` of the soft term (1.0; inferred).
        mask_ratio: Siamese masking ratio on the trainable branch (0.5; inferred; 0 disables).
        mask_patch_size: pixel block side for non-ViT backbones (default 32, shrunk on small
            images); ViTs drop whole patch tokens.
        proj_hidden_dim, proj_dim, pred_hidden_dim: MoCo-v3 heads (3-layer projector,
            2-layer predictor, with batch norm).
        momentum, momentum_end: EMA momentum schedule (0.99 -> 1, cosine).
        symmetric: also use view 2 (masked) against view 1 (EMA) and average (MoCo v3);
            the SoftCon figure shows one direction.
        label_key: batch key of the multi-label vectors (``"target"`` holds the class
            fractions of the synthetic land-cover shards).
        label_threshold: binarise ``(B, K)`` label vectors at this value (fractions ->
            multi-hot; SoftCon's Dynamic World aggregation rule is unknown).
    """

    view_spec = ViewSpec(global_views=2, crop_scale=(0.2, 1.0), geometric=True)

    def __init__(
        self,
        backbone: Backbone,
        temperature: float = 0.2,
        soft_weight: float = 1.0,
        mask_ratio: float = 0.5,
        mask_patch_size: int | None = None,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        symmetric: bool = False,
        label_key: str = "label",
        label_threshold: float | None = None,
    ) -> None:
        super().__init__(backbone)
        self.temperature = float(temperature)
        self.soft_weight = float(soft_weight)
        self.mask_ratio = check_ratio(mask_ratio, allow_zero=True)
        self.mask_patch_size = mask_patch_size
        self.momentum = float(momentum)
        self.momentum_end = float(momentum_end)
        self.current_momentum = self.momentum
        self.symmetric = bool(symmetric)
        self.label_key = label_key
        self._warned_no_labels = False
        self.label_threshold = None if label_threshold is None else float(label_threshold)
        self.family = str(getattr(backbone, "family", ""))
        dim = int(backbone.embed_dim)
        self.projector = MoCoProjectionHead(dim, proj_hidden_dim, proj_dim, 3, batch_norm=True)
        self.predictor = MoCoProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2, batch_norm=True)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.momentum_backbone.requires_grad_(False)
        self.momentum_projector.requires_grad_(False)

    def encode_masked(self, images: Tensor) -> Tensor:
        """Pooled embedding of the trainable backbone with Siamese masking."""
        if self.mask_ratio == 0.0:
            out: Tensor = self.backbone(images)
            return out
        b, _, h, w = images.shape
        if self.family == "vit":
            vit: Any = self.backbone.model
            tokens, grid = vit_embed(vit, images)
            idx_keep, _, _ = random_token_mask(
                b, grid[0] * grid[1], self.mask_ratio, device=images.device
            )
            tokens = vit_keep_tokens(tokens, idx_keep, int(vit.num_prefix_tokens))
            tokens = vit.norm(vit_run_blocks(vit, tokens))
            out = vit.forward_head(tokens, pre_logits=True)
            return out
        size = self.mask_patch_size or 32
        block = adapt_mask_patch(size, 1, (h, w))
        gh, gw = math.ceil(h / block), math.ceil(w / block)
        cells = random_block_mask(b, (gh, gw), self.mask_ratio, 1, device=images.device)
        keep = 1.0 - upsample_mask(cells, block)[..., :h, :w].to(images.dtype)
        out = self.backbone(images * keep)
        return out

    def query(self, images: Tensor) -> Tensor:
        """Normalised output of the trainable branch on masked ``images``."""
        return F.normalize(self.predictor(self.projector(self.encode_masked(images))), dim=1)

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """Normalised output of the EMA branch on unmasked ``images``."""
        return F.normalize(self.momentum_projector(self.momentum_backbone(images)), dim=1)

    def contrastive_loss(
        self, q: Tensor, k: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(hard, soft, soft target entropy)`` for queries ``q`` and keys ``k`` ``(B, D)``.

        The soft cross-entropy cannot fall below the entropy of its targets; the difference
        (a KL divergence) is what training can reduce.
        """
        logits = q @ k.T / self.temperature
        b = q.shape[0]
        hard = F.cross_entropy(logits, torch.arange(b, device=q.device))
        targets, labelled = soft_targets(labels, b)
        targets, labelled = targets.to(logits), labelled.to(q.device)
        if bool(labelled.any()):
            per_row = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
            soft = per_row[labelled].mean()
            entropy = -(targets * targets.clamp_min(1e-12).log()).sum(dim=1)[labelled].mean()
        else:
            soft = entropy = logits.new_zeros(())
        return hard, soft, entropy

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        x1, x2 = views.images[0], views.images[1]
        labels = label_vectors(batch.get(self.label_key), x1.shape[0], self.label_threshold)
        if labels is None and not self._warned_no_labels:
            self._warned_no_labels = True
            warnings.warn(
                f"SoftCon: the batch has no multi-label vectors under {self.label_key!r} "
                f"(batch keys: {sorted(batch)}); training with the hard contrastive target only. "
                "Set method.options.label_key to the key holding the labels (synthetic "
                "land-cover shards: 'target').",
                stacklevel=2,
            )
        _, labelled = soft_targets(labels, x1.shape[0])
        pairs = [(x1, x2), (x2, x1)] if self.symmetric else [(x1, x2)]
        hard = soft = entropy = x1.new_zeros(())
        for a, b in pairs:
            h, s, entropy = self.contrastive_loss(self.query(a), self.key(b), labels)
            hard = hard + h / len(pairs)
            soft = soft + s / len(pairs)
        return {
            "loss": hard + self.soft_weight * soft,
            "loss_hard": hard.detach(),
            "loss_soft": soft.detach(),
            "soft_kl": (soft - entropy).detach(),
            "labelled": labelled.float().mean().to(x1.device),
            "momentum": x1.new_tensor(self.current_momentum),
        }

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the momentum branch (momentum 0.99 -> 1, cosine)."""
        m = cosine_momentum(step, max_steps, self.momentum, self.momentum_end)
        self.current_momentum = m
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projector, self.momentum_projector, m)
