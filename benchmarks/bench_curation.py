"""Curation benchmark: speed and memory of hierarchical k-means, quality of balanced sampling on
heavy-tailed pools, and dynamic pruning vs uniform sampling during pretraining.

    python benchmarks/bench_curation.py                          # every part
    python benchmarks/bench_curation.py --parts speed --sizes 10000,100000,1000000
    python benchmarks/bench_curation.py --parts quality --pretrain-budget 120
    python benchmarks/bench_curation.py --parts pruning --steps 1500 --seeds 0,1
    python benchmarks/bench_curation.py --parts pruning --pool x10dup --modes oracle --seeds 0
    python benchmarks/bench_curation.py --write-only             # re-render results.md
    python benchmarks/bench_curation.py --parts speed --sizes 10000,30000 --tag _quick

Parts (results kept in ``benchmarks/_work/curation/<part><tag>.json``; the ``## Curation`` section
of ``benchmarks/results.md`` is rendered from every saved part with the same ``--tag`` (default
none), other sections are kept; their figures also go to ``benchmarks/results.json``):

- **speed**: ``hierarchical_kmeans`` (k-means++ seeds, 20 Lloyd iterations, 10 resampling
  steps per level) on N x 256 float32 points (a heavy-tailed Gaussian mixture, memory-mapped
  from disk), then balanced sampling of 30% and near-duplicate removal inside level-1 clusters.
  Each N runs in its own process: wall time per stage and peak RSS (``resource.getrusage``).
  Plot: ``benchmarks/curation_scaling.png``.
- **quality**: class entropy of the kept 30% vs the pool, on (a) synthetic land-cover scenes
  (80% one class) and (b) EuroSAT RGB (train split) resampled so one class is ten times more
  frequent than each other class; embeddings from per-band statistics, a random ``vit_test`` and
  a ``vit_test`` pretrained with SimCLR on the pool itself for ``--pretrain-budget`` seconds.
  Labels are used only to score.
- **pruning**: SimCLR (``configs/simclr_tiny.yaml`` settings) on a heavy-tailed EuroSAT pool for
  ``--steps`` steps, uniform sampling vs dynamic pruning (equal steps x batch = images seen), then
  a logistic-regression probe on frozen features: 5000 images of the balanced EuroSAT train
  split -> the 4,050 test images. ``--pool x10``: AnnualCrop ten times as frequent as each other
  class, all images distinct; ``--pool x10dup``: the same counts, AnnualCrop made of a tenth as
  many distinct images, each repeated ten times (a redundant archive). ``--modes oracle`` runs on
  a label-balanced subset of the same fraction (what perfect clustering could give). Runs of
  different seeds may go in parallel processes (each merges its runs into the saved part).

Data: ``$EOFM_SHARED_DATA/eurosat_rgb`` (default ``../shared/data/eurosat_rgb``), packed once into
``benchmarks/_work/eurosat_rgb_{train,test}`` (shared with bench_pretrain.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


# --------------------------------------------------------------------------------------------
# helpers


def peak_rss_mib() -> float:
    """Peak RSS of this process: ``VmHWM`` (its own address space since exec). ``getrusage``'s
    ``ru_maxrss`` is only the fallback: on Linux a child started by a large parent (the runner)
    inherits the parent's high-water mark in it."""
    hwm = rss_status_mib("VmHWM")
    return hwm if hwm > 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB (0 if absent)."""
    return results_file.status_mib(field, 0.0)


class AnonPeak:
    """Peak anonymous RSS (memory the process allocated, not the memory-mapped points),
    sampled every 20 ms in a background thread."""

    def __init__(self) -> None:
        import threading

        self.peak = rss_status_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_status_mib("RssAnon"))
        return self.peak


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


# --------------------------------------------------------------------------------------------
# speed


def mixture_points(n: int, dim: int = 256, components: int = 2000, seed: int = 0) -> Path:
    """A heavy-tailed Gaussian mixture (Zipf component weights) as a float32 ``.npy`` memmap."""
    path = CWORK / f"points_{n}x{dim}.npy"
    if path.is_file():
        return path
    CWORK.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(components, dim)).astype(np.float32) * 3.0
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    weights /= weights.sum()
    tmp = path.with_name(path.name + ".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        comp = rng.choice(components, size=hi - lo, p=weights)
        mm[lo:hi] = centres[comp] + rng.normal(0.0, 1.0, size=(hi - lo, dim)).astype(np.float32)
    mm.flush()
    del mm
    os.replace(tmp, path)
    return path


def speed_one(n: int, dim: int, niter: int, resamples: int) -> dict[str, Any]:
    """One size, in this process (called as a child: ``--speed-one N``)."""
    from eofm.curation import hierarchical_kmeans, hierarchical_sampling, near_duplicates

    path = mixture_points(n, dim)
    base = rss_status_mib("VmRSS")
    anon_start = rss_status_mib("RssAnon")
    anon = AnonPeak()
    x = np.load(path, mmap_mode="r")
    k1 = max(10, round(np.sqrt(n)))
    ks = [k1, max(2, k1 // 10)]
    t0 = time.perf_counter()
    h = hierarchical_kmeans(x, ks, niter=niter, n_resamples=resamples, seed=0)
    t_km = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = hierarchical_sampling(h, 0.3, diversity=0.5, seed=0)
    t_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep = near_duplicates(x, 0.98, groups=h.labels)
    t_d = time.perf_counter() - t0
    sizes = h.sizes(1)
    anon_peak = anon.stop()
    return {
        "n": n,
        "dim": dim,
        "clusters": ks,
        "niter": niter,
        "n_resamples": resamples,
        "sample_sizes": h.info["sample_sizes"],
        "kmeans_s": t_km,
        "sampling_s": t_s,
        "dedup_s": t_d,
        "kept": int(chosen.size),
        "dedup_removed": int((~keep).sum()),
        "largest_cluster": int(sizes.max()),
        "data_mib": n * dim * 4 / 2**20,
        "rss_before_mib": base,
        "peak_rss_mib": peak_rss_mib(),
        "anon_start_mib": anon_start,
        "anon_peak_mib": anon_peak,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }


def part_speed(args: argparse.Namespace) -> None:
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        mixture_points(n, args.dim)  # generated outside the measured child
        print(f"[speed] N={n:,} ...", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--speed-one",
                str(n),
                "--dim",
                str(args.dim),
                "--niter",
                str(args.niter),
                "--resamples",
                str(args.resamples),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"[speed] N={n:,}: k-means {row['kmeans_s']:.1f} s, "
            f"sampling {row['sampling_s']:.2f} s, "
            f"dedup {row['dedup_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        rows.append(row)
    save_part("speed", {"rows": rows})
    plot_speed(rows)


def plot_speed(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["n"] for r in rows], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 2.9))
    for key, label in (
        ("kmeans_s", "hierarchical k-means"),
        ("dedup_s", "near-duplicates"),
        ("sampling_s", "balanced sampling"),
    ):
        a.loglog(n, [max(r[key], 1e-3) for r in rows], "o-", label=label)
    a.loglog(n, n / n[-1] * rows[-1]["kmeans_s"], "k:", lw=0.8, label="linear")
    a.set_xlabel("points N (256-d)")
    a.set_ylabel("seconds")
    a.legend(fontsize=7)
    b.loglog(n, [r["peak_rss_mib"] for r in rows], "o-", label="peak RSS")
    b.loglog(
        n,
        [max(r["anon_peak_mib"] - r["anon_start_mib"], 1.0) for r in rows],
        "^-",
        label="working memory (anon. peak - start)",
    )
    b.loglog(n, [r["data_mib"] for r in rows], "s--", label="the points (memmap)")
    b.set_xlabel("points N (256-d)")
    b.set_ylabel("MiB")
    b.legend(fontsize=7)
    fig.suptitle("eofm.curation on 2 CPU cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(plot_path(), dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# quality


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


# --------------------------------------------------------------------------------------------
# dynamic pruning vs uniform


def probe_accuracy(model_path: str | None, backbone: str = "vit_test") -> float:
    """Logistic regression on frozen pooled features: 5000 balanced train images -> test."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from eofm.data.shards import ShardDataset
    from eofm.models import create_backbone, load_model

    train, test = ShardDataset(pack_split("train")), ShardDataset(pack_split("test"))
    idx = np.sort(np.random.default_rng(0).choice(len(train), 5000, replace=False))
    tr, te = train.get_batch(idx), test.get_batch(np.arange(len(test)))
    if model_path is None:
        torch.manual_seed(0)
        model = create_backbone(backbone, bands=list(train.bands), img_size=64)
        pool_card = json.loads((CWORK / "runs" / "uniform_s0" / "model.json").read_text())
        norm = pool_card["normalization"]
    else:
        model = load_model(model_path)
        norm = (model.card or {})["normalization"]
    mean = torch.tensor([norm["mean"][b] for b in model.bands]).view(1, -1, 1, 1)
    std = torch.tensor([norm["std"][b] for b in model.bands]).view(1, -1, 1, 1)
    model.eval()

    @torch.no_grad()
    def feats(images: torch.Tensor) -> np.ndarray:
        x = (images.float() - mean) / std
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).numpy()

    train_x = feats(tr["image"])
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(scaler.transform(train_x), tr["label"].numpy())
    pred = clf.predict(scaler.transform(feats(te["image"])))
    return float((pred == te["label"].numpy()).mean())


