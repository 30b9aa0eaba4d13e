"""Load pretrained weights into a backbone with other bands, image size or patch size.

The channel-adaptation rule (see :func:`adapt_input_weight` and ``docs/models.md``):

1. A target band that matches a source band by name (``B04`` matches ``red`` for
   Sentinel-2) gets that band's kernel, copied exactly.
2. The ``n`` target bands without a match share a *fill kernel* ``K`` equally (each gets ``K/n``):

   - if some source bands found no target (RGB -> SAR, or RGB -> red+NIR), ``K`` is the sum of
     their kernels, so the kernels over all bands sum to the source kernels' sum;
   - if every source band was copied (RGB -> Sentinel-2), ``K`` is the mean source kernel.

Consequences: with the new bands set to zero the output equals the source model's output on
the matched bands (nothing of the source model is rescaled); a flat spectrum (every band the
same value) gives exactly the source model's response when source bands were left over, and
``(S + 1) / S`` of it (4/3 for RGB) when all ``S`` were copied; with independent standardised
bands the first-layer variance grows by at most ``|K|^2 / n`` over the matched bands' part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Protocol

import torch
from torch import Tensor

from eofm.data.sensors import Sensor, get_sensor, list_sensors, normalise_band_name
from eofm.errors import CheckpointError, UnknownNameError
from eofm.models.checkpoints import (
    StateDict,
    extract_state_dict,
    load_state_dict_file,
    strip_prefix,
)


class AdaptTarget(Protocol):
    """What :func:`load_pretrained` needs of a model: :class:`eofm.models.Backbone` has it.

    A protocol rather than an import keeps ``adapt`` below ``backbones`` (no import circle).
    """

    model: torch.nn.Module
    arch: str
    family: str
    bands: tuple[str, ...]
    sensor: str | None

    @property
    def in_chans(self) -> int: ...

    @property
    def first_conv(self) -> str: ...


#: What the first layer of an ImageNet-style checkpoint sees, in order.
RGB_SOURCE_BANDS: tuple[str, str, str] = ("red", "green", "blue")

#: Model keys that may be absent from a checkpoint without harm (counters, not weights).
OPTIONAL_KEYS_SUFFIXES = ("num_batches_tracked",)

_MAX_LISTED = 20


def band_keys(name: str, sensor: str | Sensor | None = None) -> set[str]:
    """Comparison keys of a band name: itself, and its other names (``B04`` -> ``red``).

    With a ``sensor`` its band table decides. Without one, every registered sensor that knows
    the name is asked and its common name is added only if they all agree (``B04`` is red in
    Sentinel-2 and Landsat; ``B05`` is not added anything, it differs).
    """
    keys = {normalise_band_name(name)}
    if sensor is not None:
        sens = get_sensor(sensor)
        with suppress(UnknownNameError):
            keys |= {normalise_band_name(n) for n in sens.band(name).names()}
        return keys
    commons: set[str] = set()
    for sname in list_sensors():
        try:
            band = get_sensor(sname).band(name)
        except UnknownNameError:
            continue
        commons.add(normalise_band_name(band.common_name or band.name))
    if len(commons) == 1:
        keys |= commons
    return keys


@dataclass(frozen=True)
class BandMapping:
    """How the first-layer kernels of the target bands were made from the source bands."""

    source_bands: tuple[str, ...]
    target_bands: tuple[str, ...]
    copied: dict[str, str]
    filled: tuple[str, ...]
    fill_from: tuple[str, ...]
    fill_rule: str
    fill_scale: float
    dropped: tuple[str, ...]

    @property
    def identity(self) -> bool:
        return (
            not self.filled
            and not self.dropped
            and list(self.copied) == list(self.target_bands)
            and list(self.copied.values()) == list(self.source_bands)
        )

    def describe(self) -> str:
        if self.identity:
            return f"bands unchanged ({len(self.target_bands)})"
        parts = []
        if self.copied:
            parts.append("copied " + ", ".join(f"{t}<-{s}" for t, s in self.copied.items()))
        if self.filled:
            parts.append(
                f"filled {', '.join(self.filled)} with {self.fill_rule} of "
                f"[{', '.join(self.fill_from)}] x {self.fill_scale:.4g} each"
            )
        if self.dropped:
            parts.append(f"source bands without target: {', '.join(self.dropped)}")
        head = f"{len(self.source_bands)} -> {len(self.target_bands)} bands"
        return head + ": " + "; ".join(parts)


def match_source_bands(
    source_bands: Sequence[str],
    target_bands: Sequence[str],
    *,
    source_sensor: str | Sensor | None = None,
    target_sensor: str | Sensor | None = None,
) -> dict[int, int]:
    """``{target index: source index}`` for target bands that match a source band by name."""
    src_keys = [band_keys(b, source_sensor) for b in source_bands]
    tgt_keys = [band_keys(b, target_sensor) for b in target_bands]
    out: dict[int, int] = {}
    used: set[int] = set()
    # Exact names first, then any shared name, so "red" never steals a band named "B04".
    for exact in (True, False):
        for t, tk in enumerate(tgt_keys):
            if t in out:
                continue
            for s, sk in enumerate(src_keys):
                if s in used:
                    continue
                same = normalise_band_name(target_bands[t]) == normalise_band_name(source_bands[s])
                if same if exact else bool(tk & sk):
                    out[t] = s
                    used.add(s)
                    break
    return out


def adapt_input_weight(
    weight: Tensor,
    source_bands: Sequence[str],
    target_bands: Sequence[str],
    *,
    source_sensor: str | Sensor | None = None,
    target_sensor: str | Sensor | None = None,
) -> tuple[Tensor, BandMapping]:
    """First-layer kernels ``(out, S, ...)`` for ``source_bands`` -> ``(out, T, ...)`` for targets.

    Follows the module's rule: matched bands copied exactly; the ``n`` unmatched target bands
    each get ``K / n``, ``K`` being the sum of the unmatched source kernels, or the mean source
    kernel when every source band was matched.
    """
    src = tuple(source_bands)
    tgt = tuple(target_bands)
    if weight.ndim < 2 or weight.shape[1] != len(src):
        raise CheckpointError(
            f"first-layer weight of shape {tuple(weight.shape)} does not take the "
            f"{len(src)} source bands {list(src)}"
        )
    matches = match_source_bands(src, tgt, source_sensor=source_sensor, target_sensor=target_sensor)
    out_shape = (weight.shape[0], len(tgt), *weight.shape[2:])
    new = torch.zeros(out_shape, dtype=weight.dtype, device=weight.device)
    for t, s in matches.items():
        new[:, t] = weight[:, s]
    unmatched_t = [t for t in range(len(tgt)) if t not in matches]
    used = set(matches.values())
    unmatched_s = [s for s in range(len(src)) if s not in used]
    fill_from: tuple[str, ...] = ()
    rule = "none"
    scale = 0.0
    if unmatched_t:
        n = len(unmatched_t)
        if unmatched_s:
            kernel = weight[:, unmatched_s].sum(dim=1)
            fill_from = tuple(src[s] for s in unmatched_s)
            rule = "sum"
            scale = 1.0 / n
        else:
            kernel = weight.mean(dim=1)
            fill_from = src
            rule = "mean"
            scale = 1.0 / n
        for t in unmatched_t:
            new[:, t] = kernel * scale
    mapping = BandMapping(
        source_bands=src,
        target_bands=tgt,
        copied={tgt[t]: src[s] for t, s in sorted(matches.items())},
        filled=tuple(tgt[t] for t in unmatched_t),
        fill_from=fill_from,
        fill_rule=rule,
        fill_scale=scale,
        dropped=tuple(src[s] for s in unmatched_s) if not unmatched_t else (),
    )
    return new, mapping


def _unnamed(band: str) -> bool:
    """Names given to bands specified only by count (``band_0``...)."""
    return band.startswith("band_") and band[5:].isdigit()


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


@dataclass
class AdaptationReport:
    """What :func:`load_pretrained` did with each tensor."""

    source: str
    arch: str
    strict: bool = True
    nested_under: str = ""
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    interpolated: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    band_mapping: BandMapping | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def left_random(self) -> list[str]:
        """Model tensors that kept their random initialisation."""
        return sorted([*self.missing, *self.mismatched])

    @property
    def complete(self) -> bool:
        """Every model tensor came from the checkpoint."""
        return not self.missing and not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "arch": self.arch,
            "strict": self.strict,
            "nested_under": self.nested_under,
            "prefix": self.prefix,
            "loaded": list(self.loaded),
            "adapted": dict(self.adapted),
            "interpolated": dict(self.interpolated),
            "missing": list(self.missing),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
            "unexpected": list(self.unexpected),
            "band_mapping": None if self.band_mapping is None else self.band_mapping.describe(),
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"Pretrained weights {self.source} -> {self.arch}"]
        if self.nested_under or self.prefix:
            lines.append(
                f"  read from: {self.nested_under or '(top level)'}; "
                f"prefix stripped: {self.prefix or '(none)'}"
            )
        lines.append(f"  loaded: {len(self.loaded)} tensors")
        for title, entries in (("adapted", self.adapted), ("interpolated", self.interpolated)):
            if entries:
                lines.append(f"  {title}: {len(entries)}")
                lines.extend(f"    {k}: {v}" for k, v in entries.items())
        if self.missing:
            lines.append(f"  missing, left random: {len(self.missing)}")
            lines.extend(f"    {k}" for k in self.missing[:_MAX_LISTED])
            if len(self.missing) > _MAX_LISTED:
                lines.append(f"    ... and {len(self.missing) - _MAX_LISTED} more")
        if self.mismatched:
            lines.append(f"  wrong shape, left random: {len(self.mismatched)}")
            lines.extend(
                f"    {k}: checkpoint {list(a)} vs model {list(b)}"
                for k, (a, b) in list(self.mismatched.items())[:_MAX_LISTED]
            )
        if self.unexpected:
            shown = ", ".join(self.unexpected[:8])
            more = f" ... (+{len(self.unexpected) - 8})" if len(self.unexpected) > 8 else ""
            lines.append(f"  not in model, ignored: {len(self.unexpected)} ({shown}{more})")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _timm_filter(family: str) -> Callable[..., dict[str, Tensor]] | None:
    """timm's own checkpoint filter for a family (key remapping and resampling)."""
    from timm.models import swin_transformer, swin_transformer_v2, vision_transformer

    filters: dict[str, Callable[..., dict[str, Tensor]]] = {
        "vit": vision_transformer.checkpoint_filter_fn,
        "swin": swin_transformer.checkpoint_filter_fn,
        "swinv2": swin_transformer_v2.checkpoint_filter_fn,
    }
    return filters.get(family)


