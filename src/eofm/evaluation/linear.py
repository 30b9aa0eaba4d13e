"""Linear probes on cached features: logistic regression with a small hyper-parameter sweep.

Features are standardised with the training mean and standard deviation. Every
(learning rate, weight decay) pair of the sweep is trained at once (one linear layer per
pair, each in its own optimiser group) with AdamW and a cosine schedule, or, with
``optimizer="lbfgs"``, full-batch L-BFGS per weight decay (L2 penalty). The pair with the best
validation score (top-1, or micro mAP for multi-label) is kept. Without a validation split, one
is carved from the training features (20 %, stratified); sets too small for that use the middle
of the grid. Multi-label probes use ``MultiLabelSoftMarginLoss`` (the BigEarthNet protocol).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.errors import ConfigError
from eofm.evaluation.data import split_indices

Array = npt.NDArray[Any]

DEFAULT_LRS = (1e-3, 1e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-2, 1e-1, 1.0)
DEFAULT_LBFGS_WDS = (1e-6, 1e-4, 1e-3, 1e-2)


@dataclass
class LinearProbe:
    """A trained probe: ``scores = ((x - mean) / std) @ weight.T + bias``."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    multilabel: bool
    lr: float
    weight_decay: float
    sweep: list[dict[str, float]] = field(default_factory=list)

    def scores(self, x: Array | Tensor) -> Tensor:
        """Logits ``(N, K)`` for features ``x``."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        z = (t - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: Array | Tensor) -> Tensor:
        s = self.scores(x)
        return (s > 0).long() if self.multilabel else s.argmax(1)


def _score(logits: Tensor, y: Tensor, multilabel: bool) -> float:
    if multilabel:
        from torchmetrics.functional.classification import multilabel_average_precision

        return float(
            multilabel_average_precision(
                logits, y.round().long(), num_labels=y.shape[1], average="micro"
            )
        )
    return float((logits.argmax(1) == y).float().mean())


def _loss_fn(multilabel: bool) -> nn.Module:
    return nn.MultiLabelSoftMarginLoss() if multilabel else nn.CrossEntropyLoss()


class _Threads:
    """Run a block with ``n`` torch threads: the probe's small matrix products are faster on
    one thread than on several competing for a busy machine."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.before = torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _fit_adamw(
    x: Tensor,
    y: Tensor,
    k: int,
    grid: list[tuple[float, float]],
    multilabel: bool,
    epochs: int,
    batch_size: int,
    seed: int,
) -> list[nn.Linear]:
    """Every (lr, wd) of ``grid`` trained at once: one weight matrix ``(D, G * K)`` (one
    matrix product per step) and a vectorised AdamW with per-config learning rate and
    decoupled weight decay (on the weights), cosine schedule."""
    gen = torch.Generator().manual_seed(seed)
    g_count, d = len(grid), x.shape[1]
    w = torch.zeros(d, g_count * k, requires_grad=True)
    b = torch.zeros(g_count * k, requires_grad=True)
    lr = torch.tensor([g[0] for g in grid], dtype=torch.float32).repeat_interleave(k)
    wd = torch.tensor([g[1] for g in grid], dtype=torch.float32).repeat_interleave(k)
    state = [torch.zeros_like(t) for t in (w, w, b, b)]  # m_w, v_w, m_b, v_b
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = x.shape[0]
    bs = min(batch_size, n)
    total = max(1, epochs * math.ceil(n / bs))
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, bs):
            sel = perm[lo : lo + bs]
            xb, yb = x[sel], y[sel]
            logits = (xb @ w + b).view(len(sel), g_count, k)
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(
                    logits, yb[:, None, :].expand_as(logits), reduction="sum"
                ) / (len(sel) * k)
            else:
                loss = F.cross_entropy(
                    logits.reshape(-1, k), yb.repeat_interleave(g_count), reduction="sum"
                ) / len(sel)
            gw, gb = torch.autograd.grad(loss, [w, b])
            step += 1
            scale = 0.5 * (1 + math.cos(math.pi * min(step - 1, total) / total))
            with torch.no_grad():
                lr_t = lr * scale
                w.mul_(1 - lr_t * wd)
                for param, grad, m, v in ((w, gw, state[0], state[1]), (b, gb, state[2], state[3])):
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                    param.sub_(lr_t * (m / (1 - beta1**step)) / denom)
    layers = []
    for i in range(g_count):
        layer = nn.Linear(d, k)
        with torch.no_grad():
            layer.weight.copy_(w[:, i * k : (i + 1) * k].T)
            layer.bias.copy_(b[i * k : (i + 1) * k])
        layers.append(layer)
    return layers


