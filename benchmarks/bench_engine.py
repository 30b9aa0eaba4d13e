"""Engine overhead: pretraining images/s through ``run_pretraining`` (Lightning) vs a bare
torch loop doing the same work, per method and backbone.

    python benchmarks/bench_engine.py           # 8 methods on vit_test; simclr, mae, dino on ViT-S
    python benchmarks/bench_engine.py --quick   # vit_test only, fewer steps (~1.5 min)
    python benchmarks/bench_engine.py --methods simclr,mae --backbones vit_test --repeats 1
    python benchmarks/bench_engine.py --probe-only                # the engine's fixed cost per step
    python benchmarks/bench_engine.py --profile simclr:vit_test   # where the engine's time goes

For each (method, backbone) both loops are built from the same recipe
(``configs/<method>_tiny.yaml`` with the data, backbone, image size, batch and length replaced):

- **engine**: ``run_pretraining(config)`` with a callback taking a timestamp at the end of
  every training batch (``on_train_batch_end``, after the optimiser step, logging and the other
  callbacks). Everything the engine does per step is inside the intervals: fetching and
  collating the next batch, moving it to the device, normalising, augmenting, the method's
  forward and loss, backward, clipping, the optimiser and scheduler steps, EMA updates,
  logging (CSV + TensorBoard, the recipe's ``log_every_n_steps``), the progress bar (on, as
  in the recipes) and the callbacks. Periodic checkpoints are moved out of the window
  (``checkpoint_every_n_steps`` > the run) and the encoder export is off; setup and the final
  ``last.ckpt`` are timed separately.
- **bare**: the same dataset, ``DataLoader`` (``PretrainDataModule.train_dataloader``), the
  normaliser, ``MultiViewAugment`` with the same per-step seeds, the same method
  (``forward_loss``, ``on_before_optimizer_step``, ``on_step_end``), parameter groups,
  optimiser, learning-rate and weight-decay schedules and gradient clipping, in a plain loop:
  no Lightning, no logging.

Steady state: the first ``warmup`` steps of every run are dropped; a run's images/s is the
batch size over the median step time of the others (the median resists other jobs on a shared
machine; the mean is kept in results.json). Runs of the two loops alternate (bare, engine,
engine, bare, ... with ``--repeats 2``) so that they see the same load; their step times are
pooled. The ratio engine/bare is the engine's efficiency (target >= 0.9 on CPU). The same
ratio from process CPU time per step is reported beside it: on a busy machine the wall-clock
ratio swings with the other jobs, the CPU-time ratio much less. The overhead probe repeats the
comparison at a minimal step (MAE, ``vit_test``, batch 4 at 32 px) with parts of the engine
switched off (progress bar, loggers, ``self.log``) to show what its fixed cost is made of.
One torch thread (``--threads``) in both loops; data: each recipe's synthetic data
(``synthetic:landcover`` Sentinel-2 L1C, 13 bands; DINO: ``synthetic:wavemode`` Sentinel-1 VV),
generated once into ``benchmarks/_work/engine/data``. Writes the ``## Engine overhead``
section of results.md and its figures in results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import logging
import math
import pstats
import random
import resource
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import results_file
import torch

from eofm.training.allocator import tune_malloc

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "engine"
SECTION = "## Engine overhead"
#: ``--tune-malloc``: its own section and figure names (glibc's allocator changed in-process).
TUNED_SECTION = "## Engine overhead (glibc malloc tuned)"
SCRIPT = "bench_engine.py"
METHODS = ("simclr", "mocov3", "dino", "mae", "simmim", "gfm", "softcon", "dense")
BACKBONES = ("vit_test", "vit_small_patch16")
#: Small test backbones: every method of ``--methods`` runs on them; the others (ViT-S...) run
#: ``--slow-methods`` only (a ViT-S step at batch 64 takes seconds on one CPU thread).
FAST_BACKBONES = ("vit_test", "resnet_test", "swin_test", "vit_test_parallel")
SLOW_METHODS = ("simclr", "mae", "dino")
#: (warm-up steps dropped, measured steps, repeats of each loop) per run.
PLAN = {"fast": (4, 25, 2), "slow": (1, 4, 1)}
QUICK_PLAN = {"fast": (2, 8, 2), "slow": (1, 2, 1)}
#: The overhead probe: a minimal step (MAE on vit_test, batch 4 at 32 px) so that the engine's
#: fixed cost per step stands out; (warm-up, steps, repeats).
PROBE = ("mae", "vit_test", 4, 32)
PROBE_PLAN, QUICK_PROBE_PLAN = (5, 60, 2), (5, 30, 1)


# --------------------------------------------------------------------------------------------
# recipes and data


def recipe(method: str) -> Path:
    return REPO / "configs" / f"{method}_tiny.yaml"


def load_recipe(method: str) -> Any:
    from eofm.training import load_config

    return load_config(recipe(method))


def prepare_data(spec: str, n: int, size: int) -> Path:
    """The recipe's synthetic data (``synthetic:<kind>...``) with ``n`` images of ``size`` px,
    written once as shards with a dataset card beside them (so no run recomputes it)."""
    from eofm.data.synthetic import write_synthetic
    from eofm.training.config import DataConfig
    from eofm.training.data import build_dataset, build_normalizer, parse_synthetic

    params = parse_synthetic(spec) if spec.startswith("synthetic") else {"kind": "landcover"}
    kind = params["kind"]
    out = WORK / "data" / f"{kind}_n{n}_s{size}"
    if not (out / "index.json").is_file() or not (out / "eofm_card.json").is_file():
        write_synthetic(out, kind=kind, n=n, size=size, seed=0, fmt="shards", progress=False)
        cfg = DataConfig(path=str(out))
        build_normalizer(cfg, build_dataset(cfg, out), out)  # writes out/eofm_card.json
    return out


def make_config(
    method: str,
    backbone: str,
    args: argparse.Namespace,
    max_steps: int,
    name: str,
    extra: list[str] | None = None,
) -> Any:
    from eofm.training import load_config

    base = load_recipe(method)
    data = prepare_data(base.data.path, args.data_n, args.size)
    overrides = [
        f"data.path={data}",
        "data.bands=null",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        f"model.backbone={backbone}",
        f"model.img_size={args.size}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "trainer.precision=32-true",
        "trainer.max_epochs=null",
        f"trainer.max_steps={max_steps}",
        "trainer.max_time_s=null",
        "trainer.checkpoint_every_n_steps=1000000",
        f"trainer.num_threads={args.threads}",
        "trainer.seed=0",
        f"output.dir={WORK / 'runs'}",
        f"output.name={name}",
        "output.overwrite=true",
        "output.export=false",
        # the engine tunes glibc's allocator on CPU by default; measure both loops alike
        f"trainer.tune_malloc={'true' if getattr(args, 'tune_malloc', True) else 'false'}",
    ]
    if method == "gfm":  # the tiny recipe taps Swin stages; use the backbone's own defaults
        overrides += [
            "method.options.teacher_arch=null",
            "method.options.student_level=null",
            "method.options.teacher_level=null",
            f"method.options.teacher_img_size={args.size}",
        ]
    config = load_config(recipe(method), overrides + list(extra or []))
    views = dict(config.method.views)
    if views.get("global_size") is not None:
        views["global_size"] = args.size
    if views.get("local_views"):
        views["local_size"] = max(16, args.size // 2)
    config.method.views = views
    return config


def views_of(config: Any) -> str:
    v = config.method.views
    g = v.get("global_views", 2)
    text = f"{g}x{config.model.img_size}"
    if v.get("local_views"):
        text += f" + {v['local_views']}x{v.get('local_size', 32)}"
    return text


# --------------------------------------------------------------------------------------------
# the two loops


@dataclass
class Run:
    """Wall-clock and process CPU timestamps at the end of every step, and fixed costs."""

    mode: str
    ends: list[tuple[float, float]] = field(default_factory=list)
    start: float = 0.0
    train_start: float | None = None
    finished: float = 0.0

    def mark(self) -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.ends.append((time.perf_counter(), time.process_time(), float(faults)))

    def steps(self, warmup: int, cpu: bool = False, faults: bool = False) -> list[float]:
        """Durations of steps ``warmup+1..`` (step i: end of step i-1 to end of step i),
        wall-clock or process CPU time (or the minor page faults of each step)."""
        k = 2 if faults else 1 if cpu else 0
        ends = self.ends[warmup:]
        return [b[k] - a[k] for a, b in itertools.pairwise(ends)]

    @property
    def setup_s(self) -> float:
        first = self.train_start if self.train_start is not None else self.start
        return first - self.start

    @property
    def teardown_s(self) -> float:
        return self.finished - self.ends[-1][0] if self.ends else 0.0


def _step_timer(run: Run) -> Any:
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            run.mark()
            run.train_start = run.ends[-1][0]

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            run.mark()

    return StepTimer()


def engine_run(config: Any) -> Run:
    from eofm.training import run_pretraining

    run = Run("engine", start=time.perf_counter())
    with quiet():
        result = run_pretraining(config, callbacks=[_step_timer(run)])
    run.finished = time.perf_counter()
    shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)  # ~0.5 GB for a ViT-S
    return run


@contextlib.contextmanager
def quiet() -> Any:
    """Keep Lightning's banner, warnings and progress bar off the benchmark's output (the
    progress bar still runs: it writes to a buffer instead of the terminal)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(sink),
        contextlib.redirect_stdout(sink),
    ):
        warnings.simplefilter("ignore")
        yield


