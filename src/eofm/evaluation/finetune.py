"""Fine-tuning with label fractions: stratified subsets of the training labels, several seeds.

For every fraction (default 1 %, 10 %, 100 %) and seed, a stratified subset of the training
split is drawn (:func:`eofm.evaluation.data.fraction_indices`: every class keeps
``max(1, round(f * n_c))`` samples), a copy of the backbone with a linear head is trained end
to end (AdamW, the backbone at a tenth of the head's learning rate, cosine schedule, random
flips), and the test split is scored. Results are the mean and standard deviation over seeds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eofm.errors import MissingLabelError
from eofm.evaluation.common import Options, ProtocolOutput
from eofm.evaluation.data import EvalData, dataset_labels, fraction_indices, make_subset
from eofm.evaluation.features import Preprocess, iter_batches, label_key, make_preprocess
from eofm.evaluation.metrics import classification_metrics, multilabel_metrics
from eofm.evaluation.models import ResolvedModel

DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-3
MIN_STEPS = 20


def load_tensors(
    dataset: Any, pre: Preprocess, *, batch_size: int, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """All images of ``dataset`` preprocessed into one tensor, and the labels."""
    xs, ys = [], []
    key = label_key(dataset)
    for images, labels in iter_batches(
        dataset, batch_size=batch_size, size=pre.size, num_workers=num_workers, key=key
    ):
        xs.append(pre(images))
        if labels is None:
            raise MissingLabelError(None, "fine-tuning needs labels; a sample has none")
        ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


class Classifier(nn.Module):
    """Backbone + linear head."""

    def __init__(self, backbone: nn.Module, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


def finetune_once(
    model: ResolvedModel,
    x: Tensor,
    y: Tensor,
    *,
    num_outputs: int,
    multilabel: bool,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    encoder_lr_scale: float = 0.1,
) -> Classifier:
    """Fine-tune a fresh copy of the backbone with a linear head on ``(x, y)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = Classifier(model.fresh(), int(model.backbone.embed_dim), num_outputs).to(device)
    opt = torch.optim.AdamW(
        [
            {"params": net.head.parameters(), "lr": lr},
            {"params": net.backbone.parameters(), "lr": lr * encoder_lr_scale},
        ],
        weight_decay=0.05,
    )
    n = len(x)
    bs = min(batch_size, n)
    steps = max(MIN_STEPS, math.ceil(epochs * n / bs))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    loss_fn: nn.Module = nn.MultiLabelSoftMarginLoss() if multilabel else nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        sel = torch.randint(0, n, (bs,), generator=gen)
        xb, yb = x[sel].to(device), y[sel].to(device)
        if torch.rand((), generator=gen) < 0.5:
            xb = xb.flip(-1)
        if torch.rand((), generator=gen) < 0.5:
            xb = xb.flip(-2)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    outs = [
        net(x[lo : lo + batch_size].to(device)).float().cpu() for lo in range(0, len(x), batch_size)
    ]
    return torch.cat(outs)


def evaluate_finetune(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """The label-fraction fine-tuning protocol (see the module docstring)."""
    from eofm.progress import progress as progress_bar

    dev = torch.device(opts.device)
    size = opts.img_size or int(model.backbone.img_size[0])
    pre = make_preprocess(model, data, opts.cache_dir, size=size, progress=opts.progress)
    labels = dataset_labels(data.train)
    if labels is None:
        raise MissingLabelError(data.spec, "fine-tuning needs labelled training data")
    multilabel = labels.ndim == 2
    k = int(labels.shape[1]) if multilabel else int(data.num_classes or labels.max() + 1)
    bs = opts.train_batch_size or 32
    epochs = opts.epochs if opts.epochs is not None else DEFAULT_EPOCHS
    lr = opts.lr if opts.lr is not None else DEFAULT_LR
    x_test, y_test = load_tensors(data.test, pre, batch_size=opts.batch_size)
    # read only the training samples some run needs
    plan = []
    needed: set[int] = set()
    for f in opts.fractions:
        for s in range(opts.seeds):
            idx = fraction_indices(labels, f, seed=opts.seed + s, multilabel=multilabel)
            plan.append((f, s, idx))
            needed.update(idx.tolist())
    order = np.asarray(sorted(needed), dtype=np.int64)
    x_all, y_all = load_tensors(make_subset(data.train, order), pre, batch_size=opts.batch_size)
    where = {int(i): j for j, i in enumerate(order.tolist())}
    runs: list[dict[str, Any]] = []
    for f, s, idx in progress_bar(plan, desc="fine-tuning", disable=not opts.progress):
        t0 = time.perf_counter()
        rows = torch.as_tensor([where[int(i)] for i in idx])
        net = finetune_once(
            model,
            x_all[rows],
            y_all[rows],
            num_outputs=k,
            multilabel=multilabel,
            epochs=epochs,
            lr=lr,
            batch_size=bs,
            seed=opts.seed + s,
            device=dev,
        )
        scores = predict(net, x_test, dev)
        if multilabel:
            m = multilabel_metrics(scores, y_test, data.class_names)
            headline = {"map_micro": m["map_micro"], "map_macro": m["map_macro"]}
        else:
            m = classification_metrics(scores, y_test, data.class_names)
            headline = {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"]}
        runs.append(
            {
                "fraction": f,
                "seed": opts.seed + s,
                "train_samples": len(idx),
                "seconds": time.perf_counter() - t0,
                **headline,
            }
        )
    names = ["map_micro", "map_macro"] if multilabel else ["top1", "balanced_accuracy"]
    summary: dict[str, dict[str, float]] = {}
    metrics: dict[str, float] = {}
    for f in opts.fractions:
        rows_f = [r for r in runs if r["fraction"] == f]
        entry: dict[str, float] = {
            "train_samples": float(np.mean([r["train_samples"] for r in rows_f]))
        }
        for name in names:
            vals = np.asarray([r[name] for r in rows_f], dtype=np.float64)
            entry[f"{name}_mean"] = float(vals.mean())
            entry[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            metrics[f"{name}@{f:g}"] = float(vals.mean())
        summary[f"{f:g}"] = entry
    return ProtocolOutput(
        metrics=metrics,
        details={
            "fractions": summary,
            "runs": runs,
            "epochs": epochs,
            "lr": lr,
            "batch_size": bs,
            "seeds": opts.seeds,
            "multilabel": multilabel,
            "normalisation": pre.description,
        },
        artifacts={"fraction_curve": (summary, names[0])},
    )
