"""Regression protocols: scene regression (RMSE), pixel regression (RMSE), super-resolution
(PSNR, SSIM).

- Scene regression (e.g. significant wave height from a Wave Mode imagette): a ridge (closed
  form, penalty chosen on validation data) or MLP head on the frozen pooled features; targets
  standardised for training, metrics in the original units.
- Pixel regression (e.g. NDVI from Sentinel-1): a dense decoder trained with a masked MSE on
  standardised targets; RMSE over all labelled pixels.
- Super-resolution: the low-resolution image (area-downsampled by ``scale``) is upsampled
  bicubically and the model predicts a correction (residual); PSNR and SSIM (torchmetrics) on
  images scaled to 0..1 by the training split's 2nd-98th percentiles, next to the bicubic
  baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.errors import ConfigError, MissingLabelError
from eofm.evaluation.common import Options, ProtocolOutput
from eofm.evaluation.data import EvalData, split_indices
from eofm.evaluation.dense import (
    DenseModel,
    DenseSample,
    default_crop,
    load_dense,
    predict_sliding,
    steps_for,
    train_dense,
)
from eofm.evaluation.features import make_preprocess, split_features
from eofm.evaluation.metrics import ImageQualityMeter, regression_metrics
from eofm.evaluation.models import ResolvedModel

Array = npt.NDArray[Any]
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class RegressionHead:
    """A fitted head: ``predict(x)`` in the targets' original units."""

    net: nn.Module
    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor
    setting: dict[str, float]

    @torch.no_grad()
    def predict(self, x: Array | Tensor) -> Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        z = (t - self.x_mean) / self.x_std
        out: Tensor = self.net(z) * self.y_std + self.y_mean
        return out


def _ridge(x: Tensor, y: Tensor, alpha: float) -> nn.Linear:
    """Closed-form ridge on centred data (the bias is the target mean, zero here)."""
    d = x.shape[1]
    xd, yd = x.double(), y.double()
    a = xd.T @ xd + alpha * len(x) * torch.eye(d, dtype=torch.float64)
    w = torch.linalg.solve(a, xd.T @ yd)
    layer = nn.Linear(d, y.shape[1])
    with torch.no_grad():
        layer.weight.copy_(w.T.float())
        layer.bias.zero_()
    return layer


