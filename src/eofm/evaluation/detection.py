"""The detection protocol: train a CenterNet head on an encoder, report mAP (DOTA-style labels).

Horizontal and oriented boxes, mAP@0.5 by the VOC / DOTA-devkit rule (plus torchmetrics COCO
mAP when its backend is installed). The parts live in their own modules and are re-exported
here so that ``from eofm.evaluation.detection import ...`` keeps working:

- :mod:`eofm.evaluation.dota`: DOTA label files, :class:`DotaDataset`, synthetic scenes;
- :mod:`eofm.evaluation.boxes`: box geometry, polygons, rotated IoU;
- :mod:`eofm.evaluation.box_metrics`: average precision and COCO mAP;
- :mod:`eofm.evaluation.detection_head`: the CenterNet head, its targets, loss and decoding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eofm.errors import DataError
from eofm.evaluation.box_metrics import (
    coco_backend,
    detection_ap,
    torchmetrics_map,
    voc_ap,
)
from eofm.evaluation.boxes import (
    Array,
    clip_polygon,
    hbox_iou_matrix,
    obb_iou_matrix,
    obb_to_poly,
    poly_to_hbox,
    poly_to_obb,
    polygon_area,
    polygon_iou,
    polygon_signed_area,
)
from eofm.evaluation.common import ProtocolOutput
from eofm.evaluation.detection_head import (
    CenterNetDetector,
    centernet_loss,
    decode,
    make_targets,
)
from eofm.evaluation.dota import (
    DotaDataset,
    DotaObject,
    format_dota,
    parse_dota,
    read_dota,
    write_dota,
    write_synthetic_detection,
)
from eofm.evaluation.features import make_preprocess


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
    from eofm.progress import progress as progress_bar

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
    for _ in progress_bar(range(steps), desc="detection", disable=not opts.progress, unit="step"):
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


__all__ = [
    "Array",
    "CenterNetDetector",
    "DotaDataset",
    "DotaObject",
    "centernet_loss",
    "clip_polygon",
    "coco_backend",
    "decode",
    "detection_ap",
    "evaluate_detection",
    "format_dota",
    "hbox_iou_matrix",
    "make_targets",
    "obb_iou_matrix",
    "obb_to_poly",
    "parse_dota",
    "poly_to_hbox",
    "poly_to_obb",
    "polygon_area",
    "polygon_iou",
    "polygon_signed_area",
    "read_dota",
    "torchmetrics_map",
    "voc_ap",
    "write_dota",
    "write_synthetic_detection",
]
