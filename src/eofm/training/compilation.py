"""Regional compilation (``model.compile: true``): ``torch.compile`` on every transformer or
residual block of the method, in place (``nn.Module.compile``).

The blocks of a backbone share one code path, so one compiled graph serves all of them, and
compiling takes seconds to a minute rather than minutes. The parameter names do not change
(checkpoints, resume and export are unaffected), and activation checkpointing and FSDP work
as without compilation: the engine compiles before it shards, as torchtitan does.
``model.compile_options`` holds the keyword arguments of ``torch.compile`` (``mode``,
``dynamic``, ``fullgraph``, ``backend``, ``options``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from eofm.errors import ConfigError
from eofm.training.sharding import _version, blocks_of

__all__ = [
    "CompileOptions",
    "check_compile_support",
    "compile_blocks",
    "compiled_blocks",
]

#: ``mode`` values of ``torch.compile``.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileOptions:
    """Keyword arguments of ``torch.compile`` for each block (``model.compile_options``)."""

    #: ``default``, ``reduce-overhead`` (CUDA graphs), ``max-autotune``,
    #: ``max-autotune-no-cudagraphs``; ``None``: torch's default.
    mode: str | None = None
    #: ``None``: static shapes, then dynamic ones after a second shape is seen; ``False``: one
    #: graph per shape (DINO's global and local views: two).
    dynamic: bool | None = None
    #: Refuse graph breaks inside a block instead of falling back to Python there.
    fullgraph: bool = False
    #: ``inductor`` (generated Triton or C++ kernels); ``aot_eager`` and ``eager`` for debugging.
    backend: str = "inductor"
    #: Inductor options (``{"triton.cudagraphs": false}``...); not together with ``mode``.
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> CompileOptions:
        """Read ``model.compile_options``; a misspelt key or a bad value is a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"model.compile_options: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        opts = cls(**dict(options))
        if opts.mode is not None and opts.mode not in MODES:
            raise ConfigError(f"model.compile_options.mode={opts.mode!r}: use one of {MODES}")
        if opts.mode is not None and opts.options:
            raise ConfigError(
                "model.compile_options: give mode or options, not both (torch.compile refuses it)"
            )
        if opts.dynamic not in (None, True, False) or not isinstance(opts.fullgraph, bool):
            raise ConfigError(
                "model.compile_options: dynamic is true, false or null; fullgraph true or false"
            )
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if opts.backend not in backends:
            raise ConfigError(
                f"model.compile_options.backend={opts.backend!r} is not a torch.compile backend; "
                f"known: {', '.join(sorted(backends))}"
            )
        return opts

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``torch.compile``."""
        kwargs: dict[str, Any] = {"fullgraph": self.fullgraph, "backend": self.backend}
        if self.dynamic is not None:
            kwargs["dynamic"] = self.dynamic
        if self.mode is not None:
            kwargs["mode"] = self.mode
        if self.options:
            kwargs["options"] = dict(self.options)
        return kwargs


def compile_blocks(method: nn.Module, options: CompileOptions | None = None) -> int:
    """Compile every block of ``method`` in place (student, teacher, decoder); returns how
    many. Compilation itself happens at each block's first call."""
    kwargs = (options or CompileOptions()).kwargs()
    blocks = blocks_of(method)
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def compiled_blocks(module: nn.Module) -> int:
    """How many modules inside ``module`` are compiled in place (``nn.Module.compile``)."""
    return sum(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def _cpp_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_compile_support(options: CompileOptions, on_cpu: bool) -> None:
    """A clear error, before anything runs, when compilation cannot work here: torch without
    ``nn.Module.compile`` (< 2.2), or inductor on the CPU without a C++ compiler."""
    if _version(torch.__version__) < (2, 2):
        raise ConfigError(f"model.compile needs torch >= 2.2; found torch {torch.__version__}")
    if on_cpu and options.backend == "inductor" and _cpp_compiler() is None:
        raise ConfigError(
            "model.compile on the CPU: inductor generates C++ and needs a C++ compiler (g++ or "
            "clang++, or $CXX) on PATH; install one (apt install g++), or set "
            "model.compile=false"
        )
