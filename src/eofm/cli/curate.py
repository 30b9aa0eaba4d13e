"""``eofm curate``: embed a dataset with a model, cluster, keep a balanced subset, report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from eofm.errors import ConfigError

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


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _target(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--target {text!r}: give a count (5000) or a fraction (0.3)") from None
    if value <= 0:
        raise ConfigError(f"--target must be positive, got {text}")
    if value < 1 or "." in text:
        if value > 1:
            raise ConfigError(f"--target {text}: a fraction must lie in (0, 1]")
        return value
    return int(value)


def _model_bands(spec: str) -> list[str] | None:
    """Bands of a model file's card (so the data is read with exactly those bands)."""
    from eofm.models.export import card_path, read_card

    path = Path(spec)
    if spec.startswith(("random:", "rgb:")) or path.suffix.lower() != ".safetensors":
        return None
    if not card_path(path).exists():
        return None
    return [str(b) for b in read_card(path)["bands"]]


def cmd_curate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from eofm.curation.embed import BandStatistics, extract_embeddings, load_embeddings
    from eofm.curation.pipeline import CurationConfig, curate_embeddings
    from eofm.curation.report import write_manifest, write_report
    from eofm.data.stats import Normalizer
    from eofm.devices import resolve_device
    from eofm.evaluation.data import dataset_labels
    from eofm.evaluation.models import resolve_model
    from eofm.training.config import DataConfig
    from eofm.training.data import build_dataset, build_normalizer

    if args.threads:
        torch.set_num_threads(args.threads)
    resolve_device(args.device)  # before any work
    target = _target(args.target)
    clusters = _ints(args.k)
    if clusters is not None and args.levels is not None and len(clusters) != args.levels:
        raise ConfigError(f"--k {args.k} lists {len(clusters)} levels but --levels {args.levels}")
    if args.diversity is not None and not 0.0 <= args.diversity <= 1.0:
        raise ConfigError(f"--diversity must lie in [0, 1], got {args.diversity}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else None
    bands = _model_bands(args.model) or bands
    data_cfg = DataConfig(
        path=args.data,
        bands=bands,
        band_names=([b.strip() for b in args.band_names.split(",")] if args.band_names else None),
        sensor=args.sensor,
        split=args.split,
        normalize="zscore",
        stats_max_samples=args.stats_samples,
    )
    info = build_dataset(data_cfg, out, seed=args.seed)
    if info.num_samples is None or isinstance(info.dataset, torch.utils.data.IterableDataset):
        raise ConfigError("eofm curate needs a map-style dataset (not a shard stream)")
    encoder: torch.nn.Module
    normalizer: Normalizer | None = None
    resize: tuple[int, int] | None = None
    if args.model == "bandstats":
        encoder, name, arch = BandStatistics(), "band statistics", "mean+std per band"
    else:
        model = resolve_model(
            args.model,
            bands=list(info.bands),
            img_size=info.image_size,
            backbone=args.backbone,
            sensor=info.sensor,
            seed=args.seed,
        )
        backbone = model.backbone
        encoder, name, arch = backbone, model.name, backbone.arch
        norm_card = model.normalization
        if norm_card and "mean" in norm_card and "std" in norm_card:
            mean = [float(norm_card["mean"][b]) for b in backbone.bands]
            std = [float(norm_card["std"][b]) for b in backbone.bands]
            normalizer = Normalizer(mean, std, bands=backbone.bands)
        size = (int(backbone.img_size[0]), int(backbone.img_size[1]))
        if backbone.patch_size is not None and size != info.image_size:
            resize = size
    norm_note = "model card (z-score)"
    if normalizer is None:
        normalizer, _ = build_normalizer(data_cfg, info, out)
        norm_note = "dataset card (z-score)"
    device = resolve_device(args.device)
    encoder.to(device)
    n = int(info.num_samples)
    print(f"embedding {n:,} samples with {name} ({arch}) on {device}", flush=True)
    emb_path = extract_embeddings(
        encoder,
        info.dataset,
        out / "embeddings.npy",
        batch_size=args.batch_size,
        normalizer=normalizer,
        device=device,
        image_size=resize,
        l2_normalize=not args.no_l2,
        num_workers=args.workers,
        progress=not args.quiet,
        overwrite=args.restart,
    )
    embed_s = time.perf_counter() - started
    x = load_embeddings(emb_path)
    labels = dataset_labels(info.dataset)
    class_names = getattr(info.dataset, "class_names", None)
    config = CurationConfig(
        target=target,
        levels=args.levels or (len(clusters) if clusters else 2),
        clusters=clusters,
        diversity=0.5 if args.diversity is None else float(args.diversity),
        dedup=args.dedup,
        subsample=args.subsample,
        niter=args.niter,
        n_resamples=args.resamples,
        resample_strategy=args.resample_strategy,
        seed=args.seed,
    )
    result = curate_embeddings(
        x,
        config,
        labels=labels,
        num_classes=len(class_names) if class_names else None,
        progress=not args.quiet,
        cache=None if args.restart else "auto",
    )
    result.timings = {"embed_s": embed_s, **result.timings}
    result.clusters.save(out / "clusters.npz")
    np.save(out / "subset_indices.npy", result.indices)
    settings: dict[str, Any] = {
        "model": args.model,
        "data": args.data,
        "bands": ",".join(info.bands),
        "normalisation": norm_note,
        "embedding": f"pooled, {x.shape[1]}-d" + ("" if args.no_l2 else ", L2-normalised"),
        "target": args.target,
        "clusters": ",".join(str(k) for k in result.clusters.clusters),
        "diversity": config.diversity,
        "near-duplicate threshold": args.dedup if args.dedup is not None else "off",
        "k-means": f"{config.niter} iterations, {config.n_resamples} resampling steps "
        f"({config.resample_strategy})",
        "subsample": args.subsample or "all points",
        "seed": args.seed,
    }
    write_manifest(
        out,
        result,
        info.dataset,
        labels=labels,
        class_names=class_names,
        extra={"settings": settings, "config": config.to_dict()},
    )
    report = write_report(
        out,
        result,
        info.dataset,
        class_names=class_names,
        title=f"Curation of {args.data}",
        settings=settings,
        grid_clusters=args.grid_clusters,
        grid_per_cluster=args.grid_per_cluster,
    )
    st = result.stats
    print(
        f"kept {result.size:,} of {n:,} samples; level-1 cluster entropy "
        f"{st['level1']['entropy_before']:.3f} -> {st['level1']['entropy_after']:.3f} nats"
    )
    if "classes" in st:
        cs = st["classes"]
        print(
            f"class entropy {cs['entropy_before']:.3f} -> {cs['entropy_after']:.3f} nats "
            "(labels not used for curation)"
        )
    print(f"manifest:  {out / 'manifest.csv'}")
    print(f"report:    {report}")
    if args.json:
        print(json.dumps(st, default=str))
    return 0


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_curate)
