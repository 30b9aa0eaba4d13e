"""Object detection with horizontal and oriented boxes (DOTA-style labels): mAP.

- DOTA labels: one object per line, ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` (optional
  ``imagesource:``/``gsd:`` header lines); :func:`parse_dota`, :func:`format_dota`,
  :class:`DotaDataset` (``root/images/*`` + ``root/labelTxt/<stem>.txt``).
- Boxes: horizontal ``(x1, y1, x2, y2)``; oriented ``(cx, cy, w, h, angle)`` with ``w >= h``
  and ``angle`` (radians, of the long side from the x axis) in ``[-pi/2, pi/2)``.
- Rotated IoU: polygon intersection with shapely when installed, else Sutherland-Hodgman
  clipping of the (convex) boxes in numpy; both exact for rectangles.
- AP: the VOC / DOTA-devkit rule (greedy matching by score, IoU >= 0.5, ``difficult`` objects
  neither true nor false positives, all-point interpolated precision; ``use_07=True`` for the
  11-point variant); mAP is the mean over classes that have objects. For horizontal boxes
  torchmetrics ``MeanAveragePrecision`` (COCO mAP@[.5:.95], mAP@.5) is added when its backend
  (``pycocotools`` or ``faster-coco-eval``) is installed.
- Model: a CenterNet-style anchor-free head on the backbone's dense maps (UPerNet-lite neck,
  simple pyramid for ViTs): a class heatmap, centre offsets, horizontal size, oriented size and
  ``(cos 2a, sin 2a)`` per cell.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.data.datasets import EODataset
from eofm.data.readers import RASTER_SUFFIXES
from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError, EmptyDatasetError
from eofm.models import Backbone

Array = npt.NDArray[Any]

# --------------------------------------------------------------------------------------------
# DOTA labels


@dataclass
class DotaObject:
    """One labelled object: a 4-point polygon ``(4, 2)`` (x, y), its class and difficulty."""

    polygon: Array
    label: str
    difficult: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotaObject):
            return NotImplemented
        return (
            self.label == other.label
            and self.difficult == other.difficult
            and np.allclose(self.polygon, other.polygon)
        )

    @property
    def hbox(self) -> Array:
        return poly_to_hbox(self.polygon)

    @property
    def obb(self) -> Array:
        return poly_to_obb(self.polygon)


def parse_dota(text: str, source: str | Path | None = None) -> list[DotaObject]:
    """Objects of a DOTA label file's text (header lines ``imagesource:``/``gsd:`` skipped)."""
    objects: list[DotaObject] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.lower().startswith(("imagesource:", "gsd:")):
            continue
        parts = line.split()
        if len(parts) not in (9, 10):
            raise DataError(
                source,
                f"line {line_no}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]', "
                f"got {len(parts)} fields: {line!r}",
            )
        try:
            coords = np.asarray([float(v) for v in parts[:8]], dtype=np.float64).reshape(4, 2)
            difficult = int(parts[9]) if len(parts) == 10 else 0
        except ValueError:
            raise DataError(source, f"line {line_no}: non-numeric coordinates: {line!r}") from None
        objects.append(DotaObject(coords, parts[8], difficult))
    return objects


def read_dota(path: str | Path) -> list[DotaObject]:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "DOTA label file does not exist")
    return parse_dota(p.read_text(encoding="utf-8"), p)


def _num(v: float) -> str:
    return f"{v:.1f}" if float(v).is_integer() else f"{v:.6g}"


def format_dota(
    objects: Sequence[DotaObject], *, imagesource: str | None = None, gsd: float | None = None
) -> str:
    """DOTA label text for ``objects`` (the inverse of :func:`parse_dota`)."""
    lines = []
    if imagesource is not None:
        lines.append(f"imagesource:{imagesource}")
    if gsd is not None:
        lines.append(f"gsd:{gsd}")
    for o in objects:
        coords = " ".join(_num(v) for v in np.asarray(o.polygon).reshape(-1))
        lines.append(f"{coords} {o.label} {int(o.difficult)}")
    return "\n".join(lines) + "\n"


