"""Dense pixel-level contrastive learning with a momentum encoder (Embedding Earth motivation).

Two geometric views of each image carry their crop boxes, flips and quarter turns
(:class:`~eofm.methods.base.Views`). A grid of ground points is laid inside the overlap of the
two crop boxes, mapped into each view (crop, then flip, then rotation), and the projected dense
features of each view are sampled there bilinearly (``grid_sample``). InfoNCE: for a point in
view ``a`` (query encoder) the same ground point in view ``b`` (EMA key encoder) is the
positive; every other sampled point of the batch (same image or others) is a negative. Images
whose views do not overlap are left out (the loss stays finite: zero when no image overlaps).

Geometry conventions (``base.Views``; the same as ``eofm.augment.geometry``): ``boxes`` are
``(x0, y0, x1, y1)`` in continuous source pixels (the crop covers ``[x0, x1) x [y0, y1)`` and
is resized to the view, pixel centres mapping linearly), the horizontal flip is applied to the
crop, then ``rot90`` counter-clockwise quarter turns as ``torch.rot90(view, k, dims=(-2, -1))``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.utils import update_momentum
from torch import Tensor, nn

from eofm.errors import ConfigError
from eofm.methods.base import SSLMethod, Views, ViewSpec, register_method
from eofm.methods.softcon import cosine_momentum
from eofm.models import Backbone

__all__ = [
    "DenseContrast",
    "box_overlap",
    "dense_projector",
    "grid_points",
    "sample_points",
    "source_to_view",
]


def box_overlap(box_a: Tensor, box_b: Tensor, min_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """Intersection ``(B, 4)`` of two box sets and whether it is at least ``min_size`` px wide."""
    lo = torch.maximum(box_a[:, :2], box_b[:, :2])
    hi = torch.minimum(box_a[:, 2:], box_b[:, 2:])
    valid = ((hi - lo) >= min_size).all(dim=1)
    return torch.cat([lo, torch.maximum(hi, lo)], dim=1), valid


def grid_points(
    boxes: Tensor, n: int, jitter: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """``(B, n * n, 2)`` source-pixel points ``(x, y)``: cell centres of an ``n x n`` grid in
    each box (``jitter``: a uniform random point in each cell instead)."""
    b = boxes.shape[0]
    ar = torch.arange(n, dtype=boxes.dtype, device=boxes.device)
    gy, gx = torch.meshgrid(ar, ar, indexing="ij")
    cell = torch.stack([gx, gy], dim=-1).reshape(1, n * n, 2)
    if jitter:
        offset = torch.rand(b, n * n, 2, generator=generator, dtype=boxes.dtype)
        offset = offset.to(boxes.device)
    else:
        offset = torch.full((b, n * n, 2), 0.5, dtype=boxes.dtype, device=boxes.device)
    frac = (cell + offset) / n
    lo, size = boxes[:, None, :2], (boxes[:, 2:] - boxes[:, :2])[:, None, :]
    return lo + frac * size


def source_to_view(points: Tensor, box: Tensor, flip: Tensor, rot90: Tensor) -> Tensor:
    """Map source points ``(B, P, 2)`` to normalised view coordinates ``(u, v)`` in ``[0, 1]``.

    ``u`` runs along the view's width, ``v`` along its height (0 = left/top edge). The crop box
    is undone first, then the horizontal flip, then ``rot90`` counter-clockwise quarter turns
    (one turn takes ``(u, v)`` to ``(v, 1 - u)``).
    """
    lo = box[:, None, :2]
    size = (box[:, 2:] - box[:, :2]).clamp_min(1e-6)[:, None, :]
    uv = (points - lo) / size
    u, v = uv[..., 0], uv[..., 1]
    u = torch.where(flip.bool()[:, None], 1.0 - u, u)
    k = (rot90.long() % 4)[:, None]
    nu = torch.where(k == 1, v, torch.where(k == 2, 1.0 - u, torch.where(k == 3, 1.0 - v, u)))
    nv = torch.where(k == 1, 1.0 - u, torch.where(k == 2, 1.0 - v, torch.where(k == 3, u, v)))
    return torch.stack([nu, nv], dim=-1)


def sample_points(maps: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples ``(B, P, C)`` of ``maps`` ``(B, C, h, w)`` at view coordinates ``uv``.

    A map at any stride covers the whole view, so normalised coordinates are shared by the
    image and every feature map (``align_corners=False``, border padding).
    """
    grid = (uv * 2.0 - 1.0).unsqueeze(1).to(maps.dtype)  # (B, 1, P, 2)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2)


