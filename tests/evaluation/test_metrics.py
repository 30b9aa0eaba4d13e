"""Metric wrappers agree with direct torchmetrics computations and with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_jaccard_index,
    multilabel_average_precision,
)

from eofm.evaluation.metrics import (
    ChangeMeter,
    SegmentationMeter,
    classification_metrics,
    image_quality,
    multilabel_metrics,
    regression_metrics,
)


def test_classification_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 5, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    m = classification_metrics(scores, labels, ["a", "b", "c", "d", "e"])
    pred = scores.argmax(1)
    assert m["top1"] == pytest.approx(float((pred == labels).float().mean()))
    direct = multiclass_accuracy(pred, labels, num_classes=5, average="macro")
    assert m["balanced_accuracy"] == pytest.approx(float(direct))
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == 200 and np.trace(cm) == int((pred == labels).sum())
    assert m["per_class"]["a"]["support"] == int((labels == 0).sum())


def test_multilabel_map_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(300, 6, generator=g) < 0.3).long()
    targets[0] = 1  # every class present
    scores = targets.float() * 0.8 + torch.rand(300, 6, generator=g)
    m = multilabel_metrics(scores, targets)
    micro = multilabel_average_precision(scores, targets, num_labels=6, average="micro")
    macro = multilabel_average_precision(scores, targets, num_labels=6, average="macro")
    assert m["map_micro"] == pytest.approx(float(micro), abs=1e-6)
    assert m["map_macro"] == pytest.approx(float(macro), abs=1e-6)
    assert m["classes_evaluated"] == 6


def test_multilabel_macro_skips_classes_without_positives() -> None:
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.6, 0.2], [0.1, 0.2, 0.9]])
    m = multilabel_metrics(scores, targets, ["x", "y", "z"])
    assert m["per_class"]["z"]["ap"] is None
    assert m["classes_evaluated"] == 2
    assert m["map_macro"] == pytest.approx(1.0)  # x and y perfectly ranked


def test_segmentation_miou_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(2)
    meter = SegmentationMeter(4)
    preds, targets = [], []
    for _ in range(3):
        t = torch.randint(-1, 4, (2, 16, 16), generator=g)
        p = torch.where(
            torch.rand(2, 16, 16, generator=g) < 0.6,
            t.clamp_min(0),
            torch.randint(0, 4, (2, 16, 16), generator=g),
        )
        meter.update(p, t)
        preds.append(p)
        targets.append(t)
    out = meter.compute()
    p, t = torch.cat(preds), torch.cat(targets)
    direct = multiclass_jaccard_index(p, t, num_classes=4, average="macro", ignore_index=-1)
    assert out["miou"] == pytest.approx(float(direct), abs=1e-6)
    keep = t != -1
    for c in range(4):
        inter = int(((p == c) & (t == c) & keep).sum())
        union = int((((p == c) | (t == c)) & keep).sum())
        assert out["per_class"][str(c)]["iou"] == pytest.approx(inter / union)


def test_segmentation_absent_class_is_left_out() -> None:
    meter = SegmentationMeter(3, ["a", "b", "c"])
    meter.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, -1, 1, 0]))
    out = meter.compute()
    assert out["per_class"]["c"]["iou"] is None
    assert out["miou"] == pytest.approx(0.5)


def test_change_f1_iou_match_torchmetrics() -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.randint(-1, 2, (4, 20, 20), generator=g)
    p = torch.randint(0, 2, (4, 20, 20), generator=g)
    meter = ChangeMeter()
    meter.update(p[:2], t[:2])
    meter.update(p[2:], t[2:])
    out = meter.compute()
    f1 = BinaryF1Score(ignore_index=-1)(p, t)
    iou = BinaryJaccardIndex(ignore_index=-1)(p, t)
    assert out["f1"] == pytest.approx(float(f1), abs=1e-6)
    assert out["iou"] == pytest.approx(float(iou), abs=1e-6)


def test_regression_rmse_exact() -> None:
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 5.0, float("nan")], ["hs"])
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["per_target"]["hs"]["rmse"] == pytest.approx(math.sqrt(4 / 3))
    two = regression_metrics(
        np.array([[0.0, 1.0], [0.0, 3.0]]), np.array([[1.0, 1.0], [1.0, 1.0]]), ["a", "b"]
    )
    assert two["per_target"]["a"]["rmse"] == pytest.approx(1.0)
    assert two["per_target"]["b"]["rmse"] == pytest.approx(math.sqrt(2.0))
    assert two["rmse"] == pytest.approx(math.sqrt((1 + 1 + 0 + 4) / 4))


def test_psnr_exact_and_ssim_of_identical_images() -> None:
    target = torch.zeros(1, 1, 16, 16)
    q = image_quality(target + 0.1, target)
    assert q["psnr"] == pytest.approx(20.0, abs=1e-4)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert image_quality(img, img)["ssim"] == pytest.approx(1.0, abs=1e-5)
