"""The task registry and :func:`run_evaluation`: one protocol, one dataset, the model and its
baselines side by side, written to ``results.json`` and a report."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eofm.errors import ConfigError, MissingLabelError, UnknownNameError
from eofm.evaluation.common import Options, ProtocolOutput
from eofm.evaluation.data import EvalData, resolve_data
from eofm.evaluation.features import make_preprocess, split_features
from eofm.evaluation.knn import knn_scores
from eofm.evaluation.linear import train_linear_probe
from eofm.evaluation.metrics import classification_metrics, multilabel_metrics
from eofm.evaluation.models import ResolvedModel, resolve_model, resolve_rgb_baseline

Protocol = Callable[[ResolvedModel, EvalData, Options], ProtocolOutput]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data_kind: str
    run: Protocol
    description: str


def _class_metrics(
    scores: Any, labels: Any, data: EvalData
) -> tuple[dict[str, float], dict[str, Any]]:
    y = np.asarray(labels)
    if y.ndim == 2:
        m = multilabel_metrics(scores, y, data.class_names)
        head = {"map_micro": m["map_micro"], "map_macro": m["map_macro"]}
    else:
        m = classification_metrics(scores, y, data.class_names)
        head = {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"]}
    return head, m


def _features(model: ResolvedModel, data: EvalData, opts: Options) -> tuple[Any, Any]:
    size = opts.img_size or int(model.backbone.img_size[0])
    pre = make_preprocess(model, data, opts.cache_dir, size=size, progress=opts.progress)
    feats = split_features(model, data, pre, opts)
    for split, fs in feats.items():
        if fs.labels is None:
            raise MissingLabelError(data.spec, f"the {split} split has no labels")
    return pre, feats


def run_knn(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """Cosine kNN on frozen features (train -> test)."""
    pre, feats = _features(model, data, opts)
    tr, te = feats["train"], feats["test"]
    t0 = time.perf_counter()
    scores = knn_scores(
        tr.features,
        tr.labels,
        te.features,
        k=opts.k,
        temperature=opts.temperature,
        num_classes=data.num_classes,
        backend=opts.knn_backend,  # type: ignore[arg-type]
    )
    head, m = _class_metrics(scores, te.labels, data)
    details = {k: v for k, v in m.items()}
    details.update(
        k=opts.k,
        temperature=opts.temperature,
        feature_dim=int(tr.features.shape[1]),
        features_cached=tr.cached and te.cached,
        feature_seconds=tr.seconds + te.seconds,
        knn_seconds=time.perf_counter() - t0,
        normalisation=pre.description,
    )
    return ProtocolOutput(head, details, {"embedding": (te.features, te.labels)})


def run_linear(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    """Linear probe on cached frozen features with an lr x wd sweep."""
    pre, feats = _features(model, data, opts)
    tr, te, va = feats["train"], feats["test"], feats.get("val")
    t0 = time.perf_counter()
    kw: dict[str, Any] = {}
    if opts.lrs is not None:
        kw["lrs"] = opts.lrs
    if opts.wds is not None:
        kw["wds"] = opts.wds
    probe = train_linear_probe(
        tr.features,
        tr.labels,
        val_x=None if va is None else va.features,
        val_y=None if va is None else va.labels,
        num_classes=data.num_classes,
        epochs=opts.probe_epochs,
        optimizer=opts.probe_optimizer,  # type: ignore[arg-type]
        seed=opts.seed,
        **kw,
    )
    probe_seconds = time.perf_counter() - t0
    scores = probe.scores(te.features)
    head, m = _class_metrics(scores, te.labels, data)
    details = dict(m)
    details.update(
        lr=probe.lr,
        weight_decay=probe.weight_decay,
        sweep=probe.sweep,
        optimizer=opts.probe_optimizer,
        feature_dim=int(tr.features.shape[1]),
        features_cached=tr.cached and te.cached,
        feature_seconds=tr.seconds + te.seconds + (va.seconds if va is not None else 0.0),
        probe_seconds=probe_seconds,
        normalisation=pre.description,
    )
    return ProtocolOutput(head, details, {"embedding": (te.features, te.labels)})


def _finetune(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.finetune import evaluate_finetune

    return evaluate_finetune(model, data, opts)


def _segmentation(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.segmentation import evaluate_segmentation

    return evaluate_segmentation(model, data, opts)


def _change(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.change import evaluate_change

    return evaluate_change(model, data, opts)


def _detection(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.detection import evaluate_detection

    out: ProtocolOutput = evaluate_detection(model, data, opts)
    return out


def _regression(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.regression import evaluate_pixel_regression, evaluate_scene_regression

    if data.kind == "pixel_regression":
        return evaluate_pixel_regression(model, data, opts)
    return evaluate_scene_regression(model, data, opts)


def _superres(model: ResolvedModel, data: EvalData, opts: Options) -> ProtocolOutput:
    from eofm.evaluation.regression import evaluate_superres

    return evaluate_superres(model, data, opts)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "knn",
            "classification",
            run_knn,
            "cosine kNN, temperature-weighted votes: top-1 / balanced acc. or micro/macro mAP",
        ),
        TaskSpec(
            "linear",
            "classification",
            run_linear,
            "linear probe on cached features, lr x wd sweep: top-1 / balanced acc. or mAP",
        ),
        TaskSpec(
            "finetune",
            "classification",
            _finetune,
            "fine-tuning with stratified label fractions and several seeds: mean +- std",
        ),
        TaskSpec(
            "segmentation",
            "segmentation",
            _segmentation,
            "frozen or fine-tuned encoder + linear/FCN/UPerNet-lite decoder: mIoU",
        ),
        TaskSpec(
            "change",
            "change",
            _change,
            "Siamese encoder, feature difference decoder: F1 and IoU of the change class",
        ),
        TaskSpec(
            "detection",
            "detection",
            _detection,
            "CenterNet-style head, horizontal and oriented boxes (DOTA labels): mAP@0.5",
        ),
        TaskSpec(
            "regression",
            "regression",
            _regression,
            "scene regression on features, or pixel regression with a dense head: RMSE",
        ),
        TaskSpec(
            "superres",
            "images",
            _superres,
            "super-resolution with a residual dense head: PSNR and SSIM vs bicubic",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownNameError("evaluation task", name, list(TASKS)) from None


def make_options(**opts: Any) -> Options:
    """:class:`Options` from keyword arguments; unknown names are a :class:`ConfigError`."""
    known = {f.name for f in fields(Options)}
    bad = sorted(set(opts) - known)
    if bad:
        raise ConfigError(f"unknown evaluation options {bad}; known: {sorted(known)}")
    clean = {k: v for k, v in opts.items() if v is not None or k in ("img_size", "out_dir")}
    if "cache_dir" in clean:
        clean["cache_dir"] = Path(clean["cache_dir"])
    if clean.get("out_dir") is not None:
        clean["out_dir"] = Path(clean["out_dir"])
    for key in ("fractions", "lrs", "wds"):
        if key in clean and clean[key] is not None:
            clean[key] = tuple(float(v) for v in clean[key])
    return Options(**clean)


def default_img_size(data: EvalData) -> int:
    """Model input size from the data: the first training image's short side, at most 224,
    rounded down to a multiple of 16 (or 32 for the larger sizes)."""
    sample = data.train[0]
    side = int(min(sample["image"].shape[-2:]))
    side = min(side, 224)
    m = 32 if side >= 128 else 16 if side >= 32 else 8
    return max(m, side - side % m)


def environment(opts: Options) -> dict[str, Any]:
    from eofm import __version__

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eofm": __version__,
        "torch": torch.__version__,
        "device": opts.device,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
    }


def _resolve_all(
    model_spec: str,
    baselines: Sequence[str],
    data: EvalData,
    img_size: int,
    backbone: str | None,
    opts: Options,
    prefix: str | None,
) -> list[tuple[str, ResolvedModel]]:
    main = resolve_model(
        model_spec,
        bands=data.bands,
        img_size=img_size,
        backbone=backbone,
        sensor=data.sensor,
        seed=opts.seed,
        prefix=prefix,
    )
    out = [("model", main)]
    for b in baselines:
        b = b.strip()
        if not b:
            continue
        if b == "random":
            if model_spec.startswith("random:"):
                continue
            arch = main.backbone.arch
            m = resolve_model(
                f"random:{arch}",
                bands=main.bands,
                img_size=main.backbone.img_size,
                sensor=main.backbone.sensor,
                seed=opts.seed,
                name=f"random init ({arch})",
            )
            out.append(("baseline", m))
        elif b.startswith("rgb:"):
            m = resolve_rgb_baseline(
                b[4:],
                bands=main.bands,
                img_size=main.backbone.img_size,
                backbone=backbone or main.backbone.arch,
                sensor=main.backbone.sensor,
            )
            out.append(("baseline", m))
        elif b.startswith(("torchgeo:", "timm:", "hf:")):
            m = resolve_model(
                b,
                bands=main.bands,
                img_size=main.backbone.img_size,
                backbone=None if b.startswith(("torchgeo:", "timm:")) else backbone,
                sensor=main.backbone.sensor,
                seed=opts.seed,
            )
            out.append(("baseline", m))
        else:
            raise ConfigError(
                f"unknown baseline {b!r}; use 'random', 'rgb:<checkpoint path>' or a published"
                " model (torchgeo:<Enum>.<MEMBER>, timm:<name>, hf:<org>/<repo>/<file>)"
            )
    return out


def _plots(
    task: str,
    data: EvalData,
    runs: list[tuple[ResolvedModel, ProtocolOutput, dict[str, Any]]],
    out_dir: Path,
    seed: int,
) -> dict[str, str]:
    """Draw the plots; per-model paths go into each entry's ``plots``; returns shared ones."""
    from eofm.evaluation import report as rp

    plot_dir = out_dir / "plots"
    shared: dict[str, str] = {}
    for i, (model, out, entry) in enumerate(runs):
        tag = f"{i}_{''.join(ch if ch.isalnum() else '_' for ch in model.name)[:40]}"
        plots: dict[str, str] = {}
        cm = out.details.get("confusion_matrix")
        names = out.details.get("class_names")
        if task in ("knn", "linear", "segmentation") and cm is not None and names:
            p = rp.plot_confusion_matrix(cm, names, plot_dir / f"{tag}_confusion.png", model.name)
            plots["confusion_matrix"] = str(p.relative_to(out_dir))
        emb = out.artifacts.get("embedding")
        if emb is not None:
            p = rp.plot_embedding(
                emb[0],
                emb[1],
                data.class_names,
                plot_dir / f"{tag}_embedding.png",
                seed=seed,
                title=f"{model.name}: test embeddings (PCA)",
            )
            plots["embedding_map"] = str(p.relative_to(out_dir))
        ov = out.artifacts.get("overlays")
        if ov:
            p = rp.plot_overlays(
                ov,
                out.artifacts.get("class_names") or [],
                plot_dir / f"{tag}_overlays.png",
                model.name,
                bands=model.bands,
            )
            plots["overlays"] = str(p.relative_to(out_dir))
        sc = out.artifacts.get("scatter")
        if sc is not None:
            p = rp.plot_scatter(sc[0], sc[1], sc[2], plot_dir / f"{tag}_scatter.png")
            plots["scatter"] = str(p.relative_to(out_dir))
        entry["plots"] = plots
    per = rp._per_class_table([e for _, _, e in runs], task)
    if per is not None and task != "detection":
        caption, header, rows = per
        values: dict[str, dict[str, float | None]] = {}
        for j, name in enumerate(header[1:], start=1):
            values[name] = {r[0]: (None if r[j] == "-" else float(r[j])) for r in rows}
        p = rp.plot_per_class(values, plot_dir / "per_class.png", caption, f"per class: {caption}")
        shared["per_class_scores"] = str(p.relative_to(out_dir))
    curves = {
        m.name: out.artifacts["fraction_curve"]
        for m, out, _ in runs
        if "fraction_curve" in out.artifacts
    }
    if curves:
        p = rp.plot_fraction_curve(curves, plot_dir / "label_fractions.png")
        shared["label_fractions"] = str(p.relative_to(out_dir))
    return shared


