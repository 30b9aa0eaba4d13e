"""Device names from the command line or a config, checked against this machine."""

from __future__ import annotations

import torch

from eofm.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None, *, option: str = "--device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``None`` (cpu) as a ``torch.device``.

    Raises :class:`ConfigError` naming ``option`` when the device is malformed or not present
    on this machine (a GPU asked for where there is none), before any work starts.
    """
    if spec is None or spec == "":
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{option} {spec!r} but no GPU is available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{option} {spec!r}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option} {spec!r} but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option} {spec!r}: unsupported device type; use cpu or cuda")
    return device
