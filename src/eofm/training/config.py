"""The pretraining recipe: a tree of dataclasses read from YAML, with command-line overrides.

A recipe (``configs/*.yaml``) has the sections ``data``, ``model``, ``method``, ``augment``,
``optim``, ``trainer``, ``output`` and ``curation`` (see :class:`PretrainConfig`). Every key
is checked: a misspelt one raises :class:`~eofm.errors.ConfigError` naming it and the
closest valid name. Overrides ``a.b.c=value`` are parsed with :func:`yaml.safe_load`
(``optim.lr=3e-4``, ``data.bands=[B04,B03,B02]``, ``trainer.max_time_s=null``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from eofm.augment.multiview import AugmentConfig
from eofm.errors import ConfigError

__all__ = [
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PretrainConfig",
    "TrainerConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
]


@dataclass
class DataConfig:
    """What to pretrain on and how to load it."""

    #: A dataset path or glob (anything ``eofm data inspect`` reads), ``torchgeo:<Name>:<root>``
    #: or ``synthetic[:landcover|wavemode][:n=512][:size=64][:seed=0]`` (generated, as shards,
    #: into the run folder).
    path: str = "synthetic:landcover:n=512:size=64"
    #: Bands to read, by name, in this order (``None``: all bands of the data).
    bands: list[str] | None = None
    #: The files' own band order when they do not name their bands (EuroSAT-MS).
    band_names: list[str] | None = None
    #: Sensor name (``eofm sensors``), when the data do not record it.
    sensor: str | None = None
    #: Keep only this split of a CSV with a ``split`` column (``train``...).
    split: str | None = None
    #: Extra keyword arguments for the dataset class (``open_dataset``).
    options: dict[str, Any] = field(default_factory=dict)
    #: Shards only: stream them (``ShardIterableDataset``; needs ``trainer.max_steps``).
    iterable: bool = False
    #: Decode folders, CSVs and globs once into memory-mapped shards under ``$EOFM_CACHE_DIR``
    #: (default ``~/.cache/eofm``), keyed by the files' paths, sizes and times, and train
    #: from them (``eofm.data.cache``); ``false``: read the files every epoch.
    cache: bool = True
    #: Largest decoded size to cache (``20GB``, ``500MiB``); larger data are streamed from the
    #: files with workers. ``None``: up to the cache disk's free space (less 1 GB).
    cache_limit: str | None = None
    #: Images per device and step.
    batch_size: int = 64
    #: DataLoader worker processes; ``auto``: none for cached shards (a batch is one array
    #: slice), else up to 4 on machines with more than 2 cores (see docs/pretraining.md).
    num_workers: int | Literal["auto"] = "auto"
    persistent_workers: bool = False
    pin_memory: bool = False
    drop_last: bool = True
    shuffle: bool = True
    #: Normalisation from the dataset card (computed once and cached).
    normalize: Literal["zscore", "minmax_percentile", "softcon", "none"] = "zscore"
    #: Dataset card to use (default: ``<data>/eofm_card.json`` if present, else computed into
    #: the run folder).
    card: str | None = None
    #: Samples the card is computed from (``None``: all).
    stats_max_samples: int | None = 2000
    #: Value marking nodata pixels in the files.
    nodata: float | None = None


@dataclass
class ModelConfig:
    """The backbone being pretrained (any name of ``eofm.models.list_backbones()``)."""

    backbone: str = "vit_test"
    #: Image size the backbone is built for (default: the global view size, else the data's).
    img_size: int | None = None
    #: Checkpoint to start from (continual pretraining): a file, or a published model
    #: (``torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO``, ``timm:vit_small_patch14_dinov2``,
    #: ``hf:<org>/<repo>/<file>``; bands adapted by name); ``None``: from scratch.
    pretrained: str | None = None
    #: Another name for ``pretrained`` (set one of them).
    init: str | None = None
    #: Recompute activations in the backward pass (timm ``set_grad_checkpointing``, with every
    #: strategy, FSDP included).
    activation_checkpointing: bool = False
    #: ``torch.compile`` each transformer or residual block in place (regional compilation:
    #: one graph for all blocks; with every strategy, FSDP and activation checkpointing too).
    compile: bool = False
    #: Keyword arguments of ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``, ``backend``,
    #: ``options``; see ``eofm.training.compilation.CompileOptions``).
    compile_options: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float | None = None
    #: Extra keyword arguments for ``create_backbone`` (timm options).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """The self-supervised objective (``eofm.methods.list_methods()``)."""

    name: str = "simclr"
    #: Keyword arguments of the method class (temperature, head sizes, momentum...).
    options: dict[str, Any] = field(default_factory=dict)
    #: Overrides of the method's ``ViewSpec`` (global_views, local_views, global_size,
    #: local_size, crop_scale, local_crop_scale, geometric).
    views: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and schedules (per optimiser step)."""

    name: Literal["adamw", "sgd", "lars"] = "adamw"
    #: Peak learning rate; multiplied by ``global batch / base_batch_size`` when that is set.
    lr: float = 1e-3
    base_batch_size: int | None = None
    weight_decay: float = 0.05
    #: Cosine schedule of the weight decay to this value (DINO: 0.04 -> 0.4).
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    #: Linear warm-up, in steps or as a fraction of the run (the larger wins).
    warmup_steps: int = 0
    warmup_fraction: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    #: Final learning rate of the cosine schedule.
    min_lr: float = 0.0
    #: Clip the gradient norm to this value.
    grad_clip: float | None = None
    #: No weight decay on biases, norm layers, position embeddings and tokens.
    no_decay_norm_bias: bool = True


