"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the methods.

``trainer.strategy: fsdp`` runs Lightning's ``ModelParallelStrategy`` and calls
:func:`shard_method` from ``PretrainModule.configure_model``. Each transformer or residual
block of every backbone the method holds (student, EMA or frozen teacher, MAE decoder) becomes
its own FSDP unit. The method itself is the root unit, for the remaining parameters: patch
embedding, position embedding, norms, heads.

The engine calls the method through :data:`FORWARD_METHODS`, never through ``forward``. These
are registered with FSDP, so that the root unit's parameters are gathered around them. Parameters
are ``DTensor`` shards between steps, and element-wise updates such as the EMA teachers work on
the shards directly. FSDP2 also runs on CPU (gloo), which is how the tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from eofm.errors import ConfigError

__all__ = [
    "BLOCK_NAMES",
    "FORWARD_METHODS",
    "ShardingOptions",
    "blocks_of",
    "check_fsdp_support",
    "fsdp_strategy",
    "is_sharded",
    "shard_method",
]

#: Methods of an SSLMethod that the engine and the curation callback call (FSDP gathers the
#: root unit's parameters around them, as it does around ``forward``).
FORWARD_METHODS = ("forward_loss", "embed", "embed_student")

#: timm transformer and residual blocks: each becomes its own FSDP unit.
BLOCK_NAMES = {
    "Block",
    "ParallelThingsBlock",
    "ParallelScalingBlock",
    "SwinTransformerBlock",
    "SwinTransformerV2Block",
    "Bottleneck",
    "BasicBlock",
}
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ShardingOptions:
    """How :func:`shard_method` shards (``trainer.strategy_options`` with ``strategy: fsdp``).

    ``reshard_after_forward``: free the gathered parameters after each unit's forward pass and
    gather them again for its backward pass. ``True`` uses the least memory, like FSDP1's
    FULL_SHARD; ``False`` is like SHARD_GRAD_OP. ``param_dtype`` / ``reduce_dtype``: FSDP
    mixed precision, the dtypes of the gathered parameters and of the gradient reduction
    (``bf16``, ``fp32``...). ``param_dtype`` defaults to bf16 under ``bf16-mixed``.
    ``cpu_offload``: keep the sharded parameters, gradients and optimiser state in host memory.
    Checkpoints are always one full file, gathered on rank 0, which every other tool reads.
    """

    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    cpu_offload: bool = False

    @classmethod
    def from_config(cls, options: dict[str, Any], precision: str) -> ShardingOptions:
        """Options from ``trainer.strategy_options``; a clear error names any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"trainer.strategy_options {unknown} are not known with strategy=fsdp; "
                f"use {sorted(known)}"
            )
        opts = dict(options)
        for key in ("param_dtype", "reduce_dtype"):
            value = opts.get(key)
            if value is not None and str(value).lower() not in _DTYPES:
                raise ConfigError(
                    f"trainer.strategy_options.{key}={value!r}: use one of {sorted(_DTYPES)}"
                )
        if precision == "bf16-mixed" and opts.get("param_dtype") is None:
            opts["param_dtype"] = "bf16"
            opts.setdefault("reduce_dtype", "fp32")
        return cls(**opts)

    def fully_shard_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``fully_shard`` (without the mesh)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        kwargs: dict[str, Any] = {"reshard_after_forward": self.reshard_after_forward}
        if self.param_dtype is not None or self.reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=_dtype(self.param_dtype),
                reduce_dtype=_dtype(self.reduce_dtype),
                cast_forward_inputs=True,
            )
        kwargs["offload_policy"] = CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()
        return kwargs


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else _DTYPES[str(name).lower()]


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """The transformer or residual blocks (:data:`BLOCK_NAMES`) inside ``module``, innermost
    first (children before their parents)."""
    inner_first = reversed(list(module.modules()))
    return [m for m in inner_first if m is not module and type(m).__name__ in BLOCK_NAMES]


def shard_method(method: nn.Module, mesh: Any, options: ShardingOptions | None = None) -> int:
    """Shard ``method`` in place over ``mesh`` (a 1-D device mesh): every block first,
    innermost first, then the method as root. Returns the number of FSDP units."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    opts = options or ShardingOptions()
    kwargs = opts.fully_shard_kwargs()
    blocks = blocks_of(method)
    for module in blocks:
        fully_shard(module, mesh=mesh, **kwargs)
    fully_shard(method, mesh=mesh, **kwargs)
    for name in FORWARD_METHODS:
        if callable(getattr(method, name, None)):
            register_fsdp_forward_method(method, name)
    return len(blocks) + 1


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is an FSDP2 shard (a ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _version(text: str) -> tuple[int, int]:
    major, minor = [*text.split("+")[0].split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_fsdp_support() -> None:
    """A clear error when the installed torch or Lightning predates FSDP2."""
    import lightning

    if _version(torch.__version__) < (2, 6) or _version(lightning.__version__) < (2, 4):
        raise ConfigError(
            "trainer.strategy=fsdp (FSDP2) needs torch >= 2.6 and lightning >= 2.4; found "
            f"torch {torch.__version__}, lightning {lightning.__version__}"
        )


def fsdp_strategy() -> Any:
    """Lightning's ``ModelParallelStrategy`` as pure FSDP2: one data-parallel mesh over every
    process, no tensor parallelism, and checkpoints as one full file (not a folder)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDPStrategy(ModelParallelStrategy):
        def setup_environment(self) -> None:
            self._data_parallel_size = self.num_processes * self.num_nodes
            self._tensor_parallel_size = 1
            super().setup_environment()

    return FSDPStrategy(save_distributed_checkpoint=False)
