"""``eofm evaluate``: run one evaluation protocol on one dataset, with baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eofm.errors import ConfigError

#: Kept here so that building the parser imports no torch (tests check they match the
#: registry in :mod:`eofm.evaluation.tasks` and :data:`eofm.evaluation.dense.DECODERS`).
TASK_NAMES = (
    "knn",
    "linear",
    "finetune",
    "segmentation",
    "change",
    "detection",
    "regression",
    "superres",
)
DECODER_NAMES = ("linear", "fcn", "upernet")

EPILOG = """\
MODEL: a .safetensors model file (with its JSON card), a training checkpoint (.ckpt/.pth/...,
with --backbone NAME), or random:<backbone> (e.g. random:vit_small_patch16).

DATA: anything `eofm data inspect` reads (class folders, CSV with a split column, BigEarthNet,
Dubai tiles, shards, torchgeo:<Name>:<root>...), a DOTA folder (images/ + labelTxt/), named
real sets eurosat-rgb, eurosat-ms, dubai, bigearthnet-s2, bigearthnet-s1, wavemode
(optionally name:<root>; looked for in $EOFM_SHARED_DATA, then ../shared/data of the
project, then ../shared/data of the working folder), or
synthetic[:landcover|multilabel|wavemode|change|ndvi|detection[:N[:SIZE]]].

Tasks and the data they need: knn, linear, finetune (class or multi-label), segmentation
(masks), change (image pairs + change mask), detection (DOTA labels), regression (a target per
scene, or a target map), superres (any images).

Examples:
  eofm evaluate --model random:vit_test --task linear --data synthetic --out eval-linear
  eofm evaluate --model runs/ssl.safetensors --task knn --data eurosat-rgb --baselines random
  eofm evaluate --model last.ckpt --backbone resnet50 --task segmentation --data dubai \\
      --decoder upernet --max-size 512 --epochs 20
"""


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def _list(text: str | None) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()] if text else []


def cmd_evaluate(args: argparse.Namespace) -> int:
    from eofm.devices import resolve_device
    from eofm.evaluation.tasks import format_summary, run_evaluation

    resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("eofm-eval") / args.task
    opts: dict[str, Any] = {
        "out_dir": out,
        "device": args.device,
        "seed": args.seed,
        "progress": not args.quiet,
        "cache": not args.no_cache,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "amp": args.amp,
        "img_size": args.img_size,
        "k": args.k,
        "temperature": args.temperature,
        "knn_backend": args.knn_backend,
        "probe_optimizer": args.probe_optimizer,
        "probe_epochs": args.probe_epochs,
        "lrs": _floats(args.lrs),
        "wds": _floats(args.wds),
        "epochs": args.epochs,
        "lr": args.lr,
        "train_batch_size": args.train_batch_size,
        "seeds": args.seeds,
        "decoder": args.decoder,
        "freeze": not args.finetune_encoder,
        "crop": args.crop,
        "overlap": args.overlap,
        "max_size": args.max_size,
        "head": args.head,
        "scale": args.scale,
    }
    fractions = _floats(args.fractions)
    if fractions:
        opts["fractions"] = fractions
    if args.cache_dir:
        opts["cache_dir"] = Path(args.cache_dir)
    bands = _list(args.bands) or None
    result = run_evaluation(
        args.model,
        args.task,
        args.data,
        backbone=args.backbone,
        bands=bands,
        baselines=_list(args.baselines),
        formats=["md", "html"] if args.format == "both" else [args.format],
        prefix=args.prefix,
        max_train=args.max_train,
        max_test=args.max_test,
        band_names=_list(args.band_names) or None,
        skip_bad=args.skip_bad,
        **opts,
    )
    print(format_summary(result))
    skipped = result.get("data", {}).get("skipped")
    if skipped:
        why = next(iter(result["data"]["skipped_files"].values()))
        print(f"skipped:   {skipped} unreadable or incomplete samples (--skip-bad), e.g. {why}")
    for kind, path in result.get("report", {}).items():
        print(f"{kind + ':':<10} {path}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eofm evaluate`` to the CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model: kNN, linear probe, fine-tuning, segmentation, change, "
        "detection, regression, super-resolution",
        description="Evaluate a model (and baselines) with one protocol on one dataset; writes "
        "results.json and a report with tables and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model file, checkpoint, or random:<backbone>")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASK_NAMES)}")
    p.add_argument("--data", required=True, help="dataset (see below)")
    p.add_argument("--backbone", help="architecture of a checkpoint without a model card")
    p.add_argument("--prefix", help="key prefix of the backbone in the checkpoint (auto)")
    p.add_argument("--bands", help="comma-separated bands to take from the data, in order")
    p.add_argument(
        "--band-names",
        help="the files' own band order, when they do not name their bands (e.g. EuroSAT-MS)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable files and incomplete samples (counted) instead of stopping",
    )
    p.add_argument("--out", help="output folder (default eofm-eval/<task>)")
    p.add_argument(
        "--baselines", help="comma-separated: random (same backbone, random init), rgb:<path>"
    )
    p.add_argument("--format", choices=["md", "html", "both"], default="both", help="report")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, help="model input size (default from the data)")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    p.add_argument("--train-batch-size", type=int, help="batch size of trained protocols")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for reading")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (1 is often faster for small models on a busy machine)",
    )
    p.add_argument("--amp", action="store_true", help="bfloat16 (CPU) / float16 autocast")
    p.add_argument("--max-train", type=int, help="use at most N training samples (stratified)")
    p.add_argument("--max-test", type=int, help="use at most N val/test samples (stratified)")
    p.add_argument(
        "--cache-dir", help="feature/data cache (default $EOFM_CACHE_DIR or ~/.cache/eofm)"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute features")
    g = p.add_argument_group("kNN and linear probe")
    g.add_argument("--k", type=int, default=20, help="neighbours (default 20)")
    g.add_argument("--temperature", type=float, default=0.07, help="vote temperature")
    g.add_argument("--knn-backend", choices=["torch", "faiss"], default="torch")
    g.add_argument("--probe-optimizer", choices=["adamw", "lbfgs"], default="adamw")
    g.add_argument("--probe-epochs", type=int, default=100)
    g.add_argument("--lrs", help="probe learning rates to sweep (default 1e-3,1e-2,1e-1)")
    g.add_argument("--wds", help="probe weight decays to sweep (default 0,0.01,0.1,1)")
    g = p.add_argument_group("fine-tuning and dense protocols")
    g.add_argument("--epochs", type=float, help="training epochs (protocol default if unset)")
    g.add_argument("--lr", type=float, help="learning rate of the head (encoder: a tenth)")
    g.add_argument("--fractions", help="label fractions (default 0.01,0.1,1.0)")
    g.add_argument("--seeds", type=int, default=3, help="seeds per label fraction")
    g.add_argument("--decoder", choices=list(DECODER_NAMES), default="upernet")
    g.add_argument(
        "--finetune-encoder", action="store_true", help="train the encoder too (default frozen)"
    )
    g.add_argument("--crop", type=int, help="training crop and sliding window size")
    g.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap")
    g.add_argument("--max-size", type=int, help="downscale images whose long side exceeds this")
    g.add_argument("--head", choices=["linear", "mlp"], default="linear", help="regression head")
    g.add_argument("--scale", type=int, default=2, help="super-resolution factor")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    return p