def build_bare(config: Any) -> dict[str, Any]:
    """Everything the engine builds from ``config``, without Lightning."""
    from eofm.augment.multiview import MultiViewAugment
    from eofm.models import create_backbone
    from eofm.training.data import PretrainDataModule, build_dataset, build_normalizer
    from eofm.training.engine import build_method, run_dir_of
    from eofm.training.module import build_optimizer, lr_lambda, param_groups

    t = config.trainer
    torch.set_num_threads(max(1, t.num_threads or torch.get_num_threads()))
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    run_dir = run_dir_of(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = build_dataset(config.data, run_dir, seed=t.seed)
    normalizer, card = build_normalizer(config.data, info, run_dir)
    opts = dict(config.model.options)
    backbone = create_backbone(
        config.model.backbone, bands=list(info.bands), img_size=config.model.img_size, **opts
    )
    method = build_method(config, backbone)
    mean = std = None
    if card is not None:
        m, s = card.mean_std(list(info.bands))
        mean, std = m.tolist(), s.tolist()
    augment = MultiViewAugment(info.bands, config.augment, sensor=info.sensor, mean=mean, std=std)
    cfg = config.optim
    total = int(t.max_steps)
    lr = cfg.lr * config.data.batch_size / cfg.base_batch_size if cfg.base_batch_size else cfg.lr
    optimizer = build_optimizer(
        param_groups(method, cfg.weight_decay, cfg.no_decay_norm_bias), cfg, lr
    )
    warmup = max(int(cfg.warmup_steps), int(cfg.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, warmup, cfg.min_lr / lr if lr > 0 else 0.0, cfg.schedule)
    )
    loader = PretrainDataModule(info.dataset, config.data, seed=t.seed).train_dataloader()
    return {
        "method": method,
        "augment": augment,
        "normalizer": normalizer,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loader": loader,
        "total": total,
    }


def bare_step(parts: dict[str, Any], batch: dict[str, Any], step: int, config: Any) -> Any:
    """One training step as ``PretrainModule`` does it (without Lightning)."""
    from eofm.methods.heads import cosine_schedule
    from eofm.training.module import step_seed

    method, optimizer, total = parts["method"], parts["optimizer"], parts["total"]
    cfg = config.optim
    if cfg.weight_decay_end is not None:
        wd = cosine_schedule(step, total, cfg.weight_decay, cfg.weight_decay_end)
        for group in optimizer.param_groups:
            if group.get("apply_wd", True):
                group["weight_decay"] = wd
    normalizer = parts["normalizer"]
    image = batch["image"]
    image = normalizer(image) if normalizer is not None else torch.nan_to_num(image.float())
    batch["image"] = image
    seed = step_seed(config.trainer.seed, step, 0)
    torch.manual_seed(seed)
    gen = parts.setdefault("generator", torch.Generator(device=image.device))
    gen.manual_seed(seed ^ 0x5DEECE66D)
    views = parts["augment"](image.float(), method.view_spec, generator=gen)
    out = method.forward_loss(views, batch)
    loss = out["loss"]
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"{method.name} loss is {loss.item()} at step {step}")
    loss.backward()
    method.on_before_optimizer_step(step, total)
    if cfg.grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    parts["scheduler"].step()
    method.on_step_end(step + 1, total)
    return loss