def _list_problems(report: AdaptationReport) -> str:
    parts = []
    if report.mismatched:
        items = list(report.mismatched.items())
        shown = "; ".join(
            f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in items[:10]
        )
        more = f"; ... (+{len(items) - 10})" if len(items) > 10 else ""
        parts.append(f"{len(items)} tensors of the wrong shape ({shown}{more})")
    if report.missing:
        shown = ", ".join(report.missing[:10])
        more = f", ... (+{len(report.missing) - 10})" if len(report.missing) > 10 else ""
        parts.append(
            f"{len(report.missing)} model tensors missing from the checkpoint ({shown}{more})"
        )
    return "; ".join(parts)


def load_pretrained(
    backbone: AdaptTarget,
    checkpoint: str | PathLike[str] | Mapping[str, Any],
    *,
    source_bands: Sequence[str] | None = None,
    source_sensor: str | Sensor | None = None,
    strict: bool = True,
) -> AdaptationReport:
    """Load ``checkpoint`` into ``backbone``, adapting bands, image size and patch size.

    ``checkpoint``: a ``.safetensors``/``.pth``/``.pt``/``.bin``/``.ckpt`` path (read safely, see
    :func:`eofm.models.checkpoints.read_checkpoint`) or an in-memory state dict. Nested
    training checkpoints and wrapper prefixes (``module.``, ``backbone.``, ``teacher.``...) are
    unwrapped; foreign layouts are mapped with timm's own filter for the family (DINOv2 keys,
    original Swin layout, position-embedding and patch-kernel resampling).

    ``source_bands``: the bands the checkpoint's first layer takes, in order. Default: RGB for a
    3-band checkpoint, else the backbone's own bands when the count agrees.

    With ``strict`` (default), a checkpoint tensor of the wrong shape or a model tensor missing
    from the checkpoint raises :class:`CheckpointError`; with ``strict=False`` they are left
    random and listed in the report. Tensors the model does not have are ignored and listed.
    """
    model = backbone.model
    model_state = model.state_dict()
    if isinstance(checkpoint, Mapping):
        source_name = "<state dict>"
        state, trail = extract_state_dict(checkpoint)
        full_keys = list(state)
        state, prefix = strip_prefix(state, model_state)
        info: dict[str, Any] = {
            "nested_under": trail,
            "prefix": prefix,
            "dropped": sorted(k for k in full_keys if prefix and not k.startswith(prefix)),
        }
    else:
        source_name = str(checkpoint)
        state, info = load_state_dict_file(checkpoint, model_state)
    report = AdaptationReport(
        source=source_name,
        arch=backbone.arch,
        strict=strict,
        nested_under=str(info.get("nested_under", "")),
        prefix=str(info.get("prefix", "")),
    )
    where = f"{source_name}: "
    before = {k: _shape(v) for k, v in state.items()}

    # Map foreign layouts and resample position embeddings / patch kernels as timm does.
    filter_fn = _timm_filter(backbone.family)
    if filter_fn is not None:
        try:
            state = dict(filter_fn(dict(state), model))
        except (RuntimeError, ValueError, KeyError, AssertionError, IndexError) as exc:
            raise CheckpointError(
                f"{where}cannot map checkpoint onto {backbone.arch} ({type(exc).__name__}: {exc})"
            ) from exc
    for key, value in state.items():
        old = before.get(key)
        new_shape = _shape(value)
        if old is not None and old != new_shape and key in model_state:
            if key.endswith("pos_embed"):
                what = "position embedding"
            elif key == f"{backbone.first_conv}.weight":
                what = "patch kernel"
            elif key.endswith("relative_position_bias_table"):
                what = "relative position bias"
            else:
                what = "resampled"
            report.interpolated[key] = f"{what} {list(old)} -> {list(new_shape)}"

    # Adapt the bands of the first layer.
    wkey = f"{backbone.first_conv}.weight"
    if wkey in state and wkey in model_state and state[wkey].ndim == model_state[wkey].ndim:
        weight = state[wkey]
        n_src = int(weight.shape[1])
        src_sensor = source_sensor
        if source_bands is not None:
            src = tuple(source_bands)
            if len(src) != n_src:
                raise CheckpointError(
                    f"{where}{wkey} takes {n_src} bands but source_bands names {len(src)}: "
                    f"{list(src)}"
                )
        elif n_src == backbone.in_chans and all(_unnamed(b) for b in backbone.bands):
            src = backbone.bands
            report.notes.append(
                f"backbone bands are unnamed; checkpoint's {n_src} input bands taken in order"
            )
        elif n_src == 3:
            src = RGB_SOURCE_BANDS
            if backbone.in_chans != 3 or backbone.bands != RGB_SOURCE_BANDS:
                report.notes.append("checkpoint's 3 input bands taken as red, green, blue")
        elif n_src == backbone.in_chans:
            src = backbone.bands
            src_sensor = src_sensor if src_sensor is not None else backbone.sensor
            report.notes.append(
                f"checkpoint's {n_src} input bands taken as the backbone's own, in order"
            )
        else:
            raise CheckpointError(
                f"{where}{wkey} takes {n_src} bands and the backbone has {backbone.in_chans} "
                f"({list(backbone.bands)}); pass source_bands=[...] naming the checkpoint's bands"
            )
        new_weight, mapping = adapt_input_weight(
            weight,
            src,
            backbone.bands,
            source_sensor=src_sensor,
            target_sensor=backbone.sensor,
        )
        report.band_mapping = mapping
        if not mapping.identity:
            state[wkey] = new_weight
            report.adapted[wkey] = mapping.describe()

    # Compare with the model.
    to_load: StateDict = {}
    for key, target in model_state.items():
        if key not in state:
            if not key.endswith(OPTIONAL_KEYS_SUFFIXES):
                report.missing.append(key)
            continue
        value = state[key]
        if _shape(value) != _shape(target):
            report.mismatched[key] = (_shape(value), _shape(target))
            continue
        to_load[key] = value
    report.unexpected = sorted(
        [k for k in state if k not in model_state] + list(info.get("dropped", []))
    )
    report.loaded = sorted(to_load)
    if not to_load:
        raise CheckpointError(
            f"{where}no tensor of the checkpoint fits {backbone.arch} "
            f"({len(state)} checkpoint tensors, e.g. {sorted(state)[:5]}; "
            f"model expects e.g. {sorted(model_state)[:5]}); nothing was loaded"
        )
    if strict and not report.complete:
        raise CheckpointError(
            f"{where}checkpoint does not fit {backbone.arch}: {_list_problems(report)}. "
            "Pass strict=False to load the rest and leave these random."
        )
    result = model.load_state_dict(
        {k: v.to(dtype=model_state[k].dtype) for k, v in to_load.items()}, strict=False
    )
    if result.unexpected_keys:  # cannot happen: to_load only holds model keys
        raise CheckpointError(f"{where}unexpected keys {result.unexpected_keys}")
    return report
