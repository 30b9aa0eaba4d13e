"""GPU pretraining throughput and model FLOPs utilisation (MFU) through the engine: ViT-B/16
and ViT-L/16 with MAE and DINO at 224 px in bf16 with fused attention and compiled blocks, and
the 1.3B-parameter ``vit_h12x4`` with MAE under FSDP with activation checkpointing. Without a
GPU it writes a "skipped" line.

    python benchmarks/bench_gpu.py                               # every case
    python benchmarks/bench_gpu.py --cases vit_b_mae,vit_b_dino --steps 30
    python benchmarks/bench_gpu.py --peak-tflops 989             # an unlisted GPU
    python benchmarks/bench_gpu.py --no-compile                  # eager blocks

Each case is ``run_pretraining`` (``configs/<method>_tiny.yaml`` with the method's standard
sizes: MAE mask 0.75, decoder 512 wide x 8 blocks, 16 heads; DINO head 2048/256/65536, 2 global
views of 224 px + 8 local views of 96 px) with ``trainer.accelerator=gpu``, ``devices=1``,
``precision=bf16-mixed`` and ``model.compile=true`` (every block compiled with inductor; the
compilation falls inside the warm-up steps), plus ``strategy=fsdp`` and
``model.activation_checkpointing=true`` for ``vit_h12x4``. Data: 4096 synthetic 224 px RGB
images (Sentinel-2 B04/B03/B02 of 128 ``generate_landcover`` scenes, repeated; uint16 shards
written once to ``benchmarks/_work/gpu``, 1.2 GB), 8 DataLoader workers, pinned memory. Each
case's run folder (checkpoint) is deleted after it unless ``--keep-runs``. Attention is timm's
fused ``F.scaled_dot_product_attention`` (flash attention in bf16); the table counts the
attention layers that use it.

- images/s: batch x measured steps / the time between the ends of step ``warmup`` and step
  ``warmup + steps`` (``torch.cuda.synchronize()`` at both ends), data loading, augmentation
  on the GPU, logging and the progress bar included.
- MFU: model FLOPs per step / step time / the GPU's peak dense bf16 FLOPs. Model FLOPs are
  counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward pass of
  the same method, batch and views (outside the engine, bf16 autocast, no activation
  checkpointing: recomputation is not counted, as MFU requires), counted at a batch of at most
  ``--count-batch`` and scaled linearly to the batch. FlopCounterMode counts matrix
  multiplications, convolutions and attention (2 FLOPs per multiply-add); element-wise work
  is left out. Peaks (dense bf16, no sparsity): H100 SXM / H200 / GH200 989 TFLOP/s, H100 NVL
  835, H100 PCIe 756, A100 312, L40S 362, L40 181, L4 121; ``--peak-tflops`` for others.

Writes the ``## GPU`` section of results.md and its figures in results.json.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import results_file

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "gpu"
SECTION = "## GPU"
SCRIPT = "bench_gpu.py"

MAE_OPTIONS = [
    "method.options.mask_ratio=0.75",
    "method.options.decoder_dim=512",
    "method.options.decoder_depth=8",
    "method.options.decoder_heads=16",
    "method.options.norm_pix_loss=true",
    "method.views={global_views: 1, global_size: 224, crop_scale: [0.2, 1.0]}",
]
DINO_OPTIONS = [
    "method.options.hidden_dim=2048",
    "method.options.bottleneck_dim=256",
    "method.options.output_dim=65536",
    "method.options.momentum=0.996",
    "method.views={global_views: 2, local_views: 8, global_size: 224, local_size: 96, "
    "crop_scale: [0.4, 1.0], local_crop_scale: [0.05, 0.4]}",
]
FSDP = [
    "trainer.strategy=fsdp",
    "model.activation_checkpointing=true",
]
COMPILE = "model.compile=true"
#: name -> (method, backbone, batch per GPU, extra overrides, (warm-up, steps))
CASES: dict[str, tuple[str, str, int, list[str], tuple[int, int]]] = {
    "vit_b_mae": ("mae", "vit_base_patch16", 256, MAE_OPTIONS, (5, 20)),
    "vit_b_dino": ("dino", "vit_base_patch16", 64, DINO_OPTIONS, (5, 20)),
    "vit_l_mae": ("mae", "vit_large_patch16", 128, MAE_OPTIONS, (5, 20)),
    "vit_l_dino": ("dino", "vit_large_patch16", 32, DINO_OPTIONS, (5, 20)),
    "vit_h12x4_mae_fsdp": ("mae", "vit_h12x4", 64, [*MAE_OPTIONS, *FSDP], (3, 10)),
}
#: Peak dense bf16 TFLOP/s by a piece of the device name (first match wins).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


# --------------------------------------------------------------------------------------------
# data and configs


def prepare_data(n: int, size: int = 224, base: int = 128) -> Path:
    """``n`` RGB images of ``size`` px (``base`` synthetic scenes, repeated), as shards, with
    their dataset card beside them (so that no run recomputes it)."""
    import numpy as np

    from eofm.data.shards import ShardWriter
    from eofm.data.synthetic import generate_landcover
    from eofm.data.synthetic.scenes import S2_BANDS
    from eofm.training.config import DataConfig
    from eofm.training.data import build_dataset, build_normalizer

    out = WORK / f"rgb_n{n}_s{size}"
    if (out / "index.json").is_file() and (out / "eofm_card.json").is_file():
        return out
    scenes = generate_landcover(min(base, n), size, seed=0, sensors=("s2",))
    assert scenes.s2 is not None
    rgb = [list(S2_BANDS).index(b) for b in ("B04", "B03", "B02")]
    images = np.ascontiguousarray(scenes.s2[:, rgb])
    with ShardWriter(
        out, ("B04", "B03", "B02"), sensor="sentinel2_l1c", class_names=scenes.class_names
    ) as writer:
        for lo in range(0, n, len(images)):
            k = min(len(images), n - lo)
            writer.add_batch(images[:k], labels=scenes.labels[:k])
    cfg = DataConfig(path=str(out))
    build_normalizer(cfg, build_dataset(cfg, out), out)  # writes out/eofm_card.json
    return out


def make_config(case: str, args: argparse.Namespace) -> tuple[Any, int, int]:
    from eofm.training import load_config

    method, backbone, batch, extra, (warmup, steps) = CASES[case]
    if args.cpu_smoke:
        batch, warmup, steps = 2, 2, 2
    batch = args.batch_size or batch
    warmup = max(1, args.warmup if args.warmup is not None else warmup)  # t0 at its end
    steps = max(1, args.steps if args.steps is not None else steps)
    data = prepare_data(args.images if not args.cpu_smoke else 16)
    overrides = [
        f"data.path={data}",
        "data.bands=null",
        f"data.batch_size={batch}",
        f"data.num_workers={args.workers}",
        f"data.persistent_workers={'true' if args.workers else 'false'}",
        "data.pin_memory=true",
        f"model.backbone={backbone}",
        "model.img_size=224",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=null",
        f"trainer.max_steps={warmup + steps}",
        "trainer.max_time_s=null",
        "trainer.num_threads=null",
        "trainer.checkpoint_every_n_steps=1000000",
        "trainer.log_every_n_steps=10",
        f"output.dir={WORK / 'runs'}",
        f"output.name={case}",
        "output.overwrite=true",
        "output.export=false",
        *extra,
        *([] if args.no_compile else [COMPILE]),
    ]
    if args.cpu_smoke:  # the same code path on the CPU, with a tiny backbone
        overrides += [
            "model.backbone=vit_test",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.pin_memory=false",
            "trainer.accelerator=cpu",  # the FSDP case keeps FSDP2 (one gloo process)
            "trainer.num_threads=1",
        ]
    return load_config(REPO / "configs" / f"{method}_tiny.yaml", overrides), warmup, steps


# --------------------------------------------------------------------------------------------
# measuring


def count_flops(config: Any, count_batch: int, device: Any) -> tuple[float, int]:
    """Model FLOPs of one forward + backward pass at the config's batch (counted at a batch
    of at most ``count_batch`` and scaled), and the batch they were counted at."""
    import bench_engine
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = copy.deepcopy(config)
    batch = int(cfg.data.batch_size)
    small = min(batch, count_batch)
    cfg.data.batch_size = small
    cfg.data.num_workers = 0
    cfg.data.persistent_workers = False
    cfg.data.pin_memory = False
    cfg.model.activation_checkpointing = False
    parts = bench_engine.build_bare(cfg)
    method = parts["method"].to(device).train()
    normalizer = parts["normalizer"]
    if normalizer is not None:
        normalizer = normalizer.to(device)
    sample = next(iter(parts["loader"]))
    sample = {k: v.to(device) if torch.is_tensor(v) else v for k, v in sample.items()}
    image = sample["image"]
    sample["image"] = normalizer(image) if normalizer is not None else image.float()
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    views = parts["augment"](sample["image"].float(), method.view_spec, generator=gen)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = method.forward_loss(views, sample)["loss"]
        loss.backward()
    flops = float(counter.get_total_flops())
    del parts, method, normalizer, sample, views, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return flops * batch / small, small


def _window_timer(warmup: int, steps: int, marks: dict[str, float], cuda: bool) -> Any:
    """A callback timing steps ``warmup`` to ``warmup + steps`` (``marks`` t0, t1), which also
    counts the method's compiled blocks and fused attention layers (``marks``)."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from eofm.training.compilation import compiled_blocks

    class WindowTimer(Callback):
        def __init__(self) -> None:
            self.n = 0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            attention = [m for m in pl_module.modules() if hasattr(m, "fused_attn")]
            marks["attention_layers"] = len(attention)
            marks["fused_attention_layers"] = sum(bool(m.fused_attn) for m in attention)
            marks["compiled_blocks"] = compiled_blocks(pl_module)

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            self.n += 1
            if self.n in (warmup, warmup + steps):
                if cuda:
                    torch.cuda.synchronize()
                marks["t0" if self.n == warmup else "t1"] = time.perf_counter()

    return WindowTimer()