def _mlp(x: Tensor, y: Tensor, wd: float, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    bs = min(256, len(x))
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for lo in range(0, len(x), bs):
            sel = perm[lo : lo + bs]
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(net(x[sel]), y[sel])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return net.eval()


def fit_regression_head(
    train_x: Array,
    train_y: Array,
    *,
    val_x: Array | None = None,
    val_y: Array | None = None,
    head: str = "linear",
    alphas: Sequence[float] = ALPHAS,
    mlp_wds: Sequence[float] = (1e-4, 1e-2),
    epochs: int = 100,
    seed: int = 0,
) -> RegressionHead:
    """Fit a ridge (``head="linear"``) or MLP head; the penalty is chosen by validation RMSE
    (a 20 % split of the training features when no validation data is given)."""
    if head not in ("linear", "mlp"):
        raise ConfigError(f"regression head must be 'linear' or 'mlp', not {head!r}")
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(train_y, dtype=np.float32))
    if y.ndim == 1:
        y = y[:, None]
    xv: Tensor | None
    yv: Tensor | None
    if val_x is None or val_y is None:
        if len(x) >= 20:
            tr, _, va = split_indices(len(x), None, seed=seed, val_fraction=0.0, test_fraction=0.2)
            xv, yv, x_fit, y_fit = x[va], y[va], x[tr], y[tr]
        else:
            xv = yv = None
            x_fit, y_fit = x, y
    else:
        xv = torch.as_tensor(np.asarray(val_x, dtype=np.float32))
        yv = torch.as_tensor(np.asarray(val_y, dtype=np.float32)).reshape(len(xv), -1)
        x_fit, y_fit = x, y
    settings: list[float] = list(alphas) if head == "linear" else list(mlp_wds)

    def fit(xs: Tensor, ys: Tensor, s: float) -> RegressionHead:
        xm, xsd = xs.mean(0), xs.std(0).clamp_min(1e-6) if len(xs) > 1 else torch.ones(xs.shape[1])
        ym, ysd = ys.mean(0), ys.std(0).clamp_min(1e-6) if len(ys) > 1 else torch.ones(ys.shape[1])
        xz, yz = (xs - xm) / xsd, (ys - ym) / ysd
        net = _ridge(xz, yz, s) if head == "linear" else _mlp(xz, yz, s, epochs, seed)
        key = "alpha" if head == "linear" else "weight_decay"
        return RegressionHead(net, xm, xsd, ym, ysd, {key: s})

    if xv is None or yv is None or len(settings) == 1:
        chosen = settings[len(settings) // 2]
        return fit(x, y, chosen)
    errors = []
    for s in settings:
        h = fit(x_fit, y_fit, s)
        errors.append(float((h.predict(xv) - yv).pow(2).mean()))
    best = settings[int(np.argmin(errors))]
    out = fit(x, y, best)
    out.setting["val_mse"] = float(min(errors))
    return out


def evaluate_scene_regression(
    model: ResolvedModel, data: EvalData, opts: Options
) -> ProtocolOutput:
    """Frozen features + regression head; RMSE, MAE, R2 per target on the test split."""
    size = opts.img_size or int(model.backbone.img_size[0])
    pre = make_preprocess(model, data, opts.cache_dir, size=size, progress=opts.progress)
    feats = split_features(model, data, pre, opts)
    tr, te = feats["train"], feats["test"]
    if tr.labels is None or te.labels is None:
        raise MissingLabelError(data.spec, "scene regression needs a target per sample")
    va = feats.get("val")
    head = fit_regression_head(
        tr.features,
        tr.labels,
        val_x=None if va is None else va.features,
        val_y=None if va is None else va.labels,
        head=opts.head,
        seed=opts.seed,
    )
    pred = head.predict(te.features)
    target = np.asarray(te.labels, dtype=np.float32).reshape(len(pred), -1)
    m = regression_metrics(pred, target, data.target_names)
    # a constant (training mean) predictor for reference
    base = regression_metrics(
        np.broadcast_to(np.asarray(tr.labels).reshape(len(tr.labels), -1).mean(0), target.shape),
        target,
        data.target_names,
    )
    headline = {"rmse": m["rmse"], "mae": m["mae"]}
    for name, per in m["per_target"].items():
        headline[f"rmse_{name}"] = per["rmse"]
    return ProtocolOutput(
        metrics=headline,
        details={
            "per_target": m["per_target"],
            "mean_predictor": base["per_target"],
            "head": opts.head,
            "setting": head.setting,
            "normalisation": pre.description,
        },
        artifacts={"scatter": (pred.numpy(), target, list(m["per_target"]))},
    )


def evaluate_pixel_regression(
    model: ResolvedModel, data: EvalData, opts: Options
) -> ProtocolOutput:
    """Dense regression head; RMSE and MAE over labelled pixels (NaN targets ignored)."""
    t0 = time.perf_counter()
    pre = make_preprocess(model, data, opts.cache_dir, size=None, progress=opts.progress)
    train = load_dense(data.train, pre, "pixel_regression", max_size=opts.max_size)
    test = load_dense(data.test, pre, "pixel_regression", max_size=opts.max_size)
    t = train[0].target.shape[0]
    stacked = torch.cat([s.target.reshape(t, -1) for s in train], 1)
    finite = torch.isfinite(stacked)
    mean = torch.stack([stacked[j][finite[j]].mean() for j in range(t)])
    std = torch.stack([stacked[j][finite[j]].std().clamp_min(1e-6) for j in range(t)])
    z_train = [
        DenseSample(s.image, (s.target - mean[:, None, None]) / std[:, None, None]) for s in train
    ]
    crop = default_crop(model.backbone, train, opts.crop)
    net = DenseModel(model.fresh(), opts.decoder, t, freeze=opts.freeze)
    bs = opts.train_batch_size or 8
    epochs = opts.epochs if opts.epochs is not None else 10.0
    steps = steps_for(train, crop, bs, epochs)

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        ok = torch.isfinite(y)
        return F.mse_loss(out[ok], y[ok])

    losses = train_dense(
        net,
        z_train,
        loss_fn,
        crop=crop,
        steps=steps,
        batch_size=bs,
        lr=opts.lr if opts.lr is not None else 1e-3,
        device=opts.device,
        seed=opts.seed,
        progress=opts.progress,
        desc="pixel regression",
    )
    preds, targets = [], []
    for s in test:
        out = predict_sliding(
            net, s.image, window=crop, out_channels=t, overlap=opts.overlap, device=opts.device
        )
        out = out * std[:, None, None] + mean[:, None, None]
        preds.append(out.reshape(t, -1).T)
        targets.append(s.target.reshape(t, -1).T)
    m = regression_metrics(torch.cat(preds), torch.cat(targets), data.target_names)
    return ProtocolOutput(
        metrics={"rmse": m["rmse"], "mae": m["mae"]},
        details={
            "per_target": m["per_target"],
            "decoder": opts.decoder,
            "encoder": "frozen" if opts.freeze else "fine-tuned",
            "crop": crop,
            "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_seconds": time.perf_counter() - t0,
            "normalisation": pre.description,
        },
    )


class ResidualSR(nn.Module):
    """Super-resolution: upsampled image + a dense model's correction."""

    mean: Tensor
    std: Tensor

    def __init__(self, dense: DenseModel, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.dense = dense
        last = [m for m in dense.decoder.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)  # start from the bicubic image exactly
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))
        self.register_buffer("std", std.reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.dense((x - self.mean) / self.std)
        return out


def _lr_up(hr: Tensor, scale: int) -> Tensor:
    """Area-downsample by ``scale``, then bicubic upsampling back to the HR size, clamped."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr[None], scale_factor=1 / scale, mode="area")
    up = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)
    return up[0].clamp(0, 1)


def evaluate_superres(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """x``scale`` super-resolution: PSNR / SSIM of the model and of bicubic upsampling."""
    t0 = time.perf_counter()
    if opts.scale < 2:
        raise ConfigError(f"super-resolution scale must be at least 2, got {opts.scale}")
    pre = make_preprocess(
        model, data, opts.cache_dir, size=None, method="minmax_percentile", progress=opts.progress
    )

    def pairs(ds: Any) -> list[DenseSample]:
        out = []
        for i in range(len(ds)):
            s = ds[i]
            hr = pre(s["image"][None])[0]
            if opts.max_size is not None and max(hr.shape[-2:]) > opts.max_size:
                f = opts.max_size / max(hr.shape[-2:])
                hr = F.interpolate(hr[None], scale_factor=f, mode="area")[0]
            h, w = hr.shape[-2:]
            hr = hr[..., : h - h % opts.scale, : w - w % opts.scale]
            out.append(DenseSample(_lr_up(hr, opts.scale), hr))
        return out

    train, test = pairs(data.train), pairs(data.test)
    c = train[0].image.shape[0]
    allhr = torch.cat([s.target.reshape(c, -1) for s in train], 1)
    mean, std = allhr.mean(1), allhr.std(1).clamp_min(1e-3)
    crop = default_crop(model.backbone, train, opts.crop)
    net = ResidualSR(DenseModel(model.fresh(), opts.decoder, c, freeze=opts.freeze), mean, std)
    bs = opts.train_batch_size or 8
    epochs = opts.epochs if opts.epochs is not None else 10.0
    steps = steps_for(train, crop, bs, epochs)
    losses = train_dense(
        net,
        train,
        F.l1_loss,
        crop=crop,
        steps=steps,
        batch_size=bs,
        lr=opts.lr if opts.lr is not None else 1e-3,
        device=opts.device,
        seed=opts.seed,
        progress=opts.progress,
        desc="super-resolution",
    )
    model_q, bicubic_q = ImageQualityMeter(), ImageQualityMeter()
    for s in test:
        out = predict_sliding(
            net, s.image, window=crop, out_channels=c, overlap=opts.overlap, device=opts.device
        ).clamp(0, 1)
        model_q.update(out[None], s.target[None])
        bicubic_q.update(s.image[None], s.target[None])
    mq, bq = model_q.compute(), bicubic_q.compute()
    return ProtocolOutput(
        metrics={"psnr": mq["psnr"], "ssim": mq["ssim"]},
        details={
            "bicubic": bq,
            "scale": opts.scale,
            "decoder": opts.decoder,
            "encoder": "frozen" if opts.freeze else "fine-tuned",
            "crop": crop,
            "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            "train_seconds": time.perf_counter() - t0,
            "normalisation": pre.description,
        },
    )
