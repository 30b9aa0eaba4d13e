"""``eofm pretrain``: self-supervised pretraining from a recipe (``configs/*.yaml``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """\
examples:
  eofm pretrain --config configs/dino_tiny.yaml
  eofm pretrain --config configs/simclr_baseline.yaml --set data.path=/data/ssl4eo optim.lr=3e-4
  eofm pretrain --config configs/dino_tiny.yaml --resume last
  eofm pretrain --config configs/mocov3_tiny.yaml trainer.max_steps=20 --out runs/try1

Overrides are KEY=VALUE with a dotted key into the recipe (data, model, method, augment,
optim, trainer, output, curation); VALUE is read as YAML (3e-4, true, null, [B04,B03,B02],
{temperature: 0.2}). Ctrl-C or SIGTERM saves checkpoints/interrupted.ckpt; --resume last
continues from the newest checkpoint of the run folder; a run killed outright (SIGKILL, power
loss) continues from its last periodic checkpoint. A NaN/inf loss stops the run naming the last
good checkpoint (trainer.nonfinite_loss=skip skips such steps instead)."""


def add_parser(subparsers: Any) -> None:
    """Add the ``pretrain`` sub-command to the ``eofm`` parser."""
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (SimCLR, MoCo v3, DINO, MAE...) from a recipe",
        description="Pretrain a backbone with a self-supervised method; export the encoder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", metavar="YAML", help="recipe file (see configs/README.md)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help="override recipe fields, e.g. --set optim.lr=3e-4 trainer.max_steps=100",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides")
    p.add_argument(
        "--resume",
        metavar="last|auto|PATH",
        help="continue a run: 'last' (newest checkpoint of the run folder), 'auto' (the same, "
        "or a fresh start when there is none: for jobs that restart) or a .ckpt path",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (instead of output.dir/output.name)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from eofm.cli.submit import add_submit_arguments

    add_submit_arguments(p)
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Run ``eofm pretrain``."""
    import yaml

    from eofm.training import TrainingInterrupted, load_config, run_pretraining
    from eofm.training.config import config_to_dict

    sets = [item for group in args.sets for item in group]
    config = load_config(args.config, [*sets, *args.overrides])
    if args.out:
        config.output.dir = args.out
        config.output.name = ""
    if args.quiet:
        config.trainer.progress_bar = False
    if args.print_config:
        from eofm.training.engine import validate_config

        validate_config(config, check_devices=False)  # names are checked, devices are not
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    if getattr(args, "submit", None) == "slurm":
        from eofm.cli.submit import submit_slurm
        from eofm.training.engine import run_dir_of, validate_config

        validate_config(config, check_devices=False)
        job = submit_slurm(args, run_dir_of(config))
        print(f"submitted SLURM job {job.job_id}; script and logs in {job.paths.folder}")
        return 0
    try:
        result = run_pretraining(config, resume=args.resume)
    except TrainingInterrupted as err:
        if err.rank == 0:
            print(f"eofm: {err}", file=sys.stderr)
        return 130
    if result.global_rank != 0:
        return 0  # one summary per run, from rank 0
    print(f"run:        {result.run_dir}")
    print(f"steps:      {result.global_step}")
    if result.final_loss is not None:
        print(f"final loss: {result.final_loss:.4f}")
    if result.images_per_s is not None:
        print(f"throughput: {result.images_per_s:.1f} images/s")
    print(f"checkpoint: {result.last_checkpoint}")
    if result.model_path is not None:
        print(f"model:      {result.model_path}")
    return 0
