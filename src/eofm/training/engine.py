"""``run_pretraining(config)``: build everything from a recipe, train with Lightning, export.

The checks made before a run starts are in :mod:`eofm.training.checks` (re-exported here).

Run folder layout (``output.dir/output.name``)::

    config.yaml                 the resolved recipe
    eofm_card.json              dataset card used for normalisation (unless the data has one)
    synthetic/                  generated data (``data.path: synthetic...``)
    checkpoints/step=0000500.ckpt, last.ckpt, interrupted.ckpt
    logs/version_N/metrics.csv  CSV logs (and TensorBoard events when tensorboard is installed)
    model.safetensors, model.json   the exported encoder (``eofm.models.load_model``)
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import signal
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn
from torch.distributed import DistError

from eofm.augment.multiview import MultiViewAugment
from eofm.data.sensors import find_sensor
from eofm.errors import ConfigError, EofmError, NonFiniteLossError
from eofm.methods.base import SSLMethod, create_method
from eofm.progress import use_plain
from eofm.training.checks import (
    ACCELERATORS,
    FSDP_PRECISIONS,
    PRECISIONS,
    STRATEGIES,
    _check_method,
    _last_good_checkpoint,
    _view_spec,
    check_resume_checkpoint,
    resolve_resume,
    run_dir_of,
    validate_config,
)
from eofm.training.cluster import check_cluster, join_error
from eofm.training.compilation import CompileOptions, compile_blocks
from eofm.training.config import PretrainConfig, config_to_dict
from eofm.training.data import (
    DatasetInfo,
    PretrainDataModule,
    build_dataset,
    build_normalizer,
)
from eofm.training.module import (
    AtomicCheckpointIO,
    FinalCheckpoint,
    InterruptCheckpoint,
    PretrainModule,
    ThroughputMonitor,
    remove_partial_checkpoints,
)
from eofm.training.sharding import (
    BLOCK_NAMES,
    ShardingOptions,
    fsdp_strategy,
    is_sharded,
)

#: Lightning warnings that do not apply to this engine.
_QUIET = (
    r".*resuming from a checkpoint that ended before the epoch ended.*",  # sampler resumes
    r".*overridden `on_after_batch_transfer` in `LightningModule`.*",
    r".*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # resuming in the run folder
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


class TrainingInterrupted(EofmError, KeyboardInterrupt):
    """Training was stopped by SIGINT/SIGTERM; ``checkpoint`` is where to resume from."""

    def __init__(self, checkpoint: Path | None, step: int, rank: int = 0) -> None:
        self.checkpoint = checkpoint
        self.step = step
        #: The process's rank (each process of a multi-device run raises its own).
        self.rank = rank
        where = f"; resume from {checkpoint} with --resume last" if checkpoint else ""
        super().__init__(f"training interrupted at step {step}{where}")


@dataclass
class RunResult:
    """What a pretraining run produced."""

    run_dir: Path
    model_path: Path | None
    last_checkpoint: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    global_step: int = 0
    final_loss: float | None = None
    images_per_s: float | None = None
    wall_time_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    #: This process's rank (each process of a multi-device run returns its own result).
    global_rank: int = 0


def _worker_nonfinite(err: BaseException) -> tuple[str, int] | None:
    """``(message, step)`` of a NonFiniteLossError raised in a spawned worker process (torch's
    ``ProcessRaisedException`` carries only its traceback as text)."""
    import re

    if type(err).__name__ != "ProcessRaisedException":
        return None
    match = re.search(r"NonFiniteLossError: (.*?)(?:; the last good checkpoint|$)", str(err), re.M)
    if match is None:
        return None
    step = re.search(r"at step (\d+)", match.group(1))
    return match.group(1).strip(), int(step.group(1)) if step else -1


def _is_first_process() -> bool:
    """Not a rank > 0 started by Lightning's launcher (those inherit these variables)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _forming(err: BaseException) -> bool:
    """Whether ``err`` comes from forming the process group (the store or its clients)."""
    text = f"{type(err).__name__}: {err}"
    return any(
        w in text for w in ("clients joined", "DistStoreError", "DistNetworkError", "connect")
    )


