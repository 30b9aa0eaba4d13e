"""Linear-probe benchmark: all 27,000 EuroSAT RGB images with a ViT-S/16 at 64 px, end to end.

Stages, each timed: packing the JPEGs into shards (once, into ``benchmarks/_work/``, reused by
later runs and not counted in the end-to-end time), per-band statistics of the training split
(the normalisation), feature extraction of train / val / test (18,900 / 4,050 / 4,050 images,
``ShardDataset.get_batch`` + the frozen backbone, batch 256), the linear probe (AdamW, 3
learning rates x 4 weight decays chosen on the validation split, then refit) and its test
scores; a kNN classifier on the same features is added for reference.

The ViT-S is at **random initialisation** (no weights can be downloaded here), so the accuracy
measures the pipeline, not a pretrained model; the time is what the benchmark is about.

Features are computed under bfloat16 autocast by default (the CPU has AVX512-BF16; test top-1
0.6998 vs 0.6990 in float32), ``--fp32`` for float32.

Usage: ``python benchmarks/bench_linear_probe.py [--fp32] [--batch-size 256] [--no-write]``.
Data: ``$EOFM_SHARED_DATA/eurosat_rgb`` (default ``../shared/data``). Writes the section
``## Linear probe`` of ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import results_file
import torch
from results_file import command, figure, heading, publish

from eofm.data.datasets import ClassificationCSV
from eofm.data.shards import ShardDataset, pack_dataset
from eofm.data.stats import Normalizer, compute_stats
from eofm.evaluation.data import make_subset
from eofm.evaluation.features import Preprocess, extract_features
from eofm.evaluation.knn import knn_scores
from eofm.evaluation.linear import train_linear_probe
from eofm.evaluation.metrics import classification_metrics
from eofm.evaluation.models import resolve_model

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Linear probe"
SCRIPT = "bench_linear_probe.py"
WORK = REPO / "benchmarks" / "_work"


def data_root() -> Path:
    env = os.environ.get("EOFM_SHARED_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "eurosat_rgb"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(
    args: argparse.Namespace, cmd: str = f"python benchmarks/{SCRIPT}"
) -> tuple[list[str], list[dict[str, Any]]]:
    """The lines of the results.md section and the figures."""
    root = data_root()
    csv_path = root / "splits_seed42.csv"
    if not csv_path.exists():
        raise SystemExit(f"EuroSAT RGB not found at {root} (set EOFM_SHARED_DATA)")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    with csv_path.open(newline="") as f:
        splits = np.asarray([row["split"] for row in csv.DictReader(f)])
    shards = WORK / "eurosat_rgb_shards"
    t0 = time.perf_counter()
    packed_now = not (shards / "index.json").exists()
    if packed_now:
        pack_dataset(ClassificationCSV(csv_path), shards, progress=not args.quiet)
    t_pack = time.perf_counter() - t0
    ds = ShardDataset(shards)
    assert len(ds) == len(splits) == 27000, len(ds)
    parts = {
        s: make_subset(ds, np.flatnonzero(splits == name))
        for s, name in (("train", "train"), ("val", "valid"), ("test", "test"))
    }
    bands = ds.bands

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    card = compute_stats(parts["train"], max_samples=2000, progress=False)
    norm = Normalizer.from_card(card, list(bands))
    timings["statistics"] = time.perf_counter() - t0

    torch.manual_seed(0)
    model = resolve_model("random:vit_small_patch16", bands=bands, img_size=64)
    pre = Preprocess(None, norm, None, "dataset card")
    feats: dict[str, Any] = {}
    t_feat = time.perf_counter()
    for split in ("train", "val", "test"):
        t0 = time.perf_counter()
        feats[split] = extract_features(
            model,
            parts[split],
            pre,
            batch_size=args.batch_size,
            amp=args.amp,
            progress=not args.quiet,
            desc=f"features {split}",
        )
        timings[f"features {split}"] = time.perf_counter() - t0
    timings["features (all)"] = time.perf_counter() - t_feat

    t0 = time.perf_counter()
    probe = train_linear_probe(
        feats["train"].features,
        feats["train"].labels,
        val_x=feats["val"].features,
        val_y=feats["val"].labels,
        num_classes=10,
        epochs=args.probe_epochs,
    )
    timings["probe (12-setting sweep)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = classification_metrics(
        probe.scores(feats["test"].features), feats["test"].labels, ds.class_names
    )
    timings["test scores"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn = classification_metrics(
        knn_scores(
            feats["train"].features,
            feats["train"].labels,
            feats["test"].features,
            k=20,
            num_classes=10,
        ),
        feats["test"].labels,
        ds.class_names,
    )
    t_knn = time.perf_counter() - t0
    total = (
        timings["statistics"]
        + timings["features (all)"]
        + timings["probe (12-setting sweep)"]
        + timings["test scores"]
    )
    ips = 27000 / timings["features (all)"]
    pack_note = f"packed in this run: {t_pack:.1f} s" if packed_now else "already packed"
    load = os.getloadavg()
    lines = [
        *heading(SECTION, cmd),
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_name()}), {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, no GPU.",
        "- Data: EuroSAT RGB, all 27,000 images (64x64x3), `splits_seed42.csv`: train 18,900 / "
        "val 4,050 / test 4,050; read from shards (`ShardDataset.get_batch`) packed once into "
        f"`benchmarks/_work/` ({pack_note}, not counted below).",
        f"- Model: `vit_small_patch16` (ViT-S/16, 21.7M parameters) at 64 px, **random "
        "initialisation** (no pretrained weights can be downloaded here), pooled embedding "
        f"384-d, batch {args.batch_size}, {'bfloat16 autocast' if args.amp else 'float32'}.",
        f"- Probe: AdamW, {args.probe_epochs} epochs, batch 1024, all 12 settings of lr "
        "{1e-3, 1e-2, 1e-1} x wd {0, 0.01, 0.1, 1} trained at once, the best on val "
        f"(lr {probe.lr:g}, wd {probe.weight_decay:g}) scored on test.",
        f"- Load average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(other jobs share the machine).",
        "",
        "| stage | seconds | images/s |",
        "|---|---:|---:|",
    ]
    counts = {
        "features train": 18900,
        "features val": 4050,
        "features test": 4050,
        "features (all)": 27000,
    }
    for name, sec in timings.items():
        rate = f"{counts[name] / sec:,.0f}" if name in counts else ""
        lines.append(f"| {name} | {sec:.1f} | {rate} |")
    lines += [
        f"| **end to end** (statistics + features + probe + scores) | **{total:.1f}** | "
        f"{27000 / total:,.0f} |",
        "",
        f"- Test top-1 **{m['top1']:.4f}**, balanced accuracy {m['balanced_accuracy']:.4f} "
        f"(linear probe on random-init ViT-S features; chance 0.10). kNN (k=20, T=0.07) on the "
        f"same features: top-1 {knn['top1']:.4f} in {t_knn:.1f} s.",
        f"- Feature extraction: {ips:,.0f} images/s; target 'a few minutes' end to end: "
        f"{total / 60:.1f} min.",
    ]
    notes = {
        "model": "random:vit_small_patch16",
        "size": 64,
        "batch": args.batch_size,
        "amp": args.amp,
        "threads": torch.get_num_threads(),
        "probe_epochs": args.probe_epochs,
    }
    figures = [
        figure(SECTION, "linear_probe/end_to_end_s", round(total, 2), "s", cmd, **notes),
        figure(
            SECTION, "linear_probe/features_images_per_s", round(ips, 1), "images/s", cmd, **notes
        ),
        figure(
            SECTION, "linear_probe/test_top1", round(float(m["top1"]), 4), "accuracy", cmd, **notes
        ),
        figure(
            SECTION,
            "linear_probe/knn_test_top1",
            round(float(knn["top1"]), 4),
            "accuracy",
            cmd,
            **notes,
        ),
    ]
    return lines, figures


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--fp32", dest="amp", action="store_false", help="float32 features (default bfloat16)"
    )
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    results_file.add_no_write(parser)
    args = parser.parse_args(argv_list)
    lines, figures = run(args, command(SCRIPT, argv_list))
    print("\n".join(lines))
    if not args.no_write:
        publish(SECTION, lines, figures)
    return figures


if __name__ == "__main__":
    main()
