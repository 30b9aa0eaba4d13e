"""Pretraining benchmark: each method for a fixed wall-clock budget on EuroSAT RGB, then a linear
probe on the test split against the same encoder at random initialisation.

    python benchmarks/bench_pretrain.py                       # simclr, mocov3, dino; 10 min each
    python benchmarks/bench_pretrain.py --budget 120 --methods simclr,mae

Data: ``$EOFM_SHARED_DATA/eurosat_rgb`` (default ``../shared/data/eurosat_rgb``), split by
``splits_seed42.csv``. The train and test splits are packed once into shards under
``benchmarks/_work/`` (git-ignored). Pretraining uses the train split only (no labels); the
probe is a logistic regression on frozen pooled features (train split -> test split).
Each method's settings come from ``configs/<method>_tiny.yaml`` (heads, views, augmentation,
optimiser), with the data, backbone, image size and length replaced. The step count of the
learning-rate schedule is estimated from a short timing run so that the schedule ends with
the budget; ``trainer.max_time_s`` stops the run at the budget in any case.
Writes the ``## Pretraining`` section of ``benchmarks/results.md`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import results_file
import torch
from eurosat import pack_split

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
SECTION = "## Pretraining"


def load_split(root: Path, limit: int | None, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Images (float32, raw 0..255) and labels of a packed split, optionally subsampled."""
    from eofm.data.shards import ShardDataset

    ds = ShardDataset(root)
    idx = np.arange(len(ds))
    if limit is not None and limit < len(ds):
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), limit, replace=False))
    batch = ds.get_batch(idx)
    return batch["image"].float(), batch["label"].numpy()


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, mean: Any, std: Any) -> np.ndarray:
    """Pooled features of normalised images, in batches."""
    model.eval()
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = [model((images[i : i + 256] - m) / s) for i in range(0, len(images), 256)]
    return torch.cat(out).numpy()


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Accuracy of a logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean())


def backbone_specific(method: str, args: argparse.Namespace) -> list[str]:
    """Reset recipe options tied to the tiny recipe's own backbone (GFM taps Swin stages)."""
    if method == "gfm":
        return [
            "method.options.teacher_arch=null",
            "method.options.student_level=null",
            "method.options.teacher_level=null",
            f"method.options.teacher_img_size={args.size}",
        ]
    return []


def base_overrides(args: argparse.Namespace, method: str, shards: Path) -> list[str]:
    return [
        *backbone_specific(method, args),
        f"data.path={shards}",
        "data.bands=null",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        f"model.backbone={args.backbone}",
        f"model.img_size={args.size}",
        f"method.name={method}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "trainer.precision=32-true",
        "trainer.max_epochs=null",
        "trainer.log_every_n_steps=10",
        "trainer.checkpoint_every_n_steps=100000",
        "trainer.progress_bar=false",
        f"trainer.num_threads={args.threads}",
        f"trainer.seed={args.seed}",
        f"output.dir={WORK / 'runs'}",
        f"output.name={method}",
        "output.overwrite=true",
        "output.tensorboard=false",
    ]


def recipe_for(method: str) -> Path | None:
    path = REPO / "configs" / f"{method}_tiny.yaml"
    return path if path.is_file() else None


