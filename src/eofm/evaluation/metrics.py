"""Metric wrappers over torchmetrics, returning plain JSON-friendly dicts.

- :func:`classification_metrics`: top-1, balanced accuracy, per-class recall/precision/F1,
  confusion matrix.
- :func:`multilabel_metrics`: micro and macro mAP (the BigEarthNet protocol), per-class AP.
- :class:`SegmentationMeter`: streaming mIoU, per-class IoU, pixel accuracy
  (``MulticlassJaccardIndex(ignore_index=-1)``).
- :class:`ChangeMeter`: precision, recall, F1 and IoU of the change class.
- :func:`regression_metrics`: RMSE, MAE, R2 per target; :func:`image_quality`: PSNR, SSIM.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eofm.data.sample import IGNORE_INDEX


def _tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.array(x))
    return t.to(dtype) if dtype is not None else t


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _names(class_names: Sequence[str] | None, k: int) -> list[str]:
    return list(class_names) if class_names is not None else [str(i) for i in range(k)]


def classification_metrics(
    scores: Any, labels: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Single-label metrics from class scores ``(N, K)`` (or predicted indices ``(N,)``)."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    y = _tensor(labels, torch.int64)
    s = _tensor(scores)
    k = len(class_names) if class_names is not None else int(s.shape[1] if s.ndim == 2 else 0)
    if k == 0:
        k = int(max(int(y.max()), int(s.max())) + 1)
    pred = s.argmax(1) if s.ndim == 2 else s.to(torch.int64)
    top1 = float((pred == y).float().mean()) if len(y) else float("nan")
    kw: dict[str, Any] = {"num_classes": k, "average": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recall = multiclass_recall(pred, y, **kw)
        precision = multiclass_precision(pred, y, **kw)
        f1 = multiclass_f1_score(pred, y, **kw)
        balanced = float(multiclass_accuracy(pred, y, num_classes=k, average="macro"))
        cm = multiclass_confusion_matrix(pred, y, num_classes=k)
    present = torch.bincount(y, minlength=k) > 0
    names = _names(class_names, k)
    per_class = {
        names[i]: {
            "recall": _nan_to_none(float(recall[i])) if present[i] else None,
            "precision": float(precision[i]),
            "f1": float(f1[i]),
            "support": int(cm[i].sum()),
        }
        for i in range(k)
    }
    out: dict[str, Any] = {
        "top1": top1,
        "balanced_accuracy": balanced,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }
    if s.ndim == 2 and k > 5:
        top5 = s.topk(5, dim=1).indices
        out["top5"] = float((top5 == y[:, None]).any(1).float().mean())
    return out


def multilabel_metrics(
    scores: Any, targets: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Multi-label metrics: micro mAP over all (sample, class) pairs and macro mAP.

    Macro mAP averages the AP of the classes that have at least one positive among
    ``targets`` (a class with no positive has no defined AP); with every class present this is
    torchmetrics' ``multilabel_average_precision(average="macro")``.
    """
    from torchmetrics.functional.classification import multilabel_average_precision

    s = _tensor(scores, torch.float32)
    t = _tensor(targets).round().to(torch.int64)
    k = int(t.shape[1])
    names = _names(class_names, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        micro = float(multilabel_average_precision(s, t, num_labels=k, average="micro"))
        per = multilabel_average_precision(s, t, num_labels=k, average=None)
    positives = t.sum(0)
    present = positives > 0
    per_class = {
        names[i]: {
            "ap": float(per[i]) if present[i] else None,
            "positives": int(positives[i]),
        }
        for i in range(k)
    }
    macro = float(per[present].mean()) if bool(present.any()) else float("nan")
    pred = (s.sigmoid() > 0.5) if (s.min() < 0 or s.max() > 1) else (s > 0.5)
    exact = float((pred.to(torch.int64) == t).all(1).float().mean())
    return {
        "map_micro": micro,
        "map_macro": macro,
        "classes_evaluated": int(present.sum()),
        "subset_accuracy": exact,
        "per_class": per_class,
        "class_names": names,
    }


class SegmentationMeter:
    """Streaming semantic-segmentation metrics over ``K`` classes; ``-1`` pixels are ignored.

    ``miou`` is torchmetrics' ``MulticlassJaccardIndex(average="macro", ignore_index=-1)``,
    which leaves out classes absent from both predictions and labels.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

        self.num_classes = num_classes
        self.class_names = _names(class_names, num_classes)
        self.miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)
        self.cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target``: integer maps of equal shape (any leading dims)."""
        p = pred.reshape(-1).to(torch.int64).cpu()
        t = target.reshape(-1).to(torch.int64).cpu()
        self.miou.update(p, t)
        self.cm.update(p, t)

    def compute(self) -> dict[str, Any]:
        cm = self.cm.compute().to(torch.float64)
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        total = cm.sum()
        return {
            "miou": float(self.miou.compute()),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class": {
                n: {"iou": _nan_to_none(float(iou[i])), "pixels": int(cm[i].sum())}
                for i, n in enumerate(self.class_names)
            },
            "confusion_matrix": cm.to(torch.int64).tolist(),
            "class_names": self.class_names,
        }


