"""Model files: a ``.safetensors`` weight file plus a JSON card that says how to use it.

The card (``model.json`` next to ``model.safetensors``) records the architecture, the bands in
input order, normalisation statistics per band, the pretraining method and data, the eofm
version, the creation time and the SHA-256 of the weights. :func:`load_model` rebuilds the
backbone from the card, checks the hash and loads the weights exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eofm.errors import CheckpointError, ConfigError
from eofm.models.adapt import band_keys
from eofm.models.backbones import Backbone, create_backbone
from eofm.models.checkpoints import read_checkpoint

CARD_FORMAT = "eofm-model"
CARD_VERSION = 1
_REQUIRED = ("format", "format_version", "arch", "bands", "img_size", "weights", "sha256")


def card_path(path: str | PathLike[str]) -> Path:
    """The JSON card that goes with a weight file (``x.safetensors`` -> ``x.json``)."""
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, flush it to disk, then rename it
    over ``path``: readers, and a process killed mid-write, see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp files are private (0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain_state(backbone: Backbone) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}


def _save_tensors(state: dict[str, Tensor], path: Path, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        _atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    else:
        _atomic_write(path, lambda tmp: torch.save(state, str(tmp)))


def _per_band(
    values: Sequence[float] | Mapping[str, float],
    bands: Sequence[str],
    sensor: str | None,
    what: str,
) -> dict[str, float]:
    if isinstance(values, Mapping):
        out: dict[str, float] = {}
        for band in bands:
            keys = band_keys(band, sensor)
            hits = [k for k in values if band_keys(k, sensor) & keys]
            if not hits:
                raise ConfigError(
                    f"normalisation {what} has no value for band {band!r} "
                    f"(given for {list(values)})"
                )
            out[band] = float(values[hits[0]])
    else:
        seq = [float(v) for v in values]
        if len(seq) != len(bands):
            raise ConfigError(
                f"normalisation {what} has {len(seq)} values for {len(bands)} bands {list(bands)}"
            )
        out = dict(zip(bands, seq, strict=True))
    for band, v in out.items():
        if not math.isfinite(v) or (what == "std" and v <= 0):
            raise ConfigError(f"normalisation {what} of band {band!r} is invalid: {v}")
    return out


def _normalisation(
    norm: Mapping[str, Any] | None, bands: Sequence[str], sensor: str | None
) -> dict[str, Any] | None:
    """``{"mean": {band: v}, "std": {band: v}, ...}``; other keys (``method``...) kept as is."""
    if norm is None:
        return None
    if "mean" not in norm or "std" not in norm:
        raise ConfigError(f"normalization needs 'mean' and 'std'; got keys {sorted(norm)}")
    rest = {str(k): v for k, v in norm.items() if k not in ("mean", "std")}
    return {
        "mean": _per_band(norm["mean"], bands, sensor, "mean"),
        "std": _per_band(norm["std"], bands, sensor, "std"),
        **_json_safe(rest, "normalization"),
    }


def _json_safe(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be written to a JSON model card: {exc}") from exc


def export_model(
    backbone: Backbone,
    path: str | PathLike[str],
    *,
    normalization: Mapping[str, Any] | None = None,
    method: str | None = None,
    data: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (``.safetensors``) and its JSON card; return the weight file's path.

    ``normalization``: ``{"mean": [...], "std": [...]}`` in band order, or dicts keyed by band
    name; other keys (e.g. ``"method": "zscore"``) are stored as given. ``method``/``data``:
    how and on what the weights were pretrained. ``extra``: any JSON-serialisable additions
    (training config, metrics...).
    """
    weights = Path(path)
    if weights.suffix.lower() != ".safetensors":
        raise ConfigError(f"{weights}: a model file must end in .safetensors")
    from eofm import __version__

    overrides = _json_safe(backbone.overrides, "timm options of the backbone")
    card_extra = _json_safe(dict(extra or {}), "extra")
    norm = _normalisation(normalization, backbone.bands, backbone.sensor)
    _save_tensors(_plain_state(backbone), weights, "safetensors")
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "eofm_version": __version__,
        "arch": backbone.arch,
        "family": backbone.family,
        "timm_name": backbone.timm_name,
        "timm_overrides": overrides,
        "bands": list(backbone.bands),
        "sensor": backbone.sensor,
        "img_size": list(backbone.img_size),
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "feature_channels": list(backbone.feature_channels),
        "feature_strides": list(backbone.feature_strides),
        "num_params": sum(p.numel() for p in backbone.parameters()),
        "normalization": norm,
        "pretraining": {"method": method, "data": data},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights.name,
        "sha256": _sha256(weights),
        "extra": card_extra,
    }
    text = json.dumps(card, indent=2) + "\n"

    def write_card(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    _atomic_write(card_path(weights), write_card)
    return weights


def read_card(path: str | PathLike[str]) -> dict[str, Any]:
    """The card of a model file (``path`` may be the ``.safetensors`` or the ``.json``)."""
    card_file = card_path(path)
    if not card_file.exists():
        raise CheckpointError(
            f"{card_file}: model card not found; a bare state dict can be loaded with "
            "create_backbone(name, bands=..., pretrained=path)"
        )
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{card_file}: model card is not valid JSON ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{card_file}: not an eofm model card (format != {CARD_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"{card_file}: model card lacks fields {missing}")
    if int(card["format_version"]) > CARD_VERSION:
        raise CheckpointError(
            f"{card_file}: card format version {card['format_version']} is newer than this "
            f"eofm supports ({CARD_VERSION}); upgrade eofm"
        )
    return card


def load_model(path: str | PathLike[str], *, verify_hash: bool = True) -> Backbone:
    """Rebuild the backbone of a model file and load its weights exactly; ready to embed.

    The card is kept as ``backbone.card`` (bands, normalisation, pretraining...). The model is
    returned in eval mode. Raises :class:`CheckpointError` if the hash or any tensor disagrees.
    """
    card = read_card(path)
    card_file = card_path(path)
    weights = card_file.parent / str(card["weights"])
    if not weights.exists():
        raise CheckpointError(f"{weights}: weight file named by {card_file} does not exist")
    if verify_hash:
        digest = _sha256(weights)
        if digest != card["sha256"]:
            raise CheckpointError(
                f"{weights}: SHA-256 {digest[:16]}... does not match the card's "
                f"{str(card['sha256'])[:16]}... (file changed or corrupt)"
            )
    overrides = dict(card.get("timm_overrides") or {})
    backbone = create_backbone(
        str(card["arch"]),
        bands=list(card["bands"]),
        img_size=tuple(card["img_size"]),
        sensor=card.get("sensor"),
        **overrides,
    )
    state = read_checkpoint(weights)
    expected = backbone.model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = {
        k: (tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    }
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights}: weights do not fit {card['arch']} with bands {card['bands']}: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"wrong shapes {dict(list(wrong.items())[:10])}"
        )
    backbone.model.load_state_dict(state, strict=True)
    backbone.card = card
    backbone.eval()
    return backbone


def export_timm_state_dict(backbone: Backbone, path: str | PathLike[str]) -> Path:
    """Write the plain timm state dict (``.safetensors``, or ``.pth``/``.pt``/``.bin``).

    Loadable with ``timm.create_model(backbone.timm_name, in_chans=C, num_classes=0,
    img_size=..., **backbone.spec.timm_kwargs)`` and ``load_state_dict``.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix == ".safetensors":
        fmt = "safetensors"
    elif suffix in (".pth", ".pt", ".bin"):
        fmt = "torch"
    else:
        raise ConfigError(f"{out}: use a .safetensors, .pth, .pt or .bin file name")
    _save_tensors(_plain_state(backbone), out, fmt)
    return out
