"""``bench_curation.py --parts quality``: class entropy of the kept 30 % vs the pool on heavy-tailed
pools, with embeddings from band statistics, a random and a self-pretrained ``vit_test``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from curation_common import embed_pool, heavy_eurosat_pool, pretrain, save_part, synthetic_pool


def quality_on(pool: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from eofm.curation import CurationConfig, curate_embeddings, entropy
    from eofm.curation.embed import BandStatistics
    from eofm.data.shards import ShardDataset
    from eofm.data.stats import Normalizer, compute_stats
    from eofm.models import create_backbone, load_model

    ds = ShardDataset(pool)
    labels = ds.get_batch(np.arange(len(ds)))["label"].numpy()
    k = len(ds.class_names or ()) or int(labels.max()) + 1
    card = compute_stats(ds, max_samples=2000, progress=False)
    norm = Normalizer.from_card(card, list(ds.bands))
    print(
        f"[quality] {tag}: pretraining SimCLR on the pool for {args.pretrain_budget:.0f} s",
        flush=True,
    )
    run = pretrain(pool, f"quality_{tag}", 100_000, args.pretrain_budget, 0)
    torch.manual_seed(0)
    models = {
        "band statistics": BandStatistics(),
        "random vit_test": create_backbone("vit_test", bands=list(ds.bands), img_size=64),
        f"SimCLR vit_test ({run['steps']} steps on the pool)": load_model(run["model"]),
    }
    counts = np.bincount(labels, minlength=k)
    rng = np.random.default_rng(0)
    uniform = np.bincount(
        labels[rng.choice(len(labels), round(0.3 * len(labels)), replace=False)], minlength=k
    )
    out: dict[str, Any] = {
        "pool": str(pool.name),
        "n": len(ds),
        "classes": list(ds.class_names or []),
        "counts": counts.tolist(),
        "entropy_pool": entropy(counts),
        "entropy_uniform_30": entropy(uniform),
        "max_entropy": float(np.log(k)),
        "pretrain": run,
        "rows": [],
    }
    for name, model in models.items():
        x = embed_pool(model, pool, f"{tag}_{name.split()[0]}", norm)
        for eta in (0.0, 0.5, 1.0):
            t0 = time.perf_counter()
            res = curate_embeddings(
                x,
                CurationConfig(target=0.3, diversity=eta, seed=0),
                labels=labels,
                num_classes=k,
                cache=None,  # time the clustering, not a cache hit
            )
            cs = res.stats["classes"]
            out["rows"].append(
                {
                    "embedding": name,
                    "diversity": eta,
                    "kept": res.size,
                    "clusters": res.stats["clusters"],
                    "entropy_after": cs["entropy_after"],
                    "counts_after": cs["counts_after"],
                    "seconds": time.perf_counter() - t0,
                    "dominant_share": cs["counts_after"][int(np.argmax(counts))] / res.size,
                }
            )
            print(
                f"[quality] {tag} {name} eta={eta}: class entropy {out['entropy_pool']:.3f} -> "
                f"{cs['entropy_after']:.3f}",
                flush=True,
            )
    return out


def part_quality(args: argparse.Namespace) -> None:
    results = {
        "synthetic": quality_on(synthetic_pool(args.synthetic_n, 0.8), "synthetic", args),
        "eurosat": quality_on(heavy_eurosat_pool(), "eurosat", args),
    }
    save_part("quality", results)
