"""Memory per rank of FSDP (FSDP2) against DDP: 2 CPU processes (gloo), same model, same run.

    python benchmarks/bench_fsdp.py                         # vit_large_patch16, mae, 3 steps
    python benchmarks/bench_fsdp.py --backbone vit_base_patch16 --method simclr

Each strategy runs ``run_pretraining`` in a child process on 2 devices. Lightning's launcher
starts the second rank by running this script again. The recipe is ``configs/<method>_tiny.yaml``
with the backbone at ``--size`` px, as in ``bench_engine.py``, float32, 1 torch thread per rank.

Each rank records:
- the bytes of the parameters it holds: the local shard under FSDP, everything under DDP;
- the bytes of its AdamW state after the first step;
- its RSS after setup and at the end of every step;
- ``VmHWM`` at the end. This includes ``last.ckpt``: FSDP gathers the full state on rank 0
  to write one file.

The GPU counterpart, the 1.3B model on one H100, is ``bench_gpu.py --cases vit_h12x4_mae_fsdp``.
Writes the ``## FSDP memory (CPU)`` section of results.md and its figures in results.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
SECTION = "## FSDP memory (CPU)"
SCRIPT = "bench_fsdp.py"
STRATEGIES = ("ddp", "fsdp")
WORLD = 2


def _local_bytes(tensors: Any) -> int:
    """Bytes of ``tensors`` held by this rank (the local shard of a ``DTensor``)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


# --------------------------------------------------------------------------------------------
# child (each rank)


