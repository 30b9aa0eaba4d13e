"""Semantic segmentation: frozen (or fine-tuned) encoder + light decoder, mIoU.

The decoder (``linear``, ``fcn`` or ``upernet``, see :mod:`eofm.evaluation.dense`) is trained
on random crops with cross-entropy (pixels labelled ``-1`` ignored); test images of any size
are predicted with overlapping sliding windows and scored with torchmetrics
``MulticlassJaccardIndex(ignore_index=-1)`` (mIoU over the classes present) and per-class IoU.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from eofm.data.sample import IGNORE_INDEX
from eofm.errors import DataError
from eofm.evaluation.common import Options, ProtocolOutput
from eofm.evaluation.data import EvalData
from eofm.evaluation.dense import (
    DenseModel,
    default_crop,
    load_dense,
    predict_sliding,
    steps_for,
    train_dense,
)
from eofm.evaluation.features import make_preprocess
from eofm.evaluation.metrics import SegmentationMeter
from eofm.evaluation.models import ResolvedModel

DEFAULT_EPOCHS = 10.0
DEFAULT_LR = 1e-3


def evaluate_segmentation(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """Train a decoder on ``data.train`` and report mIoU / per-class IoU on ``data.test``."""
    t0 = time.perf_counter()
    pre = make_preprocess(model, data, opts.cache_dir, size=None, progress=opts.progress)
    train = load_dense(data.train, pre, "segmentation", max_size=opts.max_size, desc="train images")
    test = load_dense(
        data.test,
        pre,
        "segmentation",
        max_size=opts.max_size,
        keep_raw=opts.overlays,
        desc="test images",
    )
    k = data.num_classes
    if k is None:
        k = int(max(int(s.target.max()) for s in train + test)) + 1
    if k < 2:
        raise DataError(data.spec, "segmentation needs at least two classes")
    crop = default_crop(model.backbone, train, opts.crop)
    net = DenseModel(model.fresh(), opts.decoder, k, freeze=opts.freeze)
    bs = opts.train_batch_size or 8
    epochs = opts.epochs if opts.epochs is not None else DEFAULT_EPOCHS
    steps = steps_for(train, crop, bs, epochs)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)

    losses = train_dense(
        net,
        train,
        loss_fn,
        crop=crop,
        steps=steps,
        batch_size=bs,
        lr=opts.lr if opts.lr is not None else DEFAULT_LR,
        device=opts.device,
        seed=opts.seed,
        progress=opts.progress,
        desc="segmentation",
    )
    t_train = time.perf_counter() - t0
    meter = SegmentationMeter(k, data.class_names)
    overlays = []
    for i, s in enumerate(test):
        logits = predict_sliding(
            net, s.image, window=crop, out_channels=k, overlap=opts.overlap, device=opts.device
        )
        pred = logits.argmax(0)
        meter.update(pred, s.target)
        if s.raw is not None and i < opts.overlays:
            overlays.append((s.raw, s.target, pred))
    result = meter.compute()
    return ProtocolOutput(
        metrics={"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"]},
        details={
            "per_class": result["per_class"],
            "confusion_matrix": result["confusion_matrix"],
            "class_names": result["class_names"],
            "decoder": opts.decoder,
            "encoder": "frozen" if opts.freeze else "fine-tuned",
            "crop": crop,
            "overlap": opts.overlap,
            "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_seconds": t_train,
            "normalisation": pre.description,
        },
        artifacts={"overlays": overlays, "class_names": result["class_names"]},
    )