def run_evaluation(
    model_spec: str,
    task: str,
    data_spec: str,
    *,
    backbone: str | None = None,
    bands: Sequence[str] | None = None,
    baselines: Sequence[str] = (),
    formats: Sequence[str] = ("md", "html"),
    prefix: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    band_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    **opts: Any,
) -> dict[str, Any]:
    """Evaluate ``model_spec`` (and ``baselines``) on ``data_spec`` with protocol ``task``.

    ``model_spec``: a ``.safetensors`` model file, a checkpoint (with ``backbone=``) or
    ``random:<backbone>``; ``baselines``: ``"random"`` and/or ``"rgb:<path>"``; ``opts``: the
    fields of :class:`Options` (``out_dir=`` writes ``results.json``, ``report.md``/``.html``
    and plots). ``band_names``: the files' band order where they do not name their bands;
    ``skip_bad``: unreadable files and incomplete samples are left out and counted
    (``result["data"]["skipped"]``) instead of stopping the run. Returns the results as a dict
    (JSON-safe).
    """
    spec = get_task(task)
    options = make_options(**opts)
    t_start = time.perf_counter()
    data = resolve_data(
        data_spec,
        spec.data_kind,
        bands=bands,
        seed=options.seed,
        cache_dir=options.cache_dir,
        max_train=max_train,
        max_test=max_test,
        progress=options.progress,
        band_names=band_names,
        skip_bad=skip_bad,
    )
    img_size = options.img_size or default_img_size(data)
    models = _resolve_all(model_spec, baselines, data, img_size, backbone, options, prefix)
    runs: list[tuple[ResolvedModel, ProtocolOutput, dict[str, Any]]] = []
    for role, model in models:
        t0 = time.perf_counter()
        out = spec.run(model, data, options)
        entry = {
            "name": model.name,
            "spec": model.spec,
            "role": role,
            "arch": model.backbone.arch,
            "bands": list(model.bands),
            "img_size": list(model.backbone.img_size),
            "metrics": out.metrics,
            "details": out.details,
            "info": model.info,
            "seconds": time.perf_counter() - t0,
        }
        runs.append((model, out, entry))
    result: dict[str, Any] = {
        "task": task,
        "description": spec.description,
        "data": data.summary(),
        "options": {
            **options.to_dict(),
            "max_train": max_train,
            "max_test": max_test,
            "img_size": img_size,
        },
        "environment": environment(options),
        "models": [e for _, _, e in runs],
        "seconds": 0.0,
    }
    if options.out_dir is not None:
        result["plots"] = _plots(task, data, runs, options.out_dir, options.seed)
    result["seconds"] = time.perf_counter() - t_start
    if options.out_dir is not None:
        from eofm.evaluation.report import write_report

        write_report(result, options.out_dir, formats)
    from eofm.evaluation.report import _json_safe

    out_result: dict[str, Any] = _json_safe(result)
    return out_result


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text table of the headline metrics of every model."""
    models = result["models"]
    keys: list[str] = []
    for m in models:
        keys += [k for k in m["metrics"] if k not in keys]
    width = max([len(m["name"]) for m in models] + [5])
    head = f"{'model':<{width}}  " + "  ".join(f"{k:>14}" for k in keys)
    lines = [head, "-" * len(head)]
    for m in models:
        vals = []
        for k in keys:
            v = m["metrics"].get(k)
            vals.append(f"{v:>14.4f}" if isinstance(v, (int, float)) else f"{'-':>14}")
        lines.append(f"{m['name']:<{width}}  " + "  ".join(vals))
    return "\n".join(lines)