def dense_projector(channels: int, hidden: int, out: int) -> nn.Sequential:
    """1x1-conv projector (conv-BN-ReLU-conv) applied to a dense map."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out, 1),
    )


@register_method("dense")
class DenseContrast(SSLMethod):
    """Dense InfoNCE between matched ground points of two views, with an EMA key encoder.

    Args:
        backbone: any :class:`~eofm.models.Backbone` with dense maps.
        feature_level: index into ``backbone.forward_features(...)`` (-1: the last map; for
            ViT and Swin it gets the final norm). Under DDP every parameter must take part: with an
            earlier level use ``trainer.strategy: ddp_find_unused_parameters_true``.
        proj_hidden_dim, proj_dim: the 1x1-conv projector (conv-BN-ReLU-conv).
        temperature: InfoNCE temperature (0.2).
        grid_size: ``n`` for the ``n x n`` points per image pair inside the overlap (7).
        jitter: random point inside each grid cell instead of the cell centre.
        min_overlap: overlap side in source pixels below which an image is skipped.
        momentum, momentum_end: EMA momentum schedule of the key encoder (0.99 -> 1, cosine).
        symmetric: also query view 2 against keys of view 1 and average.
    """

    view_spec = ViewSpec(global_views=2, crop_scale=(0.4, 1.0), geometric=True)

    def __init__(
        self,
        backbone: Backbone,
        feature_level: int = -1,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        temperature: float = 0.2,
        grid_size: int = 7,
        jitter: bool = True,
        min_overlap: float = 4.0,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        symmetric: bool = True,
    ) -> None:
        super().__init__(backbone)
        n_levels = len(backbone.feature_channels)
        if not -n_levels <= feature_level < n_levels:
            raise ConfigError(f"feature_level {feature_level} outside the {n_levels} dense maps")
        if grid_size < 1:
            raise ConfigError(f"grid_size must be positive, got {grid_size}")
        self.feature_level = int(feature_level) % n_levels
        # ViT and Swin: the last level gets the final LayerNorm (normalised output tokens; it
        # also keeps every parameter in use, as DDP without find_unused_parameters requires).
        last = self.feature_level == n_levels - 1
        self.final_norm = last and backbone.family in ("vit", "swin", "swinv2")
        channels = int(backbone.feature_channels[self.feature_level])
        self.projector = dense_projector(channels, proj_hidden_dim, proj_dim)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.momentum_backbone.requires_grad_(False)
        self.momentum_projector.requires_grad_(False)
        self.temperature = float(temperature)
        self.grid_size = int(grid_size)
        self.jitter = bool(jitter)
        self.min_overlap = float(min_overlap)
        self.momentum = float(momentum)
        self.momentum_end = float(momentum_end)
        self.current_momentum = self.momentum
        self.symmetric = bool(symmetric)

    def dense_map(self, images: Tensor, momentum: bool = False) -> Tensor:
        """Projected dense map ``(B, D, h, w)`` of the query (or EMA key) encoder."""
        backbone: Any = self.momentum_backbone if momentum else self.backbone
        projector = self.momentum_projector if momentum else self.projector
        fmap = backbone.forward_features(images)[self.feature_level]
        if self.final_norm:
            fmap = backbone.model.norm(fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out: Tensor = projector(fmap)
        return out

    def matched_points(self, views: Views) -> tuple[Tensor, Tensor, Tensor]:
        """``(uv of view 0 (B, P, 2), uv of view 1, valid (B,))`` for the same ground points."""
        if len(views.boxes) < 2:
            raise ConfigError("dense needs Views with crop boxes (geometric views)")
        b = views.images[0].shape[0]
        dev = views.images[0].device
        flips = views.flips if len(views.flips) >= 2 else [torch.zeros(b, dtype=torch.bool)] * 2
        rots = views.rot90 if len(views.rot90) >= 2 else [torch.zeros(b, dtype=torch.long)] * 2
        box0, box1 = views.boxes[0].float().to(dev), views.boxes[1].float().to(dev)
        inter, valid = box_overlap(box0, box1, self.min_overlap)
        pts = grid_points(inter, self.grid_size, jitter=self.jitter and self.training)
        uv0 = source_to_view(pts, box0, flips[0].to(dev), rots[0].to(dev))
        uv1 = source_to_view(pts, box1, flips[1].to(dev), rots[1].to(dev))
        return uv0, uv1, valid

    def info_nce(self, q: Tensor, k: Tensor) -> Tensor:
        """InfoNCE over ``N`` matched point pairs ``(N, D)``: row ``i`` of ``k`` is positive."""
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / self.temperature
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))

    def forward_loss(self, views: Views, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0, x1 = views.images[0], views.images[1]
        uv0, uv1, valid = self.matched_points(views)
        maps_q = [self.dense_map(x0)]
        if self.symmetric:
            maps_q.append(self.dense_map(x1))
        with torch.no_grad():
            maps_k = [self.dense_map(x1, momentum=True)]
            if self.symmetric:
                maps_k.append(self.dense_map(x0, momentum=True))
        if bool(valid.any()):
            uvs = [(uv0, uv1), (uv1, uv0)]
            losses = []
            for (uq, uk), mq, mk in zip(uvs, maps_q, maps_k):
                q = sample_points(mq, uq)[valid].flatten(0, 1)
                k = sample_points(mk, uk)[valid].flatten(0, 1)
                losses.append(self.info_nce(q, k))
            loss = torch.stack(losses).mean()
        else:  # no overlapping pair: an exact zero that keeps every parameter in the graph
            loss = torch.stack([m.sum() for m in maps_q]).sum() * 0.0
        return {
            "loss": loss,
            "overlap": valid.float().mean(),
            "momentum": x0.new_tensor(self.current_momentum),
        }

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the key encoder (backbone and projector)."""
        m = cosine_momentum(step, max_steps, self.momentum, self.momentum_end)
        self.current_momentum = m
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projector, self.momentum_projector, m)
