"""Checks made before a run starts: the recipe's trainer, method and curation settings
(:func:`validate_config`), the devices, and which checkpoint a resume starts from.

Everything here fails fast with a one-line :class:`~eofm.errors.ConfigError` or
:class:`~eofm.errors.CheckpointError`, before any data is read or model built.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any

import torch

from eofm.errors import CheckpointError, ConfigError
from eofm.methods.base import SSLMethod, ViewSpec
from eofm.training.compilation import CompileOptions, check_compile_support
from eofm.training.config import PretrainConfig, _suggest
from eofm.training.sharding import (
    ShardingOptions,
    check_fsdp_support,
)

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


STRATEGIES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_true",
    "fsdp",
    "single_device",
)


#: Precisions Lightning's ModelParallelStrategy (FSDP2) accepts.
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _runs_on_cpu(config: PretrainConfig, check_devices: bool = True) -> bool:
    """Whether the run is on the CPU: asked for, or ``auto`` on a machine without a GPU (only
    known when ``check_devices``: a config checked elsewhere may be meant for a GPU)."""
    acc = config.trainer.accelerator.lower()
    return acc == "cpu" or (check_devices and acc == "auto" and not torch.cuda.is_available())


def _check_trainer(config: PretrainConfig, *, check_devices: bool = True) -> None:
    t = config.trainer
    acc = t.accelerator.lower()
    if acc not in ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={t.accelerator!r} is not known{_suggest(acc, ACCELERATORS)}"
        )
    has_gpu = torch.cuda.is_available()
    if check_devices and acc in ("gpu", "cuda") and not has_gpu:
        raise ConfigError(
            f"trainer.accelerator={t.accelerator!r} but no GPU is available on this machine; "
            "use trainer.accelerator=cpu (or auto)"
        )
    if t.strategy not in STRATEGIES:
        raise ConfigError(
            f"trainer.strategy={t.strategy!r} is not known{_suggest(t.strategy, STRATEGIES)}"
        )
    if t.precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={t.precision!r} is not known{_suggest(t.precision, PRECISIONS)}"
        )
    if _runs_on_cpu(config, check_devices) and t.precision in ("16-mixed", "16-true"):
        raise ConfigError(
            f"trainer.precision={t.precision!r} needs a GPU; on CPU use bf16-mixed or 32-true"
        )
    if t.strategy == "fsdp":
        check_fsdp_support()
        if t.precision not in FSDP_PRECISIONS:
            raise ConfigError(
                f"trainer.precision={t.precision!r} does not work with trainer.strategy=fsdp; "
                f"use one of {', '.join(FSDP_PRECISIONS)}"
            )
        ShardingOptions.from_config(t.strategy_options, t.precision)  # names unknown options
    if t.max_steps <= 0 and t.max_epochs is None and t.max_time_s is None:
        raise ConfigError("set trainer.max_steps, trainer.max_epochs or trainer.max_time_s")
    if t.checkpoint_every_n_steps < 1:
        raise ConfigError("trainer.checkpoint_every_n_steps must be at least 1")
    if t.max_nonfinite_skips < 1:
        raise ConfigError("trainer.max_nonfinite_skips must be at least 1")
    if config.data.batch_size < 1:
        raise ConfigError("data.batch_size must be at least 1")


def run_dir_of(config: PretrainConfig) -> Path:
    """``output.dir/output.name`` (``output.dir`` itself when the name is empty)."""
    name = config.output.name
    if name is None:
        name = f"{config.method.name}_{config.model.backbone}"
    return Path(config.output.dir) / name if name else Path(config.output.dir)


def resolve_resume(resume: str | os.PathLike[str] | None, run_dir: Path) -> Path | None:
    """``"last"``: the newest of ``last.ckpt``/``interrupted.ckpt`` in the run; ``"auto"``: the
    same, or a fresh start when there is none (for jobs that restart themselves); else a path."""
    if resume is None:
        return None
    if str(resume) in ("last", "auto"):
        ckpt_dir = run_dir / "checkpoints"
        found = [p for p in (ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt") if p.is_file()]
        if not found and str(resume) == "auto":
            return None
        if not found:
            raise ConfigError(f"--resume last: no last.ckpt or interrupted.ckpt in {ckpt_dir}")
        return max(found, key=lambda p: p.stat().st_mtime_ns)
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: checkpoint file not found")
    return path


def check_resume_checkpoint(path: Path) -> int:
    """Refuse a checkpoint that cannot be resumed from, before Lightning opens it: unreadable,
    truncated, holding pickled code (never executed: read with ``weights_only=True``, tensors
    memory-mapped) or not a training checkpoint. Returns its step."""
    from eofm.models.checkpoints import load_torch_checkpoint

    ckpt = load_torch_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or not {"state_dict", "global_step", "loops"} <= set(ckpt):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a training checkpoint of an eofm run (found {keys}); --resume takes "
            "checkpoints/last.ckpt, interrupted.ckpt or step=*.ckpt of a run"
        )
    return int(ckpt["global_step"])


def _last_good_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file()] if ckpt_dir.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _view_spec(method: SSLMethod, overrides: dict[str, Any]) -> ViewSpec:
    names = [f.name for f in dataclasses.fields(ViewSpec)]
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown field 'method.views.{key}'{_suggest(key, names)}")
        clean[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(method.view_spec, **clean)


def _check_method(config: PretrainConfig) -> None:
    """The method exists, its options are parameters of its class, the view keys are valid."""
    from eofm.methods.base import _METHODS
    from eofm.methods.registry import import_all

    known = import_all()
    name = config.method.name
    if name not in known:
        raise ConfigError(
            f"method.name={name!r} is not a pretraining method{_suggest(name, known)}"
        )
    params = inspect.signature(_METHODS[name]).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [n for n in params if n not in ("self", "backbone")]
    for key in config.method.options:
        if not accepts_any and key not in valid:
            raise ConfigError(
                f"unknown option 'method.options.{key}' of {name}{_suggest(key, valid)}"
            )
    names = [f.name for f in dataclasses.fields(ViewSpec)]
    for key in config.method.views:
        if key not in names:
            raise ConfigError(f"unknown field 'method.views.{key}'{_suggest(key, names)}")


def validate_config(config: PretrainConfig, *, check_devices: bool = True) -> None:
    """Check names and values that the dataclasses cannot: method and its options, backbone,
    views, trainer settings (and, with ``check_devices``, that a requested GPU exists)."""
    from eofm.curation.dynamic import parse_pruning_config
    from eofm.models import list_backbones

    _check_trainer(config, check_devices=check_devices)
    _check_method(config)
    parse_pruning_config(config.curation)  # misspelt or out-of-range curation settings
    if config.model.compile or config.model.compile_options:
        opts = CompileOptions.from_config(config.model.compile_options)
        if config.model.compile:
            check_compile_support(opts, _runs_on_cpu(config, check_devices))
    backbones = list_backbones()
    if config.model.backbone not in backbones:
        raise ConfigError(
            f"model.backbone={config.model.backbone!r} is not a registered backbone"
            f"{_suggest(config.model.backbone, backbones)}"
        )
