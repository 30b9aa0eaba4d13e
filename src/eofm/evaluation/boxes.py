"""Box geometry: horizontal ``(x1, y1, x2, y2)`` and oriented ``(cx, cy, w, h, angle)`` boxes,
polygons, and (rotated) IoU.

Oriented boxes have ``w >= h`` and ``angle`` (radians, of the long side from the x axis) in
``[-pi/2, pi/2)``. Rotated IoU: polygon intersection with shapely when installed, else
Sutherland-Hodgman clipping of the (convex) boxes in numpy; both exact for rectangles.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from eofm.errors import ConfigError

Array = npt.NDArray[Any]


def poly_to_hbox(poly: Array) -> Array:
    """Axis-aligned ``(x1, y1, x2, y2)`` around a polygon."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    return np.concatenate([p.min(0), p.max(0)])


def _canonical(cx: float, cy: float, w: float, h: float, a: float) -> Array:
    if h > w:
        w, h, a = h, w, a + math.pi / 2
    a = (a + math.pi / 2) % math.pi - math.pi / 2
    return np.asarray([cx, cy, w, h, a], dtype=np.float64)


def poly_to_obb(poly: Array) -> Array:
    """Oriented box ``(cx, cy, w, h, angle)`` of a 4-point polygon (its minimum-area
    rectangle: for a rectangle, exactly that rectangle)."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    hull = _convex_hull(p)
    best: tuple[float, Array] | None = None
    for i in range(len(hull)):
        e = hull[(i + 1) % len(hull)] - hull[i]
        norm = math.hypot(*e)
        if norm == 0:
            continue
        u = e / norm
        v = np.asarray([-u[1], u[0]])
        pu, pv = hull @ u, hull @ v
        area = (pu.max() - pu.min()) * (pv.max() - pv.min())
        if best is None or area < best[0] - 1e-9:
            cu, cv = (pu.max() + pu.min()) / 2, (pv.max() + pv.min()) / 2
            c = cu * u + cv * v
            a = math.atan2(u[1], u[0])
            best = (area, _canonical(c[0], c[1], pu.max() - pu.min(), pv.max() - pv.min(), a))
    if best is None:
        c = p.mean(0)
        return np.asarray([c[0], c[1], 0.0, 0.0, 0.0])
    return best[1]


def obb_to_poly(obb: Array) -> Array:
    """The 4 corners ``(4, 2)`` of an oriented box, counter-clockwise in image axes."""
    cx, cy, w, h, a = (float(v) for v in obb)
    u = np.asarray([math.cos(a), math.sin(a)]) * w / 2
    v = np.asarray([-math.sin(a), math.cos(a)]) * h / 2
    c = np.asarray([cx, cy])
    return np.stack([c - u - v, c + u - v, c + u + v, c - u + v])


def polygon_area(poly: Array) -> float:
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _convex_hull(points: Array) -> Array:
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _inside(p: tuple[float, float], a: Array, b: Array) -> bool:
    return bool((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0)


def _cut(p: tuple[float, float], q: tuple[float, float], a: Array, b: Array) -> tuple[float, float]:
    """Intersection of segment ``p-q`` with the line through ``a`` and ``b``."""
    x1, y1, x2, y2 = p[0], p[1], q[0], q[1]
    x3, y3, x4, y4 = a[0], a[1], b[0], b[1]
    den = (x1 - x2) * (y3 - y4) - (y1 - y2) * (x3 - x4)
    t = ((x1 - x3) * (y3 - y4) - (y1 - y3) * (x3 - x4)) / den
    return (float(x1 + t * (x2 - x1)), float(y1 + t * (y2 - y1)))


def clip_polygon(subject: Array, clip: Array) -> Array:
    """Sutherland-Hodgman: ``subject`` clipped by the convex polygon ``clip``."""
    out: list[tuple[float, float]] = [(float(x), float(y)) for x, y in np.asarray(subject)]
    c = np.asarray(clip, dtype=np.float64)
    if polygon_signed_area(c) < 0:
        c = c[::-1]
    for i in range(len(c)):
        a, b = c[i], c[(i + 1) % len(c)]
        inp, out = out, []
        if not inp:
            break
        prev = inp[-1]
        for cur in inp:
            if _inside(cur, a, b):
                if not _inside(prev, a, b):
                    out.append(_cut(prev, cur, a, b))
                out.append(cur)
            elif _inside(prev, a, b):
                out.append(_cut(prev, cur, a, b))
            prev = cur
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def polygon_signed_area(poly: Array) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float((np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _shapely() -> Any:
    try:
        import shapely.geometry

        return shapely.geometry
    except ImportError:  # pragma: no cover - depends on the install
        return None


def polygon_iou(p: Array, q: Array, backend: str = "auto") -> float:
    """IoU of two convex polygons (shapely when installed, else numpy clipping)."""
    geo = _shapely() if backend in ("auto", "shapely") else None
    if backend == "shapely" and geo is None:
        raise ConfigError("polygon_iou backend 'shapely' needs shapely installed")
    if geo is not None:
        a, b = geo.Polygon(p), geo.Polygon(q)
        if not a.is_valid or not b.is_valid:
            a, b = a.convex_hull, b.convex_hull
        inter = float(a.intersection(b).area)
        union = float(a.area + b.area - inter)
    else:
        pa, qa = _convex_hull(np.asarray(p)), _convex_hull(np.asarray(q))
        inter = polygon_area(clip_polygon(pa, qa)) if len(pa) >= 3 and len(qa) >= 3 else 0.0
        union = polygon_area(pa) + polygon_area(qa) - inter
    return inter / union if union > 0 else 0.0


def hbox_iou_matrix(a: Array, b: Array) -> Array:
    """IoU ``(Na, Nb)`` of horizontal boxes ``(x1, y1, x2, y2)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def obb_iou_matrix(a: Array, b: Array, backend: str = "auto") -> Array:
    """IoU ``(Na, Nb)`` of oriented boxes ``(cx, cy, w, h, angle)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 5)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
    out = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return out
    pa = [obb_to_poly(x) for x in a]
    pb = [obb_to_poly(x) for x in b]
    ha = np.stack([poly_to_hbox(p) for p in pa])
    hb = np.stack([poly_to_hbox(p) for p in pb])
    overlap = hbox_iou_matrix(ha, hb) > 0
    for i, j in zip(*np.nonzero(overlap)):
        out[i, j] = polygon_iou(pa[i], pb[j], backend)
    return out