def write_dota(path: str | Path, objects: Sequence[DotaObject], **header: Any) -> None:
    Path(path).write_text(format_dota(objects, **header), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# box geometry


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


# --------------------------------------------------------------------------------------------
# average precision


def voc_ap(recall: Array, precision: Array, use_07: bool = False) -> float:
    """Area under the interpolated precision-recall curve (VOC; 11-point with ``use_07``)."""
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = precision[recall >= t].max() if np.any(recall >= t) else 0.0
            ap += float(p) / 11
        return ap
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def detection_ap(
    predictions: Sequence[dict[str, Array]],
    ground_truths: Sequence[dict[str, Array]],
    num_classes: int,
    *,
    box_type: str = "hbox",
    iou_threshold: float = 0.5,
    use_07: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class AP and mAP over images.

    ``predictions[i]``: ``boxes`` ``(N, 4)`` (hbox) or ``(N, 5)`` (obb), ``scores`` ``(N,)``,
    ``labels`` ``(N,)``; ``ground_truths[i]``: ``boxes``, ``labels``, optional ``difficult``.
    """
    if len(predictions) != len(ground_truths):
        raise ConfigError(f"{len(predictions)} prediction sets for {len(ground_truths)} images")
    iou_fn = hbox_iou_matrix if box_type == "hbox" else obb_iou_matrix
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    per_class: dict[str, dict[str, Any]] = {}
    aps = []
    for c in range(num_classes):
        dets: list[tuple[float, int, int]] = []  # score, image, index
        gts: list[tuple[Array, Array, Array]] = []  # boxes, difficult, matched
        npos = 0
        for i, (p, g) in enumerate(zip(predictions, ground_truths)):
            gl = np.asarray(g["labels"]).reshape(-1)
            sel = gl == c
            boxes = np.asarray(g["boxes"]).reshape(len(gl), -1)[sel]
            diff = np.asarray(g.get("difficult", np.zeros(len(gl), dtype=bool))).reshape(-1)[sel]
            diff = diff.astype(bool)
            gts.append((boxes, diff, np.zeros(len(boxes), dtype=bool)))
            npos += int((~diff).sum())
            pl = np.asarray(p["labels"]).reshape(-1)
            ps = np.asarray(p["scores"]).reshape(-1)
            for j in np.flatnonzero(pl == c):
                dets.append((float(ps[j]), i, int(j)))
        if npos == 0:
            per_class[names[c]] = {"ap": None, "objects": 0, "detections": len(dets)}
            continue
        dets.sort(key=lambda d: -d[0])
        tp = np.zeros(len(dets))
        fp = np.zeros(len(dets))
        for k, (_, i, j) in enumerate(dets):  # type: ignore[assignment]
            boxes, diff, matched = gts[i]
            if len(boxes) == 0:
                fp[k] = 1
                continue
            pbox = np.asarray(predictions[i]["boxes"]).reshape(
                len(np.asarray(predictions[i]["labels"]).reshape(-1)), -1
            )[j]
            ious = iou_fn(pbox[None], boxes)[0]
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold:
                if diff[best]:
                    continue
                if not matched[best]:
                    tp[k] = 1
                    matched[best] = True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        ap = voc_ap(recall, precision, use_07) if len(dets) else 0.0
        aps.append(ap)
        per_class[names[c]] = {
            "ap": ap,
            "objects": npos,
            "detections": len(dets),
            "recall": float(recall[-1]) if len(dets) else 0.0,
        }
    return {
        "map": float(np.mean(aps)) if aps else float("nan"),
        "per_class": per_class,
        "iou_threshold": iou_threshold,
        "interpolation": "11-point (VOC07)" if use_07 else "all-point",
    }


def coco_backend() -> str | None:
    """The backend torchmetrics' ``MeanAveragePrecision`` can use here, or None."""
    for name in ("faster_coco_eval", "pycocotools"):
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    return None


def torchmetrics_map(
    predictions: Sequence[dict[str, Array]], ground_truths: Sequence[dict[str, Array]]
) -> dict[str, float] | None:
    """COCO-style mAP of horizontal boxes with torchmetrics, or None without its backend.

    ``difficult`` objects are passed as ``iscrowd`` (not counted, as in COCO)."""
    backend = coco_backend()
    if backend is None:
        return None
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        backend=backend,  # type: ignore[arg-type]
    )
    preds = [
        {
            "boxes": torch.as_tensor(np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4)),
            "scores": torch.as_tensor(np.asarray(p["scores"], dtype=np.float32).reshape(-1)),
            "labels": torch.as_tensor(np.asarray(p["labels"], dtype=np.int64).reshape(-1)),
        }
        for p in predictions
    ]
    target = []
    for g in ground_truths:
        labels = np.asarray(g["labels"], dtype=np.int64).reshape(-1)
        diff = np.asarray(g.get("difficult", np.zeros(len(labels))), dtype=np.int64).reshape(-1)
        target.append(
            {
                "boxes": torch.as_tensor(np.asarray(g["boxes"], dtype=np.float32).reshape(-1, 4)),
                "labels": torch.as_tensor(labels),
                "iscrowd": torch.as_tensor(diff),
            }
        )
    metric.update(preds, target)
    out = metric.compute()
    return {k: float(out[k]) for k in ("map", "map_50", "map_75") if k in out}


