"""The files of a curation run: subset manifest (CSV + JSON), clusters, and a markdown report
with plots (cluster sizes before/after, entropies, class distribution, sample grids)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset, Subset

from eofm.curation.pipeline import CurationResult
from eofm.data.sample import Sample

__all__ = ["sample_paths", "write_manifest", "write_report"]

Array = npt.NDArray[Any]


def _base(ds: Dataset[Sample]) -> tuple[Dataset[Sample], Array | None]:
    idx: Array | None = None
    while isinstance(ds, Subset):
        sub = np.asarray(ds.indices, dtype=np.int64)
        idx = sub if idx is None else sub[idx]
        ds = ds.dataset
    return ds, idx


def _path_text(entry: Any) -> str:
    if entry is None:
        return ""
    if isinstance(entry, (list, tuple)):
        return ";".join(str(e) for e in entry)
    return str(entry)


def sample_paths(dataset: Dataset[Sample], indices: Sequence[int] | Array) -> list[str]:
    """Source path of each sample (empty where the dataset does not record one); read from the
    dataset's records or the shards' path lists, without reading images."""
    inner, sub = _base(dataset)
    idx = np.asarray(indices, dtype=np.int64)
    if sub is not None:
        idx = sub[idx]
    sample_path = getattr(inner, "sample_path", None)
    if callable(sample_path):
        return [_path_text(sample_path(int(i))) for i in idx]
    store = getattr(inner, "_store", None)  # ShardDataset: per-shard path lists
    if store is not None and hasattr(store, "offsets") and hasattr(store, "paths"):
        offsets = np.asarray(store.offsets)
        shards = np.searchsorted(offsets, idx, side="right") - 1
        out = [""] * idx.shape[0]
        for s in np.unique(shards):
            entries = store.paths(int(s))
            for p in np.flatnonzero(shards == s):
                out[p] = _path_text(entries[int(idx[p] - offsets[s])])
        return out
    return [""] * idx.shape[0]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(
    out_dir: str | os.PathLike[str],
    result: CurationResult,
    dataset: Dataset[Sample],
    *,
    labels: Array | None = None,
    class_names: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """``manifest.csv`` (one row per kept sample: index, path, cluster per level, distance to
    the level-1 centroid, label) and ``manifest.json`` (settings, sizes, entropies)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    idx = result.indices
    clusters = result.clusters
    per_level = [clusters.point_labels(level)[idx] for level in range(1, clusters.levels + 1)]
    dist = np.sqrt(np.maximum(clusters.sqdist[idx].astype(np.float64), 0.0))
    paths = sample_paths(dataset, idx)
    header = ["index", "path", *[f"cluster_l{i + 1}" for i in range(clusters.levels)]]
    header.append("distance")
    y = None if labels is None else np.asarray(labels)
    if y is not None:
        header.append("label")
    csv_path = out / "manifest.csv"
    tmp = csv_path.with_name(f"{csv_path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, i in enumerate(idx.tolist()):
            values: list[Any] = [i, paths[row], *[int(lv[row]) for lv in per_level]]
            values.append(f"{dist[row]:.6g}")
            if y is not None:
                lab = y[i]
                if np.ndim(lab) == 0:
                    k = int(lab)
                    values.append(class_names[k] if class_names and k < len(class_names) else k)
                else:
                    hot = np.flatnonzero(np.asarray(lab) > 0.5).tolist()
                    names = [class_names[j] if class_names else str(j) for j in hot]
                    values.append(";".join(names))
            writer.writerow(values)
    os.replace(tmp, csv_path)
    summary = {
        "format": "eofm-curation-manifest",
        "version": 1,
        "pool_size": clusters.num_points,
        "subset_size": result.size,
        "clusters": clusters.clusters,
        "kmeans": clusters.info,
        "stats": result.stats,
        "timings_s": result.timings,
        "class_names": list(class_names) if class_names else None,
        **(extra or {}),
    }
    json_path = out / "manifest.json"
    _atomic_text(json_path, json.dumps(summary, indent=1, default=str))
    return csv_path, json_path


# --------------------------------------------------------------------------------------------
# plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_cluster_sizes(result: CurationResult, path: Path) -> Path:
    plt = _plt()
    c = result.clusters
    mask = np.zeros(c.num_points, dtype=bool)
    mask[result.indices] = True
    levels = c.levels
    fig, axes = plt.subplots(1, levels, figsize=(5.0 * levels, 3.4), squeeze=False)
    for level in range(1, levels + 1):
        ax = axes[0][level - 1]
        before = c.sizes(level)
        after = c.sizes(level, mask)
        order = np.argsort(-before, kind="stable")
        x = np.arange(1, before.shape[0] + 1)
        ax.plot(x, np.maximum(before[order], 0.8), label="pool", lw=1.5)
        ax.plot(x, np.maximum(after[order], 0.8), label="kept", lw=1.5)
        ax.set_yscale("log")
        ax.set_xlabel(f"level-{level} cluster (by pool size)")
        ax.set_ylabel("points")
        st = result.stats.get(f"level{level}", {})
        ax.set_title(
            f"level {level}: entropy {st.get('entropy_before', 0):.2f} -> "
            f"{st.get('entropy_after', 0):.2f} nats",
            fontsize=9,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_classes(stats: dict[str, Any], class_names: Sequence[str] | None, path: Path) -> Path:
    plt = _plt()
    before = np.asarray(stats["counts_before"], dtype=np.float64)
    after = np.asarray(stats["counts_after"], dtype=np.float64)
    k = before.shape[0]
    names = (
        list(class_names) if class_names and len(class_names) == k else [str(i) for i in range(k)]
    )
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * k + 2), 3.4))
    ax.bar(x - 0.2, before / max(before.sum(), 1), width=0.4, label="pool")
    ax.bar(x + 0.2, after / max(after.sum(), 1), width=0.4, label="kept")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(
        f"class entropy {stats['entropy_before']:.3f} -> {stats['entropy_after']:.3f} nats",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _images(dataset: Dataset[Sample], idx: Array) -> tuple[list[Any], Sequence[str]]:
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch) and idx.size:
        batch = get_batch(idx)
        return list(batch["image"]), batch["bands"]
    samples = [dataset[int(i)] for i in idx]
    bands = samples[0]["bands"] if samples else ()
    return [s["image"] for s in samples], bands


