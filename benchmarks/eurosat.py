"""Shared by the benchmark scripts: where EuroSAT RGB lives, and its splits packed into shards."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"


def eurosat_root() -> Path:
    """``$EOFM_SHARED_DATA/eurosat_rgb`` (default ``../shared/data/eurosat_rgb``)."""
    shared = Path(os.environ.get("EOFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "eurosat_rgb"


def pack_split(split: str) -> Path:
    """Shards of one split of ``splits_seed42.csv``, packed once into ``benchmarks/_work``."""
    from eofm.data.catalog import open_dataset
    from eofm.data.shards import pack_dataset

    out = WORK / f"eurosat_rgb_{split}"
    if (out / "index.json").is_file():
        return out
    csv_path = eurosat_root() / "splits_seed42.csv"
    if not csv_path.is_file():
        sys.exit(f"EuroSAT RGB not found at {csv_path} (set EOFM_SHARED_DATA)")
    ds = open_dataset(csv_path, split=split)
    pack_dataset(ds, out, shard_size=4096, num_workers=0, progress=sys.stderr.isatty())
    return out
