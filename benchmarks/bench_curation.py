"""Curation benchmark: speed and memory of hierarchical k-means, quality of balanced sampling on
heavy-tailed pools, and dynamic pruning vs uniform sampling during pretraining.

    python benchmarks/bench_curation.py                          # every part
    python benchmarks/bench_curation.py --parts speed --sizes 10000,100000,1000000
    python benchmarks/bench_curation.py --parts quality --pretrain-budget 120
    python benchmarks/bench_curation.py --parts pruning --steps 1500 --seeds 0,1
    python benchmarks/bench_curation.py --parts pruning --pool x10dup --modes oracle --seeds 0
    python benchmarks/bench_curation.py --write-only             # re-render results.md
    python benchmarks/bench_curation.py --parts speed --sizes 10000,30000 --tag _quick

Parts (results kept in ``benchmarks/_work/curation/<part><tag>.json``; the ``## Curation`` section
of ``benchmarks/results.md`` is rendered from every saved part with the same ``--tag`` (default
none), other sections are kept; their figures also go to ``benchmarks/results.json``):

- **speed**: ``hierarchical_kmeans`` (k-means++ seeds, 20 Lloyd iterations, 10 resampling
  steps per level) on N x 256 float32 points (a heavy-tailed Gaussian mixture, memory-mapped
  from disk), then balanced sampling of 30% and near-duplicate removal inside level-1 clusters.
  Each N runs in its own process: wall time per stage and peak RSS (``resource.getrusage``).
  Plot: ``benchmarks/curation_scaling.png``.
- **quality**: class entropy of the kept 30% vs the pool, on (a) synthetic land-cover scenes
  (80% one class) and (b) EuroSAT RGB (train split) resampled so one class is ten times more
  frequent than each other class; embeddings from per-band statistics, a random ``vit_test`` and
  a ``vit_test`` pretrained with SimCLR on the pool itself for ``--pretrain-budget`` seconds.
  Labels are used only to score.
- **pruning**: SimCLR (``configs/simclr_tiny.yaml`` settings) on a heavy-tailed EuroSAT pool for
  ``--steps`` steps, uniform sampling vs dynamic pruning (equal steps x batch = images seen), then
  a logistic-regression probe on frozen features: 5000 images of the balanced EuroSAT train
  split -> the 4,050 test images. ``--pool x10``: AnnualCrop ten times as frequent as each other
  class, all images distinct; ``--pool x10dup``: the same counts, AnnualCrop made of a tenth as
  many distinct images, each repeated ten times (a redundant archive). ``--modes oracle`` runs on
  a label-balanced subset of the same fraction (what perfect clustering could give). Runs of
  different seeds may go in parallel processes (each merges its runs into the saved part).

Data: ``$EOFM_SHARED_DATA/eurosat_rgb`` (default ``../shared/data/eurosat_rgb``), packed once into
``benchmarks/_work/eurosat_rgb_{train,test}`` (shared with bench_pretrain.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import results_file
from curation_common import (
    CWORK,
    POOLS,
    REPO,
    SCRIPT,
    SECTION,
    STATE,
    _relative,
    load_part,
    plot_path,
)
from curation_pruning import (
    _config_of,
    _render_pruning,
    complete_pruning_part,
    part_pruning,
)
from curation_quality import (
    part_quality,
)
from curation_speed import (
    part_speed,
    speed_one,
)


def render() -> list[str]:
    lines = [SECTION, ""]
    parts = {
        name: part
        for name in ("speed", "quality", *(info["part"] for info in POOLS.values()))
        if (part := load_part(name))
    }
    speed, quality = parts.get("speed"), parts.get("quality")
    first = next(iter(parts.values()), None)
    lines += [
        "`python benchmarks/bench_curation.py` (parts run on "
        + ", ".join(f"{k} {p['date']}" for k, p in parts.items())
        + "; each part's command is in results.json).",
        "",
    ]
    if first:
        lines += [
            f"- Machine: {first['machine']}; load average at the end of each part "
            + ", ".join(f"{k} {p['load']}" for k, p in parts.items())
            + " (other jobs shared the machine).",
            "",
        ]
    if speed:
        rows = speed["rows"]
        lines += [
            "### Speed and memory of hierarchical k-means",
            "",
            f"Points: N x {rows[0]['dim']} float32 from a heavy-tailed Gaussian mixture (2000 "
            "components, Zipf weights), memory-mapped from disk; 2 levels, k = [sqrt N, "
            f"sqrt N / 10], k-means++ seeds, {rows[0]['niter']} Lloyd iterations (faiss, "
            f"training subset of 256 k points), {rows[0]['n_resamples']} resampling steps per "
            "level (closest points, half the mean cluster size), every point reassigned after "
            "each; then balanced sampling of 30% (diversity 0.5) and near-duplicate removal "
            "(cosine 0.98) inside level-1 clusters. One process per N; faiss on 2 OpenMP "
            "threads. Peak RSS (`VmHWM` of that process) includes the imports (torch, faiss: about "
            "600 MiB) "
            "and the memory-mapped points that were read; working memory is the peak of the "
            "anonymous RSS (sampled every 20 ms) minus its value before the points are opened: "
            "what the algorithm allocates (labels, distances, training subsets, chunks).",
            "",
            "| N | clusters | k-means (s) | sampling (s) | near-dup. (s) | peak RSS (MiB) | "
            "working memory (MiB) | points (MiB) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['n']:,} | {r['clusters']} | {r['kmeans_s']:.1f} | {r['sampling_s']:.2f} | "
                f"{r['dedup_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                f"{r['anon_peak_mib'] - r['anon_start_mib']:.0f} | {r['data_mib']:.0f} |"
            )
        big = rows[-1]
        total = big["kmeans_s"] + big["sampling_s"] + big["dedup_s"]
        lines += [
            "",
            f"- N = {big['n']:,}: {total / 60:.1f} min in all (target: about 10 min). "
            f"Plot: `{plot_path().relative_to(REPO)}`.",
            "",
            f"![curation scaling]({_relative(plot_path())})",
            "",
        ]
    if quality:
        lines += [
            "### Class entropy of the kept subset (heavy-tailed pools)",
            "",
            "Keep 30% of the pool with `curate_embeddings` (auto clusters [sqrt N, sqrt sqrt N], "
            "L2-normalised embeddings); labels only score the result. 'uniform' is a uniform "
            "random 30%. Entropy in nats (maximum log K).",
            "",
        ]
        for key, title in (("synthetic", "Synthetic land cover"), ("eurosat", "EuroSAT RGB")):
            q = quality.get(key)
            if not q:
                continue
            dom = int(np.argmax(q["counts"]))
            lines += [
                f"**{title}** (`{q['pool']}`): {q['n']:,} images, counts {q['counts']} "
                f"(dominant class {q['classes'][dom] if q['classes'] else dom}: "
                f"{q['counts'][dom] / q['n']:.0%}); pool entropy {q['entropy_pool']:.3f}, "
                f"uniform 30% {q['entropy_uniform_30']:.3f}, maximum {q['max_entropy']:.3f}. "
                f"SimCLR pretraining on the pool: {q['pretrain']['steps']} steps, "
                f"{q['pretrain']['wall_s']:.0f} s.",
                "",
                "| embedding | diversity | clusters | class entropy kept | dominant share kept |",
                "|---|---:|---|---:|---:|",
            ]
            for r in q["rows"]:
                lines.append(
                    f"| {r['embedding']} | {r['diversity']} | {r['clusters']} | "
                    f"{r['entropy_after']:.3f} | {r['dominant_share']:.0%} |"
                )
            lines.append("")
    for info in POOLS.values():
        part = load_part(info["part"])
        if part:
            lines += _render_pruning(part, info["about"])
    return lines


def figures() -> list[dict[str, Any]]:
    """The figures of every saved part (with the part's date, load and command)."""
    out: list[dict[str, Any]] = []

    def add(part: dict[str, Any], name: str, value: Any, unit: str, **notes: Any) -> None:
        cmd = part.get("command") or results_file.command(SCRIPT, [])
        fig = results_file.figure(SECTION, name, value, unit, cmd, **notes)
        fig["date"] = part["date"]
        try:
            fig["load_avg"] = [float(v) for v in str(part.get("load")).split("/")]
        except ValueError:
            fig["load_avg"] = part.get("load")
        out.append(fig)

    speed, quality = load_part("speed"), load_part("quality")
    if speed:
        for r in speed["rows"]:
            notes = {k: r.get(k) for k in ("clusters", "niter", "n_resamples", "dim", "threads")}
            key = f"curation/speed/n{r['n']}"
            add(speed, f"{key}/kmeans_s", round(r["kmeans_s"], 3), "s", **notes)
            add(speed, f"{key}/sampling_s", round(r["sampling_s"], 4), "s", **notes)
            add(speed, f"{key}/near_duplicates_s", round(r["dedup_s"], 3), "s", **notes)
            add(speed, f"{key}/peak_rss", round(r["peak_rss_mib"], 1), "MiB", **notes)
            working = r["anon_peak_mib"] - r["anon_start_mib"]
            add(speed, f"{key}/working_memory", round(working, 1), "MiB", **notes)
    if quality:
        for pool in ("synthetic", "eurosat"):
            q = quality.get(pool)
            for r in (q or {}).get("rows", []):
                name = f"curation/quality/{pool}/{r['embedding']}/diversity{r['diversity']}"
                add(quality, f"{name}/class_entropy_kept", round(r["entropy_after"], 4), "nats")
    for key, info in POOLS.items():
        part = load_part(info["part"])
        for r in part["runs"] if part else []:
            values = _config_of(r) if r["mode"] != "uniform" else ()
            cfg = "_".join(str(v) for v in values if v not in (None, "-"))
            pool = "" if key == "x10" else f"{key}/"
            name = f"curation/pruning/{pool}{r['mode']}{'_' + cfg if cfg else ''}/seed{r['seed']}"
            add(part, f"{name}/linear_probe_acc", round(r["probe_acc"], 4), "accuracy")
    return out


def write_section() -> None:
    results_file.publish(SECTION, render(), figures())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="speed,quality,pruning")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=10)
    parser.add_argument("--synthetic-n", type=int, default=5000)
    parser.add_argument("--pretrain-budget", type=float, default=120.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--diversity", type=float, default=0.5)
    parser.add_argument("--rerun-uniform", action="store_true")
    parser.add_argument(
        "--pool", choices=sorted(POOLS), default="x10", help="heavy-tailed EuroSAT pool (pruning)"
    )
    parser.add_argument(
        "--modes",
        default="uniform,pruning",
        help="pruning part: runs to make, of uniform, pruning and oracle (pretraining on a "
        "label-balanced subset of the pruning fraction: an upper bound)",
    )
    parser.add_argument(
        "--dedup", type=float, default=None, help="pruning: near-duplicate cosine threshold"
    )
    parser.add_argument("--write-only", action="store_true")
    results_file.add_no_write(parser)
    parser.add_argument("--tag", default="", help="suffix of the saved parts (e.g. _quick)")
    parser.add_argument("--speed-one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv_list)
    if args.speed_one is not None:
        print(json.dumps(speed_one(args.speed_one, args.dim, args.niter, args.resamples)))
        return []
    STATE.update(tag=args.tag, argv=argv_list)
    import torch

    torch.set_num_threads(1)
    CWORK.mkdir(parents=True, exist_ok=True)
    if not args.write_only:
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        for part in parts:
            {"speed": part_speed, "quality": part_quality, "pruning": part_pruning}[part](args)
    if not args.no_write:
        complete_pruning_part()
        write_section()
    return figures()


if __name__ == "__main__":
    main()
