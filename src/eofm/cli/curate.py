"""``eofm curate``: embed a dataset with a model, cluster, keep a balanced subset, report."""

from __future__ import annotations

import argparse
from typing import Any

from eofm.pipelines.curate import _target as _target

EPILOG = """\
MODEL: a .safetensors model file (with its JSON card: bands and normalisation come from it),
a training checkpoint with --backbone NAME, random:<backbone> (e.g. random:vit_test), or
bandstats (per-band mean and std of each image: a weight-free sanity baseline).

DATA: anything `eofm data inspect` reads (shards, class folders, a CSV with --split, globs,
torchgeo:<Name>:<root>) or synthetic[:landcover|wavemode][:n=N][:size=S][:heavy_tail=H]
(generated into OUT/synthetic).

TARGET: a count (5000) or a fraction of the pool (0.3).

Writes OUT/embeddings.npy (resumable: run the same command again after an interruption),
OUT/clusters.npz, OUT/manifest.csv (index, path, clusters, distance, label), OUT/manifest.json,
OUT/subset_indices.npy and OUT/report.md with its plots.

Examples:
  eofm curate --model random:vit_test --data synthetic:landcover:n=2000:heavy_tail=0.8 \\
      --target 0.3 --out curated
  eofm curate --model runs/dino_tiny/model.safetensors --data shards/ --target 5000 \\
      --levels 2 --k 100,10 --diversity 0.5 --dedup 0.98 --out curated
"""


def cmd_curate(args: argparse.Namespace) -> int:
    from eofm.pipelines.curate import CurateOptions, run_curate

    return run_curate(CurateOptions.from_namespace(args))


def add_parser(subparsers: Any) -> None:
    """Add ``eofm curate`` to the ``eofm`` command."""
    p = subparsers.add_parser(
        "curate",
        help="cluster a dataset's embeddings and keep a balanced subset (Vo et al. 2024)",
        description="Embed DATA with MODEL, run hierarchical k-means with resampling, keep a "
        "balanced subset of TARGET samples and write a manifest and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="model file, checkpoint, random:<backbone> or bandstats"
    )
    p.add_argument("--backbone", default=None, help="architecture of a checkpoint without card")
    p.add_argument("--data", required=True, help="dataset spec (see below)")
    p.add_argument("--target", required=True, help="samples to keep: count or fraction")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--levels", type=int, default=None, help="levels of the hierarchy (2)")
    p.add_argument(
        "--k", default=None, help="clusters per level, finest first, e.g. 100,10 (default: auto)"
    )
    p.add_argument(
        "--diversity",
        type=float,
        default=None,
        help="within-cluster choice: 0 closest to the centroid .. 1 uniform random (0.5)",
    )
    p.add_argument(
        "--dedup", type=float, default=None, help="drop near-duplicates above this cosine"
    )
    p.add_argument(
        "--subsample", type=int, default=None, help="cluster this many points, assign the rest"
    )
    p.add_argument("--niter", type=int, default=20, help="Lloyd iterations per level (20)")
    p.add_argument("--resamples", type=int, default=10, help="resampling steps per level (10)")
    p.add_argument("--resample-strategy", choices=["closest", "random"], default="closest")
    p.add_argument("--bands", default=None, help="comma-separated bands to read")
    p.add_argument("--band-names", default=None, help="the files' own band order")
    p.add_argument("--sensor", default=None)
    p.add_argument("--split", default=None, help="CSV split to use (train...)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for reading")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--stats-samples", type=int, default=2000, help="samples for the data card")
    p.add_argument("--no-l2", action="store_true", help="cluster raw (not L2-normalised) vectors")
    p.add_argument(
        "--restart",
        action="store_true",
        help="recompute everything (embeddings, k-means) instead of reusing finished work",
    )
    p.add_argument("--grid-clusters", type=int, default=8, help="clusters shown in the grid")
    p.add_argument("--grid-per-cluster", type=int, default=6, help="samples per grid row")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="under torchrun: every rank embeds and clusters its share of the pool "
        "(the same subset on any number of ranks, one included; docs/scale.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_curate)
