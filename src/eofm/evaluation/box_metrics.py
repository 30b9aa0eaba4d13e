"""Detection scores: VOC / DOTA-devkit average precision and torchmetrics COCO mAP.

AP: greedy matching by score, IoU >= 0.5, ``difficult`` objects neither true nor false
positives, all-point interpolated precision (``use_07=True`` for the 11-point variant); mAP is
the mean over classes that have objects. For horizontal boxes torchmetrics
``MeanAveragePrecision`` (COCO mAP@[.5:.95], mAP@.5) is added when its backend (``pycocotools``
or ``faster-coco-eval``) is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from eofm.errors import ConfigError
from eofm.evaluation.boxes import Array, hbox_iou_matrix, obb_iou_matrix


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