@dataclass
class TrainerConfig:
    """Lightning trainer: devices, strategy, precision, length, checkpoints, logs."""

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    #: Nodes of a torchrun or SLURM launch (checked against the launcher; docs/scale.md).
    num_nodes: int = 1
    #: How long the ranks wait for each other to form the process group (DDP strategies;
    #: ``None``: torch's default, 30 min); past it, an error names the rank and the fix.
    init_timeout_s: float | None = None
    #: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``, ``ddp_find_unused_parameters_true``...
    strategy: str = "auto"
    #: Keyword arguments for the DDP strategy, or FSDP options (``ShardingOptions``:
    #: ``reshard_after_forward``, ``param_dtype``, ``reduce_dtype``, ``cpu_offload``).
    strategy_options: dict[str, Any] = field(default_factory=dict)
    #: ``32-true``, ``bf16-mixed``, ``16-mixed`` (GPU), ``bf16-true``.
    precision: str = "32-true"
    max_steps: int = -1
    max_epochs: int | None = None
    #: Stop after this wall-clock time (seconds), with a checkpoint.
    max_time_s: float | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 500
    #: Keep every periodic checkpoint (else only the newest, plus ``last.ckpt``).
    keep_all_checkpoints: bool = False
    sync_batchnorm: bool = False
    seed: int = 0
    deterministic: bool = False
    progress_bar: bool = True
    #: CPU threads of torch (``torch.set_num_threads``); ``None`` keeps torch's default. On a
    #: busy machine with few cores, 1 is often several times faster than oversubscribing.
    num_threads: int | None = None
    #: CPU runs on Linux: keep freed memory in glibc's allocator instead of unmapping and
    #: faulting it back every step (``eofm.training.allocator``; 5-15% faster, same peak RSS).
    tune_malloc: bool = True
    #: What a NaN or infinite loss does: ``stop`` (raise ``NonFiniteLossError`` naming the last
    #: good checkpoint; nothing is saved from the bad step) or ``skip`` (drop that step's update:
    #: parameters, optimiser moments and EMA teachers stay unchanged; the step still counts for
    #: the schedules and the data). Under DDP every rank skips or stops at the same step.
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    #: With ``skip``: stop (as ``stop`` does) after this many non-finite steps in a row.
    max_nonfinite_skips: int = 5


@dataclass
class OutputConfig:
    """Where the run writes checkpoints, logs and the exported model."""

    dir: str = "runs"
    #: Sub-folder of ``dir`` (default: the recipe's file name; ``""``: ``dir`` itself).
    name: str | None = None
    #: Delete the checkpoints of an earlier run in the same folder instead of refusing.
    overwrite: bool = False
    #: Export the encoder to ``model.safetensors`` at the end.
    export: bool = True
    tensorboard: bool = True
    csv: bool = True


@dataclass
class PretrainConfig:
    """A whole pretraining recipe."""

    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: Dynamic pruning during pretraining (``eofm.curation.dynamic``; empty: off).
    curation: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# conversion

T = TypeVar("T")


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and lightly coerced to) the annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where} may not be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _convert(value, opt, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{where}: {value!r} is not a {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = _suggest(str(value), [str(a) for a in allowed])
            raise ConfigError(f"{where}={value!r} is not allowed{hint}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if value is None:
            return tp()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = config_to_dict(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where or 'config'} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if value is None:
        raise ConfigError(f"{where} may not be null")
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = get_args(tp) or (Any,)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown field {path!r}{_suggest(str(key), names)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any] | None) -> PretrainConfig:
    """A checked :class:`PretrainConfig` from nested plain values (missing keys: defaults)."""
    return _build(PretrainConfig, values or {}, "")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain values (dicts, lists, str, numbers, None) of a config dataclass."""
    out: dict[str, Any] = _plain(dataclasses.asdict(config))
    return out


# --------------------------------------------------------------------------------------------
# overrides and files


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 0.0003)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return parts, value


def _check_path(parts: list[str], text: str) -> None:
    """Raise for an override whose key is not a field (dict-valued fields take any key)."""
    cls: Any = PretrainConfig
    done: list[str] = []
    for part in parts:
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            return  # inside a free-form dict (method.options.*, curation.*)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            full = ".".join([*done, part])
            raise ConfigError(f"override {text!r}: unknown field {full!r}{_suggest(part, names)}")
        cls = typing.get_type_hints(cls)[part]
        done.append(part)


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to nested plain values (in place; returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        _check_path(parts, text)
        node = values
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return values


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML recipe (or start from the defaults), apply overrides, check every field.

    ``output.name`` defaults to the recipe's file name without extension.
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections")
        values = loaded
    values = apply_overrides(values, overrides)
    try:
        config = config_from_dict(values)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    if config.output.name is None and path is not None:
        config.output.name = Path(path).stem
    return config
