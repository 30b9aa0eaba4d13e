"""``eofm models``: published foundation models known to eofm, and their import as model files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = """\
Published models are named torchgeo:<Enum>.<MEMBER>, timm:<model>[.<tag>] or
hf:<org>/<repo>/<file>; they work as --model / --baselines of `eofm evaluate` and as
model.pretrained (or model.init) of a pretraining recipe. Their files are looked for in
$EOFM_WEIGHTS_DIR, $TORCH_HOME/hub/checkpoints and $HF_HOME/hub (downloaded there when
missing, unless EOFM_OFFLINE=1).

examples:
  eofm models list --cached
  eofm models import torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO models/
"""


def cmd_list(args: argparse.Namespace) -> int:
    from eofm.models.zoo import list_published

    rows = [pw.describe() for pw in list_published()]
    if args.family:
        rows = [r for r in rows if r["name"].startswith(args.family + ":")]
    if args.cached:
        rows = [r for r in rows if r["cached"]]
    for r in rows:
        bands = ",".join(r["bands"] or []) or "?"
        mark = "cached" if r["cached"] else "-"
        print(f"{r['name']:<62} {r['arch'] or '?':<20} {bands:<40} {mark}")
    cached = sum(1 for r in rows if r["cached"])
    print(f"{len(rows)} models, {cached} on this machine")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from eofm.errors import ConfigError
    from eofm.models import create_backbone, export_model
    from eofm.models.zoo import pretrained_options, resolve_published

    pw = resolve_published(args.name)
    arch = args.backbone or pw.arch
    if not arch:
        raise ConfigError(f"{args.name}: name its architecture with --backbone")
    bands = [b.strip() for b in args.bands.split(",")] if args.bands else pw.bands
    bb = create_backbone(
        arch,
        bands=list(bands) if bands else None,
        img_size=args.img_size or pw.img_size,
        sensor=pw.sensor,
        **pretrained_options(args.name),
    )
    out = Path(args.out)
    target = out if out.suffix == ".safetensors" else out / f"{_slug(args.name)}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    report = bb.pretrained_report
    extra: dict[str, Any] = {"published": pw.describe()}
    if report is not None:
        extra["load_report"] = report.to_dict()
    path = export_model(bb, target, normalization=pw.normalization, method=None, extra=extra)
    if report is not None:
        print(report)
    print(f"model file: {path}")
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("_")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="published foundation models: list them, import one as an eofm model file",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="known published models, and which are on this machine")
    ls.add_argument("--cached", action="store_true", help="only those whose file is here")
    ls.add_argument("--family", choices=["torchgeo", "timm"], help="only this family")
    ls.set_defaults(func=cmd_list)
    imp = msub.add_parser("import", help="write a published model as model.safetensors + card")
    imp.add_argument(
        "name", help="torchgeo:<Enum>.<MEMBER>, timm:<model> or hf:<org>/<repo>/<file>"
    )
    imp.add_argument("out", help="output folder (or .safetensors path)")
    imp.add_argument("--backbone", help="eofm architecture (needed for hf: names)")
    imp.add_argument("--bands", help="comma-separated bands to build it for (default: its own)")
    imp.add_argument("--img-size", type=int, default=None)
    imp.set_defaults(func=cmd_import)
