"""``eofm demo``: the whole life of a foundation model on one folder of images, on a CPU.

On the embedded default (no download, no GPU) it synthesises a heavy-tailed pool of
Sentinel-1 VV/VH land-cover scenes (80% of them dominated by cropland) and a balanced labelled
set, then:

1. inspects the data and writes its dataset card (``eofm data inspect`` / ``stats``);
2. packs the pool into shards (``eofm data pack``);
3. pretrains a tiny ViT with dense contrastive learning (Embedding Earth) while dynamic
   pruning (OceanSAR-1) re-curates the pool with the model being trained (``eofm pretrain``);
4. curates the pool offline with the pretrained encoder (``eofm curate``);
5. evaluates the encoder against the same architecture at random initialisation: linear probe
   on scene labels and segmentation of land-cover masks (``eofm evaluate``);
6. writes ``report.md`` / ``report.html`` with plots, and prints a summary.

``eofm demo --data FOLDER`` runs the same on a user's folder (anything ``eofm data inspect``
reads): all its images form the pool; the linear probe and segmentation run when the folder
carries scene labels or masks, on a seeded split of the same folder.
Each step calls the library functions behind the CLI command it names (the demo never imports
:mod:`eofm.cli`: the CLI calls the demo), and the report lists those commands.

Longer than 600 lines: one pipeline read top to bottom (settings, the six steps, the report
and the argument parser it shares with ``eofm demo``); its steps are already library calls.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from eofm.errors import ConfigError, EofmError, MissingLabelError

__all__ = ["DemoSettings", "add_arguments", "demo_recipe", "run_demo", "settings_from_args"]


@dataclass
class DemoSettings:
    """Sizes and budgets of the demo (defaults: ~2 minutes on 2 quiet CPU cores)."""

    pool_size: int = 2000
    eval_size: int = 1500
    size: int = 64
    heavy_tail: float = 0.8
    method: str = "dense"
    backbone: str = "vit_test"
    steps: int = 400
    batch_size: int = 32
    prune_fraction: float = 0.5
    prune_warmup_epochs: int = 1
    prune_every_epochs: int = 1
    prune_diversity: float = 0.5
    curate_fraction: float = 0.3
    #: segmentation: few labelled images (the label scarcity Embedding Earth is about), the
    #: encoder fine-tuned with its decoder; the same protocol for random init; over seeds
    seg_epochs: int = 40
    seg_max_train: int = 16
    seg_decoder: str = "fcn"
    seg_finetune: bool = True
    seg_seeds: int = 3
    seg_max_test: int | None = 150
    probe_max_train: int | None = None
    threads: int = 1
    seed: int = 0

    @classmethod
    def quick(cls, **changes: Any) -> DemoSettings:
        """A seconds-long variant for tests and smoke runs (numbers mean little)."""
        base = cls(
            pool_size=96,
            eval_size=96,
            size=32,
            steps=6,
            batch_size=16,
            seg_epochs=2,
            seg_max_train=16,
            prune_warmup_epochs=1,
            prune_every_epochs=1,
        )
        for key, value in changes.items():
            setattr(base, key, value)
        return base


#: Recipe of the demo's pretraining run: dense contrast (Embedding Earth) + dynamic pruning
#: (OceanSAR-1). Written to ``OUT/recipe.yaml``; ``eofm pretrain --config`` runs it as is.
def demo_recipe(
    settings: DemoSettings,
    data_path: str,
    bands: Sequence[str] | None,
    sar_scale: Literal["auto", "linear", "db"] = "auto",
) -> dict[str, Any]:
    """The pretraining recipe the demo runs (a plain dict, as in ``configs/*.yaml``).

    ``sar_scale``: the units SAR augmentations (calibration gain, speckle) work in. The demo's
    synthetic Sentinel-1 scenes are in dB but carry no sensor name, and ``auto`` without a
    sensor means linear: gain and speckle would then multiply dB values (a 1.5 dB gain moved
    water by up to 11 dB), teaching the encoder to ignore backscatter levels, the very thing
    that tells land-cover classes apart. ``run_demo`` passes ``db`` for them.
    """
    s = settings
    return {
        "description": "eofm demo: dense contrast (Embedding Earth) + dynamic pruning (OceanSAR-1)",
        "data": {
            "path": data_path,
            "bands": list(bands) if bands else None,
            "batch_size": s.batch_size,
            "num_workers": 0,
            "normalize": "zscore",
            "iterable": False,
        },
        "model": {"backbone": s.backbone, "img_size": s.size},
        "method": {
            "name": s.method,
            "options": {
                "feature_level": -1,
                "proj_hidden_dim": 128,
                "proj_dim": 64,
                "temperature": 0.2,
                "grid_size": 5,
                "jitter": True,
                "min_overlap": max(2.0, s.size / 8),
                "momentum": 0.99,
                "momentum_end": 1.0,
                "symmetric": True,
            }
            if s.method == "dense"
            else {},
            "views": {"global_views": 2, "crop_scale": [0.4, 1.0]},
        },
        "augment": {
            "rot90": True,
            "blur_p": [0.5, 0.5],
            "blur_sigma": [0.1, 1.0],
            "sar_scale": sar_scale,
        },
        "optim": {
            "name": "adamw",
            "lr": 1.0e-3,
            "weight_decay": 0.05,
            "warmup_steps": max(1, s.steps // 40),
            "min_lr": 1.0e-6,
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_steps": s.steps,
            "log_every_n_steps": max(1, min(10, s.steps // 20)),
            "checkpoint_every_n_steps": max(50, s.steps // 4),
            "seed": s.seed,
            "num_threads": s.threads,
        },
        "curation": {
            "dynamic_pruning": {
                "enabled": True,
                "warmup_epochs": s.prune_warmup_epochs,
                "every_epochs": s.prune_every_epochs,
                "fraction": s.prune_fraction,
                "diversity": s.prune_diversity,
                "levels": 2,
            }
        },
    }


@dataclass
class _Step:
    name: str
    command: str
    seconds: float = 0.0
    note: str = ""


@dataclass
class _State:
    out: Path
    settings: DemoSettings
    progress: bool
    steps: list[_Step] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _flag(argv: Sequence[str], name: str, default: str | None = None) -> str | None:
    """The value after ``name`` in ``argv`` (``default`` when absent)."""
    items = list(argv)
    return items[items.index(name) + 1] if name in items else default


def _run(argv: Sequence[str]) -> None:
    """Run what ``eofm ARGV`` runs, by calling the library functions behind the command.

    The demo never goes through :mod:`eofm.cli` (the CLI imports the demo, not the reverse);
    ``argv`` stays the exact command the report prints, and this maps it onto the calls.
    """
    items = [str(a) for a in argv]
    quiet = "--quiet" in items
    if items[:2] == ["data", "inspect"]:
        from eofm.data.catalog import open_dataset
        from eofm.data.inspect import inspect_dataset
        from eofm.data.preview import save_preview

        task: Any = _flag(items, "--task", "auto")
        ds = open_dataset(items[2], task=task)
        summary, samples = inspect_dataset(ds, max_samples=2000, progress=not quiet)
        print(summary.format())
        preview = _flag(items, "--preview")
        if preview:
            save_preview(
                samples, preview, class_names=getattr(ds, "class_names", None), title=items[2]
            )
            print(f"preview:   {preview}")
    elif items[:2] == ["data", "pack"]:
        from eofm.data.catalog import open_dataset
        from eofm.data.shards import pack_dataset

        ds = open_dataset(items[2], task="auto")
        size = _flag(items, "--size")
        out = pack_dataset(
            ds, items[3], progress=not quiet, size=int(size) if size else None, fit="crop"
        )
        print(f"packed {len(ds)} samples into {out}")  # type: ignore[arg-type]
    elif items[0] == "pretrain":
        from eofm.training import load_config, run_pretraining

        overrides = [a for a in items[1:] if "=" in a and not a.startswith("-")]
        config = load_config(_flag(items, "--config"), overrides)
        config.output.dir = str(_flag(items, "--out"))
        config.output.name = ""
        if quiet:
            config.trainer.progress_bar = False
        result = run_pretraining(config)
        print(f"run:        {result.run_dir}")
        if result.final_loss is not None:
            print(f"final loss: {result.final_loss:.4f}")
        print(f"model:      {result.model_path}")
    elif items[0] == "curate":
        from eofm.pipelines.curate import CurateOptions, run_curate

        threads = _flag(items, "--threads")
        run_curate(
            CurateOptions(
                model=str(_flag(items, "--model")),
                data=str(_flag(items, "--data")),
                target=str(_flag(items, "--target")),
                out=str(_flag(items, "--out")),
                threads=int(threads) if threads else None,
                quiet=quiet,
            )
        )
    else:
        raise EofmError(f"the demo has no runner for `eofm {' '.join(items)}`")


def _shell(argv: Sequence[str]) -> str:
    import shlex

    return "eofm " + " ".join(shlex.quote(str(a)) for a in argv)


def _step(state: _State, index: int, total: int, title: str, argv: Sequence[str] | None) -> _Step:
    print(f"\n[{index}/{total}] {title}", flush=True)
    step = _Step(title, _shell(argv) if argv else "")
    state.steps.append(step)
    return step


def _timed(step: _Step, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        step.seconds = time.perf_counter() - t0


def _synthesise(state: _State) -> tuple[Path, Path]:
    from eofm.data.synthetic import write_synthetic

    s = state.settings
    pool = write_synthetic(
        state.out / "pool",
        kind="landcover",
        n=s.pool_size,
        size=s.size,
        seed=s.seed,
        heavy_tail=s.heavy_tail,
        sensors=("s1",),
        progress=state.progress,
    )
    labelled = write_synthetic(
        state.out / "labelled",
        kind="landcover",
        n=s.eval_size,
        size=s.size,
        seed=s.seed + 1,
        heavy_tail=None,
        sensors=("s1",),
        progress=state.progress,
    )
    return pool, labelled


def _label_kinds(spec: Path) -> set[str]:
    """Which evaluations the folder supports: {"classification", "segmentation"}."""
    from eofm.data.catalog import open_dataset
    from eofm.evaluation.data import _label_kind

    kinds: set[str] = set()
    tasks: tuple[Literal["auto", "segmentation"], ...] = ("auto", "segmentation")
    for task in tasks:
        try:
            kind = _label_kind(open_dataset(spec, task=task))
        except EofmError:
            continue
        if kind in ("classification", "multilabel", "segmentation"):
            kinds.add("classification" if kind == "multilabel" else kind)
    return kinds


def _training_log(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Series of the run's CSV log (step, value) per metric."""
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    series: dict[str, list[tuple[int, float]]] = {}
    for path in files[-1:]:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or "nan"))
                except ValueError:
                    continue
                for key, value in row.items():
                    if key in ("step", "epoch") or not value:
                        continue
                    with contextlib.suppress(ValueError):
                        series.setdefault(key, []).append((step, float(value)))
    return series


def _plot_training(series: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    loss = series.get("train/loss")
    if not loss:
        return None
    from eofm.evaluation.report import _plt, _save

    plt = _plt()

    pool = series.get("curation/pool_cluster_entropy", [])
    kept = series.get("curation/cluster_entropy", [])
    subset = series.get("curation/subset_size", [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(*zip(*loss, strict=True), lw=1.2)
    axes[0].set(xlabel="step", ylabel="training loss", title="pretraining loss")
    ax = axes[1]
    if pool and kept:
        ax.plot(*zip(*pool, strict=True), "o-", color="#999999", ms=4, label="whole pool")
        ax.plot(*zip(*kept, strict=True), "o-", color="tab:green", ms=4, label="kept subset")
        size = int(subset[-1][1]) if subset else None
        title = "dynamic pruning" + (f": {size} images kept per refresh" if size else "")
        ax.set(xlabel="step", ylabel="cluster entropy (nats)", title=title)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _plot_summary(results: dict[str, Any], path: Path) -> Path | None:
    pairs = [
        (name, metric, results[name])
        for name, metric in (("linear probe", "balanced_accuracy"), ("segmentation", "miou"))
        if name in results
    ]
    if not pairs:
        return None
    from eofm.evaluation.report import _plt, _save

    plt = _plt()

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    for ax, (name, metric, res) in zip(axes[0], pairs, strict=True):
        roles = [r for r in ("random init", "pretrained") if r in res]
        values = [res[r].get(metric, math.nan) for r in roles]
        bars = ax.bar(roles, values, color=["#999999", "#1f77b4"][: len(roles)])
        for bar, v in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom")
        ax.set(title=name, ylabel=metric.replace("_", " "), ylim=(0, 1))
    fig.tight_layout()
    return _save(fig, path)


def _eval_argv(
    state: _State, task: str, data: Path, model: Path, seed: int, out: Path
) -> list[str]:
    """The ``eofm evaluate`` command of one evaluation (what the report prints)."""
    s = state.settings
    argv = ["evaluate", "--model", str(model), "--task", task, "--data", str(data)]
    argv += ["--baselines", "random", "--img-size", str(s.size), "--threads", str(s.threads)]
    argv += ["--seed", str(seed), "--cache-dir", str(state.out / "cache"), "--out", str(out)]
    if task == "segmentation":
        argv += ["--epochs", str(s.seg_epochs), "--decoder", s.seg_decoder]
        argv += ["--max-train", str(s.seg_max_train)]
        if s.seg_max_test:
            argv += ["--max-test", str(s.seg_max_test)]
        if s.seg_finetune:
            argv.append("--finetune-encoder")
    elif s.probe_max_train:
        argv += ["--max-train", str(s.probe_max_train)]
    if not state.progress:
        argv.append("--quiet")
    return argv


def _run_evaluate(state: _State, argv: Sequence[str], write: bool) -> dict[str, Any]:
    """Run what ``eofm evaluate ARGV`` runs (``write``: its report files too)."""
    from eofm.evaluation.tasks import format_summary, run_evaluation

    s = state.settings
    task = str(_flag(argv, "--task"))
    max_train = _flag(argv, "--max-train")
    max_test = _flag(argv, "--max-test")
    opts: dict[str, Any] = {}
    if task == "segmentation":
        opts = {"epochs": float(s.seg_epochs), "decoder": s.seg_decoder}
        opts["freeze"] = not s.seg_finetune
    result = run_evaluation(
        str(_flag(argv, "--model")),
        task,
        str(_flag(argv, "--data")),
        baselines=["random"],
        max_train=int(max_train) if max_train else None,
        max_test=int(max_test) if max_test else None,
        out_dir=Path(str(_flag(argv, "--out"))) if write else None,
        img_size=s.size,
        seed=int(str(_flag(argv, "--seed"))),
        cache_dir=state.out / "cache",
        progress=state.progress,
        **opts,
    )
    print(format_summary(result))
    return result


def _roles(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in result["models"]:
        role = "pretrained" if m["role"] == "model" else "random init"
        out[role] = {k: float(v) for k, v in m["metrics"].items() if isinstance(v, (int, float))}
    return out


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def _evaluate(
    state: _State, step_no: int, total: int, task: str, data: Path, model: Path, label: str
) -> None:
    """One evaluation against random init; segmentation repeats over ``seg_seeds`` seeds
    (split, head and random init all change with the seed) and keeps mean and spread."""
    s = state.settings
    out = state.out / f"eval-{task}"
    seeds = [s.seed + i for i in range(s.seg_seeds if task == "segmentation" else 1)]
    argv = _eval_argv(state, task, data, model, seeds[0], out)
    title = f"{label} vs random initialisation"
    if len(seeds) > 1:
        title += f" ({len(seeds)} seeds)"
    step = _step(state, step_no, total, title, argv)
    if len(seeds) > 1:
        step.command += f"  (then --seed {', '.join(str(x) for x in seeds[1:])})"
    runs: list[dict[str, dict[str, float]]] = []

    def run_all() -> None:
        for i, seed in enumerate(seeds):
            argv_i = _eval_argv(state, task, data, model, seed, out)
            runs.append(_roles(_run_evaluate(state, argv_i, write=i == 0)))

    _timed(step, run_all)
    res: dict[str, Any] = {}
    for role in runs[0]:
        per_seed = [r[role] for r in runs]
        res[role] = {k: _mean_spread([p[k] for p in per_seed])[0] for k in per_seed[0]}
        if len(runs) > 1:
            res[role]["spread"] = {
                k: _mean_spread([p[k] for p in per_seed])[1] for k in per_seed[0]
            }
            res[role]["per_seed"] = {k: [p[k] for p in per_seed] for k in per_seed[0]}
    if len(runs) > 1 and {"pretrained", "random init"} <= set(res):
        res["gain"] = {
            k: _mean_spread([r["pretrained"][k] - r["random init"][k] for r in runs])
            for k in runs[0]["pretrained"]
        }
    res["seeds"] = seeds
    res["report"] = {"path": f"eval-{task}/report.html"}
    state.results[label] = res


def run_demo(
    out: str | Path = "eofm-demo",
    *,
    data: str | Path | None = None,
    settings: DemoSettings | None = None,
    progress: bool = True,
) -> Path:
    """Run the demo into ``out``; returns the path of its markdown report."""
    import torch

    s = settings or DemoSettings()
    out = Path(out)
    if data is not None and not Path(data).exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, s.threads))
    state = _State(out=out, settings=s, progress=progress)
    started = time.perf_counter()
    total = 8
    quiet = [] if progress else ["--quiet"]

    # 1. data
    if data is None:
        step = _step(
            state,
            1,
            total,
            f"synthesising {s.pool_size} heavy-tailed Sentinel-1 scenes (pool) and "
            f"{s.eval_size} balanced labelled scenes",
            None,
        )
        step.command = (
            f"eofm data synth {out / 'pool'} --sensors s1 --n {s.pool_size} --size {s.size} "
            f"--seed {s.seed} --heavy-tail {s.heavy_tail}; eofm data synth {out / 'labelled'} "
            f"--sensors s1 --n {s.eval_size} --size {s.size} --seed {s.seed + 1}"
        )
        pool_src, labelled = _timed(step, lambda: _synthesise(state))
        data_note = (
            f"synthetic Sentinel-1 GRD (VV, VH in dB) land-cover scenes of {s.size} x {s.size} px: "
            f"a pool of {s.pool_size} with {s.heavy_tail:.0%} of scenes dominated by cropland, "
            f"and a balanced labelled set of {s.eval_size} (scene labels and masks)"
        )
    else:
        step = _step(state, 1, total, f"using your data: {data}", None)
        pool_src = labelled = Path(data)
        data_note = f"your folder `{data}` (all images form the pool; evaluation on a seeded split)"

    # 2. inspect + stats
    argv = ["data", "inspect", str(pool_src), "--preview", str(out / "preview.png"), *quiet]
    if data is None:
        argv += ["--task", "segmentation"]
    step = _step(
        state, 2, total, "inspecting the pool (classes, bands, value ranges, preview)", argv
    )
    _timed(step, lambda: _run(argv))

    # 3. pack
    shards = out / "shards"
    argv = ["data", "pack", str(pool_src), str(shards), "--size", str(s.size), *quiet]
    step = _step(state, 3, total, "packing the pool into memory-mapped shards", argv)
    if (shards / "index.json").exists():
        import shutil

        shutil.rmtree(shards)
    _timed(step, lambda: _run(argv))

    # 4. pretrain with dynamic pruning
    import yaml

    recipe_path = out / "recipe.yaml"
    recipe_path.write_text(
        "# written by `eofm demo`: rerun with  eofm pretrain --config recipe.yaml\n"
        + yaml.safe_dump(
            demo_recipe(s, str(shards), None, sar_scale="db" if data is None else "auto"),
            sort_keys=False,
        )
    )
    run_dir = out / "pretrain"
    argv = [
        "pretrain",
        "--config",
        str(recipe_path),
        "--out",
        str(run_dir),
        "output.overwrite=true",
        *quiet,
    ]
    step = _step(
        state,
        4,
        total,
        f"pretraining {s.backbone} with {s.method} contrast + dynamic pruning ({s.steps} steps)",
        argv,
    )
    _timed(step, lambda: _run(argv))
    model = run_dir / "model.safetensors"

    # 5. offline curation with the pretrained encoder
    curated = out / "curated"
    argv = [
        "curate",
        "--model",
        str(model),
        "--data",
        str(pool_src),
        "--target",
        str(s.curate_fraction),
        "--out",
        str(curated),
        "--threads",
        str(s.threads),
        *quiet,
    ]
    step = _step(state, 5, total, "curating the pool with the pretrained encoder", argv)
    _timed(step, lambda: _run(argv))
    state.results["curation"] = _curation_summary(curated)

    # 6-7. evaluation
    kinds = _label_kinds(labelled)
    for no, task, label, kind in (
        (6, "linear", "linear probe", "classification"),
        (7, "segmentation", "segmentation", "segmentation"),
    ):
        if kind not in kinds:
            step = _step(state, no, total, f"{label}: skipped", None)
            step.note = (
                f"`{labelled}` has no {'scene labels' if kind == 'classification' else 'masks'}"
            )
            state.notes.append(f"{label} skipped: {step.note}")
            print(f"    skipped: {step.note}")
            continue
        try:
            _evaluate(state, no, total, task, labelled, model, label)
        except MissingLabelError as err:
            state.notes.append(f"{label} skipped: {err}")

    # 8. report
    step = _step(state, 8, total, "writing the report", None)
    report: Path = _timed(
        step, lambda: _write_report(state, data_note, run_dir, time.perf_counter() - started)
    )
    _print_summary(state, report, time.perf_counter() - started)
    return report


def _curation_summary(curated: Path) -> dict[str, Any]:
    """Headline numbers of ``eofm curate``'s manifest: sizes, cluster and class entropy."""
    path = curated / "manifest.json"
    if not path.exists():
        return {}
    manifest = json.loads(path.read_text())
    stats = manifest.get("stats", {})
    out: dict[str, Any] = {
        "pool size": manifest.get("pool_size"),
        "kept": manifest.get("subset_size"),
    }
    levels = sorted(k for k in stats if k.startswith("level"))
    if levels:
        top = stats[levels[-1]]
        out["top-level clusters"] = top.get("clusters")
        out["top-level cluster entropy, pool -> kept (nats)"] = (
            f"{top['entropy_before']:.3f} -> {top['entropy_after']:.3f}"
        )
    classes = stats.get("classes")
    if classes:
        names = manifest.get("class_names") or []
        before, after = classes["counts_before"], classes["counts_after"]
        out["class entropy, pool -> kept (nats)"] = (
            f"{classes['entropy_before']:.3f} -> {classes['entropy_after']:.3f}"
        )
        if names and before and sum(before) and sum(after):
            big = max(range(len(before)), key=lambda i: before[i])
            out[f"share of the largest class ({names[big]}), pool -> kept"] = (
                f"{before[big] / sum(before):.0%} -> {after[big] / sum(after):.0%}"
            )
    return {k: v for k, v in out.items() if v is not None}


def _cells(res: dict[str, Any], metric: str) -> list[str]:
    """``[pretrained, random init, gain]`` as text, with ``± spread`` over seeds if any."""
    cells = []
    for role in ("pretrained", "random init"):
        v = res.get(role, {}).get(metric, math.nan)
        sd = res.get(role, {}).get("spread", {}).get(metric)
        cells.append(f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
    gain = res.get("gain", {}).get(metric)
    if gain is not None:
        cells.append(f"{gain[0]:+.3f} ± {gain[1]:.3f}")
    else:
        pre = res.get("pretrained", {}).get(metric, math.nan)
        rnd = res.get("random init", {}).get(metric, math.nan)
        cells.append(f"{pre - rnd:+.3f}")
    return cells


def _seg_protocol(s: DemoSettings) -> str:
    """One line on the segmentation protocol of the settings."""
    encoder = "fine-tuned" if s.seg_finetune else "frozen"
    return (
        f"{s.seg_max_train} labelled images, {encoder} encoder + `{s.seg_decoder}` decoder, "
        f"{s.seg_epochs} epochs, the same for both encoders"
    )


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _write_report(state: _State, data_note: str, run_dir: Path, elapsed: float) -> Path:
    from eofm.evaluation.report import render_html, render_markdown

    out, s, res = state.out, state.settings, state.results
    training = _plot_training(_training_log(run_dir), out / "training.png")
    summary = _plot_summary(res, out / "summary.png")
    blocks: list[Any] = [
        ("h", 1, "eofm demo"),
        ("p", f"Data: {data_note}."),
        (
            "p",
            f"Encoder: `{s.backbone}` pretrained with **{s.method}** contrastive learning "
            f"(Embedding Earth) for {s.steps} steps of {s.batch_size} images while **dynamic "
            f"pruning** (OceanSAR-1) re-embedded the pool with the model being trained every "
            f"{s.prune_every_epochs} epoch(s) after {s.prune_warmup_epochs} warm-up epoch(s) and "
            f"kept a balanced {s.prune_fraction:.0%} (diversity {s.prune_diversity}). Model file: "
            "`pretrain/model.safetensors`; recipe: `recipe.yaml`.",
        ),
        ("h", 2, "Results: pretrained vs random initialisation"),
    ]
    rows = [
        [name, metric.replace("_", " "), *_cells(res[name], metric)]
        for name, metric in (
            ("linear probe", "balanced_accuracy"),
            ("linear probe", "top1"),
            ("segmentation", "miou"),
            ("segmentation", "pixel_accuracy"),
        )
        if name in res
    ]
    if rows:
        blocks.append(("table", ["task", "metric", "pretrained", "random init", "gain"], rows))
    seg = res.get("segmentation") or {}
    if len(seg.get("seeds", [])) > 1:
        blocks.append(
            (
                "p",
                f"Segmentation: {_seg_protocol(s)}; mean ± standard deviation over seeds "
                f"{', '.join(str(x) for x in seg['seeds'])} (each seed draws its own split, "
                "labelled images, decoder and random initialisation; the gain is paired per "
                "seed).",
            )
        )
    for note in state.notes:
        blocks.append(("p", note))
    if summary:
        blocks.append(("img", summary.name, "pretrained vs random initialisation"))
    links = [
        f"[{k}]({v['report']['path']})"
        for k, v in res.items()
        if isinstance(v, dict) and isinstance(v.get("report"), dict)
    ]
    if links:
        blocks.append(
            (
                "p",
                "Full evaluation reports (confusion matrix, per-class scores, "
                "overlays): " + ", ".join(links) + ".",
            )
        )
    blocks.append(("h", 2, "Pretraining and dynamic pruning"))
    if training:
        blocks.append(("img", training.name, "loss, and the training subset chosen by pruning"))
    cur = res.get("curation") or {}
    if cur:
        blocks += [
            ("h", 2, "Offline curation with the pretrained encoder"),
            (
                "p",
                f"`eofm curate` kept {s.curate_fraction:.0%} of the pool, balanced over "
                "hierarchical k-means clusters of the encoder's embeddings: see "
                "[curated/report.md](curated/report.md).",
            ),
            ("table", ["curation", "value"], [[k, _fmt(v)] for k, v in cur.items()]),
        ]
    blocks += [("h", 2, "Data"), ("img", "preview.png", "pool preview (VV, VH) and masks")]
    blocks += [
        ("h", 2, "Steps (each is one eofm command)"),
        (
            "table",
            ["step", "seconds", "command"],
            [
                [st.name, f"{st.seconds:.1f}", f"`{st.command}`" if st.command else st.note]
                for st in state.steps
            ],
        ),
        ("p", f"Total: {elapsed:.0f} s. Settings: `{json.dumps(asdict(s))}`."),
    ]
    (out / "report.html").write_text(render_html(blocks, title="eofm demo"), encoding="utf-8")
    report = out / "report.md"
    report.write_text(render_markdown(blocks), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(
            {"settings": asdict(s), "results": res, "seconds": elapsed}, indent=2, default=str
        )
    )
    return report


def _print_summary(state: _State, report: Path, elapsed: float) -> None:
    res = state.results
    print("\n" + "=" * 64)
    print("eofm demo: pretrained vs random initialisation")
    for name, metric in (("linear probe", "balanced_accuracy"), ("segmentation", "miou")):
        if name in res:
            pre, rnd, gain = _cells(res[name], metric)
            print(f"  {name:<13} {metric:<18} {pre} vs {rnd} ({gain})")
    for note in state.notes:
        print(f"  {note}")
    print(f"report: {report}  (and {report.with_suffix('.html')})")
    print(f"total:  {elapsed:.0f} s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``eofm demo`` options."""
    p.add_argument("--out", default="eofm-demo", help="output folder (default: eofm-demo)")
    p.add_argument(
        "--data",
        default=None,
        metavar="FOLDER",
        help="run on your own images (any layout `eofm data inspect` reads) instead of the "
        "synthetic default",
    )
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default 400)")
    p.add_argument("--n", type=int, default=None, help="synthetic pool size (default 2000)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """DemoSettings from parsed ``eofm demo`` arguments."""
    s = DemoSettings.quick() if args.quick else DemoSettings()
    for key, value in (
        ("steps", args.steps),
        ("pool_size", args.n),
        ("size", args.size),
        ("threads", args.threads),
    ):
        if value is not None:
            if value <= 0:
                raise ConfigError(
                    f"--{key.replace('_size', '').replace('pool', 'n')} must be "
                    f"positive, got {value}"
                )
            setattr(s, key, value)
    s.seed = args.seed
    return s
