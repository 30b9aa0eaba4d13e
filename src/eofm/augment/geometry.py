"""Geometry of augmented views: where a view's pixels come from in the source image.

Coordinates are continuous pixel coordinates ``(x, y)``: the centre of pixel ``(row i, col j)``
is ``(j + 0.5, i + 0.5)``; an image of width ``W`` spans ``0..W``. A view of size ``S`` is made
from the source box ``(x0, y0, x1, y1)`` by a crop-resize (pixel centres map linearly, as
:func:`torch.nn.functional.interpolate` with ``align_corners=False``), then an optional
horizontal flip, then ``k`` counter-clockwise quarter turns (:func:`torch.rot90` over the last
two dimensions), as recorded in :class:`eofm.methods.base.Views`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["source_to_view", "view_to_source"]


def _per_item(value: Tensor, like: Tensor) -> Tensor:
    """``value`` ``(B,)`` broadcast against points ``(B, N, 2)``."""
    return value.to(like.device).reshape(-1, *([1] * (like.ndim - 2)))


def view_to_source(
    points: Tensor, boxes: Tensor, flips: Tensor, rot90: Tensor, size: int | tuple[int, int]
) -> Tensor:
    """Map points ``(B, N, 2)`` ``(x, y)`` of views of ``size`` to source-image coordinates.

    ``boxes`` ``(B, 4)``, ``flips`` ``(B,)`` and ``rot90`` ``(B,)`` are one view's records.
    """
    h, w = (size, size) if isinstance(size, int) else size
    x, y = points[..., 0].float(), points[..., 1].float()
    k = _per_item(rot90.long() % 4, x)
    # Undo the quarter turns one at a time: for a square view of side s, a counter-clockwise
    # turn moves input (x, y) to output (y, s - x); its inverse is (x, y) <- (s - y, x).
    for turn in range(3, 0, -1):
        sel = k >= turn
        x, y = torch.where(sel, h - y, x), torch.where(sel, x, y)
    f = _per_item(flips.bool(), x)
    x = torch.where(f, w - x, x)
    b = boxes.float().to(points.device)
    x0, y0, x1, y1 = (_per_item(b[:, i], x) for i in range(4))
    return torch.stack([x0 + x * (x1 - x0) / w, y0 + y * (y1 - y0) / h], dim=-1)


def source_to_view(
    points: Tensor, boxes: Tensor, flips: Tensor, rot90: Tensor, size: int | tuple[int, int]
) -> Tensor:
    """Inverse of :func:`view_to_source`: source points ``(B, N, 2)`` to view coordinates.

    Points outside the crop box land outside ``0..size`` in the view.
    """
    h, w = (size, size) if isinstance(size, int) else size
    b = boxes.float().to(points.device)
    x0, y0, x1, y1 = (_per_item(b[:, i], points[..., 0]) for i in range(4))
    x = (points[..., 0].float() - x0) * w / (x1 - x0)
    y = (points[..., 1].float() - y0) * h / (y1 - y0)
    f = _per_item(flips.bool(), x)
    x = torch.where(f, w - x, x)
    k = _per_item(rot90.long() % 4, x)
    for turn in range(1, 4):
        sel = k >= turn
        x, y = torch.where(sel, y, x), torch.where(sel, w - x, y)
    return torch.stack([x, y], dim=-1)
