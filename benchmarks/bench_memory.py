"""Peak resident memory of pretraining a ViT-S/16 at 64 px, batch 64, on the CPU through the
engine (target: under 4 GB).

    python benchmarks/bench_memory.py                       # mae, simclr, dino; 3 steps each
    python benchmarks/bench_memory.py --methods dino --steps 5 --batch-size 128

Each method runs ``run_pretraining`` in a child process (``configs/<method>_tiny.yaml`` with
``vit_small_patch16`` from eofm's backbone registry at 64 px, batch 64, the recipe's synthetic
data as in ``bench_engine.py``, float32, 1 torch thread, ``num_workers=0``), for a few steps,
then the final ``last.ckpt`` and the encoder export, as a real run ends. Peak RSS is the child's
``VmHWM`` (``/proc/self/status``, read when ``run_pretraining`` has returned: the high-water
mark of its resident memory over its whole life: imports, setup, steps, checkpoint, export; no
DataLoader worker processes exist). ``getrusage``'s ``ru_maxrss`` is not used: on Linux a child
inherits the high-water mark of the process that started it (the runner, with torch loaded).
The RSS after setup (at ``on_train_start``) and the largest RSS at the end of a step are read
from ``/proc/self/status`` in the child too. Writes the ``## Memory`` section of results.md and its
figures in results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results_file
from results_file import rss_mib

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Memory"
SCRIPT = "bench_memory.py"
LIMIT_BYTES = 4e9  # "4 GB"


# --------------------------------------------------------------------------------------------
# child


def child(args: argparse.Namespace) -> dict[str, Any]:
    import bench_engine
    import torch
    from lightning.pytorch.callbacks import Callback

    from eofm.training import run_pretraining

    after_imports = rss_mib()
    engine_args = argparse.Namespace(
        batch_size=args.batch_size, size=args.size, threads=args.threads, data_n=args.data_n
    )
    config = bench_engine.make_config(
        args.child,
        args.backbone,
        engine_args,
        args.steps,
        f"memory_{args.child}_{args.backbone}",
        ["output.export=true"],
    )
    marks: dict[str, Any] = {"step_rss": [], "step_s": []}

    class Rss(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            marks["setup"] = rss_mib()
            marks["params"] = sum(p.numel() for p in pl_module.parameters())
            marks["trainable"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            marks["t"] = time.perf_counter()

        def on_train_batch_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            marks["step_s"].append(now - marks["t"])
            marks["t"] = now
            marks["step_rss"].append(rss_mib())

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with bench_engine.quiet():
        result = run_pretraining(config, callbacks=[Rss()])
    return {
        "method": args.child,
        "backbone": args.backbone,
        "batch": args.batch_size,
        "size": args.size,
        "views": bench_engine.views_of(config),
        "steps": int(result.global_step),
        "params": marks.get("params"),
        "trainable_params": marks.get("trainable"),
        "rss_after_imports_mib": after_imports,
        "rss_after_setup_mib": marks.get("setup"),
        "rss_max_at_step_end_mib": max(marks["step_rss"]) if marks["step_rss"] else None,
        "vm_hwm_mib": rss_mib("VmHWM"),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "median_step_s": sorted(marks["step_s"])[len(marks["step_s"]) // 2]
        if marks["step_s"]
        else None,
        "wall_s": time.perf_counter() - t0,
        "exported": str(result.model_path) if result.model_path else None,
        "run_dir": str(result.run_dir),
    }


# --------------------------------------------------------------------------------------------
# parent


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in a child process; its peak RSS is the child's ``VmHWM``."""
    with tempfile.TemporaryDirectory(prefix="eofm_mem_") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            method,
            "--child-out",
            str(out),
            "--backbone",
            args.backbone,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--size",
            str(args.size),
            "--threads",
            str(args.threads),
            "--data-n",
            str(args.data_n),
        ]
        load_start = results_file.load_avg()
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        if proc.returncode != 0 or not out.is_file():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"memory child for {method} failed ({proc.returncode}):\n{tail}")
        row = json.loads(out.read_text())
    shutil.rmtree(Path(row["run_dir"]) / "checkpoints", ignore_errors=True)
    row["peak_rss_mib"] = row["vm_hwm_mib"]
    row["under_limit"] = row["vm_hwm_mib"] * 2**20 < LIMIT_BYTES
    row["load_start"] = load_start
    row["load_end"] = results_file.load_avg()
    return row


