"""The ``eofm`` command line: ``eofm data synth | inspect | stats | pack``, ``eofm sensors``,
``eofm demo``. Errors of eofm's own kinds are printed as one clear line, exit status 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eofm import __version__
from eofm.errors import EofmError

LAYOUTS = """\
DATA may be: a folder of eofm shards (index.json); a folder written by `eofm data synth`;
class sub-folders of images; a CSV (path,label[,split] or one 0/1 column per class); a JSON
of multi-labels; BigEarthNet patch folders; Sen1Floods11 (S1/S2/Labels); images/ + masks/;
A/ + B/ + label/ (change detection); a glob such as 'archive/**/*.tif'; or
torchgeo:<ClassName>:<root> for a torchgeo dataset on disk."""


#: Modules that add their own sub-commands: each has ``add_parser(subparsers)``, whose parsers
#: set ``func`` (taking the parsed ``argparse.Namespace``, returning an exit code).
PLUGIN_COMMANDS = ("eofm.cli.pretrain", "eofm.cli.evaluate", "eofm.cli.curate", "eofm.cli.models")


def _bands(text: str | None) -> list[str] | None:
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


def _open(args: argparse.Namespace) -> Any:
    from eofm.data.catalog import open_dataset

    kwargs: dict[str, Any] = {}
    if getattr(args, "bands", None):
        kwargs["bands"] = _bands(args.bands)
    if getattr(args, "band_names", None):
        kwargs["band_names"] = _bands(args.band_names)
    if getattr(args, "sensor", None):
        kwargs["sensor"] = args.sensor
    if getattr(args, "skip_bad", False):
        kwargs["on_error"] = "skip"
    return open_dataset(args.data, task=args.task, **kwargs)


def cmd_synth(args: argparse.Namespace) -> int:
    from eofm.data.synthetic import write_synthetic

    out = write_synthetic(
        args.out,
        kind=args.kind,
        n=args.n,
        size=args.size,
        seed=args.seed,
        heavy_tail=args.heavy_tail,
        fmt=args.format,
        progress=not args.quiet,
        sensors=tuple(_bands(args.sensors) or ("s2", "s1")),
    )
    print(f"wrote {args.n} synthetic {args.kind} scenes to {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from eofm.data.inspect import inspect_dataset
    from eofm.data.preview import save_preview

    ds = _open(args)
    summary, samples = inspect_dataset(ds, max_samples=args.max_samples, progress=not args.quiet)
    print(summary.format())
    if args.preview != "none":
        preview = (
            Path(args.preview) if args.preview else Path(f"{Path(args.data).name}_preview.png")
        )
        save_preview(
            samples, preview, class_names=getattr(ds, "class_names", None), title=str(args.data)
        )
        print(f"preview:   {preview}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from eofm.data.stats import compute_stats

    ds = _open(args)
    nodata = float(args.nodata) if args.nodata is not None else None
    card = compute_stats(ds, nodata=nodata, max_samples=args.max_samples, progress=not args.quiet)
    out = (
        Path(args.out)
        if args.out
        else (
            Path(args.data) / "eofm_card.json"
            if Path(args.data).is_dir()
            else Path(args.data).with_suffix(".card.json")
        )
    )
    card.to_json(out)
    for name, st in card.stats.items():
        print(
            f"{name:<8} mean {st.mean:12.4g}  std {st.std:12.4g}  "
            f"p2 {st.percentiles.get('p2', float('nan')):10.4g}  "
            f"p98 {st.percentiles.get('p98', float('nan')):10.4g}  "
            f"nodata {st.nodata_fraction:.2%}"
        )
    print(f"card:      {out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from eofm.data.shards import pack_dataset
    from eofm.data.stream.remote import is_remote

    ds = _open(args)
    if is_remote(args.out):
        from eofm.data.stream.pack import pack_to_url

        pool = pack_to_url(
            ds,
            args.out,
            shard_size=args.shard_size,
            num_workers=max(1, args.workers),
            progress=not args.quiet,
            size=args.size,
            fit=args.fit,
        )
        print(f"packed {len(ds)} samples into the streamable pool {pool.url}")
        return 0
    out = pack_dataset(
        ds,
        args.out,
        shard_size=args.shard_size,
        num_workers=args.workers,
        progress=not args.quiet,
        size=args.size,
        fit=args.fit,
    )
    print(f"packed {len(ds)} samples into {out}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from eofm.data.cache import cache_dir, cache_entries, clear_cache

    root = cache_dir()
    if args.clear:
        freed = clear_cache()
        print(f"removed the decode-once cache under {root} ({freed / 1e6:.1f} MB freed)")
        return 0
    entries = cache_entries()
    print(f"decode-once cache: {root}  (EOFM_CACHE_DIR; EOFM_CACHE=0 turns it off)")
    total = 0
    for e in entries:
        total += e.bytes
        print(
            f"  {e.key[:12]}  {e.num_samples:>8} samples  {e.bytes / 1e6:9.1f} MB  {e.dtype:<8}"
            f"  {e.created}  {e.source}"
        )
    print(f"{len(entries)} entries, {total / 1e6:.1f} MB; `eofm data cache --clear` removes them")
    return 0


def cmd_sensors(args: argparse.Namespace) -> int:
    from eofm.data.sensors import get_sensor, list_sensors

    for name in list_sensors():
        s = get_sensor(name)
        print(f"{s.name:<22} {s.kind:<8} {len(s.bands):>2} bands  {s.units}")
        if args.verbose:
            for b in s.bands:
                print(
                    f"    {b.name:<6} {b.common_name or '':<13} {b.wavelength_um:10.3f} um "
                    f"{b.gsd_m:5.0f} m"
                )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eofm.pipelines.demo import run_demo, settings_from_args

    run_demo(
        Path(args.out), data=args.data, settings=settings_from_args(args), progress=not args.quiet
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eofm",
        description="Curate, pretrain and evaluate Earth-observation foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"eofm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="curate, pretrain and evaluate end to end (synthetic data by default, CPU)",
        description="The main job in about 2 minutes on 2 CPU cores: synthetic Sentinel-1 "
        "scenes (or --data FOLDER) -> inspect -> shards -> dense contrastive pretraining with "
        "dynamic pruning -> curation -> linear probe and segmentation against random "
        "initialisation -> report.md/report.html.",
    )
    from eofm.pipelines.demo import add_arguments

    add_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    sensors = sub.add_parser("sensors", help="list the registered sensors and their bands")
    sensors.add_argument("-v", "--verbose", action="store_true", help="show every band")
    sensors.set_defaults(func=cmd_sensors)

    data = sub.add_parser("data", help="synthesise, inspect, describe and pack datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = dsub.add_parser("synth", help="write a labelled synthetic EO dataset (no download)")
    synth.add_argument("out", help="output folder")
    synth.add_argument(
        "--kind",
        choices=["landcover", "wavemode"],
        default="landcover",
        help="landcover: S2 13-band + S1 VV/VH scenes with masks; "
        "wavemode: S1 Wave Mode ocean imagettes",
    )
    synth.add_argument("--n", type=int, default=1000, help="number of scenes (default 1000)")
    synth.add_argument("--size", type=int, default=64, help="scene size in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--heavy-tail",
        type=float,
        default=None,
        metavar="FRACTION",
        help="make this fraction of scenes dominated by one class (e.g. 0.8)",
    )
    synth.add_argument("--format", choices=["geotiff", "shards"], default="geotiff")
    synth.add_argument(
        "--sensors",
        default="s2,s1",
        help="landcover: which images to write, s2 (13 bands), s1 (VV, VH) or both (default s2,s1)",
    )
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(func=cmd_synth)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("data", help="dataset path, glob or torchgeo:<Name>:<root>")
        p.add_argument(
            "--task",
            default="auto",
            choices=[
                "auto",
                "classification",
                "multilabel",
                "segmentation",
                "change",
                "unlabelled",
            ],
            help="how to read labels when a layout allows several",
        )
        p.add_argument("--bands", help="comma-separated band names to select, in order")
        p.add_argument(
            "--band-names",
            help="the files' own band order, when they do not name their bands (e.g. EuroSAT-MS)",
        )
        p.add_argument("--sensor", help="sensor name (see `eofm sensors`)")
        p.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip unreadable files with a warning instead of stopping",
        )
        p.add_argument("--quiet", action="store_true")

    inspect = dsub.add_parser(
        "inspect",
        help="counts per class, bands, sizes, value ranges, and a preview PNG",
        epilog=LAYOUTS,
    )
    data_args(inspect)
    inspect.add_argument(
        "--max-samples",
        type=int,
        default=2000,
        help="inspect at most this many samples (default 2000)",
    )
    inspect.add_argument(
        "--preview",
        default=None,
        help="preview PNG path (default <name>_preview.png; 'none' to skip)",
    )
    inspect.set_defaults(func=cmd_inspect)

    stats = dsub.add_parser(
        "stats", help="per-band statistics into a JSON dataset card", epilog=LAYOUTS
    )
    data_args(stats)
    stats.add_argument("--nodata", type=float, default=None, help="value marking nodata")
    stats.add_argument("--max-samples", type=int, default=None)
    stats.add_argument("--out", default=None, help="card path (default DATA/eofm_card.json)")
    stats.set_defaults(func=cmd_stats)

    pack = dsub.add_parser("pack", help="pack a dataset into memory-mapped shards", epilog=LAYOUTS)
    data_args(pack)
    pack.add_argument(
        "out",
        help="output folder for the shards, or s3://bucket/prefix (gs://) for a pool streamed "
        "from object storage (endpoint: $AWS_ENDPOINT_URL)",
    )
    pack.add_argument(
        "--shard-size", type=int, default=4096, help="samples per shard (per chunk of a pool)"
    )
    pack.add_argument(
        "--size", type=int, default=None, help="bring every image to SIZE x SIZE (see --fit)"
    )
    pack.add_argument(
        "--fit",
        choices=("crop", "resize"),
        default="crop",
        help="with --size: centre-crop (upsampling smaller images first) or resize whole images",
    )
    pack.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers for reading (for a URL: litdata processes writing chunks)",
    )
    pack.set_defaults(func=cmd_pack)

    cache = dsub.add_parser(
        "cache",
        help="list (or --clear) the decode-once cache of packed datasets ($EOFM_CACHE_DIR)",
    )
    cache.add_argument("--clear", action="store_true", help="remove every cached dataset")
    cache.set_defaults(func=cmd_cache)

    for module_name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EofmError as err:
        print(f"eofm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eofm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