class ChangeMeter:
    """Precision, recall, F1 and IoU of the change class (1); ``-1`` pixels are ignored."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        p = pred.reshape(-1).to(torch.int64).cpu()
        t = target.reshape(-1).to(torch.int64).cpu()
        keep = t != IGNORE_INDEX
        p, t = p[keep] == 1, t[keep] == 1
        self.tp += int((p & t).sum())
        self.fp += int((p & ~t).sum())
        self.fn += int((~p & t).sum())
        self.tn += int((~p & ~t).sum())

    def compute(self) -> dict[str, Any]:
        tp, fp, fn = self.tp, self.fp, self.fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        total = tp + fp + fn + self.tn
        return {
            "f1": f1,
            "iou": iou,
            "precision": precision,
            "recall": recall,
            "overall_accuracy": (tp + self.tn) / total if total else float("nan"),
            "change_pixels": tp + fn,
        }


def regression_metrics(
    pred: Any, target: Any, target_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """RMSE, MAE and R2 (per target and mean over targets); NaN targets are ignored."""
    p = _tensor(pred, torch.float64)
    t = _tensor(target, torch.float64)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    p, t = p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)
    names = list(target_names) if target_names is not None else [str(i) for i in range(p.shape[1])]
    per: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(names):
        ok = torch.isfinite(t[:, j])
        pj, tj = p[ok, j], t[ok, j]
        err = pj - tj
        var = float(((tj - tj.mean()) ** 2).sum()) if len(tj) else float("nan")
        per[name] = {
            "rmse": float(err.pow(2).mean().sqrt()),
            "mae": float(err.abs().mean()),
            "r2": _nan_to_none(1 - float(err.pow(2).sum()) / var) if var > 0 else None,
        }
    ok = torch.isfinite(t)
    err = (p - t)[ok]
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "mae": float(err.abs().mean()),
        "per_target": per,
    }


def image_quality(pred: Tensor, target: Tensor, data_range: float = 1.0) -> dict[str, float]:
    """PSNR and SSIM (torchmetrics) of ``(B, C, H, W)`` images on a ``data_range`` scale."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    p, t = pred.float(), target.float()
    psnr = float(peak_signal_noise_ratio(p, t, data_range=data_range))
    ssim_out: Any = structural_similarity_index_measure(p, t, data_range=data_range)
    ssim = float(ssim_out)
    return {"psnr": psnr, "ssim": ssim}


class ImageQualityMeter:
    """Streaming PSNR/SSIM over batches (torchmetrics metric objects)."""

    def __init__(self, data_range: float = 1.0) -> None:
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=data_range)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=data_range)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.psnr.update(pred.float().cpu(), target.float().cpu())
        self.ssim.update(pred.float().cpu(), target.float().cpu())

    def compute(self) -> dict[str, float]:
        ssim: Any = self.ssim.compute()
        return {"psnr": float(self.psnr.compute()), "ssim": float(ssim)}