def bare_run(config: Any) -> Run:
    run = Run("bare", start=time.perf_counter())
    parts = build_bare(config)
    parts["method"].train()
    run.mark()
    run.train_start = run.ends[-1][0]
    step = 0
    while step < parts["total"]:
        for batch in parts["loader"]:
            bare_step(parts, batch, step, config)
            step += 1
            run.mark()
            if step >= parts["total"]:
                break
    run.finished = time.perf_counter()
    return run


# --------------------------------------------------------------------------------------------
# measuring


def plan_for(backbone: str, args: argparse.Namespace) -> tuple[int, int, int]:
    """(warm-up, measured steps, repeats) for ``backbone``; command-line values win."""
    table = QUICK_PLAN if args.quick else PLAN
    warmup, steps, repeats = table["fast" if backbone in FAST_BACKBONES else "slow"]
    return (
        args.warmup if args.warmup is not None else warmup,
        args.steps if args.steps is not None else steps,
        args.repeats if args.repeats is not None else repeats,
    )


def measure(method: str, backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    warmup, steps, repeats = plan_for(backbone, args)
    config = make_config(method, backbone, args, warmup + steps, f"{method}_{backbone}")
    order = (["bare", "engine", "engine", "bare"] * math.ceil(repeats / 2))[: 2 * repeats]
    durations: dict[str, list[float]] = {"bare": [], "engine": []}
    cpu: dict[str, list[float]] = {"bare": [], "engine": []}
    faults: dict[str, list[float]] = {"bare": [], "engine": []}
    fixed: dict[str, list[tuple[float, float]]] = {"bare": [], "engine": []}
    load_start = results_file.load_avg()
    for mode in order:
        run = engine_run(config) if mode == "engine" else bare_run(config)
        durations[mode] += run.steps(warmup)
        cpu[mode] += run.steps(warmup, cpu=True)
        faults[mode] += run.steps(warmup, faults=True)
        fixed[mode].append((run.setup_s, run.teardown_s))
    batch = config.data.batch_size
    row: dict[str, Any] = {
        "method": method,
        "backbone": backbone,
        "batch": batch,
        "views": views_of(config),
        "warmup": warmup,
        "steps": steps,
        "repeats": repeats,
        "threads": args.threads,
        "load_start": load_start,
        "load_end": results_file.load_avg(),
        "log_every_n_steps": config.trainer.log_every_n_steps,
    }
    for mode in ("bare", "engine"):
        d = durations[mode]
        row[f"{mode}_median_s"] = statistics.median(d)
        row[f"{mode}_mean_s"] = statistics.fmean(d)
        row[f"{mode}_images_per_s"] = batch / statistics.median(d)
        row[f"{mode}_images_per_s_mean"] = batch / statistics.fmean(d)
        row[f"{mode}_cpu_median_s"] = statistics.median(cpu[mode])
        row[f"{mode}_page_faults_per_step"] = statistics.median(faults[mode])
        row[f"{mode}_setup_s"] = statistics.fmean(s for s, _ in fixed[mode])
        row[f"{mode}_teardown_s"] = statistics.fmean(t for _, t in fixed[mode])
    row["ratio"] = row["engine_images_per_s"] / row["bare_images_per_s"]
    row["ratio_mean"] = row["engine_images_per_s_mean"] / row["bare_images_per_s_mean"]
    row["ratio_cpu"] = row["bare_cpu_median_s"] / row["engine_cpu_median_s"]
    row["overhead_ms"] = (row["engine_median_s"] - row["bare_median_s"]) * 1000
    return row


def profile(
    method: str, backbone: str, args: argparse.Namespace, mode: str = "engine", top: int = 30
) -> str:
    """cProfile of one engine (or bare) run; the steady state dominates with enough steps."""
    warmup, steps, _ = plan_for(backbone, args)
    config = make_config(method, backbone, args, warmup + steps, f"{method}_{backbone}_prof")
    prof = cProfile.Profile()
    prof.enable()
    run = engine_run(config) if mode == "engine" else bare_run(config)
    prof.disable()
    d = run.steps(warmup)
    print(f"{mode}: median step {statistics.median(d) * 1000:.1f} ms over {len(d)} steps")
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    stats.print_stats(top)
    stats.sort_stats("cumulative").print_stats(top * 2)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# the engine's fixed cost per step, and what it is made of


#: (name, description, config overrides, patch out ``self.log`` and the throughput monitor)
VARIANTS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("bare", "bare loop", (), False),
    ("engine", "engine as configured (progress bar, CSV + TensorBoard every 5 steps)", (), False),
    ("no_bar", "engine, progress bar off", ("trainer.progress_bar=false",), False),
    (
        "no_bar_no_loggers",
        "engine, progress bar off, loggers never write (log_every_n_steps > run, no TensorBoard)",
        (
            "trainer.progress_bar=false",
            "trainer.log_every_n_steps=1000000",
            "output.tensorboard=false",
        ),
        False,
    ),
    (
        "no_bar_no_log",
        "... and no `self.log` calls (PretrainModule.log and ThroughputMonitor patched out here)",
        (
            "trainer.progress_bar=false",
            "trainer.log_every_n_steps=1000000",
            "output.tensorboard=false",
        ),
        True,
    ),
)


