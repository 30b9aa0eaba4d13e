"""Distributed hierarchical k-means (``eofm.curation.distributed``) on N x 256 float32 points:
2 gloo ranks on this machine, one faiss/torch thread each, each reading its chunks of one
memory-mapped ``.npy``. Per N: wall time, the time of each stage, peak RSS and peak anonymous
RSS per rank. Writes the ``## Distributed k-means at scale`` section of results.md/json.

    python benchmarks/bench_kmeans_scale.py --sizes 1000000 3000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import (
    AnonPeak,
    command,
    figure,
    load_str,
    machine_info,
    peak_rss_mib,
    write_figures,
    write_section,
)

SECTION = "## Distributed k-means at scale"
WORK = Path(os.environ.get("EOFM_BENCH_KMEANS_DIR", "/tmp/eofm-bench-kmeans"))


def points(n: int, dim: int, components: int = 2000, seed: int = 0) -> Path:
    """A heavy-tailed Gaussian mixture as a float32 ``.npy``, written in blocks."""
    path = WORK / f"points_{n}x{dim}.npy"
    if path.is_file():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(components, dim)).astype(np.float32) * 3.0
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    weights /= weights.sum()
    tmp = path.with_name(path.name + ".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 200_000):
        hi = min(n, lo + 200_000)
        comp = rng.choice(components, size=hi - lo, p=weights)
        mm[lo:hi] = centres[comp] + rng.normal(0.0, 1.0, size=(hi - lo, dim)).astype(np.float32)
    mm.flush()
    del mm
    os.replace(tmp, path)
    return path


def rank_main(args: argparse.Namespace) -> None:
    """One rank (started by :func:`run_one` with RANK/WORLD_SIZE/MASTER_PORT set)."""
    import faiss
    import torch
    import torch.distributed as dist

    from eofm.curation.distributed import distributed_hierarchical_kmeans

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    dist.init_process_group("gloo")
    anon = AnonPeak()
    x = np.load(args.path, mmap_mode="r")
    n = int(x.shape[0])
    k1 = round(np.sqrt(n))
    ks = [k1, max(2, k1 // 10)]
    t0 = time.perf_counter()
    h = distributed_hierarchical_kmeans(
        x, ks, niter=args.niter, n_resamples=args.resamples, seed=0, gpu=False
    )
    wall = time.perf_counter() - t0
    out = {
        "rank": dist.get_rank(),
        "wall_s": wall,
        "clusters": ks,
        "timings": h.info["timings"],
        "peak_rss_mib": peak_rss_mib(),
        "peak_anon_mib": anon.stop(),
        "labels_digest": int(np.bitwise_xor.reduce(h.labels * 2654435761 % 2**31)),
    }
    Path(f"{args.result}.{dist.get_rank()}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def run_one(n: int, dim: int, niter: int, resamples: int, world: int) -> list[dict[str, Any]]:
    path = points(n, dim)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = WORK / f"result_{n}"
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        argv = [sys.executable, __file__, "--rank-of", str(path), "--result", str(result)]
        argv += ["--niter", str(niter), "--resamples", str(resamples)]
        procs.append(subprocess.Popen(argv, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank failed for N={n}: exit codes {codes}")
    return [json.loads(Path(f"{result}.{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--resamples", type=int, default=3)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rank-of", dest="path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:
        rank_main(args)
        return
    settings = {k: v for k, v in vars(args).items() if k in ("dim", "niter", "resamples", "world")}
    rows: list[dict[str, Any]] = []
    done_file = WORK / "rows.json"
    if done_file.is_file():  # sizes measured by an earlier call with the same settings
        rows = [r for r in json.loads(done_file.read_text()) if r["settings"] == settings]
    for n in args.sizes:
        if any(r["n"] == n for r in rows):
            continue
        ranks = run_one(n, args.dim, args.niter, args.resamples, args.world)
        assert len({r["labels_digest"] for r in ranks}) == 1, "ranks disagree on the labels"
        row = {
            "n": n,
            "settings": settings,
            "ranks": ranks,
            "wall_s": max(r["wall_s"] for r in ranks),
            "load": load_str(),
        }
        rows.append(row)
        done_file.write_text(json.dumps(rows))
        print(json.dumps(row), flush=True)
    if args.no_write:
        return
    rows.sort(key=lambda r: r["n"])
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    cmd = command("bench_kmeans_scale.py", argv)
    m = machine_info()
    lines = [
        SECTION,
        "",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"- Machine: {m.get('cores', '?')} CPU cores ({m.get('cpu', '?')}), torch "
        f"{m.get('torch', '?')}, no GPU; other jobs shared the machine (load at the end of "
        "each size in the table).",
        f"- `distributed_hierarchical_kmeans` on {args.world} gloo ranks (one process each, one "
        "faiss/torch thread each), each reading only its 64 Ki-row chunks of one memory-mapped "
        f"N x {args.dim} float32 `.npy` (heavy-tailed Gaussian mixture, 2000 components); 2 "
        f"levels, k = [sqrt N, sqrt N / 10], k-means++ seeds on 20 k points, {args.niter} "
        "distributed Lloyd iterations on a global sample of 256 k points, "
        f"{args.resamples} resampling steps (closest, half the mean cluster size), every point "
        "reassigned after each (so 1 + resamples full passes over the points); labels "
        "gathered on every rank at the end.",
        "- Peak RSS: `VmHWM` of each rank (includes the imports, ~600 MiB, and the memory-mapped "
        "pages it read); anonymous: the peak of `RssAnon` (sampled every 20 ms), what the "
        "rank allocated. Time per pass: the assignment passes' time / passes, per point.",
        "",
        "| N | clusters | wall (s) | scan | seeds | Lloyd | assign passes (s) | resample (s) | "
        "upper levels + gather (s) | ns / point / pass | peak RSS per rank (MiB) | "
        "anon. peak per rank (MiB) | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    figures = []
    for r in rows:
        t = max((x["timings"] for x in r["ranks"]), key=lambda v: v["total_s"])
        per = t["assign_s"] / t["assign_passes"] / r["n"] * 1e9
        rss = max(x["peak_rss_mib"] for x in r["ranks"])
        anon = max(x["peak_anon_mib"] for x in r["ranks"])
        lines.append(
            f"| {r['n']:,} | {r['ranks'][0]['clusters']} | {r['wall_s']:.1f} | "
            f"{t['scan_s']:.1f} | {t['seed_s']:.1f} | {t['lloyd_s']:.1f} | "
            f"{t['assign_s']:.1f} ({t['assign_passes']}) | {t['resample_s']:.1f} | "
            f"{t['upper_levels_s'] + t['gather_s']:.1f} | {per:.0f} | {rss:.0f} | {anon:.0f} | "
            f"{r['load']} |"
        )
        figures.append(
            figure(
                SECTION,
                f"dist_kmeans_{r['n']}_wall",
                round(r["wall_s"], 1),
                "s",
                cmd,
                clusters=r["ranks"][0]["clusters"],
                timings=t,
                peak_rss_mib=rss,
                peak_anon_mib=anon,
                world=args.world,
            )
        )
    write_section(SECTION, lines)
    write_figures(SECTION, figures)


if __name__ == "__main__":
    main()