def _plot_grid(
    result: CurationResult,
    dataset: Dataset[Sample],
    path: Path,
    *,
    clusters: int,
    per_cluster: int,
    seed: int = 0,
) -> Path:
    """Rows: the largest level-1 clusters of the pool; columns: kept samples of each (closest
    to the centroid first)."""
    from eofm.data.preview import display_image

    plt = _plt()
    c = result.clusters
    kept = result.indices
    lab = c.labels[kept]
    sizes = c.sizes(1)
    rows = [int(i) for i in np.argsort(-sizes, kind="stable")[:clusters] if sizes[i] > 0]
    fig, axes = plt.subplots(
        max(1, len(rows)),
        per_cluster,
        figsize=(1.3 * per_cluster + 1.2, 1.3 * max(1, len(rows))),
        squeeze=False,
    )
    for r, cl in enumerate(rows):
        members = kept[lab == cl]
        members = members[np.argsort(c.sqdist[members], kind="stable")][:per_cluster]
        images, bands = _images(dataset, np.sort(members))
        order = np.argsort(np.argsort(members))  # images came in sorted index order
        for j in range(per_cluster):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(members):
                img = display_image(images[int(order[j])], bands)
                ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        axes[r][0].set_title(
            f"cluster {cl}: {int(sizes[cl])} -> {int((lab == cl).sum())}",
            fontsize=7,
            loc="left",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike[str],
    result: CurationResult,
    dataset: Dataset[Sample],
    *,
    class_names: Sequence[str] | None = None,
    title: str = "Curation report",
    settings: dict[str, Any] | None = None,
    grid_clusters: int = 8,
    grid_per_cluster: int = 6,
) -> Path:
    """``report.md`` with ``cluster_sizes.png``, ``classes.png`` (labelled data) and
    ``clusters_grid.png`` next to it; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = result.stats
    lines = [f"# {title}", ""]
    if settings:
        lines += ["## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings.items()]
        lines.append("")
    lines += [
        "## Result",
        "",
        f"- Pool: {st['pool_size']:,} samples; kept {st['subset_size']:,} "
        f"({st['subset_size'] / max(1, st['pool_size']):.1%}; target {st.get('target', '?'):,}).",
        f"- Clusters per level (finest first): {result.clusters.clusters}.",
    ]
    if "near_duplicates_removed" in st:
        lines.append(
            f"- Near-duplicates removed before sampling: {st['near_duplicates_removed']:,}."
        )
    timing = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in result.timings.items())
    if timing:
        lines.append(f"- Time: {timing}.")
    lines += [
        "",
        "| level | clusters | non-empty pool / kept | largest pool / kept | entropy pool | "
        "entropy kept | normalised pool | normalised kept |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in range(1, result.clusters.levels + 1):
        s = st[f"level{level}"]
        lines.append(
            f"| {level} | {s['clusters']} | {s['nonempty_before']} / {s['nonempty_after']} | "
            f"{s['max_size_before']} / {s['max_size_after']} | {s['entropy_before']:.3f} | "
            f"{s['entropy_after']:.3f} | {s['normalized_entropy_before']:.3f} | "
            f"{s['normalized_entropy_after']:.3f} |"
        )
    lines += ["", "Entropies in nats; normalised = divided by log(number of clusters).", ""]
    _plot_cluster_sizes(result, out / "cluster_sizes.png")
    lines += ["![cluster sizes](cluster_sizes.png)", ""]
    if "classes" in st:
        cs = st["classes"]
        k = len(cs["counts_before"])
        names = (
            list(class_names)
            if class_names and len(class_names) == k
            else [str(i) for i in range(k)]
        )
        lines += [
            "## Classes",
            "",
            f"Class entropy {cs['entropy_before']:.3f} -> {cs['entropy_after']:.3f} nats "
            f"(normalised {cs['normalized_entropy_before']:.3f} -> "
            f"{cs['normalized_entropy_after']:.3f}). Labels were not used for curation.",
            "",
            "| class | pool | kept | share pool | share kept |",
            "|---|---:|---:|---:|---:|",
        ]
        tb, ta = max(1, sum(cs["counts_before"])), max(1, sum(cs["counts_after"]))
        for name, b, a in zip(names, cs["counts_before"], cs["counts_after"]):
            lines.append(f"| {name} | {b} | {a} | {b / tb:.1%} | {a / ta:.1%} |")
        _plot_classes(cs, names, out / "classes.png")
        lines += ["", "![classes](classes.png)", ""]
    if grid_clusters > 0 and grid_per_cluster > 0:
        _plot_grid(
            result,
            dataset,
            out / "clusters_grid.png",
            clusters=grid_clusters,
            per_cluster=grid_per_cluster,
        )
        lines += [
            "## Samples per cluster",
            "",
            f"The {grid_clusters} largest level-1 clusters of the pool (pool size -> kept), "
            "kept samples closest to the centroid first.",
            "",
            "![clusters](clusters_grid.png)",
            "",
        ]
    lines += [
        "## Files",
        "",
        "- `manifest.csv`: kept samples (index, path, cluster per level, distance, label).",
        "- `manifest.json`: settings and the numbers above; `clusters.npz`: the hierarchy.",
        "",
    ]
    path = out / "report.md"
    _atomic_text(path, "\n".join(lines))
    return path
