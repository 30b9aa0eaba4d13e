"""Shared by the parts of ``bench_curation.py``: where results go, saved parts, the pools."""

from __future__ import annotations

import json
import os
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import results_file
from eurosat import pack_split

REPO = Path(__file__).resolve().parents[1]


WORK = REPO / "benchmarks" / "_work"


CWORK = WORK / "curation"


PLOT = REPO / "benchmarks" / "curation_scaling.png"


SECTION = "## Curation"


SCRIPT = "bench_curation.py"


#: Suffix of the saved parts and the plot (``--tag``); the command line of this invocation.
STATE: dict[str, Any] = {"tag": "", "argv": []}


def plot_path() -> Path:
    """``benchmarks/curation_scaling.png``, or ``_work/curation/curation_scaling<tag>.png``."""
    tag = STATE["tag"]
    return CWORK / f"curation_scaling{tag}.png" if tag else PLOT


def part_command(part: str) -> str:
    """The command that reruns ``part`` with this invocation's settings."""
    argv = list(STATE["argv"])
    for flag in ("--write-only", "--no-write"):
        if flag in argv:
            argv.remove(flag)
    part = "pruning" if part.startswith("pruning") else part  # pruning_dup: --pool x10dup
    if "--parts" in argv:
        argv[argv.index("--parts") + 1] = part
    else:
        argv = ["--parts", part, *argv]
    return results_file.command(SCRIPT, argv)


def save_part(name: str, data: dict[str, Any]) -> None:
    CWORK.mkdir(parents=True, exist_ok=True)
    data = {
        **data,
        "date": date.today().isoformat(),
        "machine": results_file.machine_line(),
        "load": results_file.load_str(),
        "command": part_command(name),
    }
    (CWORK / f"{name}{STATE['tag']}.json").write_text(json.dumps(data, indent=1))


def load_part(name: str) -> dict[str, Any] | None:
    path = CWORK / f"{name}{STATE['tag']}.json"
    return json.loads(path.read_text()) if path.is_file() else None


POOLS: dict[str, dict[str, Any]] = {
    "x10": {
        "part": "pruning",
        "duplicate": False,
        "about": "every AnnualCrop image of the train split, a tenth as many of each other "
        "class: all images distinct",
    },
    "x10dup": {
        "part": "pruning_dup",
        "duplicate": True,
        "about": "the same class counts as `eurosat_pool_x10`, but AnnualCrop is a tenth as "
        "many distinct images each repeated ten times: a redundant archive, where most of the "
        "dominant class repeats what the model has already seen",
    },
}


def heavy_eurosat_pool(
    ratio: int = 10, dominant: int = 0, seed: int = 0, duplicate: bool = False
) -> Path:
    """EuroSAT RGB train split resampled so class ``dominant`` is ``ratio`` times more frequent
    than each other class: every image of ``dominant`` and ``ratio`` times fewer (random) images
    of each other class; with ``duplicate``, as many (random) distinct images of ``dominant`` as
    of the others, each repeated ``ratio`` times (the same class counts). Written as shards."""
    from eofm.data.shards import ShardDataset, ShardWriter

    out = CWORK / f"eurosat_pool_x{ratio}{'_dup' if duplicate else ''}"
    if (out / "index.json").is_file():
        return out
    train = ShardDataset(pack_split("train"))
    labels = train.get_batch(np.arange(len(train)))["label"].numpy()
    rng = np.random.default_rng(seed)
    dom = np.flatnonzero(labels == dominant)
    per = len(dom) // ratio
    keep = []
    for c in range(int(labels.max()) + 1):
        if c != dominant:
            keep.append(rng.choice(np.flatnonzero(labels == c), per, replace=False))
    if duplicate:
        keep.append(np.repeat(rng.choice(dom, per, replace=False), ratio))
    else:
        keep.append(dom)
    idx = np.sort(np.concatenate(keep))
    batch = train.get_batch(idx)
    with ShardWriter(out, train.bands, class_names=train.class_names, shard_size=4096) as w:
        w.add_batch(
            batch["image"].numpy().astype(np.uint8),
            labels=batch["label"].numpy(),
            paths=[str(p) for p in batch["path"]],
        )
    return out


