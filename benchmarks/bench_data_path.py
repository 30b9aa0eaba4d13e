"""The data path: ``eofm pretrain`` against a plain PyTorch loop on the same work.

    python benchmarks/bench_data_path.py                    # RGB + MS + features, ~25 min quiet
    python benchmarks/bench_data_path.py --only rgb --steps 100
    python benchmarks/bench_data_path.py --only workers --steps 12   # 0 vs 1 DataLoader worker
    python benchmarks/bench_data_path.py --no-write         # print the table only

Cases, each in a fresh process with 2 threads, on one split of real data:

- ``rgb``: EuroSAT RGB (JPEG), ``splits_seed42.csv`` train split (18,900 images);
- ``ms``: EuroSAT-MS (13-band uint16 GeoTIFF), ``eurosat_ms_subset/shrey160/train`` (216 images).

Runs per case, interleaved (plain, eofm without cache, eofm cold, eofm warm, then ``--repeats``
- 1 more (plain, eofm warm) pairs) so that both sides see the same load on a shared machine;
the warm ratio is the median of the pairs' ratios. eofm runs with the plain loop's
augmentations (``SAME_AUGMENT``), so that both sides do the same work:

- ``plain``: the loop a user would write: the split decoded once into one uint8/uint16 tensor
  (decoding timed apart), timm ResNet-18, lightly's SimCLR projection head and NTXentLoss,
  kornia augmentations on the batch (random resized crop, flip, colour jitter, grayscale and
  blur for RGB; crop, flip, blur and band-wise brightness/contrast for 13 bands), AdamW with
  warm-up and cosine decay;
- ``eofm``: ``eofm pretrain --config configs/simclr_tiny.yaml`` with the same backbone, batch,
  steps and head sizes, as a user runs it: ``nocache`` (``data.cache=false
  data.num_workers=0``: the data path before the decode-once cache), ``cold`` (an empty
  ``$EOFM_CACHE_DIR``: packs the split on first use, then trains) and ``warm`` (the same cache
  again).

Images/s is the training throughput (steps x batch / time from the first to the last step);
``wall`` is the whole command (start-up, packing, dataset card, checkpoints, export).
``features`` times ``eofm evaluate``'s feature extraction (random-init ResNet-18 over the RGB
test split) reading the files (``EOFM_CACHE=0``) and from the warm cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import results_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "data_path"
SECTION = "## Data path: eofm pretrain vs a plain loop"
SHARED = Path(os.environ.get("EOFM_SHARED_DATA", REPO.parent / "shared" / "data"))
MS_BANDS = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"

#: eofm's recipe with the plain loop's augmentations (no 90-degree rotations, no band dropout),
#: so that both sides do the same work and the ratio measures the data path and the engine.
SAME_AUGMENT = ["augment.rot90=false", "augment.band_dropout_p=0"]

CASES: dict[str, dict[str, Any]] = {
    "rgb": {
        "title": "EuroSAT RGB (JPEG), train split",
        "path": SHARED / "eurosat_rgb" / "splits_seed42.csv",
        "set": ["data.split=train", *SAME_AUGMENT],
        "batch": 128,
    },
    "ms": {
        "title": "EuroSAT-MS (13-band GeoTIFF), shrey160/train",
        "path": SHARED / "eurosat_ms_subset" / "shrey160" / "train",
        # the plain loop's 13-band list has no colour jitter or grayscale on B04/B03/B02
        "set": [
            f"data.band_names={MS_BANDS}",
            *SAME_AUGMENT,
            "augment.rgb_jitter_p=0",
            "augment.rgb_grayscale_p=0",
        ],
        "batch": 64,
    },
}


# --------------------------------------------------------------------------------------------
# the plain loop


def _decode(case: str) -> tuple[Any, float]:
    """The split as one integer tensor ``(N, C, 64, 64)`` and the seconds decoding took."""
    import numpy as np
    import torch

    t0 = time.perf_counter()
    if case == "rgb":
        import csv

        from PIL import Image

        path = CASES[case]["path"]
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
        col = next(c for c in ("path", "filename", "file", "image") if c in rows[0])
        arrays = [np.asarray(Image.open(path.parent / r[col]).convert("RGB")) for r in rows]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        import rasterio

        files = sorted(Path(CASES[case]["path"]).rglob("*.tif"))
        arrays = []
        for f in files:
            with rasterio.open(f) as src:
                arrays.append(src.read())
        images = torch.from_numpy(np.stack(arrays).astype(np.int32))
    return images, time.perf_counter() - t0


def _augment(case: str, channels: int) -> Any:
    import kornia.augmentation as K
    import torch
    from torch import nn

    ops: list[nn.Module] = [
        K.RandomResizedCrop((64, 64), scale=(0.2, 1.0)),
        K.RandomHorizontalFlip(),
    ]
    if case == "rgb":
        ops += [
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
    ops.append(K.RandomGaussianBlur((7, 7), (0.1, 1.0), p=0.5))
    seq = nn.Sequential(*ops)

    def band_jitter(x: torch.Tensor) -> torch.Tensor:  # 13 bands: brightness/contrast per band
        b = x.shape[0]
        gain = 1 + 0.2 * (2 * torch.rand(b, channels, 1, 1) - 1)
        shift = 0.2 * (2 * torch.rand(b, channels, 1, 1) - 1)
        keep = (torch.rand(b, 1, 1, 1) < 0.8).float()
        return keep * (x * gain + shift) + (1 - keep) * x

    def run(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = seq(x)
        return out if case == "rgb" else band_jitter(out)

    return run


def plain(case: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """The plain loop (see the module docstring); returns images/s and the decode time."""
    import timm
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    images, decode_s = _decode(case)
    n, c = images.shape[:2]
    batch = int(CASES[case]["batch"])
    scale = 255.0 if case == "rgb" else 10000.0
    sample = images[torch.randperm(n)[:2000]].float() / scale
    mean = sample.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
    backbone = timm.create_model("resnet18", num_classes=0, in_chans=c)
    head = SimCLRProjectionHead(backbone.num_features, 256, 64, num_layers=2, batch_norm=True)
    model = torch.nn.Sequential(backbone, head)
    criterion = NTXentLoss(temperature=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    warm = max(1, int(0.1 * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    augment = _augment(case, c)
    model.train()
    order = torch.randperm(n)
    pos = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n), 0
        idx = order[pos : pos + batch]
        pos += batch
        x = images[idx].float() / scale
        v1, v2 = augment(x), augment(x)
        z = model((torch.cat([v1, v2]) - mean) / std)
        loss = criterion(*z.chunk(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    return {
        "img_s": steps * batch / seconds,
        "train_s": seconds,
        "decode_s": decode_s,
        "final_loss": float(loss.detach()),
    }


# --------------------------------------------------------------------------------------------
# eofm pretrain


def eofm_command(case: str, steps: int, mode: str, workers: int | None = None) -> list[str]:
    spec = CASES[case]
    sets = [
        f"data.path={spec['path']}",
        *spec["set"],
        "model.backbone=resnet18",
        "model.img_size=64",
        f"data.batch_size={spec['batch']}",
        f"trainer.max_steps={steps}",
        "trainer.num_threads=2",
        f"output.dir={WORK / 'runs'}",
        f"output.name={case}_{mode}",
        "output.overwrite=true",
        "trainer.progress_bar=false",
    ]
    if mode == "nocache":
        sets += ["data.cache=false", f"data.num_workers={workers or 0}"]
    elif workers is not None:
        sets.append(f"data.num_workers={workers}")
    return [
        sys.executable,
        "-m",
        "eofm.cli.main",
        "pretrain",
        "--config",
        str(REPO / "configs" / "simclr_tiny.yaml"),
        "--set",
        *sets,
    ]


def eofm_run(case: str, steps: int, mode: str, workers: int | None = None) -> dict[str, Any]:
    """``eofm pretrain`` in a subprocess; images/s from its summary, wall time around it."""
    cache = WORK / f"cache_{case}"
    if mode == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, EOFM_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        eofm_command(case, steps, mode, workers),
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"eofm pretrain ({case}, {mode}) failed:\n{proc.stderr[-3000:]}")
    found = re.search(r"throughput:\s*([0-9.]+) images/s", proc.stdout)
    if not found:
        raise RuntimeError(f"no throughput line in the output of {case}/{mode}:\n{proc.stdout}")
    out: dict[str, Any] = {"img_s": float(found.group(1)), "wall_s": wall}
    metas = sorted((cache / "shards").glob("*/eofm_cache.json")) if mode == "cold" else []
    if metas:
        out["pack_s"] = float(json.loads(metas[0].read_text())["pack_seconds"])
    return out


# --------------------------------------------------------------------------------------------
# feature extraction


def features(cached: bool) -> dict[str, Any]:
    """Feature extraction img/s over the RGB test split (files, or the warm cache)."""
    import torch

    torch.set_num_threads(2)
    os.environ["EOFM_CACHE_DIR"] = str(WORK / "cache_rgb")
    os.environ["EOFM_CACHE"] = "1" if cached else "0"
    from eofm.data.catalog import open_dataset
    from eofm.data.stats import Normalizer
    from eofm.evaluation.features import Preprocess, extract_features
    from eofm.evaluation.models import resolve_model

    ds = open_dataset(CASES["rgb"]["path"], split="test")
    model = resolve_model("random:resnet18", bands=["red", "green", "blue"], img_size=64)
    norm = Normalizer([87.0, 97.0, 103.0], [51.0, 35.0, 29.0], bands=["red", "green", "blue"])
    pre = Preprocess(None, norm)
    if cached:  # pack once (timed apart), then extract from the cache
        from eofm.data.cache import cached_dataset

        cached_dataset(ds, progress=False, quiet=True)
    res = extract_features(model, ds, pre, batch_size=256, progress=False)
    return {"img_s": len(ds) / res.seconds, "n": len(ds)}


# --------------------------------------------------------------------------------------------
# driver


def _child(args: argparse.Namespace) -> None:
    kind, case, mode = args.child.split(":")
    if kind == "plain":
        result = plain(case, args.steps if case == "rgb" else args.ms_steps)
    elif kind == "features":
        result = features(mode == "cached")
    else:
        raise SystemExit(f"unknown child {args.child}")
    Path(args.child_out).write_text(json.dumps(result))


def _in_child(spec: str, steps: int, ms_steps: int) -> dict[str, Any]:
    out = WORK / f"child_{spec.replace(':', '_')}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        spec,
        "--child-out",
        str(out),
        "--steps",
        str(steps),
        "--ms-steps",
        str(ms_steps),
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure_case(
    case: str, steps: int, ms_steps: int, repeats: int = 2
) -> dict[str, list[dict[str, Any]]]:
    n = steps if case == "rgb" else ms_steps
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "nocache": [], "cold": [], "warm": []}
    order = ["plain", "nocache", "cold", "warm"] + ["plain", "warm"] * (repeats - 1)
    for mode in order:
        t0 = time.perf_counter()
        if mode == "plain":
            r = _in_child(f"plain:{case}:-", steps, ms_steps)
        else:
            r = eofm_run(case, n, mode)
        r["load"] = results_file.load_str()
        runs[mode].append(r)
        print(
            f"{case} {mode:8s} {r['img_s']:7.1f} img/s  ({time.perf_counter() - t0:.0f} s,"
            f" load {r['load']})",
            flush=True,
        )
    return runs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def render(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    feats: dict[str, dict[str, Any]] | None,
    argv: list[str],
    steps: int,
    ms_steps: int,
) -> tuple[list[str], list[dict[str, Any]]]:
    cmd = results_file.command("bench_data_path.py", argv)
    lines = results_file.heading(SECTION, cmd)
    lines += [
        f"Machine: {results_file.machine_line()}. Same model (ResNet-18, SimCLR head 256/64,"
        " NT-Xent 0.2, AdamW), batch and steps on both sides; each run in a fresh process with"
        " 2 threads; eofm with the plain loop's augmentations (`augment.rot90=false"
        " augment.band_dropout_p=0`; 13 bands: no colour jitter on B04/B03/B02). Runs"
        " interleaved: plain, no cache, cold, warm, then (plain, warm) pairs. Ratio warm = the"
        " median over the (plain, warm) pairs of warm img/s / plain img/s, with the range;"
        " ratio cold = cold / the first plain run. `wall` is the whole eofm command, packing"
        " included.",
        "",
        "| data | steps x batch | plain loop img/s | eofm, no cache | eofm cold | eofm warm |"
        " ratio cold | ratio warm (range, pairs) | wall: no cache / cold / warm (s) |"
        " first-use packing (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    figures: list[dict[str, Any]] = []
    for case, runs in results.items():
        p = _mean([r["img_s"] for r in runs["plain"]])
        nc, cold = runs["nocache"][0], runs["cold"][0]
        warm = _mean([r["img_s"] for r in runs["warm"]])
        pairs = sorted(
            w["img_s"] / q["img_s"] for q, w in zip(runs["plain"], runs["warm"], strict=True)
        )
        ratio = statistics.median(pairs)
        cold_ratio = cold["img_s"] / runs["plain"][0]["img_s"]
        wall_warm = _mean([r["wall_s"] for r in runs["warm"]])
        n = steps if case == "rgb" else ms_steps
        lines.append(
            f"| {CASES[case]['title']} | {n} x {CASES[case]['batch']} | {p:.1f} |"
            f" {nc['img_s']:.1f} ({nc['img_s'] / p:.2f}x) | {cold['img_s']:.1f} | {warm:.1f} |"
            f" **{cold_ratio:.2f}** | **{ratio:.2f}** ({pairs[0]:.2f}-{pairs[-1]:.2f},"
            f" {len(pairs)}) |"
            f" {nc['wall_s']:.0f} / {cold['wall_s']:.0f} / {wall_warm:.0f} |"
            f" {cold.get('pack_s', float('nan')):.1f} |"
        )
        for name, value, unit in (
            (f"data_path_{case}_plain_img_s", p, "img/s"),
            (f"data_path_{case}_nocache_img_s", nc["img_s"], "img/s"),
            (f"data_path_{case}_cold_img_s", cold["img_s"], "img/s"),
            (f"data_path_{case}_warm_img_s", warm, "img/s"),
            (f"data_path_{case}_ratio_warm", ratio, "x"),
            (f"data_path_{case}_ratio_warm_min", pairs[0], "x"),
            (f"data_path_{case}_ratio_cold", cold_ratio, "x"),
            (f"data_path_{case}_wall_nocache_s", nc["wall_s"], "s"),
            (f"data_path_{case}_wall_cold_s", cold["wall_s"], "s"),
            (f"data_path_{case}_pack_s", cold.get("pack_s"), "s"),
        ):
            figures.append(results_file.figure(SECTION, name, value, unit, cmd))
        decode = _mean([r["decode_s"] for r in runs["plain"]])
        lines.append("")
        lines.append(
            f"{case}: plain loop's one-off decode into a tensor {decode:.1f} s (not in its"
            f" img/s); loads during the runs: "
            + ", ".join(f"{m} {r['load']}" for m in runs for r in runs[m])
            + "."
        )
        lines.append("")
    if feats:
        before, after = feats["files"]["img_s"], feats["cached"]["img_s"]
        lines += [
            "| `eofm evaluate` feature extraction (random ResNet-18, RGB test split,"
            f" {feats['files']['n']} images) | img/s |",
            "|---|---:|",
            f"| reading the files (`EOFM_CACHE=0`, before) | {before:.0f} |",
            f"| from the decode-once cache (after) | {after:.0f} ({after / before:.2f}x) |",
            "",
        ]
        figures.append(results_file.figure(SECTION, "features_files_img_s", before, "img/s", cmd))
        figures.append(results_file.figure(SECTION, "features_cached_img_s", after, "img/s", cmd))
    return lines, figures


WORKERS_SECTION = "## Data path: DataLoader workers on this machine"


def measure_workers(steps: int) -> list[dict[str, Any]]:
    """EuroSAT RGB with 0 and 1 DataLoader workers, from the files and from the warm cache
    (the measurement behind ``data.num_workers: auto``)."""
    rows = []
    eofm_run("rgb", 2, "cold")  # make sure the cache is packed
    for mode in ("warm", "nocache"):
        for workers in (0, 1, 0, 1):
            r = eofm_run("rgb", steps, mode, workers)
            r.update(mode=mode, workers=workers, load=results_file.load_str())
            print(f"workers {mode:8s} {workers} {r['img_s']:7.1f} img/s (load {r['load']})")
            rows.append(r)
    return rows


def render_workers(
    rows: list[dict[str, Any]], argv: list[str], steps: int
) -> tuple[list[str], list[dict[str, Any]]]:
    cmd = results_file.command("bench_data_path.py", argv)
    lines = results_file.heading(WORKERS_SECTION, cmd)
    lines += [
        f"Machine: {results_file.machine_line()}. `eofm pretrain` (SimCLR, ResNet-18, batch 128,"
        f" {steps} steps, 2 threads) on the EuroSAT RGB train split; each setting twice,"
        " alternating 0 and 1 workers.",
        "",
        "| data read from | 0 workers img/s | 1 worker img/s | 1 worker / 0 |",
        "|---|---:|---:|---:|",
    ]
    figures = []
    for mode, title in (("warm", "the decode-once cache"), ("nocache", "the JPEG files")):
        w0 = _mean([r["img_s"] for r in rows if r["mode"] == mode and r["workers"] == 0])
        w1 = _mean([r["img_s"] for r in rows if r["mode"] == mode and r["workers"] == 1])
        lines.append(f"| {title} | {w0:.1f} | {w1:.1f} | {w1 / w0:.2f} |")
        for w, v in ((0, w0), (1, w1)):
            figures.append(
                results_file.figure(WORKERS_SECTION, f"workers_{mode}_{w}_img_s", v, "img/s", cmd)
            )
    lines += ["", "Loads: " + ", ".join(f"{r['mode']}/{r['workers']} {r['load']}" for r in rows)]
    return lines, figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="rgb,ms,features", help="cases: rgb, ms, features, workers")
    ap.add_argument("--steps", type=int, default=24, help="steps of the RGB runs")
    ap.add_argument("--ms-steps", type=int, default=20, help="steps of the MS runs")
    ap.add_argument("--repeats", type=int, default=2, help="plain and warm runs of each case")
    ap.add_argument("--no-write", action="store_true", help="print the table, write nothing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.child:
        _child(args)
        return []
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    missing = [c for c in CASES if c in only and not Path(CASES[c]["path"]).exists()]
    if missing:
        sys.exit(f"data not found for {missing} under {SHARED} (set EOFM_SHARED_DATA)")
    results = {
        c: measure_case(c, args.steps, args.ms_steps, args.repeats) for c in CASES if c in only
    }
    feats = None
    if "features" in only:
        feats = {
            "files": _in_child("features:rgb:files", args.steps, args.ms_steps),
            "cached": _in_child("features:rgb:cached", args.steps, args.ms_steps),
        }
    figures: list[dict[str, Any]] = []
    if results or feats:
        lines, figures = render(results, feats, argv, args.steps, args.ms_steps)
        results_file.publish(SECTION, lines, figures, dry_run=args.no_write)
    if "workers" in only:
        wlines, wfigures = render_workers(measure_workers(args.steps), argv, args.steps)
        results_file.publish(WORKERS_SECTION, wlines, wfigures, dry_run=args.no_write)
        figures += wfigures
    return figures


if __name__ == "__main__":
    main()