def render(rows: list[dict[str, Any]], args: argparse.Namespace, cmd: str) -> list[str]:
    lines = [
        *results_file.heading(SECTION, cmd),
        f"- Machine: {results_file.machine_line()}; {args.threads} torch thread(s).",
        f"- `run_pretraining` of `{args.backbone}` (eofm registry, timm ViT-S/16) at "
        f"{args.size} px, batch {args.batch_size}, float32 on the CPU, `num_workers=0`; "
        "each recipe `configs/<method>_tiny.yaml` (heads, views) with the synthetic 13-band "
        "Sentinel-2 data of the recipe (DINO: 1-band Sentinel-1 WV); "
        f"{args.steps} optimiser steps, then `last.ckpt` and the encoder export.",
        "- Peak RSS: `VmHWM` of the child process at its end, i.e. over its whole life "
        "(imports, setup, steps, checkpoint, export). After setup: RSS at `on_train_start` "
        "(imports, data, model, optimiser not yet stepped). Target: under 4 GB (4e9 bytes, "
        f"{LIMIT_BYTES / 2**20:,.0f} MiB).",
        "",
        "| method | views | params (M) | steps | s/step | RSS after imports (MiB) | "
        "RSS after setup (MiB) | **peak RSS (MiB)** | under 4 GB | load (1 min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        step = f"{r['median_step_s']:.1f}" if r.get("median_step_s") else "-"
        lines.append(
            f"| {r['method']} | {r['views']} | {(r['params'] or 0) / 1e6:.1f} | {r['steps']} | "
            f"{step} | {r['rss_after_imports_mib']:,.0f} | {r['rss_after_setup_mib']:,.0f} | "
            f"**{r['peak_rss_mib']:,.0f}** | {'yes' if r['under_limit'] else '**no**'} | "
            f"{r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    if rows:
        top = max(rows, key=lambda r: r["peak_rss_mib"])
        lines += [
            "",
            f"- Largest peak: {top['method']}, {top['peak_rss_mib']:,.0f} MiB "
            f"({top['peak_rss_mib'] * 2**20 / 1e9:.2f} GB): target "
            f"{'met' if all(r['under_limit'] for r in rows) else 'NOT met'}.",
        ]
    lines.append("")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="mae,simclr,dino")
    parser.add_argument("--backbone", default="vit_small_patch16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-n", type=int, default=1024)
    results_file.add_no_write(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_list)
    if args.child:
        row = child(args)
        Path(args.child_out).write_text(json.dumps(row))
        return []
    import bench_engine

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    data_args = argparse.Namespace(size=args.size, data_n=args.data_n)
    for method in methods:  # generate the data here, outside the measured children
        base = bench_engine.load_recipe(method)
        bench_engine.prepare_data(base.data.path, data_args.data_n, data_args.size)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        row = measure(method, args)
        rows.append(row)
        print(
            f"[memory] {args.backbone} {method:<8} batch {args.batch_size}: peak RSS "
            f"{row['peak_rss_mib']:,.0f} MiB (after setup {row['rss_after_setup_mib']:,.0f} MiB;"
            f" {row['steps']} steps, {time.perf_counter() - t0:.0f} s, "
            f"load {results_file.load_str()})",
            flush=True,
        )
    cmd = results_file.command(SCRIPT, argv_list)
    figures = []
    for r in rows:
        one = [a for a in argv_list]
        if "--methods" in one:
            one[one.index("--methods") + 1] = r["method"]
        else:
            one += ["--methods", r["method"]]
        skip = ("load_start", "load_end", "exported", "run_dir")
        notes = {k: v for k, v in r.items() if k not in skip}
        notes["load_avg_at_start"] = r["load_start"]
        figures.append(
            results_file.figure(
                SECTION,
                f"memory/{r['backbone']}/{r['method']}/batch{r['batch']}/peak_rss",
                round(r["peak_rss_mib"], 1),
                "MiB",
                results_file.command(SCRIPT, one),
                **notes,
            )
        )
    if not args.no_write and rows:
        results_file.publish(SECTION, render(rows, args, cmd), figures)
    return figures


if __name__ == "__main__":
    main()
