"""The ``eofm curate`` pipeline as a function: embed a dataset, cluster, keep a balanced subset.

:func:`run_curate` does what ``eofm curate`` does (the CLI parses its arguments into
:class:`CurateOptions` and calls it); the demo calls it directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eofm.errors import ConfigError

__all__ = ["CurateOptions", "run_curate"]


@dataclass
class CurateOptions:
    """The options of ``eofm curate`` (same names and defaults as its flags)."""

    model: str
    data: str
    target: str
    out: str
    backbone: str | None = None
    levels: int | None = None
    k: str | None = None
    diversity: float | None = None
    dedup: float | None = None
    subsample: int | None = None
    niter: int = 20
    resamples: int = 10
    resample_strategy: Literal["closest", "random"] = "closest"
    bands: str | None = None
    band_names: str | None = None
    sensor: str | None = None
    split: str | None = None
    batch_size: int = 256
    workers: int = 0
    device: str | None = None
    threads: int | None = None
    stats_samples: int = 2000
    no_l2: bool = False
    restart: bool = False
    grid_clusters: int = 8
    grid_per_cluster: int = 6
    seed: int = 0
    json: bool = False
    quiet: bool = False
    distributed: bool = False

    @classmethod
    def from_namespace(cls, ns: Any) -> CurateOptions:
        """Options from parsed ``eofm curate`` arguments (unknown attributes ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _target(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--target {text!r}: give a count (5000) or a fraction (0.3)") from None
    if value <= 0:
        raise ConfigError(f"--target must be positive, got {text}")
    if value < 1 or "." in text:
        if value > 1:
            raise ConfigError(f"--target {text}: a fraction must lie in (0, 1]")
        return value
    return int(value)


def _model_bands(spec: str) -> list[str] | None:
    """Bands of a model file's card (so the data is read with exactly those bands)."""
    from eofm.models.export import card_path, read_card

    path = Path(spec)
    if spec.startswith(("random:", "rgb:")) or path.suffix.lower() != ".safetensors":
        return None
    if not card_path(path).exists():
        return None
    return [str(b) for b in read_card(path)["bands"]]


def _join_group(opts: CurateOptions) -> int:
    """With ``--distributed``: join the process group torchrun set up (``WORLD_SIZE``,
    ``MASTER_ADDR``...; gloo on the CPU, nccl on CUDA); this process's rank (0 without one)."""
    import os

    import torch.distributed as dist

    if not opts.distributed:
        return 0
    if "WORLD_SIZE" not in os.environ:
        return 0  # one rank: the same algorithm, no group needed
    if not dist.is_initialized():
        cuda = (opts.device or "cpu").startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
    return int(dist.get_rank())


class _rank_zero_first:
    """Rank 0 runs the block first (generating data, writing the card), then the others."""

    def __init__(self, active: bool) -> None:
        import torch.distributed as dist

        self.on = active and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0

    def __enter__(self) -> None:
        import torch.distributed as dist

        if self.on and self.rank != 0:
            dist.barrier()

    def __exit__(self, *exc: object) -> None:
        import torch.distributed as dist

        if self.on and self.rank == 0:
            dist.barrier()


def run_curate(opts: CurateOptions) -> int:
    """Run ``eofm curate`` with ``opts``; prints its summary, returns 0."""
    import numpy as np
    import torch

    from eofm.curation.embed import BandStatistics, extract_embeddings, load_embeddings
    from eofm.curation.pipeline import CurationConfig, curate_embeddings
    from eofm.curation.report import write_manifest, write_report
    from eofm.data.stats import Normalizer
    from eofm.devices import resolve_device
    from eofm.evaluation.data import dataset_labels
    from eofm.evaluation.models import resolve_model
    from eofm.training.config import DataConfig
    from eofm.training.data import build_dataset, build_normalizer

    if opts.threads:
        torch.set_num_threads(opts.threads)
    resolve_device(opts.device)  # before any work
    target = _target(opts.target)
    clusters = _ints(opts.k)
    if clusters is not None and opts.levels is not None and len(clusters) != opts.levels:
        raise ConfigError(f"--k {opts.k} lists {len(clusters)} levels but --levels {opts.levels}")
    if opts.diversity is not None and not 0.0 <= opts.diversity <= 1.0:
        raise ConfigError(f"--diversity must lie in [0, 1], got {opts.diversity}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    bands = [b.strip() for b in opts.bands.split(",") if b.strip()] if opts.bands else None
    bands = _model_bands(opts.model) or bands
    data_cfg = DataConfig(
        path=opts.data,
        bands=bands,
        band_names=([b.strip() for b in opts.band_names.split(",")] if opts.band_names else None),
        sensor=opts.sensor,
        split=opts.split,
        normalize="zscore",
        stats_max_samples=opts.stats_samples,
    )
    rank = _join_group(opts)
    with _rank_zero_first(opts.distributed):
        info = build_dataset(data_cfg, out, seed=opts.seed)
    if info.num_samples is None or isinstance(info.dataset, torch.utils.data.IterableDataset):
        raise ConfigError("eofm curate needs a map-style dataset (not a shard stream)")
    encoder: torch.nn.Module
    normalizer: Normalizer | None = None
    resize: tuple[int, int] | None = None
    if opts.model == "bandstats":
        encoder, name, arch = BandStatistics(), "band statistics", "mean+std per band"
    else:
        model = resolve_model(
            opts.model,
            bands=list(info.bands),
            img_size=info.image_size,
            backbone=opts.backbone,
            sensor=info.sensor,
            seed=opts.seed,
        )
        backbone = model.backbone
        encoder, name, arch = backbone, model.name, backbone.arch
        norm_card = model.normalization
        if norm_card and "mean" in norm_card and "std" in norm_card:
            mean = [float(norm_card["mean"][b]) for b in backbone.bands]
            std = [float(norm_card["std"][b]) for b in backbone.bands]
            normalizer = Normalizer(mean, std, bands=backbone.bands)
        size = (int(backbone.img_size[0]), int(backbone.img_size[1]))
        if backbone.patch_size is not None and size != info.image_size:
            resize = size
    norm_note = "model card (z-score)"
    if normalizer is None:
        with _rank_zero_first(opts.distributed):
            normalizer, _ = build_normalizer(data_cfg, info, out)
        norm_note = "dataset card (z-score)"
    device = resolve_device(opts.device)
    encoder.to(device)
    n = int(info.num_samples)
    if rank == 0:
        print(f"embedding {n:,} samples with {name} ({arch}) on {device}", flush=True)
    emb_path = extract_embeddings(
        encoder,
        info.dataset,
        out / "embeddings.npy",
        batch_size=opts.batch_size,
        normalizer=normalizer,
        device=device,
        image_size=resize,
        l2_normalize=not opts.no_l2,
        num_workers=opts.workers,
        progress=not opts.quiet,
        overwrite=opts.restart,
    )
    embed_s = time.perf_counter() - started
    x = load_embeddings(emb_path)
    labels = dataset_labels(info.dataset)
    class_names = getattr(info.dataset, "class_names", None)
    config = CurationConfig(
        target=target,
        levels=opts.levels or (len(clusters) if clusters else 2),
        clusters=clusters,
        diversity=0.5 if opts.diversity is None else float(opts.diversity),
        dedup=opts.dedup,
        subsample=opts.subsample,
        niter=opts.niter,
        n_resamples=opts.resamples,
        resample_strategy=opts.resample_strategy,
        seed=opts.seed,
        distributed=opts.distributed,
    )
    result = curate_embeddings(
        x,
        config,
        labels=labels,
        num_classes=len(class_names) if class_names else None,
        progress=not opts.quiet and rank == 0,
        cache=None if opts.restart or opts.distributed else "auto",
    )
    if opts.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        if rank != 0:
            return 0  # rank 0 writes the results (every rank holds the same subset)
    result.timings = {"embed_s": embed_s, **result.timings}
    result.clusters.save(out / "clusters.npz")
    np.save(out / "subset_indices.npy", result.indices)
    settings: dict[str, Any] = {
        "model": opts.model,
        "data": opts.data,
        "bands": ",".join(info.bands),
        "normalisation": norm_note,
        "embedding": f"pooled, {x.shape[1]}-d" + ("" if opts.no_l2 else ", L2-normalised"),
        "target": opts.target,
        "clusters": ",".join(str(k) for k in result.clusters.clusters),
        "diversity": config.diversity,
        "near-duplicate threshold": opts.dedup if opts.dedup is not None else "off",
        "k-means": f"{config.niter} iterations, {config.n_resamples} resampling steps "
        f"({config.resample_strategy})",
        "subsample": opts.subsample or "all points",
        "seed": opts.seed,
    }
    write_manifest(
        out,
        result,
        info.dataset,
        labels=labels,
        class_names=class_names,
        extra={"settings": settings, "config": config.to_dict()},
    )
    report = write_report(
        out,
        result,
        info.dataset,
        class_names=class_names,
        title=f"Curation of {opts.data}",
        settings=settings,
        grid_clusters=opts.grid_clusters,
        grid_per_cluster=opts.grid_per_cluster,
    )
    st = result.stats
    print(
        f"kept {result.size:,} of {n:,} samples; level-1 cluster entropy "
        f"{st['level1']['entropy_before']:.3f} -> {st['level1']['entropy_after']:.3f} nats"
    )
    if "classes" in st:
        cs = st["classes"]
        print(
            f"class entropy {cs['entropy_before']:.3f} -> {cs['entropy_after']:.3f} nats "
            "(labels not used for curation)"
        )
    print(f"manifest:  {out / 'manifest.csv'}")
    print(f"report:    {report}")
    if opts.json:
        print(json.dumps(st, default=str))
    return 0
