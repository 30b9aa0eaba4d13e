"""Run the benchmarks and write ``benchmarks/results.md`` and ``benchmarks/results.json``.

    python benchmarks/run.py                        # the default set, ~15-20 min on 2 cores
    python benchmarks/run.py --quick                # the same, smaller: ~3 min
    python benchmarks/run.py --only engine,memory   # some of them
    python benchmarks/run.py --only pretrain,linear_probe   # the long EuroSAT benchmarks
    python benchmarks/run.py --list                 # what each name runs

Each benchmark is a script of this folder with a ``main(argv)`` that writes its own section of
results.md and its figures in results.json (other sections and figures are kept) and returns
the figures; this runner calls them in turn with the arguments listed in ``BENCHMARKS`` (or
``QUICK``), so every figure's ``command`` (in results.json) is one command that reproduces it
alone. A benchmark that fails is reported and the others still run; the exit status is 1 then.

``--quick`` writes to ``benchmarks/_work/quick/results.{md,json}`` (git-ignored) unless
``--results``/``--json`` say otherwise, so that a quick check never overwrites the full
figures. A ``## Runs`` section lists what ran, for how long, and the load average around it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import results_file

HERE = Path(__file__).resolve().parent
QUICK_DIR = HERE / "_work" / "quick"
SECTION = "## Runs"

#: name -> (module, arguments of the full run, arguments of --quick, what it measures)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], str]] = {
    "loading": (
        "bench_loading",
        [],
        ["--limit", "3000", "--repeats", "1", "--workers", "0"],
        "EuroSAT RGB read per file vs from shards (samples/s), packing time",
    ),
    "synth": (
        "bench_synth",
        [],
        ["--n", "300"],
        "synthetic scenes generated and written as GeoTIFFs (scenes/s)",
    ),
    "curation": (
        "bench_curation",
        ["--parts", "speed"],
        ["--parts", "speed", "--sizes", "10000,30000", "--tag", "_quick"],
        "hierarchical k-means, sampling and near-duplicates vs N (s, peak RSS)",
    ),
    "engine": (
        "bench_engine",
        [],
        ["--quick"],
        "pretraining images/s through the engine vs a bare torch loop, per method/backbone",
    ),
    "memory": (
        "bench_memory",
        [],
        ["--methods", "mae,simclr", "--steps", "2"],
        "peak RSS of pretraining ViT-S/16 at 64 px, batch 64, on the CPU",
    ),
    "fsdp": (
        "bench_fsdp",
        [],
        ["--backbone", "vit_base_patch16", "--steps", "2"],
        "memory per rank of FSDP vs DDP, ViT-L/16 MAE on 2 CPU processes",
    ),
    "data_path": (
        "bench_data_path",
        ["--only", "rgb,ms,features,workers"],
        ["--only", "ms", "--ms-steps", "4"],
        "eofm pretrain vs a plain loop (no cache / cold / warm), RGB and MS; workers 0 vs 1",
    ),
    "compile": (
        "bench_compile",
        [],
        ["--methods", "mae", "--backbones", "vit_test", "--warmup", "2", "--steps", "3"],
        "eager vs compiled blocks (model.compile): images/s and compile cost, MAE/SimCLR/DINO",
    ),
    "gpu": (
        "bench_gpu",
        [],
        ["--quick"],
        "ViT-B/L MAE and DINO at 224 px bf16, 1.3B FSDP: images/s and MFU (GPU only)",
    ),
}
#: Long benchmarks, run only when named in --only.
EXTRA: dict[str, tuple[str, list[str], list[str], str]] = {
    "pretrain": (
        "bench_pretrain",
        ["--budget", "120", "--methods", "simclr,mocov3,dino,mae,simmim,gfm,softcon,dense"],
        ["--budget", "20", "--methods", "simclr,mae", "--probe-train", "1000"],
        "each method for a wall-clock budget on EuroSAT, then a linear probe (~18 min)",
    ),
    "linear_probe": (
        "bench_linear_probe",
        [],
        ["--probe-epochs", "20"],
        "ViT-S features of all 27,000 EuroSAT images and a linear probe (~4 min)",
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated names (default: {','.join(BENCHMARKS)}; also {','.join(EXTRA)})",
    )
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~3 min in all)")
    parser.add_argument("--results", type=Path, default=None, help="results.md to write")
    parser.add_argument("--json", type=Path, default=None, help="results.json to write")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = {**BENCHMARKS, **EXTRA}
    if args.list:
        for name, (module, full, quick, what) in known.items():
            extra = " (only with --only)" if name in EXTRA else ""
            print(f"{name:<13} {what}{extra}")
            print(f"{'':<13} full:  {results_file.command(module + '.py', full)}")
            print(f"{'':<13} quick: {results_file.command(module + '.py', quick)}")
        return 0
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    unknown = sorted((set(names) | skip) - set(known))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; known: {', '.join(known)}")
    names = [n for n in names if n not in skip]
    md = args.results or (QUICK_DIR / "results.md" if args.quick else None)
    js = args.json or (QUICK_DIR / "results.json" if args.quick else None)
    results_file.set_outputs(md, js)
    md_path, json_path = results_file.outputs()

    import torch

    threads = torch.get_num_threads()
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    print(f"machine: {results_file.machine_line()}; load {results_file.load_str()}", flush=True)
    for name in names:
        module_name, full, quick, _ = known[name]
        bench_argv = list(quick if args.quick else full)
        cmd = results_file.command(module_name + ".py", bench_argv)
        print(f"\n=== {name}: {cmd} (load {results_file.load_str()})", flush=True)
        torch.set_num_threads(threads)  # each benchmark sets its own; start from the default
        load_start = results_file.load_avg()
        t0 = time.perf_counter()
        status, figures = "ok", []
        try:
            module = importlib.import_module(module_name)
            figures = module.main(bench_argv) or []
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # one failure must not stop the others
            traceback.print_exc()
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        seconds = time.perf_counter() - t0
        runs.append(
            {
                "name": name,
                "command": cmd,
                "status": status,
                "seconds": seconds,
                "figures": len(figures),
                "load_start": load_start,
                "load_end": results_file.load_avg(),
            }
        )
        print(f"=== {name}: {status}, {len(figures)} figure(s), {seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    this = "python benchmarks/run.py" + (" " + " ".join(argv) if argv else "")
    if argv is None:
        this = results_file.command("run.py", sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{this}` on {time.strftime('%Y-%m-%d %H:%M')}, {total / 60:.1f} min in all.",
        "",
        f"- Machine: {results_file.machine_line()}.",
        f"- Figures: `{_shown(json_path)}` (name, value, unit, command, machine, date, load).",
        "",
        "| benchmark | command | status | time (s) | figures | load (1 min) start -> end |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | `{r['command']}` | {r['status']} | {r['seconds']:.0f} | "
            f"{r['figures']} | {r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    lines.append("")
    results_file.write_section(SECTION, lines)
    print(f"\n{total / 60:.1f} min in all; results in {md_path} and {json_path}")
    for r in runs:
        print(f"  {r['name']:<13} {r['status']:<10} {r['seconds']:6.0f} s  {r['figures']} figures")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