def build_method(config: PretrainConfig, backbone: nn.Module) -> SSLMethod:
    """``create_method`` with the recipe's options; a wrong option is a ConfigError."""
    _check_method(config)
    try:
        method = create_method(config.method.name, backbone, **config.method.options)
    except TypeError as exc:
        raise ConfigError(f"method.options of {config.method.name}: {exc}") from None
    if config.method.views:
        method.view_spec = _view_spec(method, config.method.views)
    return method


def _strategy(config: PretrainConfig) -> Any:
    t = config.trainer
    if t.strategy == "fsdp":
        return fsdp_strategy()
    if (t.strategy_options or t.init_timeout_s) and t.strategy.startswith("ddp"):
        from lightning.pytorch.strategies import DDPStrategy

        options = dict(t.strategy_options)
        if t.init_timeout_s:
            options["timeout"] = datetime.timedelta(seconds=t.init_timeout_s)
        if "find_unused_parameters_true" in t.strategy:
            options.setdefault("find_unused_parameters", True)
        start: Literal["popen", "spawn"] = "spawn" if "spawn" in t.strategy else "popen"
        return DDPStrategy(start_method=start, **options)
    return t.strategy


def _loggers(config: PretrainConfig, run_dir: Path) -> list[Any]:
    """TensorBoard (when installed) and CSV loggers writing to one ``logs/version_N``."""
    from lightning.pytorch.loggers import CSVLogger

    version = _next_log_version(run_dir / "logs")
    loggers: list[Any] = []
    if config.output.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: logging to CSV only (pip install tensorboard)",
                    stacklevel=3,
                )
            else:
                loggers.append(_tensorboard(run_dir, version))
        else:
            loggers.append(_tensorboard(run_dir, version))
    if config.output.csv or not loggers:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=version))
    return loggers


def _next_log_version(logs: Path) -> int:
    """One past the highest ``version_N`` under ``logs`` (0 for a new run): each logger
    would otherwise count for itself and TensorBoard and CSV land in different folders."""
    found = [
        int(p.name.split("_", 1)[1])
        for p in (logs.glob("version_*") if logs.is_dir() else [])
        if p.is_dir() and p.name.split("_", 1)[1].isdigit()
    ]
    return max(found, default=-1) + 1


def _tensorboard(run_dir: Path, version: int) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(
        save_dir=str(run_dir), name="logs", version=version, default_hp_metric=False
    )