def child(args: argparse.Namespace) -> dict[str, Any]:
    import bench_engine
    import torch
    from lightning.pytorch.callbacks import Callback

    from eofm.training import run_pretraining

    engine_args = argparse.Namespace(
        batch_size=args.batch_size, size=args.size, threads=1, data_n=args.data_n
    )
    config = bench_engine.make_config(
        args.method,
        args.backbone,
        engine_args,
        args.steps,
        f"fsdp_{args.child}_{args.method}_{args.backbone}",
        [f"trainer.devices={WORLD}", f"trainer.strategy={args.child}"],
    )
    marks: dict[str, Any] = {"step_rss": [], "step_s": []}

    class Probe(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            marks["rank"] = int(trainer.global_rank)
            marks["setup"] = rss_mib()
            marks["params"] = sum(p.numel() for p in pl_module.parameters())  # global shapes
            marks["param_bytes"] = _local_bytes(pl_module.parameters())
            marks["t"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            marks["step_s"].append(now - marks["t"])
            marks["t"] = now
            marks["step_rss"].append(rss_mib())
            if "optim_bytes" not in marks:
                state = trainer.optimizers[0].state.values()
                tensors = [v for s in state for v in s.values() if torch.is_tensor(v) and v.ndim]
                marks["optim_bytes"] = _local_bytes(tensors)

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with bench_engine.quiet():
        result = run_pretraining(config, callbacks=[Probe()])
    steps = sorted(marks["step_s"][1:] or marks["step_s"])  # the first step warms up
    return {
        "strategy": args.child,
        "rank": marks.get("rank"),
        "method": args.method,
        "backbone": args.backbone,
        "batch": args.batch_size,
        "size": args.size,
        "steps": int(result.global_step),
        "params": marks.get("params"),
        "param_mib": marks.get("param_bytes", 0) / 2**20,
        "optim_mib": marks.get("optim_bytes", 0) / 2**20,
        "rss_after_setup_mib": marks.get("setup"),
        "rss_max_at_step_end_mib": max(marks["step_rss"]) if marks["step_rss"] else None,
        "vm_hwm_mib": rss_mib("VmHWM"),
        "median_step_s": steps[len(steps) // 2] if steps else None,
        "wall_s": time.perf_counter() - t0,
        "run_dir": str(result.run_dir),
    }


# --------------------------------------------------------------------------------------------
# parent


def measure(strategy: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one strategy on 2 processes; one row per rank."""
    with tempfile.TemporaryDirectory(prefix="eofm_fsdp_") as tmp:
        log = Path(tmp) / "log.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", strategy]
        cmd += ["--child-out", tmp, "--method", args.method, "--backbone", args.backbone]
        cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        cmd += ["--size", str(args.size), "--data-n", str(args.data_n)]
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE")}
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        outs = sorted(Path(tmp).glob("rank*.json"))
        if proc.returncode != 0 or len(outs) != WORLD:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{strategy} child failed ({proc.returncode}):\n{tail}")
        rows = [json.loads(p.read_text()) for p in outs]
    shutil.rmtree(Path(rows[0]["run_dir"]) / "checkpoints", ignore_errors=True)
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace, cmd: str) -> list[str]:
    lines = [
        *results_file.heading(SECTION, cmd),
        f"- Machine: {results_file.machine_line()}; {WORLD} processes (gloo), 1 torch thread each.",
        f"- `run_pretraining` of `{args.backbone}` with `{args.method}` "
        f"(`configs/{args.method}_tiny.yaml`, its synthetic data) at {args.size} px, batch "
        f"{args.batch_size} per rank, float32, AdamW, {args.steps} steps, then `last.ckpt`.",
        "- Parameters and AdamW state: the bytes this rank holds (FSDP: its shard). RSS: "
        "resident memory of the rank after setup, and the largest at the end of a step. "
        "VmHWM: the high-water mark over the process's whole life. It includes the final "
        "checkpoint, for which FSDP gathers the full weights and optimiser state on rank 0.",
        "",
        "| strategy | rank | params (M) | parameters held (MiB) | AdamW state held (MiB) | "
        "RSS after setup (MiB) | **max RSS at a step end (MiB)** | VmHWM (MiB) | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['rank']} | {r['params'] / 1e6:.1f} | {r['param_mib']:,.0f} | "
            f"{r['optim_mib']:,.0f} | {r['rss_after_setup_mib']:,.0f} | "
            f"**{r['rss_max_at_step_end_mib']:,.0f}** | {r['vm_hwm_mib']:,.0f} | "
            f"{r['median_step_s']:.2f} |"
        )
    by = {s: [r for r in rows if r["strategy"] == s] for s in STRATEGIES}
    if all(by.values()):
        step = {s: max(r["rss_max_at_step_end_mib"] for r in by[s]) for s in STRATEGIES}
        held = {s: max(r["param_mib"] + r["optim_mib"] for r in by[s]) for s in STRATEGIES}
        lines += [
            "",
            f"- Parameters and optimiser state held per rank: DDP {held['ddp']:,.0f} MiB, FSDP "
            f"{held['fsdp']:,.0f} MiB ({held['fsdp'] / held['ddp']:.2f}x). Largest RSS at a step "
            f"end: DDP {step['ddp']:,.0f} MiB, FSDP {step['fsdp']:,.0f} MiB "
            f"({step['fsdp'] / step['ddp']:.2f}x).",
        ]
    lines.append("")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="mae")
    parser.add_argument("--backbone", default="vit_large_patch16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--data-n", type=int, default=256)
    results_file.add_no_write(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_list)
    if args.child:
        row = child(args)
        Path(args.child_out, f"rank{row['rank']}.json").write_text(json.dumps(row))
        return []
    import bench_engine

    base = bench_engine.load_recipe(args.method)  # the data, made here once for both ranks
    bench_engine.prepare_data(base.data.path, args.data_n, args.size)
    rows: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        t0 = time.perf_counter()
        ranks = measure(strategy, args)
        rows += ranks
        print(
            f"[fsdp] {strategy}: held "
            + ", ".join(f"{r['param_mib'] + r['optim_mib']:,.0f}" for r in ranks)
            + " MiB, max step RSS "
            + ", ".join(f"{r['rss_max_at_step_end_mib']:,.0f}" for r in ranks)
            + f" MiB per rank ({time.perf_counter() - t0:.0f} s, load {results_file.load_str()})",
            flush=True,
        )
    cmd = results_file.command(SCRIPT, argv_list)
    figures = []
    for r in rows:
        key = f"fsdp_memory/{r['backbone']}/{r['method']}/{r['strategy']}/rank{r['rank']}"
        notes = {k: v for k, v in r.items() if k != "run_dir"}
        figures.append(
            results_file.figure(
                SECTION,
                f"{key}/max_step_rss",
                round(r["rss_max_at_step_end_mib"], 1),
                "MiB",
                cmd,
                **notes,
            )
        )
    if not args.no_write and rows:
        results_file.publish(SECTION, render(rows, args, cmd), figures)
    return figures


if __name__ == "__main__":
    main()
