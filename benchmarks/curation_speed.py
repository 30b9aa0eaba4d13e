"""``bench_curation.py --parts speed``: hierarchical k-means, balanced sampling and near-duplicate
removal on N x 256 points, each N in its own process (seconds, peak RSS, working memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from curation_common import CWORK, SCRIPT, plot_path, save_part
from results_file import AnonPeak, peak_rss_mib, status_mib


def mixture_points(n: int, dim: int = 256, components: int = 2000, seed: int = 0) -> Path:
    """A heavy-tailed Gaussian mixture (Zipf component weights) as a float32 ``.npy`` memmap."""
    path = CWORK / f"points_{n}x{dim}.npy"
    if path.is_file():
        return path
    CWORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(components, dim)).astype(np.float32) * 3.0
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    weights /= weights.sum()
    tmp = path.with_name(path.name + ".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        comp = rng.choice(components, size=hi - lo, p=weights)
        mm[lo:hi] = centres[comp] + rng.normal(0.0, 1.0, size=(hi - lo, dim)).astype(np.float32)
    mm.flush()
    del mm
    os.replace(tmp, path)
    return path


def speed_one(n: int, dim: int, niter: int, resamples: int) -> dict[str, Any]:
    """One size, in this process (called as a child: ``--speed-one N``)."""
    from eofm.curation import hierarchical_kmeans, hierarchical_sampling, near_duplicates

    path = mixture_points(n, dim)
    base = status_mib("VmRSS")
    anon_start = status_mib("RssAnon")
    anon = AnonPeak()
    x = np.load(path, mmap_mode="r")
    k1 = max(10, round(np.sqrt(n)))
    ks = [k1, max(2, k1 // 10)]
    t0 = time.perf_counter()
    h = hierarchical_kmeans(x, ks, niter=niter, n_resamples=resamples, seed=0)
    t_km = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = hierarchical_sampling(h, 0.3, diversity=0.5, seed=0)
    t_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep = near_duplicates(x, 0.98, groups=h.labels)
    t_d = time.perf_counter() - t0
    sizes = h.sizes(1)
    anon_peak = anon.stop()
    return {
        "n": n,
        "dim": dim,
        "clusters": ks,
        "niter": niter,
        "n_resamples": resamples,
        "sample_sizes": h.info["sample_sizes"],
        "kmeans_s": t_km,
        "sampling_s": t_s,
        "dedup_s": t_d,
        "kept": int(chosen.size),
        "dedup_removed": int((~keep).sum()),
        "largest_cluster": int(sizes.max()),
        "data_mib": n * dim * 4 / 2**20,
        "rss_before_mib": base,
        "peak_rss_mib": peak_rss_mib(),
        "anon_start_mib": anon_start,
        "anon_peak_mib": anon_peak,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }


def part_speed(args: argparse.Namespace) -> None:
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        mixture_points(n, args.dim)  # generated outside the measured child
        print(f"[speed] N={n:,} ...", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name(SCRIPT)),
                "--speed-one",
                str(n),
                "--dim",
                str(args.dim),
                "--niter",
                str(args.niter),
                "--resamples",
                str(args.resamples),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"[speed] N={n:,}: k-means {row['kmeans_s']:.1f} s, "
            f"sampling {row['sampling_s']:.2f} s, "
            f"dedup {row['dedup_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        rows.append(row)
    save_part("speed", {"rows": rows})
    plot_speed(rows)


def plot_speed(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["n"] for r in rows], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 2.9))
    for key, label in (
        ("kmeans_s", "hierarchical k-means"),
        ("dedup_s", "near-duplicates"),
        ("sampling_s", "balanced sampling"),
    ):
        a.loglog(n, [max(r[key], 1e-3) for r in rows], "o-", label=label)
    a.loglog(n, n / n[-1] * rows[-1]["kmeans_s"], "k:", lw=0.8, label="linear")
    a.set_xlabel("points N (256-d)")
    a.set_ylabel("seconds")
    a.legend(fontsize=7)
    b.loglog(n, [r["peak_rss_mib"] for r in rows], "o-", label="peak RSS")
    b.loglog(
        n,
        [max(r["anon_peak_mib"] - r["anon_start_mib"], 1.0) for r in rows],
        "^-",
        label="working memory (anon. peak - start)",
    )
    b.loglog(n, [r["data_mib"] for r in rows], "s--", label="the points (memmap)")
    b.set_xlabel("points N (256-d)")
    b.set_ylabel("MiB")
    b.legend(fontsize=7)
    fig.suptitle("eofm.curation on 2 CPU cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(plot_path(), dpi=80)
    plt.close(fig)