# --------------------------------------------------------------------------------------------
# dataset


class DotaDataset(EODataset):
    """DOTA-style folder: ``root/images/<name>.<ext>`` and ``root/labelTxt/<name>.txt``.

    Samples hold ``image``, ``bands``, ``objects`` (list of :class:`DotaObject`) and ``path``.
    """

    def __init__(
        self, root: str | Path, *, classes: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**{k: v for k, v in kwargs.items() if v is not None})
        self.root = Path(root)
        images = sorted(
            p for p in (self.root / "images").iterdir() if p.suffix.lower() in RASTER_SUFFIXES
        )
        if not images:
            raise EmptyDatasetError(self.root / "images", "no images")
        self.records: list[tuple[Path, Path]] = []
        names: set[str] = set()
        for img in images:
            lab = self.root / "labelTxt" / f"{img.stem}.txt"
            if not lab.exists():
                raise DataError(img, f"no label file {lab}")
            self.records.append((img, lab))
            names.update(o.label for o in read_dota(lab))
        self.class_names = tuple(classes) if classes is not None else tuple(sorted(names))

    def __len__(self) -> int:
        return len(self.records)

    def sample_path(self, index: int) -> str:
        return str(self.records[index][0])

    def load(self, index: int) -> Sample:
        img, lab = self.records[index]
        image, bands, valid = self.read_image(img)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "objects": read_dota(lab),
            "path": str(img),
        }


def write_synthetic_detection(
    out_dir: str | Path, *, n: int = 120, size: int = 96, seed: int = 0
) -> Path:
    """A DOTA-style folder of ``n`` RGB scenes with rotated ``ship`` (long, bright) and
    ``building`` (squarish, red roof) objects; a few tiny ships are marked difficult."""
    from PIL import Image, ImageDraw

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        base = np.full((size, size), 90.0)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 6, size / 2)
            base += rng.normal(0, 15) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rgb = np.stack([base * 0.9, base, base * 1.1], -1) + rng.normal(0, 6, (size, size, 3))
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        objects: list[DotaObject] = []
        boxes: list[Array] = []
        for _ in range(int(rng.integers(2, 6))):
            cls = "ship" if rng.random() < 0.5 else "building"
            if cls == "ship":
                w, h, colour = rng.uniform(16, 26), rng.uniform(5, 8), (235, 235, 225)
            else:
                w, h, colour = rng.uniform(10, 15), rng.uniform(8, 12), (185, 80, 60)
            difficult = 0
            if cls == "ship" and rng.random() < 0.15:
                w, h, difficult = rng.uniform(6, 8), rng.uniform(2.5, 3.5), 1
            for _try in range(20):
                obb = np.asarray(
                    [
                        rng.uniform(4, size - 4),
                        rng.uniform(4, size - 4),
                        w,
                        h,
                        rng.uniform(-math.pi / 2, math.pi / 2),
                    ]
                )
                poly = obb_to_poly(obb)
                if poly.min() < 1 or poly.max() > size - 2:
                    continue
                if any(
                    polygon_iou(poly, obb_to_poly(b)) > 0
                    or np.hypot(*(b[:2] - obb[:2])) < (b[2] + w) / 2
                    for b in boxes
                ):
                    continue
                boxes.append(obb)
                draw.polygon([tuple(p) for p in poly], fill=colour)
                objects.append(DotaObject(poly, cls, difficult))
                break
        name = f"P{i:05d}"
        img.save(root / "images" / f"{name}.png")
        write_dota(
            root / "labelTxt" / f"{name}.txt", objects, imagesource="eofm-synthetic", gsd=1.0
        )
    (root / "done.json").write_text(json.dumps({"n": n, "size": size, "seed": seed}))
    return root


