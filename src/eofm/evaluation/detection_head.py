"""The detection model: a CenterNet-style anchor-free head on the backbone's dense maps.

UPerNet-lite neck (simple pyramid for ViTs), then per cell a class heatmap, centre offsets,
horizontal size, oriented size and ``(cos 2a, sin 2a)``; :func:`make_targets`,
:func:`centernet_loss` and :func:`decode` (peaks -> boxes, with NMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.evaluation.boxes import Array, _canonical
from eofm.evaluation.dense import SimplePyramid, UPerNetLite
from eofm.evaluation.dota import DotaObject
from eofm.models import Backbone


class CenterNetDetector(nn.Module):
    """Anchor-free detector: backbone dense maps -> UPerNet-lite neck -> CenterNet heads.

    Outputs per cell at stride :attr:`stride`: ``K`` heatmap logits and 8 regression channels
    (centre offset x/y, log horizontal w/h, log oriented w/h, cos 2a, sin 2a), sizes in cells.
    """

    def __init__(
        self, encoder: Backbone, num_classes: int, *, width: int = 64, freeze: bool = False
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze = freeze
        channels = list(encoder.feature_channels)
        strides = list(encoder.feature_strides)
        same = len(set(strides)) == 1
        self.pyramid: nn.Module | None = SimplePyramid(channels) if same else None
        if same:
            assert isinstance(self.pyramid, SimplePyramid)
            scales = self.pyramid.scales
            self.stride = float(min(strides[0] / s for s in scales))
        else:
            self.stride = float(min(strides))
        self.multiple = int(encoder.patch_size or max(strides)) if same else int(max(strides))
        self.neck = UPerNetLite(channels, 1, width=width)
        self.heat = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        self.reg = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, 8, 1)
        )
        last = self.heat[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)
        if freeze:
            for p in encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> CenterNetDetector:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        m = self.multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        if self.freeze:
            with torch.no_grad():
                feats = self.encoder.forward_features(x)
        else:
            feats = self.encoder.forward_features(x)
        if self.pyramid is not None:
            feats = self.pyramid(feats)
        f = self.neck.features(feats)
        return self.heat(f), self.reg(f)


def _gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius for a box of ``h`` x ``w`` cells."""
    a1, b1 = 1.0, h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def make_targets(
    objects: Sequence[DotaObject],
    class_index: dict[str, int],
    out_size: tuple[int, int],
    stride: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Heatmap ``(K, h, w)``, regression targets ``(8, h, w)`` and their mask ``(h, w)``."""
    k = len(class_index)
    ho, wo = out_size
    heat = torch.zeros(k, ho, wo)
    reg = torch.zeros(8, ho, wo)
    mask = torch.zeros(ho, wo, dtype=torch.bool)
    ys = torch.arange(ho, dtype=torch.float32)[:, None]
    xs = torch.arange(wo, dtype=torch.float32)[None, :]
    for o in objects:
        if o.label not in class_index:
            continue
        cx, cy, w, h, a = o.obb
        hb = o.hbox
        cxs, cys = cx / stride, cy / stride
        ix, iy = int(cxs), int(cys)
        if not (0 <= ix < wo and 0 <= iy < ho):
            continue
        hw, hh = max((hb[2] - hb[0]) / stride, 1e-2), max((hb[3] - hb[1]) / stride, 1e-2)
        r = max(0.0, _gaussian_radius(hh, hw))
        sigma = max((2 * r + 1) / 6, 0.5)
        g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        c = class_index[o.label]
        heat[c] = torch.maximum(heat[c], g)
        heat[c, iy, ix] = 1.0
        reg[:, iy, ix] = torch.tensor(
            [
                cxs - ix,
                cys - iy,
                math.log(hw),
                math.log(hh),
                math.log(max(w / stride, 1e-2)),
                math.log(max(h / stride, 1e-2)),
                math.cos(2 * a),
                math.sin(2 * a),
            ]
        )
        mask[iy, ix] = True
    return heat, reg, mask


def centernet_loss(
    heat_logits: Tensor, reg_out: Tensor, heat_t: Tensor, reg_t: Tensor, mask: Tensor
) -> Tensor:
    """Penalty-reduced focal loss on the heatmap + L1 on the regression at object centres."""
    p = heat_logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat_t.eq(1).float()
    neg = 1 - pos
    pos_loss = (p.log() * (1 - p) ** 2 * pos).sum()
    neg_loss = ((1 - p).log() * p**2 * (1 - heat_t) ** 4 * neg).sum()
    n = pos.sum().clamp_min(1)
    focal = -(pos_loss + neg_loss) / n
    m = mask[:, None].expand_as(reg_t)
    reg = (
        F.l1_loss(reg_out[m], reg_t[m], reduction="sum") / n if bool(m.any()) else reg_out.sum() * 0
    )
    return focal + reg


@torch.no_grad()
def decode(
    heat_logits: Tensor, reg: Tensor, stride: float, *, top_k: int = 100, threshold: float = 0.05
) -> list[dict[str, Array]]:
    """Detections per image: ``hboxes`` (N, 4), ``obbs`` (N, 5), ``scores``, ``labels``."""
    heat = heat_logits.sigmoid()
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * peaks
    b, _, h, w = heat.shape
    out = []
    for i in range(b):
        flat = heat[i].reshape(-1)
        scores, idx = flat.topk(min(top_k, flat.numel()))
        keep = scores >= threshold
        scores, idx = scores[keep], idx[keep]
        labels = idx // (h * w)
        cell = idx % (h * w)
        iy, ix = cell // w, cell % w
        r = reg[i][:, iy, ix]
        cx = (ix.float() + r[0]) * stride
        cy = (iy.float() + r[1]) * stride
        hw, hh = r[2].exp() * stride, r[3].exp() * stride
        ow, oh = r[4].exp() * stride, r[5].exp() * stride
        ang = 0.5 * torch.atan2(r[7], r[6])
        hboxes = torch.stack([cx - hw / 2, cy - hh / 2, cx + hw / 2, cy + hh / 2], 1)
        obbs = (
            np.stack(
                [_canonical(*v) for v in torch.stack([cx, cy, ow, oh, ang], 1).double().numpy()]
            )
            if len(cx)
            else np.zeros((0, 5))
        )
        out.append(
            {
                "hboxes": hboxes.double().numpy(),
                "obbs": obbs,
                "scores": scores.double().numpy(),
                "labels": labels.numpy(),
            }
        )
    return out
