"""Change detection with a Siamese encoder: F1 and IoU of the change class.

Both dates go through the same encoder (frozen by default); the decoder sees the absolute
feature difference ``|f1 - f2|`` at every level and predicts change / no change per pixel.
Training uses random crops of the pair; test pairs are predicted with sliding windows.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from eofm.data.sample import IGNORE_INDEX
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
from eofm.evaluation.metrics import ChangeMeter
from eofm.evaluation.models import ResolvedModel

DEFAULT_EPOCHS = 10.0
DEFAULT_LR = 1e-3


def evaluate_change(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """Train a Siamese change decoder and report F1 / IoU of the change class."""
    t0 = time.perf_counter()
    pre = make_preprocess(model, data, opts.cache_dir, size=None, progress=opts.progress)
    train = load_dense(data.train, pre, "change", max_size=opts.max_size, desc="train pairs")
    test = load_dense(
        data.test, pre, "change", max_size=opts.max_size, keep_raw=opts.overlays, desc="test pairs"
    )
    crop = default_crop(model.backbone, train, opts.crop)
    net = DenseModel(model.fresh(), opts.decoder, 2, freeze=opts.freeze, siamese=True)
    bs = opts.train_batch_size or 8
    epochs = opts.epochs if opts.epochs is not None else DEFAULT_EPOCHS
    steps = steps_for(train, crop, bs, epochs)
    # weight the (rarer) change class by the pixel ratio, capped
    pos = sum(int((s.target == 1).sum()) for s in train)
    neg = sum(int((s.target == 0).sum()) for s in train)
    w1 = float(min(10.0, max(1.0, neg / max(pos, 1))) ** 0.5)
    weight = torch.tensor([1.0, w1])

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, y, weight=weight.to(logits.device), ignore_index=IGNORE_INDEX
        )

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
        desc="change detection",
    )
    t_train = time.perf_counter() - t0
    meter = ChangeMeter()
    overlays = []
    for i, s in enumerate(test):
        logits = predict_sliding(
            net, s.image, window=crop, out_channels=2, overlap=opts.overlap, device=opts.device
        )
        pred = logits.argmax(0)
        meter.update(pred, s.target)
        if s.raw is not None and i < opts.overlays:
            overlays.append((s.raw, s.target, pred))
    result = meter.compute()
    return ProtocolOutput(
        metrics={"f1": result["f1"], "iou": result["iou"]},
        details={
            **result,
            "decoder": opts.decoder,
            "encoder": "frozen" if opts.freeze else "fine-tuned",
            "crop": crop,
            "steps": steps,
            "change_class_weight": w1,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_seconds": t_train,
            "normalisation": pre.description,
        },
        artifacts={"overlays": overlays, "class_names": ["no_change", "change"]},
    )