def _fit_lbfgs(
    x: Tensor, y: Tensor, k: int, wd: float, multilabel: bool, max_iter: int
) -> nn.Linear:
    layer = nn.Linear(x.shape[1], k)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )
    loss_fn = _loss_fn(multilabel)

    def closure() -> Tensor:
        opt.zero_grad()
        loss: Tensor = loss_fn(layer(x), y) + 0.5 * wd * layer.weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return layer


def train_linear_probe(
    train_x: Array,
    train_y: Array,
    *,
    val_x: Array | None = None,
    val_y: Array | None = None,
    num_classes: int | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    wds: Sequence[float] | None = None,
    epochs: int = 100,
    batch_size: int = 1024,
    optimizer: Literal["adamw", "lbfgs"] = "adamw",
    max_iter: int = 200,
    seed: int = 0,
) -> LinearProbe:
    """Train a linear probe, choosing learning rate and weight decay on validation data.

    ``train_y``: class indices ``(N,)`` or multi-hot rows ``(N, K)``. See the module docstring.
    """
    if optimizer not in ("adamw", "lbfgs"):
        raise ConfigError(f"probe optimizer must be 'adamw' or 'lbfgs', not {optimizer!r}")
    x_all = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    y_np = np.asarray(train_y)
    multilabel = y_np.ndim == 2
    y_all = torch.as_tensor(y_np.astype(np.float32) if multilabel else y_np.astype(np.int64))
    k = int(y_np.shape[1]) if multilabel else int(num_classes or int(y_np.max()) + 1)
    if wds is None:
        wds = DEFAULT_LBFGS_WDS if optimizer == "lbfgs" else DEFAULT_WDS
    lr_list = list(lrs) if optimizer == "adamw" else [1.0]
    grid = list(itertools.product(lr_list, list(wds)))
    if not grid:
        raise ConfigError("the probe sweep is empty: give at least one lr and one weight decay")
    # validation data
    xv: Tensor | None
    yv: Tensor | None
    if val_x is not None and val_y is not None:
        fit_idx = np.arange(len(x_all))
        xv = torch.as_tensor(np.asarray(val_x, dtype=np.float32))
        yv_np = np.asarray(val_y)
        yv = torch.as_tensor(yv_np.astype(np.float32) if multilabel else yv_np.astype(np.int64))
    elif len(x_all) >= 20 and len(grid) > 1:
        tr, _, va = split_indices(
            len(x_all),
            None if multilabel else y_np,
            seed=seed,
            val_fraction=0.0,
            test_fraction=0.2,
        )
        fit_idx = tr
        xv, yv = x_all[va], y_all[va]
    else:
        fit_idx = np.arange(len(x_all))
        xv = yv = None
        grid = [grid[len(grid) // 2]]
    mean = x_all[fit_idx].mean(0)
    std = x_all[fit_idx].std(0).clamp_min(1e-6) if len(fit_idx) > 1 else torch.ones_like(mean)

    def z(t: Tensor) -> Tensor:
        return (t - mean) / std

    xf, yf = z(x_all[fit_idx]), y_all[fit_idx]
    with _Threads(1):
        if optimizer == "adamw":
            layers = _fit_adamw(xf, yf, k, grid, multilabel, epochs, batch_size, seed)
        else:
            layers = [_fit_lbfgs(xf, yf, k, wd, multilabel, max_iter) for _, wd in grid]
    sweep: list[dict[str, float]] = []
    best = 0
    if xv is not None and yv is not None:
        with torch.no_grad():
            scores = [_score(layer(z(xv)), yv, multilabel) for layer in layers]
        best = int(np.argmax(scores))
        sweep = [
            {"lr": lr, "weight_decay": wd, "val_score": s} for (lr, wd), s in zip(grid, scores)
        ]
    lr, wd = grid[best]
    layer = layers[best]
    if len(fit_idx) < len(x_all) and xv is not None:
        # refit the chosen setting on all training features
        mean = x_all.mean(0)
        std = x_all.std(0).clamp_min(1e-6)
        xf = (x_all - mean) / std
        with _Threads(1):
            if optimizer == "adamw":
                fitted = _fit_adamw(xf, y_all, k, [(lr, wd)], multilabel, epochs, batch_size, seed)
                layer = fitted[0]
            else:
                layer = _fit_lbfgs(xf, y_all, k, wd, multilabel, max_iter)
    return LinearProbe(
        weight=layer.weight.detach().clone(),
        bias=layer.bias.detach().clone(),
        mean=mean,
        std=std,
        multilabel=multilabel,
        lr=lr,
        weight_decay=wd,
        sweep=sweep,
    )