def view_overrides(config: Any, size: int) -> None:
    """Views at the benchmark's image size: global views = size, local views = size / 2."""
    views = dict(config.method.views)
    if views.get("global_size") is not None:
        views["global_size"] = size
    if views.get("local_views"):
        views["local_size"] = max(16, size // 2)
    config.method.views = views


def estimate_steps(config: Any, budget: float) -> int:
    """Steps that fit in ``budget`` seconds, from a few timed steps (augment + step)."""
    from eofm.augment import MultiViewAugment
    from eofm.models import create_backbone
    from eofm.training.engine import build_method

    torch.manual_seed(0)
    bb = create_backbone(config.model.backbone, bands=3, img_size=config.model.img_size)
    method = build_method(config, bb)
    aug = MultiViewAugment(("red", "green", "blue"), config.augment)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(config.data.batch_size, 3, config.model.img_size, config.model.img_size)
    times = []
    for step in range(6):
        t0 = time.perf_counter()
        out = method.forward_loss(aug(x, method.view_spec, seed=step), {"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.on_step_end(step + 1, 100)
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times[2:])) * 1.1  # + data loading and logging
    return max(10, int(budget / per_step))


def run_method(args: argparse.Namespace, method: str, shards: Path) -> dict[str, Any]:
    from eofm.training import load_config, run_pretraining

    overrides = base_overrides(args, method, shards)
    config = load_config(recipe_for(method), overrides)
    view_overrides(config, args.size)
    steps = estimate_steps(config, args.budget)
    config.trainer.max_steps = steps
    config.trainer.max_time_s = float(args.budget)
    print(f"[{method}] pretraining for {args.budget:.0f} s (~{steps} steps scheduled)", flush=True)
    t0 = time.perf_counter()
    result = run_pretraining(config)
    wall = time.perf_counter() - t0
    return {
        "method": method,
        "recipe": str(recipe_for(method).relative_to(REPO)) if recipe_for(method) else "defaults",
        "steps": result.global_step,
        "scheduled_steps": steps,
        "images_per_s": result.images_per_s,
        "images_seen": result.global_step * config.data.batch_size,
        "final_loss": result.final_loss,
        "wall_s": wall,
        "model": str(result.model_path),
    }


def probe(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    from eofm.models import create_backbone, load_model

    train_x, train_y = load_split(pack_split("train"), args.probe_train, args.seed)
    test_x, test_y = load_split(pack_split("test"), None, args.seed)
    for row in rows:
        model = load_model(row["model"])
        norm = (model.card or {})["normalization"]
        mean = [norm["mean"][b] for b in model.bands]
        std = [norm["std"][b] for b in model.bands]
        t0 = time.perf_counter()
        acc = linear_probe(
            features(model, train_x, mean, std),
            train_y,
            features(model, test_x, mean, std),
            test_y,
        )
        torch.manual_seed(args.seed)  # the same architecture at random initialisation
        rand = create_backbone(args.backbone, bands=list(model.bands), img_size=args.size)
        acc_rand = linear_probe(
            features(rand, train_x, mean, std), train_y, features(rand, test_x, mean, std), test_y
        )
        row.update(probe_acc=acc, random_acc=acc_rand, probe_s=time.perf_counter() - t0)
        verdict = "beats" if acc > acc_rand else "does NOT beat"
        print(
            f"[{row['method']}] linear probe {acc:.4f} vs random init {acc_rand:.4f}: {verdict}",
            flush=True,
        )


def command_of(args: argparse.Namespace, methods: list[str]) -> str:
    argv = list(args.argv)
    for flag, value in (("--budget", f"{args.budget:g}"), ("--methods", ",".join(methods))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return results_file.command("bench_pretrain.py", argv)


def figures_of(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        cmd = command_of(args, [r["method"]])
        notes = {
            k: r.get(k)
            for k in ("steps", "images_seen", "final_loss", "wall_s", "scheduled_steps", "recipe")
        }
        notes.update(backbone=args.backbone, size=args.size, batch=args.batch_size)
        notes.update(threads=args.threads, budget_s=args.budget)
        key = f"pretrain/{args.backbone}/{r['method']}"
        for name, value, unit in (
            ("images_per_s", r.get("images_per_s"), "images/s"),
            ("linear_probe_acc", r.get("probe_acc"), "accuracy"),
            ("random_init_acc", r.get("random_acc"), "accuracy"),
        ):
            value = round(value, 4) if value is not None else None
            out.append(results_file.figure(SECTION, f"{key}/{name}", value, unit, cmd, **notes))
    return out


def write_section(args: argparse.Namespace, rows: list[dict[str, Any]], total_s: float) -> None:
    load = results_file.load_str()
    lines = [
        SECTION,
        "",
        f"`{command_of(args, [r['method'] for r in rows])}` on {date.today().isoformat()}.",
        "",
        f"- Machine: {results_file.machine_line()}; {args.threads} torch thread(s); load "
        f"average at the end (1/5/15 min) {load} (other jobs shared the machine).",
        f"- Data: EuroSAT RGB (`splits_seed42.csv`): pretraining on the train split "
        f"(18,900 images, labels unused) at {args.size} px; probe on "
        f"{args.probe_train or 'all'} train images, evaluated on the 4,050 test images.",
        f"- Encoder: `{args.backbone}` ({args.size} px), batch {args.batch_size}; budget "
        f"{args.budget:.0f} s of wall-clock pretraining per method (1 CPU process); each "
        "method's settings from `configs/<method>_tiny.yaml`.",
        "- Probe: logistic regression (scikit-learn, standardised pooled features), frozen "
        "encoder; 'random init' is the same architecture with the same seed, untrained, with "
        "the same input normalisation.",
        f"- Total benchmark time: {total_s / 60:.1f} min.",
        "",
        "| method | steps | images seen | images/s | final loss | linear probe acc | "
        "random init acc | gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-"
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['images_seen']:,} | {ips} | {loss} | "
            f"{r['probe_acc']:.4f} | {r['random_acc']:.4f} | "
            f"{(r['probe_acc'] - r['random_acc']) * 100:+.1f} pt |"
        )
    beaten = [r["method"] for r in rows if r["probe_acc"] > r["random_acc"]]
    lines += [
        "",
        f"- Pretrained beats random init for: {', '.join(beaten) or 'none'}"
        f" ({len(beaten)}/{len(rows)}).",
        "- images/s: mean over the run (data loading, augmentation on the CPU, forward, "
        "backward and optimiser step); all views of an image count as one image.",
        "",
    ]
    results_file.publish(SECTION, lines, figures_of(args, rows))
    (WORK / "bench_pretrain.json").write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="simclr,mocov3,dino", help="comma-separated")
    parser.add_argument("--budget", type=float, default=600, help="seconds per method")
    parser.add_argument("--backbone", default="vit_test")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--probe-train", type=int, default=5000, help="probe training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not update results.md/json")
    args = parser.parse_args(argv_list)
    args.argv = argv_list
    from eofm.methods.registry import import_all

    known = import_all()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(known)}")
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shards = pack_split("train")
    rows = [run_method(args, m, shards) for m in methods]
    probe(args, rows)
    if not args.no_write:
        write_section(args, rows, time.perf_counter() - start)
    return figures_of(args, rows)


if __name__ == "__main__":
    main()