def label_balanced_subset(pool: Path, fraction: float, seed: int) -> Path:
    """An oracle for dynamic pruning: the pool cut to ``fraction`` of its size with the labels,
    as balanced over the classes as possible (the largest per-class cap that fits)."""
    from eofm.data.shards import ShardDataset, ShardWriter

    out = CWORK / f"{pool.name}_oracle_r{fraction}_s{seed}"
    if (out / "index.json").is_file():
        return out
    ds = ShardDataset(pool)
    batch = ds.get_batch(np.arange(len(ds)))
    labels = batch["label"].numpy()
    counts = np.bincount(labels)
    target = int(fraction * len(ds))
    cap = 0
    while np.minimum(counts, cap + 1).sum() <= target:
        cap += 1
    rng = np.random.default_rng(seed)
    idx = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), min(cap, n), replace=False)
                for c, n in enumerate(counts)
            ]
        )
    )
    with ShardWriter(out, ds.bands, class_names=ds.class_names, shard_size=4096) as w:
        w.add_batch(
            batch["image"].numpy()[idx].astype(np.uint8),
            labels=labels[idx],
            paths=[str(batch["path"][i]) for i in idx],
        )
    return out


def synthetic_pool(n: int, heavy_tail: float, size: int = 64) -> Path:
    from eofm.data.synthetic import write_synthetic

    out = CWORK / f"synthetic_landcover_n{n}_h{heavy_tail}"
    if not (out / "index.json").is_file():
        write_synthetic(
            out,
            kind="landcover",
            n=n,
            size=size,
            seed=0,
            heavy_tail=heavy_tail,
            fmt="shards",
            progress=False,
        )
    return out


def embed_pool(model: Any, pool: Path, name: str, norm: Any) -> np.ndarray:
    from eofm.curation import extract_embeddings, load_embeddings
    from eofm.data.shards import ShardDataset

    path = extract_embeddings(
        model,
        ShardDataset(pool),
        CWORK / "emb" / f"{name}.npy",
        batch_size=256,
        normalizer=norm,
        l2_normalize=True,
        progress=False,
        overwrite=True,
    )
    return np.array(load_embeddings(path))


def pretrain(
    pool: Path, name: str, steps: int, budget: float, seed: int, extra: list[str] | None = None
) -> dict[str, Any]:
    """SimCLR (configs/simclr_tiny.yaml settings) on ``pool``; returns the run's numbers."""
    from eofm.training import load_config, run_pretraining

    overrides = [
        f"data.path={pool}",
        "data.bands=null",
        "data.batch_size=64",
        "data.num_workers=0",
        "model.backbone=vit_test",
        "model.img_size=64",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.max_epochs=null",
        f"trainer.max_steps={steps}",
        f"trainer.max_time_s={budget}" if budget else "trainer.max_time_s=null",
        "trainer.log_every_n_steps=20",
        "trainer.checkpoint_every_n_steps=100000",
        "trainer.progress_bar=false",
        "trainer.num_threads=1",
        f"trainer.seed={seed}",
        f"output.dir={CWORK / 'runs'}",
        f"output.name={name}",
        "output.overwrite=true",
        "output.tensorboard=false",
        *(extra or []),
    ]
    config = load_config(REPO / "configs" / "simclr_tiny.yaml", overrides)
    t0 = time.perf_counter()
    result = run_pretraining(config)
    return {
        "model": str(result.model_path),
        "steps": result.global_step,
        "images_seen": result.global_step * 64,
        "wall_s": time.perf_counter() - t0,
        "images_per_s": result.images_per_s,
        "final_loss": result.final_loss,
        "run_dir": str(result.run_dir),
    }


def _labels(pool: Path) -> np.ndarray:
    from eofm.data.shards import ShardDataset

    ds = ShardDataset(pool)
    return np.asarray(ds.get_batch(np.arange(len(ds)))["label"].numpy())


def _relative(path: Path) -> str:
    """``path`` relative to the folder of the results.md being written."""
    return os.path.relpath(path, results_file.outputs()[0].parent)