def _prepare_run_dir(run_dir: Path, config: PretrainConfig, resuming: bool) -> None:
    ckpt_dir = run_dir / "checkpoints"
    old = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if old and not resuming:
        if not config.output.overwrite:
            raise ConfigError(
                f"{run_dir} already holds checkpoints of a run; continue it with --resume last, "
                "or choose another folder (--out / output.name), or set output.overwrite=true"
            )
        shutil.rmtree(ckpt_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_first_process():
        remove_partial_checkpoints(ckpt_dir)  # left by a run killed while saving


def _export(
    config: PretrainConfig,
    module: PretrainModule,
    export_prefix: str,
    checkpoint: Path,
    run_dir: Path,
    info: DatasetInfo,
    card_norm: dict[str, Any] | None,
    steps: int,
) -> Path:
    """Export the encoder from the saved (full) checkpoint: works for every strategy."""
    import copy

    from eofm.models import Backbone, create_backbone, export_model

    exported = getattr(module.method, "export_backbone", None)
    source = exported() if callable(exported) else module.method.backbone
    if not isinstance(source, Backbone):
        raise ConfigError(f"the {config.method.name} encoder is not an eofm Backbone")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    sub = {k[len(export_prefix) :]: v for k, v in state.items() if k.startswith(export_prefix)}
    if is_sharded(source):  # FSDP: a whole copy of the same architecture
        backbone = create_backbone(
            source.arch,
            bands=list(source.bands),
            sensor=source.sensor,
            img_size=source.img_size,
            **source.overrides,
        ).float()
    else:
        backbone = copy.deepcopy(source).cpu().float()
    backbone.load_state_dict(sub, strict=True)
    return export_model(
        backbone,
        run_dir / "model.safetensors",
        normalization=card_norm,
        method=config.method.name,
        data=info.spec,
        extra={
            "steps": steps,
            "recipe": config.output.name,
            "backbone": config.model.backbone,
            "config": config_to_dict(config),
        },
    )


def run_pretraining(
    config: PretrainConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Pretrain ``config.model.backbone`` with ``config.method`` on ``config.data``.

    ``resume``: ``"last"`` or a checkpoint path; the run continues from its step with its
    optimiser, scheduler and teacher state. ``callbacks``: extra Lightning callbacks.
    Raises :class:`TrainingInterrupted` after saving ``interrupted.ckpt`` on SIGINT/SIGTERM.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from eofm.models import create_backbone
    from eofm.models.zoo import pretrained_options
    from eofm.training.progress import PlainProgressBar

    validate_config(config)
    t = config.trainer
    check_cluster(t.num_nodes, t.devices)  # torchrun/SLURM started what the recipe asks
    run_dir = run_dir_of(config)
    ckpt_path = resolve_resume(resume, run_dir)
    if ckpt_path is not None:
        check_resume_checkpoint(ckpt_path)
    _prepare_run_dir(run_dir, config, ckpt_path is not None)
    started = datetime.datetime.now()
    if t.num_threads is not None:
        torch.set_num_threads(max(1, t.num_threads))
    if t.tune_malloc and t.accelerator.lower() == "cpu":
        from eofm.training.allocator import tune_malloc

        tune_malloc()
    pl.seed_everything(t.seed, workers=True, verbose=False)

    # data
    info = build_dataset(config.data, run_dir, seed=t.seed, progress=t.progress_bar)
    normalizer, card = build_normalizer(config.data, info, run_dir)
    from eofm.curation.dynamic import pruning_from_config

    pruning = pruning_from_config(config.curation, seed=t.seed, work_dir=run_dir / "curation")
    if pruning is not None and config.data.iterable:
        raise ConfigError("curation: dynamic pruning needs map-style data; set data.iterable=false")

    # model and method
    opts = dict(config.model.options)
    if config.model.drop_path_rate is not None:
        opts["drop_path_rate"] = config.model.drop_path_rate
    from eofm.methods.registry import import_all

    import_all()
    img_size = config.model.img_size
    if img_size is None:
        gsize = config.method.views.get("global_size")
        img_size = int(gsize) if gsize else info.image_size[0]
    if (
        config.model.init
        and config.model.pretrained
        and config.model.init != config.model.pretrained
    ):
        raise ConfigError("model.init and model.pretrained name different weights; set one")
    backbone = create_backbone(
        config.model.backbone,
        bands=list(info.bands),
        sensor=find_sensor(info.sensor),  # recorded in the model card, to match bands later
        img_size=img_size,
        **pretrained_options(config.model.init or config.model.pretrained),
        **opts,
    )
    if config.model.activation_checkpointing:
        setter = getattr(backbone.model, "set_grad_checkpointing", None)
        if callable(setter):
            setter(True)
    method = build_method(config, backbone)
    if config.model.compile:  # before FSDP shards the blocks (configure_model)
        compiling = CompileOptions.from_config(config.model.compile_options)
        if compile_blocks(method, compiling) == 0:
            warnings.warn(
                f"model.compile: {config.model.backbone} has none of the blocks eofm compiles "
                f"({', '.join(sorted(BLOCK_NAMES))}); the run goes on uncompiled",
                stacklevel=2,
            )
    spec = method.view_spec
    if spec.global_size is None and info.image_size[0] != info.image_size[1]:
        method.view_spec = dataclasses.replace(spec, global_size=min(info.image_size))

    mean = std = None
    card_norm: dict[str, Any] | None = None
    if normalizer is not None and card is not None:
        m, s = card.mean_std(list(info.bands))
        mean, std = m.tolist(), s.tolist()
        card_norm = {"mean": mean, "std": std, "method": config.data.normalize}
    augment = MultiViewAugment(info.bands, config.augment, sensor=info.sensor, mean=mean, std=std)
    cfg_dict = config_to_dict(config)
    module = PretrainModule(
        method,
        augment,
        config.optim,
        normalizer=normalizer,
        seed=t.seed,
        config=cfg_dict,
        nonfinite=t.nonfinite_loss,
        max_nonfinite_skips=t.max_nonfinite_skips,
        sharding=(
            ShardingOptions.from_config(t.strategy_options, t.precision)
            if t.strategy == "fsdp"
            else None
        ),
    )
    exported = getattr(method, "export_backbone", None)
    export_module = exported() if callable(exported) else method.backbone
    prefix = next(
        (f"{name}." for name, mod in module.named_modules() if mod is export_module and name),
        "method.backbone.",
    )
    datamodule = PretrainDataModule(info.dataset, config.data, seed=t.seed)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))

    # trainer
    ckpt_dir = run_dir / "checkpoints"
    periodic = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="step={step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=-1 if t.keep_all_checkpoints else 1,
        save_last=True,
        save_on_train_epoch_end=False,
    )
    throughput = ThroughputMonitor()
    interrupt = InterruptCheckpoint(ckpt_dir)
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(config),
        precision=t.precision,  # type: ignore[arg-type]
        max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else None),
        max_time=datetime.timedelta(seconds=t.max_time_s) if t.max_time_s else None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=config.optim.grad_clip,
        log_every_n_steps=t.log_every_n_steps,
        sync_batchnorm=t.sync_batchnorm,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=t.progress_bar,
        logger=_loggers(config, run_dir),
        callbacks=[
            periodic,
            throughput,
            interrupt,
            FinalCheckpoint(ckpt_dir / "last.ckpt", periodic),
            *([pruning] if pruning is not None else []),
            *([PlainProgressBar()] if t.progress_bar and use_plain() else []),
            *(callbacks or []),
        ],
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],  # no half-written checkpoint, whatever kills the run
        num_sanity_val_steps=0,
        # streamed shards reseed each epoch; dynamic pruning swaps the training subset; a pool
        # in object storage gets a fresh litdata loader (a resumed one would replay its state)
        reload_dataloaders_every_n_epochs=(
            1 if config.data.iterable or pruning is not None or datamodule.streamed else 0
        ),
        use_distributed_sampler=False,  # EpochShuffleSampler splits by rank
    )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(ckpt_path) if ckpt_path else None,
                weights_only=True if ckpt_path else None,
            )
    except SystemExit:  # Lightning exits after Ctrl-C; SIGTERM raises SIGTERMException
        raise TrainingInterrupted(
            interrupt.saved, trainer.global_step, trainer.global_rank
        ) from None
    except (DistError, TimeoutError) as err:  # a rank never joined the process group
        if trainer.global_step > 0 or not _forming(err):
            raise
        raise join_error(err, t.init_timeout_s) from None
    except NonFiniteLossError as err:  # nothing was saved from the bad step
        raise NonFiniteLossError(
            err.reason, err.step, checkpoint=_last_good_checkpoint(ckpt_dir)
        ) from None
    except Exception as err:  # ddp_spawn: a worker's error arrives as text
        found = _worker_nonfinite(err)
        if found is None:
            raise
        raise NonFiniteLossError(
            found[0], found[1], checkpoint=_last_good_checkpoint(ckpt_dir)
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a Ctrl-C
    if trainer.interrupted:
        raise TrainingInterrupted(interrupt.saved, trainer.global_step, trainer.global_rank)

    last = ckpt_dir / "last.ckpt"
    (ckpt_dir / "interrupted.ckpt").unlink(missing_ok=True)
    model_path: Path | None = None
    if config.output.export and trainer.is_global_zero:
        model_path = _export(
            config, module, prefix, last, run_dir, info, card_norm, trainer.global_step
        )
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)
    }
    return RunResult(
        run_dir=run_dir,
        model_path=model_path,
        last_checkpoint=last,
        checkpoints=sorted(ckpt_dir.glob("*.ckpt")),
        global_step=int(trainer.global_step),
        final_loss=metrics.get("train/loss"),
        images_per_s=throughput.mean_rate,
        wall_time_s=(datetime.datetime.now() - started).total_seconds(),
        metrics=metrics,
        global_rank=int(trainer.global_rank),
    )


__all__ = [
    "ACCELERATORS",
    "FSDP_PRECISIONS",
    "PRECISIONS",
    "STRATEGIES",
    "RunResult",
    "TrainingInterrupted",
    "build_method",
    "check_resume_checkpoint",
    "resolve_resume",
    "run_dir_of",
    "run_pretraining",
    "validate_config",
]
