"""Compiled against eager pretraining steps through the engine (``model.compile``), on this
machine's device: images/s of each, the speed-up, and what compiling costs once.

    python benchmarks/bench_compile.py                       # MAE, SimCLR, DINO on ViT-S/16
    python benchmarks/bench_compile.py --methods mae --backbones vit_base_patch16 --steps 4

Each (method, backbone) runs ``run_pretraining`` (``configs/<method>_tiny.yaml`` settings,
the recipe's synthetic data, as in ``bench_engine.py``) twice per repeat, eager then compiled,
alternating, each in a fresh process with an empty inductor cache. Step times are the medians
after ``--warmup`` steps; the compile cost is the compiled run's first ``--warmup`` steps
minus the eager run's, so it counts compiling from scratch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_engine
import results_file

SECTION = "## Compiled blocks"
SCRIPT = "bench_compile.py"
METHODS = ("mae", "simclr", "dino")


def child(args: argparse.Namespace) -> None:
    """One engine run (``--child eager|compiled``), written to ``--child-out`` as JSON: the
    wall-clock end of every step and the graphs compiled."""
    from torch._dynamo.utils import counters

    mode = args.child
    method, backbone = args.methods, args.backbones
    config = bench_engine.make_config(
        method,
        backbone,
        args,
        args.warmup + args.steps,
        f"compile_{method}_{backbone}_{mode}",
        ["model.compile=true"] if mode == "compiled" else [],
    )
    run = bench_engine.engine_run(config)
    out = {
        "ends": [wall for wall, *_ in run.ends],  # ends[0]: the start of training
        "graphs": int(counters["stats"]["unique_graphs"]),
        "batch": int(config.data.batch_size),
        "views": bench_engine.views_of(config),
    }
    Path(args.child_out).write_text(json.dumps(out))


def timed_run(method: str, backbone: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run in a fresh process with an empty inductor cache, so that the compiled run
    pays for compiling in full (nothing left from an earlier run in memory or on disk)."""
    with tempfile.TemporaryDirectory(prefix="eofm_compile_") as tmp:
        out, log = Path(tmp) / "run.json", Path(tmp) / "log.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
        cmd += ["--child-out", str(out), "--methods", method, "--backbones", backbone]
        for flag in ("batch_size", "size", "threads", "data_n", "warmup", "steps"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"))
        with log.open("w") as fh:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=bench_engine.REPO, env=env
            )
        if proc.returncode != 0 or not out.is_file():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{mode} run of {method}/{backbone} failed:\n{tail}")
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure(method: str, backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    load_start = results_file.load_avg()
    durations: dict[str, list[float]] = {"eager": [], "compiled": []}
    first: dict[str, list[float]] = {"eager": [], "compiled": []}
    graphs = 0
    for _ in range(args.repeats):
        for mode in ("eager", "compiled"):
            run = timed_run(method, backbone, mode, args)
            if mode == "compiled":
                graphs = max(graphs, run["graphs"])
            ends = run["ends"]
            durations[mode] += [b - a for a, b in itertools.pairwise(ends[args.warmup :])]
            first[mode].append(ends[args.warmup] - ends[0])
    batch = int(run["batch"])
    row: dict[str, Any] = {
        "method": method,
        "backbone": backbone,
        "batch": batch,
        "views": run["views"],
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "graphs": graphs,
        "load_start": load_start,
        "load_end": results_file.load_avg(),
    }
    for mode in ("eager", "compiled"):
        row[f"{mode}_median_s"] = statistics.median(durations[mode])
        row[f"{mode}_images_per_s"] = batch / row[f"{mode}_median_s"]
        row[f"{mode}_first_steps_s"] = statistics.fmean(first[mode])
    row["speedup"] = row["compiled_images_per_s"] / row["eager_images_per_s"]
    row["compile_s"] = row["compiled_first_steps_s"] - row["eager_first_steps_s"]
    return row


def render(rows: list[dict[str, Any]], args: argparse.Namespace, cmd: str) -> list[str]:
    lines = [
        *results_file.heading(SECTION, cmd),
        f"- Machine: {results_file.machine_line()}; {args.threads} torch thread(s).",
        f"- `run_pretraining` on the CPU, float32, {args.size} px, batch {args.batch_size}, each "
        "recipe's synthetic data; eager blocks vs `model.compile=true` (every block compiled in "
        "place with inductor, which generates C++ here). img/s: batch / median step time after "
        f"{args.warmup} warm-up steps ({args.steps} steps x {args.repeats} run(s) each); compile "
        f"cost: the compiled run's first {args.warmup} steps minus the eager run's, each run in "
        "a fresh process with an empty inductor cache; graphs: the graphs inductor built "
        "(shapes, grad on/off).",
        "",
        "| method | backbone | views | eager img/s | compiled img/s | **speed-up** | "
        "compile cost (s) | graphs | load (1 min) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['backbone']} | {r['views']} | {r['eager_images_per_s']:.1f} | "
            f"{r['compiled_images_per_s']:.1f} | **{r['speedup']:.2f}x** | "
            f"{r['compile_s']:.0f} | {r['graphs']} | "
            f"{r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    if rows:
        speedups = [r["speedup"] for r in rows]
        text = f"- Speed-up here: {min(speedups):.2f}x to {max(speedups):.2f}x"
        if max(speedups) < 1.05:
            text += (
                ": compiling does not pay off on this device. CPU steps of a ViT are spent in "
                "matrix multiplications, which compiling leaves as they are; the element-wise "
                "work it fuses (norms, GELU, residuals, attention glue) weighs more on a GPU, "
                "where `benchmarks/bench_gpu.py` compiles every case."
            )
        lines += ["", text + ("." if max(speedups) >= 1.05 else "")]
    return [*lines, ""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backbones", default="vit_small_patch16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-n", type=int, default=1024, help="synthetic images per dataset")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped per run")
    parser.add_argument("--steps", type=int, default=6, help="steps measured per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode")
    results_file.add_no_write(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_list)
    args.tune_malloc = True  # as the engine does by default on the CPU
    if args.child:
        child(args)
        return []
    cmd = results_file.command(SCRIPT, argv_list)
    rows: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            row = measure(method, backbone, args)
            rows.append(row)
            print(
                f"[compile] {method}/{backbone}: eager {row['eager_images_per_s']:.1f} img/s, "
                f"compiled {row['compiled_images_per_s']:.1f} img/s "
                f"({row['speedup']:.2f}x), compile {row['compile_s']:.0f} s",
                flush=True,
            )
            one = results_file.command(
                SCRIPT, [*argv_list, "--methods", method, "--backbones", backbone]
            )
            for name, unit in (
                ("eager_images_per_s", "images/s"),
                ("compiled_images_per_s", "images/s"),
                ("speedup", "ratio"),
                ("compile_s", "s"),
            ):
                notes = {k: v for k, v in row.items() if k != name}
                key = f"compile/{backbone}/{method}/{name}"
                figures.append(results_file.figure(SECTION, key, row[name], unit, one, **notes))
    results_file.publish(SECTION, render(rows, args, cmd), figures, dry_run=args.no_write)
    return figures


if __name__ == "__main__":
    main()