# --------------------------------------------------------------------------------------------
# model


class CenterNetDetector(nn.Module):
    """Anchor-free detector: backbone dense maps -> UPerNet-lite neck -> CenterNet heads.

    Outputs per cell at stride :attr:`stride`: ``K`` heatmap logits and 8 regression channels
    (centre offset x/y, log horizontal w/h, log oriented w/h, cos 2a, sin 2a), sizes in cells.
    """

    def __init__(
        self, encoder: Backbone, num_classes: int, *, width: int = 64, freeze: bool = False
    ) -> None:
        super().__init__()
        from eofm.evaluation.dense import SimplePyramid, UPerNetLite

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


# --------------------------------------------------------------------------------------------
# protocol


@dataclass
class _Scene:
    image: Tensor
    objects: list[DotaObject] = field(default_factory=list)


def _flip(scene: _Scene, horizontal: bool) -> _Scene:
    h, w = scene.image.shape[-2:]
    objs = []
    for o in scene.objects:
        p = o.polygon.copy()
        if horizontal:
            p[:, 0] = w - p[:, 0]
        else:
            p[:, 1] = h - p[:, 1]
        objs.append(DotaObject(p, o.label, o.difficult))
    return _Scene(scene.image.flip(-1 if horizontal else -2), objs)


def _crop_scene(scene: _Scene, crop: int, gen: torch.Generator) -> _Scene:
    h, w = scene.image.shape[-2:]
    img = scene.image
    if h < crop or w < crop:
        img = F.pad(img, (0, max(0, crop - w), 0, max(0, crop - h)))
        h, w = img.shape[-2:]
    top = int(torch.randint(0, h - crop + 1, (), generator=gen))
    left = int(torch.randint(0, w - crop + 1, (), generator=gen))
    objs = []
    for o in scene.objects:
        p = o.polygon - np.asarray([left, top])
        c = p.mean(0)
        if 0 <= c[0] < crop and 0 <= c[1] < crop:
            objs.append(DotaObject(p, o.label, o.difficult))
    return _Scene(img[:, top : top + crop, left : left + crop], objs)


def _scale_scene(scene: _Scene, max_size: int | None) -> tuple[_Scene, float]:
    h, w = scene.image.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return scene, 1.0
    f = max_size / max(h, w)
    img = F.interpolate(scene.image[None], scale_factor=f, mode="bilinear", antialias=True)[0]
    objs = [DotaObject(o.polygon * f, o.label, o.difficult) for o in scene.objects]
    return _Scene(img, objs), f