def measure(case: str, args: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    import bench_engine
    import torch
    from torch._dynamo.utils import counters

    from eofm.models import get_backbone_spec
    from eofm.training import run_pretraining

    method, backbone, _, _, _ = CASES[case]
    config, warmup, steps = make_config(case, args)
    batch = int(config.data.batch_size)
    row: dict[str, Any] = {
        "case": case,
        "method": method,
        "backbone": backbone,
        "params": get_backbone_spec(backbone).num_params(3),
        "batch": batch,
        "views": bench_engine.views_of(config),
        "strategy": config.trainer.strategy,
        "activation_checkpointing": config.model.activation_checkpointing,
        "compile": config.model.compile,
        "warmup": warmup,
        "steps": steps,
    }
    cuda = not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    flops, counted_at = count_flops(config, args.count_batch, device)
    row.update(flops_per_step=flops, flops_counted_at_batch=counted_at)
    marks: dict[str, float] = {}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    graphs = int(counters["stats"]["unique_graphs"])
    t0 = time.perf_counter()
    with bench_engine.quiet():
        run_pretraining(config, callbacks=[_window_timer(warmup, steps, marks, cuda)])
    row["wall_s"] = time.perf_counter() - t0
    row["compiled_graphs"] = int(counters["stats"]["unique_graphs"]) - graphs
    for key in ("attention_layers", "fused_attention_layers", "compiled_blocks"):
        row[key] = int(marks.get(key, 0))
    seconds = marks["t1"] - marks["t0"]
    row["step_s"] = seconds / steps
    row["images_per_s"] = batch * steps / seconds
    row["achieved_tflops"] = flops / row["step_s"] / 1e12
    row["mfu"] = row["achieved_tflops"] / peak if peak else None
    row["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    if not args.keep_runs:  # last.ckpt of a 1.3B model with its optimiser is ~16 GB
        shutil.rmtree(WORK / "runs" / case, ignore_errors=True)
    return row


# --------------------------------------------------------------------------------------------
# results


def render(
    rows: list[dict[str, Any]], args: argparse.Namespace, cmd: str, gpu: str | None, peak: Any
) -> list[str]:
    lines = results_file.heading(SECTION, cmd)
    if gpu is None:
        lines += [
            f"- skipped: no GPU on this machine (`torch.cuda.is_available()` is False; "
            f"{results_file.machine_line()}).",
            "- Cases (run them on a GPU machine): "
            + "; ".join(
                f"`{name}` {m} {b}, batch {bs}"
                + (" (FSDP, activation checkpointing)" if FSDP[0] in x else "")
                for name, (m, b, bs, x, _) in CASES.items()
            )
            + "; bf16-mixed, fused attention, "
            + ("eager blocks." if args.no_compile else "compiled blocks (`model.compile`)."),
            "",
        ]
        return lines
    peak_text = f"{peak:g} TFLOP/s dense bf16" if peak else "unknown peak (no MFU)"
    lines += [
        f"- Machine: {results_file.machine_line()}; GPU peak {peak_text}.",
        "- `run_pretraining`, bf16-mixed, 1 GPU, 224 px synthetic RGB shards, "
        f"{args.workers} DataLoader workers; images/s over the measured steps (after the "
        "warm-up, which includes compiling; `torch.cuda.synchronize()` at both ends); MFU = "
        "FlopCounterMode model FLOPs of forward + backward per step / step time / peak "
        "(recomputation not counted).",
        "- fused attn: attention layers calling `F.scaled_dot_product_attention` / all; compiled: "
        "blocks compiled in place (`model.compile`) and the graphs inductor built for them.",
        "",
        "| case | method | backbone | params (M) | batch | views | strategy | fused attn | "
        "compiled (blocks, graphs) | img/s | TFLOP/s | MFU | max GPU memory (GiB) |",
        "|---|---|---|---:|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['case']} | {r['method']} | {r['backbone']} | | | | | | | "
                f"failed: {r['error']} | | | |"
            )
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        strategy = r["strategy"] + (" + act. ckpt" if r["activation_checkpointing"] else "")
        compiled = f"{r['compiled_blocks']}, {r['compiled_graphs']}" if r["compile"] else "no"
        lines.append(
            f"| {r['case']} | {r['method']} | {r['backbone']} | {r['params'] / 1e6:,.0f} | "
            f"{r['batch']} | {r['views']} | {strategy} | "
            f"{r['fused_attention_layers']}/{r['attention_layers']} | {compiled} | "
            f"{r['images_per_s']:,.0f} | "
            f"{r['achieved_tflops']:.0f} | {mfu} | {r['max_memory_allocated_gib']:.1f} |"
        )
    lines.append("")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=", ".join(CASES))
    parser.add_argument("--batch-size", type=int, default=None, help="override every case")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--images", type=int, default=4096, help="synthetic 224 px RGB images (uint16 shards)"
    )
    parser.add_argument("--keep-runs", action="store_true", help="keep checkpoints of each case")
    parser.add_argument("--count-batch", type=int, default=16, help="batch of the FLOP count")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak, dense bf16")
    parser.add_argument("--quick", action="store_true", help="5 warm-up + 5 measured steps")
    parser.add_argument(
        "--no-compile", action="store_true", help="eager blocks (default: model.compile=true)"
    )
    results_file.add_no_write(parser)
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="the GPU code path on the CPU (vit_test, batch 2, FSDP on 1 process); writes nothing",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv_list)
    import torch

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if args.quick:
        args.warmup = 5 if args.warmup is None else args.warmup
        args.steps = 5 if args.steps is None else args.steps
    cmd = results_file.command(SCRIPT, argv_list)
    figures: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if args.cpu_smoke:
        gpu, args.no_write = "CPU smoke test", True
    peak = args.peak_tflops or (peak_tflops(gpu) if gpu else None)
    if gpu is None:
        print("[gpu] skipped: no GPU on this machine")
        for case in cases:
            for name, unit in (("images_per_s", "images/s"), ("mfu", "fraction")):
                figures.append(
                    results_file.figure(
                        SECTION,
                        f"gpu/{case}/{name}",
                        None,
                        unit,
                        results_file.command(SCRIPT, ["--cases", case]),
                        status="skipped: no GPU on this machine",
                    )
                )
    else:
        for case in cases:
            try:
                row = measure(case, args, peak)
            except Exception as exc:  # an OOM or a strategy problem must not hide the others
                method, backbone = CASES[case][:2]
                row = {"case": case, "method": method, "backbone": backbone}
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if args.cpu_smoke:
                    raise
            rows.append(row)
            print(f"[gpu] {case}: {row.get('images_per_s', row.get('error'))}", flush=True)
            one = results_file.command(SCRIPT, ["--cases", case])
            notes = {k: v for k, v in row.items() if k not in ("images_per_s", "mfu")}
            notes["peak_tflops"] = peak
            figures.append(
                results_file.figure(
                    SECTION,
                    f"gpu/{case}/images_per_s",
                    row.get("images_per_s"),
                    "images/s",
                    one,
                    **notes,
                )
            )
            figures.append(
                results_file.figure(
                    SECTION, f"gpu/{case}/mfu", row.get("mfu"), "fraction", one, **notes
                )
            )
    results_file.publish(
        SECTION, render(rows, args, cmd, gpu, peak), figures, dry_run=args.no_write
    )
    return figures


if __name__ == "__main__":
    main()
