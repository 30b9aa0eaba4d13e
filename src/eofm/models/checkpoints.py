"""Safe checkpoint reading: safetensors or ``torch.load(weights_only=True)``, never pickled code.

:func:`read_checkpoint` returns the raw object; :func:`extract_state_dict` finds the tensors in
nested training checkpoints (``state_dict``, ``model``, ``teacher``...); :func:`strip_prefix`
removes wrapper prefixes (``module.``, ``backbone.``, ``teacher.``, ``encoder.``...).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eofm.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")

#: Keys under which training code nests the weights, most preferred first (teacher before
#: student: the teacher is the model evaluated in DINO-style methods).
WRAPPER_KEYS = (
    "state_dict",
    "model",
    "model_state",
    "model_state_dict",
    "teacher",
    "target_encoder",
    "student",
    "encoder",
    "backbone",
    "module",
    "net",
    "params",
)

#: Leading key components that wrap a backbone and can be stripped.
KNOWN_PREFIXES = (
    "module",
    "_orig_mod",
    "model",
    "backbone",
    "teacher",
    "student",
    "encoder",
    "target_encoder",
    "net",
    "trunk",
)

StateDict = dict[str, Tensor]


def read_checkpoint(path: str | PathLike[str]) -> Any:
    """The object stored in ``path``, read without executing pickled code.

    ``.safetensors`` files are read with safetensors; ``.pth/.pt/.bin/.ckpt/.tar`` with
    ``torch.load(weights_only=True)``. A pickle that holds Python objects other than tensors and
    plain containers raises :class:`CheckpointError` (the objects are not executed).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file does not exist")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (0 bytes)")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from exc
    if suffix in TORCH_SUFFIXES:
        return load_torch_checkpoint(p)
    raise CheckpointError(
        f"{p}: unknown checkpoint type {suffix!r}; "
        f"expected one of {[*SAFETENSORS_SUFFIXES, *TORCH_SUFFIXES]}"
    )


def load_torch_checkpoint(path: str | PathLike[str], *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure a :class:`CheckpointError`.

    A pickle that would build Python objects other than tensors and plain containers (the
    way a malicious checkpoint runs code) is refused before anything is executed. ``mmap``:
    map the tensors instead of reading them (cheap validation of a large checkpoint; falls
    back to reading for the legacy, non-zip format).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty (0 bytes)")
    try:
        try:
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{p}: contains pickled Python objects that are not plain tensors or containers; "
            "they were not executed (loading uses weights_only=True). Re-save the weights "
            "as a plain state dict or as .safetensors from a trusted environment. "
            f"Detail: {_first_line(exc)}"
        ) from exc
    except MemoryError:
        raise CheckpointError(f"{p}: not enough memory to read the checkpoint") from None
    except Exception as exc:  # truncated or corrupt archives raise many types
        raise CheckpointError(f"{p}: cannot be read as a PyTorch checkpoint ({exc!r})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # torch's message puts the offending global on a line of its own ("Unsupported global: ...").
    detail = [ln for ln in lines if "global" in ln.lower()]
    return (detail or lines or [type(exc).__name__])[0][:300]


def _tensors(obj: Mapping[str, Any]) -> StateDict:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _count_tensors(obj: Any, depth: int = 4) -> int:
    """Tensors reachable from ``obj`` through nested mappings (a few levels deep)."""
    if isinstance(obj, Tensor):
        return 1
    if depth == 0 or not isinstance(obj, Mapping):
        return 0
    return sum(_count_tensors(v, depth - 1) for v in obj.values())


def extract_state_dict(obj: Any, path: str | PathLike[str] | None = None) -> tuple[StateDict, str]:
    """The tensors of a (possibly nested) checkpoint and the path of keys that led to them.

    Descends through :data:`WRAPPER_KEYS` (``{"model": {"state_dict": ...}}``) while the current
    level holds no tensors of its own; non-tensor entries (epoch, optimizer...) are dropped.
    """
    where = f"{path}: " if path is not None else ""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}checkpoint holds a {type(obj).__name__}, not a dict of tensors "
            "(a whole pickled model cannot be loaded safely; save its state_dict())"
        )
    trail: list[str] = []
    current: Mapping[str, Any] = obj
    for _ in range(8):
        tensors = _tensors(current)
        nested = [k for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)]
        # A level whose tensors are few next to a wrapper dict is a training checkpoint
        # (e.g. {"model": {...}, "ema_scale": tensor}); otherwise the tensors are the weights.
        if nested and len(tensors) < _count_tensors(current[nested[0]]):
            trail.append(nested[0])
            current = current[nested[0]]
            continue
        if tensors:
            return tensors, ".".join(trail)
        break
    raise CheckpointError(
        f"{where}no tensors found in checkpoint (top-level keys: {sorted(map(str, obj))[:20]}); "
        f"expected a state dict, possibly under one of {list(WRAPPER_KEYS)}"
    )


def _dinov2_unchunk(state: StateDict) -> StateDict:
    """DINOv2 ``block_chunks`` layout ``blocks.<chunk>.<i>.`` -> flat ``blocks.<i>.``."""
    pat = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
    if not state or not any(pat.match(k) for k in state):
        return state
    return {pat.sub(lambda m: f"blocks.{m.group(2)}.", k): v for k, v in state.items()}


def candidate_prefixes(keys: Iterable[str], known: Iterable[str] = KNOWN_PREFIXES) -> list[str]:
    """Prefixes (``""``, ``"module."``, ``"module.backbone."``...) made of known wrapper names."""
    known_set = set(known)
    found = {""}
    for key in keys:
        parts = key.split(".")
        prefix = ""
        for part in parts[:-1][:3]:
            if part not in known_set:
                break
            prefix += part + "."
            found.add(prefix)
    return sorted(found, key=lambda p: (p.count("."), p))


def strip_prefix(
    state: StateDict, model_keys: Iterable[str] | None = None
) -> tuple[StateDict, str]:
    """Remove the wrapper prefix that best fits ``model_keys`` (or covers most keys).

    Returns the stripped state dict (keys outside the chosen prefix dropped) and the prefix.
    """
    targets = set(model_keys) if model_keys is not None else None
    best, best_score = "", -1
    for prefix in candidate_prefixes(state):
        under = [k[len(prefix) :] for k in state if k.startswith(prefix)]
        if targets is not None:
            score = sum(1 for k in under if k in targets)
        else:
            score = (
                len(under)
                if prefix
                else sum(1 for k in state if k.split(".")[0] not in KNOWN_PREFIXES)
            )
        if score > best_score:  # ties keep the shorter prefix (sorted first)
            best, best_score = prefix, score
    if not best:
        return _dinov2_unchunk(dict(state)), ""
    stripped = {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}
    return _dinov2_unchunk(stripped), best


def load_state_dict_file(
    path: str | PathLike[str], model_keys: Iterable[str] | None = None
) -> tuple[StateDict, dict[str, Any]]:
    """Read ``path`` safely and return its (unwrapped, prefix-stripped) state dict.

    The second value describes what was done: ``{"nested_under": ..., "prefix": ...,
    "dropped": [keys outside the prefix]}``.
    """
    raw = read_checkpoint(path)
    state, trail = extract_state_dict(raw, path)
    keys = list(model_keys) if model_keys is not None else None
    if keys is not None:
        state = _dinov2_unchunk(state)
    stripped, prefix = strip_prefix(state, keys)
    dropped = sorted(k for k in state if prefix and not k.startswith(prefix))
    return stripped, {"nested_under": trail, "prefix": prefix, "dropped": dropped}
