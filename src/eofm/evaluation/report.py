"""Evaluation outputs: ``results.json`` and a report (Markdown and/or HTML) with tables and
plots (confusion matrix, per-class scores, 2-D embedding map, segmentation overlays,
label-fraction curves, regression scatter)."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Block = tuple[Any, ...]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    _plt().close(fig)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[float]], class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (true class per row), counts annotated when small."""
    plt = _plt()
    m = np.asarray(cm, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(m[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=9)
    return _save(fig, path)


def plot_per_class(
    values: Mapping[str, Mapping[str, float | None]], path: Path, ylabel: str, title: str = ""
) -> Path:
    """Grouped bars: one group per class, one bar per model."""
    plt = _plt()
    models = list(values)
    classes = list(next(iter(values.values())).keys()) if values else []
    k, m = len(classes), max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * k * m + 1.5), 3.2))
    width = 0.8 / m
    for j, name in enumerate(models):
        ys = [values[name].get(c) for c in classes]
        ax.bar(
            np.arange(k) + (j - (m - 1) / 2) * width,
            [np.nan if y is None else y for y in ys],
            width,
            label=name,
        )
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    if m > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def embed_2d(features: Array, method: str = "pca", seed: int = 0) -> Array:
    """2-D map of ``features`` with scikit-learn PCA or t-SNE (PCA to 50 dims first)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    if method == "tsne" and len(x) > 5:
        from sklearn.manifold import TSNE

        if x.shape[1] > 50:
            x = PCA(50, random_state=seed).fit_transform(x)
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        out: Array = TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
        return out
    n_comp = min(2, x.shape[0], x.shape[1])
    out = PCA(n_comp, random_state=seed).fit_transform(x)
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((len(out), 2 - out.shape[1]))], 1)
    return out


def plot_embedding(
    features: Array,
    labels: Array | None,
    class_names: Sequence[str] | None,
    path: Path,
    *,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Scatter of a 2-D map of the embeddings, coloured by class (first class for multi-label)."""
    plt = _plt()
    x = np.asarray(features)
    y = None if labels is None else np.asarray(labels)
    if len(x) > max_points:
        sel = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x = x[sel]
        y = None if y is None else y[sel]
    xy = embed_2d(x, method, seed)
    if y is not None and y.ndim == 2:
        y = np.where(y.sum(1) > 0, y.argmax(1), -1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if y is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4)
    else:
        cmap = plt.get_cmap("tab20" if (y.max() + 1) > 10 else "tab10")
        for c in np.unique(y):
            sel = y == c
            name = (
                class_names[int(c)]
                if class_names is not None and 0 <= c < len(class_names)
                else str(c)
            )
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(int(c) % cmap.N), label=name)
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    ax.set_title(title or f"embeddings ({method.upper()})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


_RGB_NAMES = (("red", "b04", "r"), ("green", "b03", "g"), ("blue", "b02", "b"))


def rgb_index(bands: Sequence[str] | None, channels: int) -> list[int]:
    """Indices of red, green and blue among ``bands`` (by name), else the first three bands
    (or the first band three times)."""
    if bands is not None:
        low = [b.lower() for b in bands]
        idx = [next((i for i, b in enumerate(low) if b in names), -1) for names in _RGB_NAMES]
        if all(i >= 0 for i in idx):
            return idx
    return [0, 1, 2] if channels >= 3 else [0, 0, 0]


def to_rgb(raw: Any, bands: Sequence[str] | None = None) -> Array:
    """A displayable ``(H, W, 3)`` image of a ``(C, H, W)`` tensor: red, green and blue found
    by band name (else the first three bands, or one band as grey), each stretched between its
    2nd and 98th percentiles."""
    a = np.asarray(raw, dtype=np.float32)
    a = a[rgb_index(bands, a.shape[0])]
    out = np.empty_like(a)
    for i in range(3):
        band = a[i][np.isfinite(a[i])]
        lo, hi = np.percentile(band, [2, 98]) if band.size else (0.0, 1.0)
        out[i] = np.clip((a[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb: Array = np.nan_to_num(out.transpose(1, 2, 0))
    return rgb


def plot_overlays(
    overlays: Sequence[tuple[Any, Any, Any]],
    class_names: Sequence[str],
    path: Path,
    title: str = "",
    bands: Sequence[str] | None = None,
) -> Path:
    """Rows of (image, labels over the image, prediction over the image)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    k = len(class_names)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    colours = ListedColormap([cmap(i % cmap.N) for i in range(k)])
    n = len(overlays)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for r, (raw, target, pred) in enumerate(overlays):
        rgb = to_rgb(raw, bands)
        t = np.asarray(target, dtype=np.float64)
        p = np.asarray(pred, dtype=np.float64)
        for c, (img, name) in enumerate(((None, "image"), (t, "labels"), (p, "prediction"))):
            ax = axes[r, c]
            ax.imshow(rgb)
            if img is not None:
                shown = np.where(img < 0, np.nan, img)
                ax.imshow(
                    shown, cmap=colours, vmin=-0.5, vmax=k - 0.5, alpha=0.5, interpolation="nearest"
                )
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    handles = [_plt().Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(k)]
    fig.legend(handles, list(class_names), loc="lower center", ncol=min(k, 6), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_fraction_curve(
    curves: Mapping[str, tuple[Mapping[str, Mapping[str, float]], str]], path: Path
) -> Path:
    """Metric (mean +- std over seeds) against the label fraction, one line per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    metric = "score"
    for name, (summary, metric) in curves.items():
        fr = sorted(summary, key=float)
        xs = [float(f) for f in fr]
        mean = np.asarray([summary[f][f"{metric}_mean"] for f in fr])
        std = np.asarray([summary[f][f"{metric}_std"] for f in fr])
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("label fraction")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title("fine-tuning with label fractions (mean +- std over seeds)", fontsize=9)
    return _save(fig, path)


def plot_scatter(pred: Array, target: Array, names: Sequence[str], path: Path) -> Path:
    plt = _plt()
    p, t = np.asarray(pred), np.asarray(target)
    k = p.shape[1]
    fig, axes = plt.subplots(1, k, figsize=(3.5 * k, 3.3), squeeze=False)
    for j in range(k):
        ax = axes[0, j]
        ax.scatter(t[:, j], p[:, j], s=5)
        lo, hi = float(np.nanmin(t[:, j])), float(np.nanmax(t[:, j]))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"true {names[j]}")
        ax.set_ylabel("predicted")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# tables and the report


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _per_class_table(
    models: Sequence[dict[str, Any]], task: str
) -> tuple[str, list[str], list[list[str]]] | None:
    """(caption, header, rows) of per-class scores, one column per model."""

    def per(m: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        d = m.get("details", {})
        if task == "detection" and "hbox" in d:
            return {
                c: (v.get("ap"), d["obb"]["per_class"][c].get("ap"))
                for c, v in d["hbox"]["per_class"].items()
            }, "AP@0.5 horizontal / oriented"
        pc = d.get("per_class")
        if not isinstance(pc, dict):
            return None
        first: Any = next(iter(pc.values()), {})
        for key, caption in (
            ("iou", "IoU"),
            ("ap", "AP"),
            ("recall", "recall (per-class accuracy)"),
        ):
            if isinstance(first, dict) and key in first:
                return {c: v.get(key) for c, v in pc.items()}, caption
        return None

    tables = [(m["name"], per(m)) for m in models]
    tables = [(n, t) for n, t in tables if t is not None]
    if not tables:
        return None
    caption = tables[0][1][1]  # type: ignore[index]
    classes = list(tables[0][1][0])  # type: ignore[index]
    header = ["class", *[n for n, _ in tables]]
    rows = []
    for c in classes:
        row = [c]
        for _, t in tables:
            v = t[0].get(c)  # type: ignore[index]
            row.append(" / ".join(_fmt(x) for x in v) if isinstance(v, tuple) else _fmt(v))
        rows.append(row)
    return caption, header, rows


def build_blocks(result: dict[str, Any]) -> list[Block]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", header, rows),
    ("img", relative path, caption)."""
    task = result["task"]
    data = result["data"]
    models = result["models"]
    blocks: list[Block] = [("h", 1, f"Evaluation: {task} on {data['spec']}")]
    splits = ", ".join(f"{k} {v}" for k, v in data["splits"].items())
    blocks.append(
        (
            "p",
            f"Protocol **{task}**; data `{data['spec']}` ({data['kind']}, bands "
            f"{', '.join(data['bands'])}); splits: {splits} ({data['split_note']}).",
        )
    )
    keys: list[str] = []
    for m in models:
        for k in m["metrics"]:
            if k not in keys:
                keys.append(k)
    header = ["model", "spec", *keys, "seconds"]
    rows = [
        [
            m["name"],
            f"`{m['spec']}`",
            *[_fmt(m["metrics"].get(k)) for k in keys],
            f"{m['seconds']:.1f}",
        ]
        for m in models
    ]
    blocks += [("h", 2, "Results"), ("table", header, rows)]
    if task == "finetune":
        for m in models:
            fr = m["details"].get("fractions", {})
            if not fr:
                continue
            names = sorted(
                {k[: -len("_mean")] for v in fr.values() for k in v if k.endswith("_mean")}
            )
            hdr = ["fraction", "train samples", *[f"{n} (mean +- std)" for n in names]]
            rws = [
                [
                    f,
                    f"{v['train_samples']:.0f}",
                    *[f"{v[n + '_mean']:.4f} +- {v[n + '_std']:.4f}" for n in names],
                ]
                for f, v in fr.items()
            ]
            blocks += [("h", 3, f"Label fractions: {m['name']}"), ("table", hdr, rws)]
    if task == "linear":
        for m in models:
            sweep = m["details"].get("sweep") or []
            if sweep:
                hdr = ["lr", "weight decay", "val score"]
                rws = [
                    [_fmt(s["lr"]), _fmt(s["weight_decay"]), _fmt(s["val_score"])] for s in sweep
                ]
                blocks += [("h", 3, f"Sweep: {m['name']}"), ("table", hdr, rws)]
    if task in ("regression",):
        for m in models:
            pt = m["details"].get("per_target")
            if pt:
                hdr = ["target", "RMSE", "MAE", "R2"]
                rws = [
                    [t, _fmt(v["rmse"]), _fmt(v["mae"]), _fmt(v.get("r2"))] for t, v in pt.items()
                ]
                blocks += [("h", 3, f"Targets: {m['name']}"), ("table", hdr, rws)]
    if task == "change":
        hdr = ["model", "F1", "IoU", "precision", "recall", "OA"]
        rws = [
            [
                m["name"],
                *[
                    _fmt(m["details"].get(k))
                    for k in ("f1", "iou", "precision", "recall", "overall_accuracy")
                ],
            ]
            for m in models
        ]
        blocks += [("h", 2, "Change class"), ("table", hdr, rws)]
    if task == "superres":
        hdr = ["model", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM"]
        rws = [
            [
                m["name"],
                _fmt(m["metrics"].get("psnr")),
                _fmt(m["metrics"].get("ssim")),
                _fmt(m["details"]["bicubic"]["psnr"]),
                _fmt(m["details"]["bicubic"]["ssim"]),
            ]
            for m in models
        ]
        blocks += [("h", 2, "Against bicubic upsampling"), ("table", hdr, rws)]
    pc = _per_class_table(models, task)
    if pc is not None:
        caption, hdr, rws = pc
        blocks += [("h", 2, f"Per class: {caption}"), ("table", hdr, rws)]
    plots = [(m["name"], k, v) for m in models for k, v in m.get("plots", {}).items()]
    shared = result.get("plots", {})
    if plots or shared:
        blocks.append(("h", 2, "Plots"))
        for k, v in shared.items():
            blocks.append(("img", v, k.replace("_", " ")))
        for name, k, v in plots:
            blocks.append(("img", v, f"{name}: {k.replace('_', ' ')}"))
    env = result.get("environment", {})
    if env:
        blocks += [("h", 2, "Run"), ("p", "; ".join(f"{k}: {v}" for k, v in env.items()))]
    return blocks


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
        out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_html(blocks: Sequence[Block], title: str = "eofm evaluation") -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}",
        "table{border-collapse:collapse;margin:0.5em 0;}td,th{border:1px solid #ccc;",
        "padding:3px 8px;font-size:13px;text-align:right;}th{background:#eee;}",
        "td:first-child{text-align:left;}img{max-width:100%;}</style></head><body>",
    ]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            parts.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b[1]) + "</tr>")
            for r in b[2]:
                parts.append("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>")
            parts.append("</table>")
        elif b[0] == "img":
            parts.append(
                f"<figure><img src='{html.escape(b[1])}'><figcaption>{_inline(b[2])}"
                "</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: dict[str, Any], out_dir: Path, formats: Sequence[str] = ("md", "html")
) -> dict[str, str]:
    """Write ``results.json`` and ``report.md`` / ``report.html`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out_dir / "results.json")}
    blocks = build_blocks(result)
    for fmt in formats:
        if fmt not in ("md", "html"):
            continue
        text = render_markdown(blocks) if fmt == "md" else render_html(blocks)
        path = out_dir / f"report.{fmt}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths["markdown" if fmt == "md" else "html"] = str(path)
    result["report"] = paths
    write_json(result, out_dir / "results.json")
    return paths