def evaluate_detection(model: Any, data: Any, opts: Any) -> Any:
    """Train the CenterNet head (and the encoder unless frozen) and report mAP@0.5 for
    horizontal and oriented boxes (plus torchmetrics COCO mAP when its backend exists)."""
    from tqdm.auto import tqdm

    from eofm.evaluation.common import ProtocolOutput
    from eofm.evaluation.features import make_preprocess

    t0 = time.perf_counter()
    names = list(data.class_names or ())
    if not names:
        raise DataError(data.spec, "detection data has no classes")
    index = {c: i for i, c in enumerate(names)}
    pre = make_preprocess(model, data, opts.cache_dir, size=None, progress=opts.progress)

    def scenes(ds: Any) -> list[_Scene]:
        out = []
        for i in range(len(ds)):
            s = ds[i]
            sc, _ = _scale_scene(
                _Scene(pre(s["image"][None])[0], list(s["objects"])), opts.max_size
            )
            out.append(sc)
        return out

    train, test = scenes(data.train), scenes(data.test)
    net = CenterNetDetector(model.fresh(), len(names), freeze=opts.freeze)
    crop = opts.crop or min(256, min(min(s.image.shape[-2:]) for s in train))
    bs = opts.train_batch_size or 8
    epochs = opts.epochs if opts.epochs is not None else 30.0
    steps = max(1, math.ceil(epochs * len(train) / bs))
    lr = opts.lr if opts.lr is not None else 1e-3
    enc_ids = {id(p) for p in net.encoder.parameters()}
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in net.parameters() if p.requires_grad and id(p) not in enc_ids],
            "lr": lr,
        }
    ]
    body = [p for p in net.encoder.parameters() if p.requires_grad]
    if body:
        groups.append({"params": body, "lr": lr * 0.1})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * s / steps))
        ),
    )
    gen = torch.Generator().manual_seed(opts.seed)
    torch.manual_seed(opts.seed)
    dev = torch.device(opts.device)
    net.to(dev).train()
    losses = []
    for _ in tqdm(range(steps), desc="detection", disable=not opts.progress, unit="step"):
        batch = []
        for j in torch.randint(0, len(train), (bs,), generator=gen).tolist():
            sc = _crop_scene(train[j], crop, gen)
            if torch.rand((), generator=gen) < 0.5:
                sc = _flip(sc, True)
            if torch.rand((), generator=gen) < 0.5:
                sc = _flip(sc, False)
            batch.append(sc)
        x = torch.stack([s.image for s in batch]).to(dev)
        heat, reg = net(x)
        targets = [make_targets(s.objects, index, heat.shape[-2:], net.stride) for s in batch]
        ht = torch.stack([t[0] for t in targets]).to(dev)
        rt = torch.stack([t[1] for t in targets]).to(dev)
        mt = torch.stack([t[2] for t in targets]).to(dev)
        loss = centernet_loss(heat, reg, ht, rt, mt)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    preds_h, preds_o, gts_h, gts_o = [], [], [], []
    with torch.no_grad():
        for sc in test:
            heat, reg = net(sc.image[None].to(dev))
            d = decode(heat.cpu(), reg.cpu(), net.stride, threshold=opts.score_threshold)[0]
            preds_h.append({"boxes": d["hboxes"], "scores": d["scores"], "labels": d["labels"]})
            preds_o.append({"boxes": d["obbs"], "scores": d["scores"], "labels": d["labels"]})
            lab = np.asarray([index.get(o.label, -1) for o in sc.objects], dtype=np.int64)
            diff = np.asarray([o.difficult for o in sc.objects], dtype=bool)
            hb = np.stack([o.hbox for o in sc.objects]) if sc.objects else np.zeros((0, 4))
            ob = np.stack([o.obb for o in sc.objects]) if sc.objects else np.zeros((0, 5))
            gts_h.append({"boxes": hb, "labels": lab, "difficult": diff})
            gts_o.append({"boxes": ob, "labels": lab, "difficult": diff})
    ap_h = detection_ap(preds_h, gts_h, len(names), box_type="hbox", class_names=names)
    ap_o = detection_ap(preds_o, gts_o, len(names), box_type="obb", class_names=names)
    coco = torchmetrics_map(preds_h, gts_h)
    metrics = {"map50_hbox": ap_h["map"], "map50_obb": ap_o["map"]}
    if coco is not None:
        metrics["coco_map_hbox"] = coco["map"]
    return ProtocolOutput(
        metrics=metrics,
        details={
            "hbox": ap_h,
            "obb": ap_o,
            "torchmetrics_coco": coco
            if coco is not None
            else "not computed: install pycocotools or faster-coco-eval",
            "encoder": "frozen" if opts.freeze else "fine-tuned",
            "crop": crop,
            "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_seconds": time.perf_counter() - t0,
            "normalisation": pre.description,
        },
    )