CONFIG_KEYS = ("warmup_epochs", "every_epochs", "fraction", "diversity", "dedup")


def part_pruning(args: argparse.Namespace) -> None:
    """Uniform, pruning and oracle (label-balanced) runs (``--modes``) on the pool ``--pool``.
    Each finished run is merged into the saved part at once (under a lock, so that several
    processes may run different seeds side by side); saved runs of the same settings are
    replaced, others kept (a uniform run of the same seed and length is reused unless
    ``--rerun-uniform``)."""
    info = POOLS[args.pool]
    part = info["part"]
    pool = heavy_eurosat_pool(duplicate=info["duplicate"])
    prefix = "" if args.pool == "x10" else f"{args.pool}_"
    config = {
        "warmup_epochs": args.warmup,
        "every_epochs": args.every,
        "fraction": args.fraction,
        "diversity": args.diversity,
        "dedup": args.dedup,
    }
    prune = (
        "curation={enabled: true, "
        + ", ".join(f"{k}: {v}" for k, v in config.items() if v is not None)
        + "}"
    )
    tag = f"w{args.warmup}_e{args.every}_r{args.fraction}_d{args.diversity}"
    tag += f"_dd{args.dedup}" if args.dedup is not None else ""

    def same(run: dict[str, Any], mode: str, seed: int) -> bool:
        if run["mode"] != mode or run["seed"] != seed or run["steps_asked"] != args.steps:
            return False
        if mode == "oracle":
            return bool(run.get("fraction") == args.fraction)
        return mode == "uniform" or all(run.get(k) == v for k, v in config.items())

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"uniform", "pruning", "oracle"}:
        raise SystemExit(f"--modes: uniform, pruning or oracle, not {args.modes}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode in modes:
            reuse = mode == "uniform" and not args.rerun_uniform
            if reuse and any(same(r, mode, seed) for r in _saved_runs(part)):
                continue
            name = (
                prefix
                + {
                    "uniform": f"uniform_s{seed}",
                    "pruning": f"pruning_{tag}_s{seed}",
                    "oracle": f"oracle_r{args.fraction}_s{seed}",
                }[mode]
            )
            print(f"[pruning] {name}: {args.steps} steps", flush=True)
            data = pool
            if mode == "oracle":
                data = label_balanced_subset(pool, args.fraction, seed)
            run = pretrain(data, name, args.steps, 0, seed, [prune] if mode == "pruning" else [])
            run.update(mode=mode, seed=seed, steps_asked=args.steps)
            if mode == "pruning":
                run.update(config)
                state = _pruning_history(Path(run["run_dir"]))
                run["refreshes"] = len(state)
                run["refresh_s"] = float(sum(h["seconds"] for h in state))
                run["subset_size"] = state[-1]["subset_size"] if state else None
                run.update(subset_classes(Path(run["run_dir"]), pool) or {})
            elif mode == "oracle":
                run["fraction"] = args.fraction
                run.update(_class_statistics(data, pool))
            run["probe_acc"] = probe_accuracy(run["model"])
            print(
                f"[pruning] {name}: linear probe {run['probe_acc']:.4f} ({run['wall_s']:.0f} s)",
                flush=True,
            )
            _merge_run(part, pool, run, lambda r, m=mode, s=seed: same(r, m, s))


def _saved_runs(part: str) -> list[dict[str, Any]]:
    saved = load_part(part) or {}
    runs: list[dict[str, Any]] = []
    for run in saved.get("runs", []):  # older files kept the settings once, at the top
        if run["mode"] == "pruning":
            for key in CONFIG_KEYS:
                run.setdefault(key, saved.get(key))
        run.setdefault("steps_asked", saved.get("steps", run["steps"]))
        runs.append(run)
    return runs


def _merge_run(part: str, pool: Path, run: dict[str, Any], replaces: Any) -> None:
    """Add ``run`` to the saved part (dropping the saved runs ``replaces`` accepts), under a
    file lock: another process may be saving its own runs."""
    import fcntl

    CWORK.mkdir(parents=True, exist_ok=True)
    with open(CWORK / f".{part}{STATE['tag']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = load_part(part) or {}
        runs = [r for r in _saved_runs(part) if not replaces(r)] + [run]
        random_acc = saved.get("random_acc")
        if random_acc is None:
            random_acc = probe_accuracy(None)
        save_part(part, {"runs": runs, "random_acc": random_acc, "batch": 64, "pool": pool.name})


def _pruning_history(run_dir: Path) -> list[dict[str, Any]]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return list(ckpt["callbacks"]["DynamicPruning"]["history"])


def subset_classes(run_dir: Path, pool: Path) -> dict[str, Any] | None:
    """Class counts and entropy of the last training subset of a pruning run (labels are
    read only here, to score)."""
    import torch

    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)["callbacks"].get("DynamicPruning")
    if not state or state.get("subset") is None:
        return None
    labels = _labels(pool)
    return _class_counts(labels[state["subset"].numpy()], labels)


def _labels(pool: Path) -> np.ndarray:
    from eofm.data.shards import ShardDataset

    ds = ShardDataset(pool)
    return np.asarray(ds.get_batch(np.arange(len(ds)))["label"].numpy())


def _class_statistics(subset: Path, pool: Path) -> dict[str, Any]:
    """Class counts and entropy of a subset written as its own shards."""
    return _class_counts(_labels(subset), _labels(pool))


def _class_counts(kept: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from eofm.curation import entropy

    k = int(labels.max()) + 1
    counts = np.bincount(kept, minlength=k)
    return {
        "subset_counts": counts.tolist(),
        "subset_class_entropy": entropy(counts),
        "pool_class_entropy": entropy(np.bincount(labels, minlength=k)),
    }


def complete_pruning_part() -> None:
    """Add the last subset's class statistics to saved pruning runs that lack them."""
    for info in POOLS.values():
        part = load_part(info["part"])
        if not part:
            continue
        changed = False
        for run in part["runs"]:
            if run["mode"] == "pruning" and "subset_class_entropy" not in run:
                extra = subset_classes(Path(run["run_dir"]), CWORK / part["pool"])
                if extra:
                    run.update(extra)
                    changed = True
        if changed:
            (CWORK / f"{info['part']}{STATE['tag']}.json").write_text(json.dumps(part, indent=1))


# --------------------------------------------------------------------------------------------
# results.md


def render() -> list[str]:
    lines = [SECTION, ""]
    parts = {
        name: part
        for name in ("speed", "quality", *(info["part"] for info in POOLS.values()))
        if (part := load_part(name))
    }
    speed, quality = parts.get("speed"), parts.get("quality")
    first = next(iter(parts.values()), None)
    lines += [
        "`python benchmarks/bench_curation.py` (parts run on "
        + ", ".join(f"{k} {p['date']}" for k, p in parts.items())
        + "; each part's command is in results.json).",
        "",
    ]
    if first:
        lines += [
            f"- Machine: {first['machine']}; load average at the end of each part "
            + ", ".join(f"{k} {p['load']}" for k, p in parts.items())
            + " (other jobs shared the machine).",
            "",
        ]
    if speed:
        rows = speed["rows"]
        lines += [
            "### Speed and memory of hierarchical k-means",
            "",
            f"Points: N x {rows[0]['dim']} float32 from a heavy-tailed Gaussian mixture (2000 "
            "components, Zipf weights), memory-mapped from disk; 2 levels, k = [sqrt N, "
            f"sqrt N / 10], k-means++ seeds, {rows[0]['niter']} Lloyd iterations (faiss, "
            f"training subset of 256 k points), {rows[0]['n_resamples']} resampling steps per "
            "level (closest points, half the mean cluster size), every point reassigned after "
            "each; then balanced sampling of 30% (diversity 0.5) and near-duplicate removal "
            "(cosine 0.98) inside level-1 clusters. One process per N; faiss on 2 OpenMP "
            "threads. Peak RSS (`VmHWM` of that process) includes the imports (torch, faiss: about "
            "600 MiB) "
            "and the memory-mapped points that were read; working memory is the peak of the "
            "anonymous RSS (sampled every 20 ms) minus its value before the points are opened: "
            "what the algorithm allocates (labels, distances, training subsets, chunks).",
            "",
            "| N | clusters | k-means (s) | sampling (s) | near-dup. (s) | peak RSS (MiB) | "
            "working memory (MiB) | points (MiB) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['n']:,} | {r['clusters']} | {r['kmeans_s']:.1f} | {r['sampling_s']:.2f} | "
                f"{r['dedup_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                f"{r['anon_peak_mib'] - r['anon_start_mib']:.0f} | {r['data_mib']:.0f} |"
            )
        big = rows[-1]
        total = big["kmeans_s"] + big["sampling_s"] + big["dedup_s"]
        lines += [
            "",
            f"- N = {big['n']:,}: {total / 60:.1f} min in all (target: about 10 min). "
            f"Plot: `{plot_path().relative_to(REPO)}`.",
            "",
            f"![curation scaling]({_relative(plot_path())})",
            "",
        ]
    if quality:
        lines += [
            "### Class entropy of the kept subset (heavy-tailed pools)",
            "",
            "Keep 30% of the pool with `curate_embeddings` (auto clusters [sqrt N, sqrt sqrt N], "
            "L2-normalised embeddings); labels only score the result. 'uniform' is a uniform "
            "random 30%. Entropy in nats (maximum log K).",
            "",
        ]
        for key, title in (("synthetic", "Synthetic land cover"), ("eurosat", "EuroSAT RGB")):
            q = quality.get(key)
            if not q:
                continue
            dom = int(np.argmax(q["counts"]))
            lines += [
                f"**{title}** (`{q['pool']}`): {q['n']:,} images, counts {q['counts']} "
                f"(dominant class {q['classes'][dom] if q['classes'] else dom}: "
                f"{q['counts'][dom] / q['n']:.0%}); pool entropy {q['entropy_pool']:.3f}, "
                f"uniform 30% {q['entropy_uniform_30']:.3f}, maximum {q['max_entropy']:.3f}. "
                f"SimCLR pretraining on the pool: {q['pretrain']['steps']} steps, "
                f"{q['pretrain']['wall_s']:.0f} s.",
                "",
                "| embedding | diversity | clusters | class entropy kept | dominant share kept |",
                "|---|---:|---|---:|---:|",
            ]
            for r in q["rows"]:
                lines.append(
                    f"| {r['embedding']} | {r['diversity']} | {r['clusters']} | "
                    f"{r['entropy_after']:.3f} | {r['dominant_share']:.0%} |"
                )
            lines.append("")
    for info in POOLS.values():
        part = load_part(info["part"])
        if part:
            lines += _render_pruning(part, info["about"])
    return lines


def _group_name(key: tuple[Any, ...]) -> str:
    if key[0] == "uniform":
        return "uniform"
    if key[0] == "oracle":
        return f"oracle rho={key[3]}"
    name = f"pruning T_w={key[1]} T_s={key[2]} rho={key[3]} eta={key[4]}"
    return name + (f" dedup={key[5]}" if key[5] not in (None, "-") else "")


def _short_name(name: str) -> str:
    """A group name on short lines, for tick labels: mode, settings, dedup."""
    mode, _, settings = name.partition(" ")
    words = settings.split()
    lines = [mode] + [" ".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    return "\n".join(lines)


def plot_pruning(pruning: dict[str, Any]) -> Path:
    """Probe accuracy per seed for each setting (left) and the seed-paired difference to
    uniform (right); written to ``benchmarks/curation_pruning_<pool>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _probe_by_setting(pruning["runs"])
    uniform = groups.get(UNIFORM, {})
    order = sorted(groups, key=lambda k: ({"uniform": 0, "pruning": 1, "oracle": 2}[k[0]], str(k)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    paired: list[tuple[str, list[float]]] = []
    for i, key in enumerate(order):
        seeds = sorted(groups[key])
        accs = [groups[key][s] * 100 for s in seeds]
        a.plot(seeds, accs, "o-" if key[0] == "uniform" else "o--", ms=4, lw=0.8, color=f"C{i}")
        a.axhline(np.mean(accs), color=f"C{i}", lw=0.6, alpha=0.6)
        diffs = [(groups[key][s] - uniform[s]) * 100 for s in seeds if s in uniform]
        if key[0] != "uniform" and diffs:
            paired.append((_group_name(key), diffs))
        a.plot([], [], "o-", color=f"C{i}", label=f"{_group_name(key)} ({len(seeds)} seeds)")
    a.set_xlabel("seed")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.set_ylabel("linear probe accuracy (%)")
    a.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    rng = np.random.default_rng(0)
    for j, (name, diffs) in enumerate(paired):
        colour = f"C{order.index(next(k for k in order if _group_name(k) == name))}"
        b.plot(j + rng.uniform(-0.12, 0.12, len(diffs)), diffs, "o", ms=4, color=colour)
        b.plot([j - 0.25, j + 0.25], [np.mean(diffs)] * 2, "k-", lw=1.5)
    b.axhline(0, color="grey", lw=0.8, ls=":")
    b.set_xticks(range(len(paired)), [_short_name(n) for n, _ in paired], fontsize=6.5)
    b.set_ylabel("minus uniform, same seed (pt)")
    fig.suptitle(f"dynamic pruning vs uniform sampling, `{pruning['pool']}`", fontsize=9)
    fig.tight_layout()
    path = REPO / "benchmarks" / f"curation_pruning_{pruning['pool']}.png"
    if STATE["tag"]:
        path = CWORK / f"{path.stem}{STATE['tag']}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _render_pruning(pruning: dict[str, Any], about: str) -> list[str]:
    runs = pruning["runs"]
    steps = sorted({r.get("steps_asked", r["steps"]) for r in runs})
    lines = [
        f"### Dynamic pruning vs uniform sampling at equal images seen: `{pruning['pool']}`",
        "",
        f"SimCLR (`configs/simclr_tiny.yaml` settings), `vit_test` at 64 px, batch 64, "
        f"{', '.join(str(s) for s in steps)} steps "
        f"({', '.join(f'{s * 64:,}' for s in steps)} images seen) on the heavy-tailed "
        f"EuroSAT pool `{pruning['pool']}` ({about}). Pruning: warm-up T_w epochs on the pool, "
        "refresh every T_s epochs with embeddings of the model being trained, keep rho "
        "with diversity eta. Oracle (where run): uniform sampling of a subset of rho of the "
        "pool chosen with the labels, as class-balanced as possible: what perfect clustering "
        "could give. Probe: logistic regression on frozen features, 5000 images "
        "of the balanced train split -> the 4,050 test images; random init "
        f"{pruning['random_acc']:.4f}.",
        "",
        "| sampling | T_w | T_s | rho | eta | dedup | seed | steps | wall (s) | of which "
        "refreshes (s) | refreshes | class entropy of the (last) subset | linear probe acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"uniform": 0, "pruning": 1, "oracle": 2}
    pool_entropy = None
    for r in sorted(runs, key=lambda r: (order[r["mode"]], str(_config_of(r)), r["seed"])):
        cfg = _config_of(r)
        ent = r.get("subset_class_entropy")
        pool_entropy = r.get("pool_class_entropy", pool_entropy)
        lines.append(
            f"| {r['mode']} | {cfg[0]} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {cfg[4] or '-'} | "
            f"{r['seed']} | "
            f"{r['steps']} | {r['wall_s']:.0f} | {r.get('refresh_s', 0):.0f} | "
            f"{r.get('refreshes', 0)} | {'-' if ent is None else f'{ent:.3f}'} | "
            f"{r['probe_acc']:.4f} |"
        )
    groups = _probe_by_setting(runs)
    uniform_by_seed = groups.get(UNIFORM, {})
    uniform_accs = list(uniform_by_seed.values())
    uniform = float(np.mean(uniform_accs)) if uniform_accs else float("nan")
    spread = float(np.ptp(uniform_accs) * 100) if len(uniform_accs) > 1 else float("nan")
    lines += [""]
    if pool_entropy is not None:
        lines.append(
            f"- Class entropy of the pool {pool_entropy:.3f} nats (maximum {np.log(10):.3f}); "
            "labels are read only to score the subsets (and to pick the oracle's)."
        )
    lines.append(
        f"- Uniform: mean probe {uniform:.4f} over {len(uniform_accs)} seed(s) "
        f"(spread {spread:.1f} pt)."
    )
    better = significant = paired = 0
    tried = 0
    for key, by_seed in groups.items():
        if key[0] == "uniform":
            continue
        accs = list(by_seed.values())
        mean = float(np.mean(accs))
        worst = float(np.min(accs))
        stats = _versus_uniform(by_seed, uniform_by_seed)
        what = (
            f"Pruning T_w={key[1]}, T_s={key[2]}, rho={key[3]}, eta={key[4]}"
            + (f", dedup={key[5]}" if key[5] not in (None, "-") else "")
            if key[0] == "pruning"
            else f"Oracle rho={key[3]}"
        )
        beats = bool(uniform_accs) and worst > max(uniform_accs)
        lines.append(
            f"- {what}: mean probe {mean:.4f} over {len(accs)} seed(s) vs uniform {uniform:.4f} "
            f"({(mean - uniform) * 100:+.1f} pt; "
            + ("every seed above every uniform seed" if beats else "seeds overlap uniform's")
            + (f"; {stats['text']})." if stats else ").")
        )
        if key[0] == "pruning":
            tried += 1
            better += beats
            significant += bool(stats and stats["p_welch"] < 0.05)
            paired += bool(stats and stats["p_paired"] < 0.05)
    lines += [
        f"- Verdict: dynamic pruning beat uniform sampling at equal images seen in {better} of "
        f"{tried} setting(s) tried on this pool by the strict rule (every pruning seed above "
        f"every uniform seed), in {significant} of {tried} by a one-sided Welch t-test and in "
        f"{paired} of {tried} by a one-sided paired t-test over seeds (a seed fixes the initial "
        "weights and the warm-up), each at p < 0.05 with at least 3 seeds.",
        "- Equal compute is counted in training images; the refreshes (embedding the pool "
        "and clustering) are extra and listed.",
        "",
        f"![pruning vs uniform, {pruning['pool']}]({_relative(plot_pruning(pruning))})",
        "",
    ]
    return lines


def _probe_by_setting(runs: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[int, float]]:
    """Probe accuracy by seed for each setting ``(mode, *_config_of(run))``, in run order."""
    groups: dict[tuple[Any, ...], dict[int, float]] = {}
    for r in runs:
        groups.setdefault((r["mode"], *_config_of(r)), {})[r["seed"]] = r["probe_acc"]
    return groups


def _versus_uniform(by_seed: dict[int, float], uniform: dict[int, float]) -> dict[str, Any] | None:
    """Welch's one-sided t-test (setting > uniform) and the seed-paired differences (a seed
    fixes the initial weights), for settings and uniform runs of at least 3 seeds each;
    both arguments map seed -> probe accuracy."""
    from scipy import stats

    accs, uniform_accs = list(by_seed.values()), list(uniform.values())
    if len(accs) < 3 or len(uniform_accs) < 3:
        return None
    p_welch = float(
        stats.ttest_ind(accs, uniform_accs, equal_var=False, alternative="greater").pvalue
    )
    diffs = [acc - uniform[seed] for seed, acc in by_seed.items() if seed in uniform]
    above = sum(d > 0 for d in diffs)
    text = f"Welch p = {p_welch:.3f}"
    p_paired = float("nan")
    if len(diffs) >= 3:
        p_paired = float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)
        text += (
            f"; paired by seed: {np.mean(diffs) * 100:+.2f} +- "
            f"{np.std(diffs, ddof=1) * 100:.2f} pt, above uniform in {above} of {len(diffs)} "
            f"seeds, paired t-test p = {p_paired:.3f}"
        )
    return {
        "p_welch": p_welch,
        "p_paired": p_paired,
        "paired_above": above,
        "paired_n": len(diffs),
        "text": text,
    }


#: The setting key of uniform runs (see ``_probe_by_setting``).
UNIFORM = ("uniform", "-", "-", "-", "-", "-")


def _config_of(run: dict[str, Any]) -> tuple[Any, ...]:
    if run["mode"] == "oracle":
        return ("-", "-", run.get("fraction"), "-", "-")
    if run["mode"] != "pruning":
        return ("-", "-", "-", "-", "-")
    return tuple(run.get(k) for k in CONFIG_KEYS)


def _relative(path: Path) -> str:
    """``path`` relative to the folder of the results.md being written."""
    return os.path.relpath(path, results_file.outputs()[0].parent)


def figures() -> list[dict[str, Any]]:
    """The figures of every saved part (with the part's date, load and command)."""
    out: list[dict[str, Any]] = []

    def add(part: dict[str, Any], name: str, value: Any, unit: str, **notes: Any) -> None:
        cmd = part.get("command") or results_file.command(SCRIPT, [])
        fig = results_file.figure(SECTION, name, value, unit, cmd, **notes)
        fig["date"] = part["date"]
        try:
            fig["load_avg"] = [float(v) for v in str(part.get("load")).split("/")]
        except ValueError:
            fig["load_avg"] = part.get("load")
        out.append(fig)

    speed, quality = load_part("speed"), load_part("quality")
    if speed:
        for r in speed["rows"]:
            notes = {k: r.get(k) for k in ("clusters", "niter", "n_resamples", "dim", "threads")}
            key = f"curation/speed/n{r['n']}"
            add(speed, f"{key}/kmeans_s", round(r["kmeans_s"], 3), "s", **notes)
            add(speed, f"{key}/sampling_s", round(r["sampling_s"], 4), "s", **notes)
            add(speed, f"{key}/near_duplicates_s", round(r["dedup_s"], 3), "s", **notes)
            add(speed, f"{key}/peak_rss", round(r["peak_rss_mib"], 1), "MiB", **notes)
            working = r["anon_peak_mib"] - r["anon_start_mib"]
            add(speed, f"{key}/working_memory", round(working, 1), "MiB", **notes)
    if quality:
        for pool in ("synthetic", "eurosat"):
            q = quality.get(pool)
            for r in (q or {}).get("rows", []):
                name = f"curation/quality/{pool}/{r['embedding']}/diversity{r['diversity']}"
                add(quality, f"{name}/class_entropy_kept", round(r["entropy_after"], 4), "nats")
    for key, info in POOLS.items():
        part = load_part(info["part"])
        for r in part["runs"] if part else []:
            values = _config_of(r) if r["mode"] != "uniform" else ()
            cfg = "_".join(str(v) for v in values if v not in (None, "-"))
            pool = "" if key == "x10" else f"{key}/"
            name = f"curation/pruning/{pool}{r['mode']}{'_' + cfg if cfg else ''}/seed{r['seed']}"
            add(part, f"{name}/linear_probe_acc", round(r["probe_acc"], 4), "accuracy")
    return out


def write_section() -> None:
    results_file.publish(SECTION, render(), figures())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="speed,quality,pruning")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=10)
    parser.add_argument("--synthetic-n", type=int, default=5000)
    parser.add_argument("--pretrain-budget", type=float, default=120.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--diversity", type=float, default=0.5)
    parser.add_argument("--rerun-uniform", action="store_true")
    parser.add_argument(
        "--pool", choices=sorted(POOLS), default="x10", help="heavy-tailed EuroSAT pool (pruning)"
    )
    parser.add_argument(
        "--modes",
        default="uniform,pruning",
        help="pruning part: runs to make, of uniform, pruning and oracle (pretraining on a "
        "label-balanced subset of the pruning fraction: an upper bound)",
    )
    parser.add_argument(
        "--dedup", type=float, default=None, help="pruning: near-duplicate cosine threshold"
    )
    parser.add_argument("--write-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch results.md/json")
    parser.add_argument("--tag", default="", help="suffix of the saved parts (e.g. _quick)")
    parser.add_argument("--speed-one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv_list)
    if args.speed_one is not None:
        print(json.dumps(speed_one(args.speed_one, args.dim, args.niter, args.resamples)))
        return []
    STATE.update(tag=args.tag, argv=argv_list)
    import torch

    torch.set_num_threads(1)
    CWORK.mkdir(parents=True, exist_ok=True)
    if not args.write_only:
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        for part in parts:
            {"speed": part_speed, "quality": part_quality, "pruning": part_pruning}[part](args)
    if not args.no_write:
        complete_pruning_part()
        write_section()
    return figures()


if __name__ == "__main__":
    main()
