"""Data-loading benchmark: EuroSAT RGB (27,000 64x64 JPEGs) read per file vs from shards.

Measures samples/s for one epoch of

(a) a plain per-file PIL JPEG folder reader through a DataLoader (batch 256),
(b) :class:`eofm.data.shards.ShardDataset` through a DataLoader (batch 256, shuffled), plus
    the direct vectorised ``get_batch`` loop and the streaming ``ShardIterableDataset``,
(c) torchgeo's ``EuroSAT`` class, where it can be pointed at the JPEGs without downloading,

and the time to pack the folder into shards. Appends (or replaces) the section
``## Data loading`` of ``benchmarks/results.md``.

Usage: ``python benchmarks/bench_loading.py [--limit N] [--workers 0 2] [--repeats 3]
[--no-torchgeo] [--no-write]``; figures also go to ``benchmarks/results.json``.
Data: ``$EOFM_SHARED_DATA/eurosat_rgb/2750`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import results_file
import torch
from PIL import Image
from results_file import command, figure, heading, machine_line, publish
from torch.utils.data import DataLoader, Dataset

from eofm.data.sample import collate_samples
from eofm.data.shards import ShardDataset, ShardIterableDataset, pack_dataset

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Data loading"
SCRIPT = "bench_loading.py"
BATCH = 256
#: Short names of the readers in results.json.
READER_KEYS = {
    "(a) ": "folder_pil",
    "(b) ": "shards_dataloader",
    "(b') ": "shards_get_batch",
    "(b'') ": "shards_iterable",
    "(c) ": "torchgeo",
}


class JpegFolder(Dataset[dict[str, Any]]):
    """The plain baseline: one PIL open/decode per sample."""

    sensor = "rgb"

    def __init__(self, files: list[tuple[Path, int]], classes: list[str]) -> None:
        self.files = files
        self.class_names = tuple(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.files[i]
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(arr)),
            "bands": ("red", "green", "blue"),
            "label": torch.tensor(label),
            "path": str(path),
        }


def list_files(root: Path, limit: int | None) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(p, k) for k, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))]
    if limit is not None and limit < len(files):
        pick = np.random.default_rng(0).choice(len(files), size=limit, replace=False)
        files = [files[i] for i in np.sort(pick)]
    return files, classes


def timed_epoch(batches: Iterable[Any], count: Callable[[Any], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for batch in batches:
        n += count(batch)
    return time.perf_counter() - start, n


def n_images(batch: Any) -> int:
    return int(batch["image"].shape[0])


def folder_size(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern))


def torchgeo_dataset(
    files: list[tuple[Path, int]], classes: list[str], work: Path
) -> tuple[Any | None, str]:
    """torchgeo's EuroSAT over the JPEGs, or None and the reason it cannot be used."""
    try:
        import torchgeo
        from torchgeo.datasets import EuroSAT
    except Exception as exc:  # pragma: no cover - optional dependency
        return None, f"torchgeo not importable ({exc})"
    # EuroSAT expects root/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/*.tif
    # and a split file; it keeps only file names listed there, with .jpg rewritten to .tif.
    # The JPEGs are exposed under .tif names by symlink (GDAL detects JPEG by content), and
    # the bands B01..B03 are requested because torchgeo indexes the 13-band MS layout by
    # position: channels 0..2 of the JPEG are R, G, B whatever torchgeo calls them.
    base = work / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    for c in classes:
        (base / c).mkdir(parents=True, exist_ok=True)
    names = []
    for path, label in files:
        link = base / classes[label] / (path.stem + ".tif")
        if not link.exists():
            link.symlink_to(path.resolve())
        names.append(link.name)
    (work / "eurosat-train.txt").write_text("\n".join(names) + "\n")
    try:
        ds = EuroSAT(root=str(work), split="train", bands=("B01", "B02", "B03"), download=False)
    except Exception as exc:
        return None, f"torchgeo {torchgeo.__version__} EuroSAT failed: {exc}"
    if len(ds) != len(files):
        return None, f"torchgeo EuroSAT found {len(ds)} of {len(files)} files"
    return (
        ds,
        f"torchgeo {torchgeo.__version__} `EuroSAT` (rasterio per file) via .tif-named symlinks"
        " and bands B01..B03 standing for R,G,B; it has no RGB-JPEG class",
    )


