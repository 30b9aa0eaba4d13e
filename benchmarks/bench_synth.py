"""Benchmark: generate (and write as GeoTIFFs) 10,000 synthetic 64 x 64 land-cover scenes.

Usage::

    python benchmarks/bench_synth.py [--n 10000] [--size 64] [--out DIR] [--keep] [--no-record]

Times in-memory generation (Sentinel-2 + Sentinel-1 + masks) and, separately, generation
plus writing with :func:`eofm.data.synthetic.write_synthetic` (3 GeoTIFFs per scene and
``labels.csv``), then appends a row to the "## Synthetic scenes" section of
``benchmarks/results.md`` (a history: one row per run) and replaces its figures in
``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results_file

from eofm.data.synthetic import generate_landcover, iter_landcover, write_synthetic

SECTION = "## Synthetic scenes"
SCRIPT = "bench_synth.py"
HEADER = (
    "| date | processor | cpus | scenes | size | generate (s) | generate + write GeoTIFF (s) "
    "| scenes/s (with writing) | load avg (1 min) |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|\n"
)


def record(row: str, path: Path | None = None) -> None:
    """Add ``row`` at the end of the synthetic-scenes section, creating what is missing."""
    path = path or results_file.outputs()[0]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    if not any(line.strip() == SECTION for line in lines):
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"\n{SECTION}\n\n{HEADER}{row}\n"
    else:
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1  # insert right after the section's last non-blank line
        lines.insert(end, row + "\n")
        text = "".join(lines)
    path.write_text(text)


def processor_name() -> str:
    """``platform.processor()``, else the CPU model from /proc/cpuinfo, plus the machine."""
    name = platform.processor()
    if not name:
        try:
            with open("/proc/cpuinfo") as fh:
                name = next((ln.split(":", 1)[1].strip() for ln in fh if "model name" in ln), "")
        except OSError:
            name = ""
    machine = platform.machine()
    return f"{name} ({machine})" if name and machine and machine not in name else name or machine


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument(
        "--no-record", "--no-write", action="store_true", help="do not touch results.md/json"
    )
    args = parser.parse_args(argv_list)

    generate_landcover(16, args.size, seed=args.seed)  # warm up imports and FFT plans

    t0 = time.perf_counter()
    for _ in iter_landcover(args.n, args.size, seed=args.seed):  # batches, constant memory
        pass
    t_gen = time.perf_counter() - t0
    print(f"generate {args.n} scenes of {args.size}x{args.size}: {t_gen:.1f} s")

    out = args.out or Path(tempfile.mkdtemp(prefix="eofm-bench-synth-"))
    try:
        t0 = time.perf_counter()
        write_synthetic(out, n=args.n, size=args.size, seed=args.seed, progress=False)
        t_write = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"generate + write GeoTIFFs: {t_write:.1f} s ({args.n / t_write:.0f} scenes/s)")

    cmd = results_file.command(SCRIPT, argv_list)
    notes = {"scenes": args.n, "size": args.size, "seed": args.seed}
    figures = [
        results_file.figure(SECTION, "synth/generate_s", round(t_gen, 2), "s", cmd, **notes),
        results_file.figure(
            SECTION, "synth/generate_write_s", round(t_write, 2), "s", cmd, **notes
        ),
        results_file.figure(
            SECTION,
            "synth/scenes_per_s_with_writing",
            round(args.n / t_write, 1),
            "scenes/s",
            cmd,
            **notes,
        ),
    ]
    if not args.no_record:
        processor = processor_name() or "unknown"
        row = (
            f"| {dt.date.today().isoformat()} | {processor} | {os.cpu_count()} | {args.n} "
            f"| {args.size} | {t_gen:.1f} | {t_write:.1f} | {args.n / t_write:.0f} "
            f"| {os.getloadavg()[0]:.1f} |"
        )
        record(row)
        results_file.write_figures(SECTION, figures)
        print(f"recorded in {results_file.outputs()[0]}")
    return figures


if __name__ == "__main__":
    main()