@contextlib.contextmanager
def _no_self_log(active: bool) -> Any:
    if not active:
        yield
        return
    from eofm.training import module

    saved = (module.PretrainModule.log, module.ThroughputMonitor.on_train_batch_end)
    module.PretrainModule.log = lambda self, *a, **k: None  # type: ignore[method-assign]
    module.ThroughputMonitor.on_train_batch_end = lambda self, *a, **k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        module.PretrainModule.log, module.ThroughputMonitor.on_train_batch_end = saved  # type: ignore[method-assign]


def overhead_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Median wall and CPU time per step of each variant at a minimal step (``PROBE``)."""
    method, backbone, batch, size = PROBE
    warmup, steps, repeats = QUICK_PROBE_PLAN if args.quick else PROBE_PLAN
    probe_args = argparse.Namespace(**{**vars(args), "batch_size": batch, "size": size})
    wall: dict[str, list[float]] = {v[0]: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v[0]: [] for v in VARIANTS}
    load_start = results_file.load_avg()
    for rep in range(repeats):
        for name, _, extra, patch in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
            config = make_config(
                method, backbone, probe_args, warmup + steps, "overhead_probe", list(extra)
            )
            with _no_self_log(patch):
                run = bare_run(config) if name == "bare" else engine_run(config)
            wall[name] += run.steps(warmup)
            cpu[name] += run.steps(warmup, cpu=True)
    rows = []
    for name, text, _, _ in VARIANTS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rows.append({"variant": name, "description": text, "wall_ms": w * 1000, "cpu_ms": c * 1000})
    base = rows[0]
    for r in rows:
        r["overhead_wall_ms"] = r["wall_ms"] - base["wall_ms"]
        r["overhead_cpu_ms"] = r["cpu_ms"] - base["cpu_ms"]
    return {
        "method": method,
        "backbone": backbone,
        "batch": batch,
        "size": size,
        "warmup": warmup,
        "steps": steps,
        "repeats": repeats,
        "rows": rows,
        "load_start": load_start,
        "load_end": results_file.load_avg(),
    }


# --------------------------------------------------------------------------------------------
# results


def render(
    rows: list[dict[str, Any]], probe: dict[str, Any] | None, args: argparse.Namespace, cmd: str
) -> list[str]:
    lines = [
        *results_file.heading(TUNED_SECTION if args.tune_malloc else SECTION, cmd),
    ]
    if args.tune_malloc:
        lines += [
            "- glibc malloc tuned in this process (`mallopt`: mmap threshold 32 MiB, trim "
            "threshold 1 GiB) before anything ran, so that freed memory is kept instead of "
            "being returned to the OS and faulted back in every step.",
        ]
    lines += [
        f"- Machine: {results_file.machine_line()}; {args.threads} torch thread(s) in both "
        "loops; the load average (1 min) at the start and end of each row is listed (other "
        "jobs may share the machine).",
        "- Recipes `configs/<method>_tiny.yaml` with data, backbone and length replaced: "
        f"{args.size} px, batch {args.batch_size}, each recipe's synthetic data "
        f"({args.data_n} images, shards, `num_workers=0`), float32 on the CPU. Views: "
        "global x size + local x size.",
        "- engine: `run_pretraining` (Lightning; CSV + TensorBoard logging every "
        "`log_every_n_steps` of the recipe, progress bar on, export off, no periodic "
        "checkpoint inside the window); bare: the same data loader, normaliser, augmentation, "
        "method, optimiser, schedules and clipping in a plain torch loop.",
        "- img/s: batch / median wall-clock step time over the measured steps (warm-up steps of "
        "every run dropped; runs alternate bare, engine, engine, bare); engine/bare: the ratio "
        "of img/s (target >= 0.9); CPU: the same ratio from process CPU time per step, which "
        "other jobs on the machine disturb less; overhead: engine - bare median step time; "
        "page faults: median minor page faults per step (`getrusage`), a sign of glibc's "
        "malloc returning memory to the OS and faulting it back (see `--tune-malloc`).",
        "",
        "| backbone | method | views | steps x runs | bare img/s | engine img/s | "
        "engine/bare | CPU | overhead (ms/step) | page faults/step bare, engine | setup (s) | "
        "final ckpt (s) | load (1 min) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['method']} | {r['views']} | {r['steps']}x{r['repeats']} | "
            f"{r['bare_images_per_s']:,.0f} | {r['engine_images_per_s']:,.0f} | "
            f"**{r['ratio']:.2f}** | {r['ratio_cpu']:.2f} | {r['overhead_ms']:+.1f} | "
            f"{r['bare_page_faults_per_step']:,.0f}, {r['engine_page_faults_per_step']:,.0f} | "
            f"{r['engine_setup_s']:.1f} | {r['engine_teardown_s']:.1f} | "
            f"{r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    if rows:
        low = [r for r in rows if r["ratio"] < 0.9]
        worst = min(rows, key=lambda r: r["ratio"])
        lines += [
            "",
            f"- engine/bare: median {statistics.median(r['ratio'] for r in rows):.2f}, lowest "
            f"{worst['ratio']:.2f} ({worst['method']}, {worst['backbone']}); below 0.9: "
            + (", ".join(f"{r['method']}/{r['backbone']}" for r in low) or "none")
            + f"; CPU-time ratios: median {statistics.median(r['ratio_cpu'] for r in rows):.2f}, "
            f"lowest {min(r['ratio_cpu'] for r in rows):.2f}.",
            "- setup: `run_pretraining` call to the first step (checks, dataset card, model, "
            "Trainer); final ckpt: last step to the return: `last.ckpt` is written twice "
            "there (by FinalCheckpoint, then as `last-v1.ckpt` by ModelCheckpoint's "
            "`save_last`, since no periodic checkpoint fell inside these short runs).",
        ]
    if probe:
        lines += [
            "",
            f"Fixed cost per step: {probe['method']} on `{probe['backbone']}`, batch "
            f"{probe['batch']} at {probe['size']} px (a step of a few ms, so that the engine's "
            f"own cost stands out); median of {probe['steps']} steps x {probe['repeats']} "
            f"run(s) per variant; load (1 min) {probe['load_start'][0]:.1f} -> "
            f"{probe['load_end'][0]:.1f}.",
            "",
            "| variant | wall (ms/step) | CPU (ms/step) | over bare, wall | over bare, CPU |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in probe["rows"]:
            lines.append(
                f"| {r['description']} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | "
                f"{r['overhead_wall_ms']:+.1f} | {r['overhead_cpu_ms']:+.1f} |"
            )
    lines.append("")
    return lines


def figures_of(
    rows: list[dict[str, Any]],
    probe: dict[str, Any] | None,
    cmd_of: Any,
    probe_cmd: str,
    tuned: bool = False,
) -> list[dict[str, Any]]:
    section, prefix = (TUNED_SECTION, "engine_malloc_tuned") if tuned else (SECTION, "engine")
    out = []
    for r in rows:
        key = f"{prefix}/{r['backbone']}/{r['method']}"
        cmd = cmd_of(r)
        notes = {k: v for k, v in r.items() if k not in ("load_start", "load_end")}
        notes["load_avg_at_start"] = r["load_start"]
        for name, value, unit in (
            ("bare_images_per_s", r["bare_images_per_s"], "images/s"),
            ("engine_images_per_s", r["engine_images_per_s"], "images/s"),
            ("engine_over_bare", r["ratio"], "ratio"),
            ("engine_over_bare_cpu_time", r["ratio_cpu"], "ratio"),
        ):
            out.append(
                results_file.figure(section, f"{key}/{name}", round(value, 4), unit, cmd, **notes)
            )
    if probe:
        notes = {k: v for k, v in probe.items() if k not in ("rows", "load_start", "load_end")}
        for r in probe["rows"][1:]:
            out.append(
                results_file.figure(
                    section,
                    f"{prefix}/overhead_per_step/{r['variant']}",
                    round(r["overhead_cpu_ms"], 2),
                    "ms/step (process CPU time over the bare loop)",
                    probe_cmd,
                    description=r["description"],
                    wall_ms_over_bare=round(r["overhead_wall_ms"], 2),
                    load_avg_at_start=probe["load_start"],
                    **notes,
                )
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="on the test backbones")
    parser.add_argument(
        "--slow-methods", default=",".join(SLOW_METHODS), help="on the other backbones"
    )
    parser.add_argument(
        "--backbones", default=None, help=f"default {','.join(BACKBONES)} (--quick: vit_test)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both loops")
    parser.add_argument("--data-n", type=int, default=1024, help="synthetic images per dataset")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped per run")
    parser.add_argument("--steps", type=int, default=None, help="steps measured per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each loop")
    parser.add_argument("--quick", action="store_true", help="fewer steps, vit_test only")
    parser.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the engine's fixed cost per step and its parts",
    )
    parser.add_argument("--probe-only", action="store_true", help="only the overhead probe")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in glibc's allocator (mallopt) for this process; own section",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="METHOD:BACKBONE[:bare]: cProfile the engine (or the bare loop), nothing written",
    )
    results_file.add_no_write(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_list)
    if args.tune_malloc:
        tune_malloc()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.profile:
        method, backbone, *mode = args.profile.split(":")
        print(profile(method, backbone, args, *(mode or ["engine"])))
        return []
    from eofm.methods.registry import import_all

    known = import_all()
    backbones = args.backbones or ("vit_test" if args.quick else ",".join(BACKBONES))
    pairs = [
        (m.strip(), b.strip())
        for b in backbones.split(",")
        if b.strip()
        for m in (args.methods if b.strip() in FAST_BACKBONES else args.slow_methods).split(",")
        if m.strip()
    ]
    unknown = sorted({m for m, _ in pairs if m not in known})
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(known)}")
    if args.probe_only:
        pairs, args.probe = [], True
    rows: list[dict[str, Any]] = []
    for method, backbone in pairs:
        t0 = time.perf_counter()
        try:
            row = measure(method, backbone, args)
        except Exception as exc:  # e.g. a method that needs a ViT, on a ResNet
            print(f"[engine] {method}/{backbone}: skipped ({type(exc).__name__}: {exc})")
            continue
        rows.append(row)
        print(
            f"[engine] {backbone:<18} {method:<8} bare {row['bare_images_per_s']:7.0f} img/s  "
            f"engine {row['engine_images_per_s']:7.0f} img/s  ratio {row['ratio']:.3f} "
            f"(CPU time {row['ratio_cpu']:.3f}; {time.perf_counter() - t0:.0f} s, "
            f"load {results_file.load_str()})",
            flush=True,
        )
    probe = None
    if args.probe:
        t0 = time.perf_counter()
        probe = overhead_probe(args)
        for r in probe["rows"]:
            print(
                f"[engine] probe {r['variant']:<18} {r['wall_ms']:6.1f} ms/step wall "
                f"({r['overhead_wall_ms']:+5.1f}), {r['cpu_ms']:6.1f} ms/step CPU "
                f"({r['overhead_cpu_ms']:+5.1f})",
                flush=True,
            )
        print(f"[engine] probe: {time.perf_counter() - t0:.0f} s", flush=True)
    cmd = results_file.command(SCRIPT, argv_list)

    def cmd_of(r: dict[str, Any]) -> str:
        one = [a for a in argv_list if a not in ("--probe",)]
        slow = r["backbone"] not in FAST_BACKBONES
        flags = (
            ("--slow-methods" if slow else "--methods", r["method"]),
            ("--backbones", r["backbone"]),
        )
        for flag, value in flags:
            if flag in one:
                one[one.index(flag) + 1] = value
            else:
                one += [flag, value]
        return results_file.command(SCRIPT, [*one, "--no-probe"])

    probe_cmd = results_file.command(
        SCRIPT, [*(a for a in argv_list if a not in ("--no-probe", "--probe-only")), "--probe-only"]
    )
    figures = figures_of(rows, probe, cmd_of, probe_cmd, args.tune_malloc)
    if not args.no_write and (rows or probe):
        section = TUNED_SECTION if args.tune_malloc else SECTION
        results_file.publish(section, render(rows, probe, args, cmd), figures)
    return figures


if __name__ == "__main__":
    main()