def run(
    args: argparse.Namespace, cmd: str = f"python benchmarks/{SCRIPT}"
) -> tuple[list[str], list[dict[str, Any]]]:
    """Measure every reader; the lines of the results.md section and the figures."""
    data = Path(os.environ.get("EOFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    root = data / "eurosat_rgb" / "2750"
    if not root.is_dir():
        sys.exit(f"EuroSAT RGB not found at {root} (set EOFM_SHARED_DATA)")
    files, classes = list_files(root, args.limit)
    folder = JpegFolder(files, classes)
    print(f"{len(files)} JPEGs from {root}")
    work = Path(tempfile.mkdtemp(prefix="eofm_bench_"))
    rows: list[tuple[str, int, float, int]] = []  # (what, workers, seconds, samples)

    def record(
        what: str, workers: int, epoch: Callable[[], tuple[float, int]], repeats: int
    ) -> None:
        seconds, n = min(epoch() for _ in range(repeats))
        rows.append((what, workers, seconds, n))
        print(f"{what:<60} workers={workers}: {n / seconds:10.0f} samples/s ({seconds:.2f} s)")

    try:
        # Warm the page cache so that every reader sees the same (cached) files.
        for path, _ in files:
            path.read_bytes()

        start = time.perf_counter()
        shard_root = pack_dataset(
            folder, work / "shards", num_workers=max(args.workers), progress=False
        )
        pack_s = time.perf_counter() - start
        print(f"packing: {pack_s:.1f} s")

        for w in args.workers:
            loader = DataLoader(
                folder, batch_size=BATCH, shuffle=True, num_workers=w, collate_fn=collate_samples
            )
            record(
                "(a) per-file PIL JPEG folder, DataLoader",
                w,
                partial(timed_epoch, loader, n_images),
                args.repeats,
            )

        shards = ShardDataset(shard_root)
        for w in args.workers:
            loader = DataLoader(
                shards, batch_size=BATCH, shuffle=True, num_workers=w, collate_fn=collate_samples
            )
            record(
                "(b) ShardDataset, DataLoader (shuffled)",
                w,
                partial(timed_epoch, loader, n_images),
                args.repeats,
            )
        perm = np.random.default_rng(0).permutation(len(shards))
        record(
            "(b') ShardDataset.get_batch loop (shuffled)",
            0,
            lambda: timed_epoch(
                (shards.get_batch(perm[i : i + BATCH]) for i in range(0, len(perm), BATCH)),
                n_images,
            ),
            args.repeats,
        )
        stream = ShardIterableDataset(shard_root, seed=0)
        for w in args.workers:
            loader = DataLoader(stream, batch_size=BATCH, num_workers=w, collate_fn=collate_samples)
            record(
                "(b'') ShardIterableDataset, DataLoader",
                w,
                partial(timed_epoch, loader, n_images),
                args.repeats,
            )

        if args.torchgeo:
            tg, tg_note = torchgeo_dataset(files, classes, work / "torchgeo")
        else:
            tg, tg_note = None, "not measured (--no-torchgeo)"
        print(f"torchgeo: {tg_note}")
        if tg is not None:
            for w in args.workers:
                loader = DataLoader(tg, batch_size=BATCH, shuffle=True, num_workers=w)
                record(
                    "(c) torchgeo EuroSAT, DataLoader",
                    w,
                    partial(timed_epoch, loader, n_images),
                    1,
                )

        jpeg_mb = sum(p.stat().st_size for p, _ in files) / 2**20
        shard_mb = folder_size(shard_root, "*") / 2**20
        n_shards = len(shards.shard_counts)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def best(prefix: str) -> float:
        return max(n / s for what, _, s, n in rows if what.startswith(prefix))

    speedup = best("(b) ") / best("(a) ")
    same = [
        f"{w} workers: {sb / sa:.1f}x"
        for wa, sa in ((w, n / s) for what, w, s, n in rows if what.startswith("(a) "))
        for w, sb in ((w, n / s) for what, w, s, n in rows if what.startswith("(b) "))
        if w == wa
    ]
    load = results_file.load_str()
    lines = [
        *heading(SECTION, cmd),
        f"- Machine: {machine_line()}.",
        f"- Data: EuroSAT RGB, {len(files)} JPEGs of 64x64x3 ({jpeg_mb:.0f} MiB) in"
        f" {len(classes)} class folders; page cache warm for every reader.",
        f"- Packing into shards (`pack_dataset`, {max(args.workers)} workers): {pack_s:.1f} s,"
        f" {n_shards} shards of uint8, {shard_mb:.0f} MiB.",
        f"- Batch size {BATCH}; samples/s of the best of {args.repeats} full epochs (torchgeo: 1),"
        " DataLoader start-up included.",
        f"- Load average at the end (1/5/15 min): {load}; other jobs shared the machine, so"
        " absolute numbers are noisy.",
        "",
        "| reader | DataLoader workers | samples/s | epoch (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {what} | {w} | {n / s:,.0f} | {s:.2f} |" for what, w, s, n in rows]
    if tg is None:
        lines.append("| (c) torchgeo EuroSAT | - | n/a | n/a |")
    lines += [
        "",
        f"- (c) torchgeo: {tg_note}.",
        f"- Shards vs folder reader (best of each through a DataLoader): **{speedup:.1f}x**"
        f" (target >= 5x: {'met' if speedup >= 5 else 'NOT met'}); at equal workers: "
        + ", ".join(same)
        + ".",
        "- On 2 cores DataLoader workers do not pay off here: each float32 batch (12 MiB) crosses"
        " processes through shared memory, which costs more than reading it from shards.",
        "",
    ]
    figures = [
        figure(SECTION, "loading/packing_s", round(pack_s, 2), "s", cmd, images=len(files)),
        figure(
            SECTION,
            "loading/shards_over_folder",
            round(speedup, 2),
            "ratio",
            cmd,
            note="best ShardDataset DataLoader vs best per-file folder DataLoader; target >= 5",
        ),
    ]
    for what, w, sec, n in rows:
        key = next(v for k, v in READER_KEYS.items() if what.startswith(k))
        figures.append(
            figure(
                SECTION,
                f"loading/{key}/workers{w}/samples_per_s",
                round(n / sec, 1),
                "samples/s",
                cmd,
                reader=what,
                workers=w,
                batch=BATCH,
                images=n,
                epoch_s=round(sec, 3),
                repeats=1 if key == "torchgeo" else args.repeats,
            )
        )
    return lines, figures


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use N random files")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="epochs per reader (best)")
    parser.add_argument(
        "--torchgeo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torchgeo's EuroSAT (slow: one epoch per worker setting)",
    )
    results_file.add_no_write(parser)
    args = parser.parse_args(argv_list)
    lines, figures = run(args, command(SCRIPT, argv_list))
    print("\n".join(lines))
    if not args.no_write:
        publish(SECTION, lines, figures)
    return figures


if __name__ == "__main__":
    main()
