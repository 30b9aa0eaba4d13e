"""``eofm demo``: the main job on the embedded default (synthetic scenes, no download, no GPU).

For now it runs the data pipeline end to end: synthesise a labelled land-cover dataset,
inspect it (class counts and a preview), compute its dataset card, and pack it into shards.
Pretraining, curation and evaluation join this pipeline as they land.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(out: Path, *, n: int = 2000, seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of its markdown report."""
    from eofm.data.catalog import open_dataset
    from eofm.data.inspect import inspect_dataset
    from eofm.data.preview import save_preview
    from eofm.data.shards import pack_dataset
    from eofm.data.stats import compute_stats
    from eofm.data.synthetic import write_synthetic

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = now - t0
        t0 = now

    print(f"[1/4] synthesising {n} Sentinel-2/Sentinel-1 land-cover scenes (heavy-tailed)")
    data = write_synthetic(
        out / "scenes", kind="landcover", n=n, size=64, seed=seed, heavy_tail=0.8, progress=progress
    )
    lap("synthesise")
    print("[2/4] inspecting")
    ds = open_dataset(data, task="segmentation")
    summary, samples = inspect_dataset(ds, max_samples=min(n, 500), progress=progress)
    preview = save_preview(
        samples[:8],
        out / "preview.png",
        class_names=getattr(ds, "class_names", None),
        title="synthetic Sentinel-2 scenes (B04/B03/B02) and masks",
    )
    lap("inspect")
    print("[3/4] per-band statistics")
    card = compute_stats(open_dataset(data), progress=progress)
    card.to_json(data / "eofm_card.json")
    lap("stats")
    print("[4/4] packing into shards")
    shards = pack_dataset(open_dataset(data), out / "shards", shard_size=1024, progress=progress)
    lap("pack")

    report = out / "report.md"
    lines = [
        "# eofm demo",
        "",
        f"Synthetic scenes: `{data}`; shards: `{shards}`; dataset card: "
        f"`{data / 'eofm_card.json'}`.",
        "",
        "![preview](preview.png)",
        "",
        "```",
        summary.format(),
        "```",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
    ]
    report.write_text("\n".join(lines) + "\n")
    print()
    print(summary.format())
    print(f"\npreview: {preview}\nreport:  {report}\ntotal:   {sum(timings.values()):.1f} s")
    return report
