"""Model specs for evaluation: a model file, a training checkpoint, or a random initialisation.

- ``path/to/model.safetensors`` (with its JSON card): :func:`eofm.models.load_model`; bands and
  normalisation come from the card.
- ``path/to/checkpoint.ckpt`` (or ``.pth``/``.pt``/``.bin``/``.safetensors`` without a card):
  the backbone named by ``backbone=`` is built for the data's bands and the weights found in
  the checkpoint are loaded (read with ``weights_only=True``; wrapper prefixes such as the
  Lightning ``method.backbone.model.`` are found automatically).
- ``random:<backbone>``: the backbone at random initialisation (seeded).
- baseline ``rgb:<path>``: an RGB checkpoint adapted to the data's bands
  (:func:`eofm.models.load_pretrained`, see ``docs/models.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eofm.errors import CheckpointError, ConfigError
from eofm.models import Backbone, create_backbone, load_model, load_pretrained
from eofm.models.checkpoints import extract_state_dict, read_checkpoint
from eofm.models.export import card_path, read_card
from eofm.models.zoo import is_published_name

#: Words that mark the copy of the weights to prefer when a checkpoint holds several.
_PREFERRED = ("teacher", "ema")
_AVOIDED = ("student", "momentum", "predictor", "decoder", "head")


@dataclass
class ResolvedModel:
    """A backbone ready to evaluate, with what is known about it."""

    name: str
    spec: str
    backbone: Backbone
    #: Identifies the weights (hash) + architecture + bands, for feature caches.
    key: str
    #: ``{"mean": {band: v}, "std": {band: v}}`` from a model card, else None.
    normalization: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def bands(self) -> tuple[str, ...]:
        return self.backbone.bands

    def fresh(self) -> Backbone:
        """A deep copy of the backbone (for fine-tuning without touching the original)."""
        import copy

        return copy.deepcopy(self.backbone)


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        read = 0
        while chunk := f.read(1 << 20):
            h.update(chunk)
            read += len(chunk)
            if limit is not None and read >= limit:
                break
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def find_backbone_prefix(
    keys: Iterable[str], model_keys: Iterable[str], prefix: str | None = None
) -> str:
    """The key prefix under which a checkpoint stores the backbone's tensors.

    Every ``<prefix><model key>`` counts for its prefix; the prefix covering most model keys
    wins, then one naming the teacher / EMA copy, then one not naming a student, momentum
    encoder, predictor or head, then the shortest. ``prefix`` forces a choice.
    """
    if prefix is not None:
        return prefix
    targets = set(model_keys)
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in targets:
                p = ".".join(parts[:i]) + ("." if i else "")
                counts[p] = counts.get(p, 0) + 1
                break
    if not counts:
        return ""

    def rank(p: str) -> tuple[int, int, int, int]:
        low = p.lower()
        return (
            -counts[p],
            -int(any(w in low for w in _PREFERRED)),
            int(any(w in low for w in _AVOIDED)),
            len(p),
        )

    return min(counts, key=rank)


def backbone_state(
    path: str | Path, backbone: Backbone, prefix: str | None = None
) -> tuple[dict[str, Tensor], str]:
    """The tensors of ``path`` that belong to ``backbone``, prefix removed, and the prefix."""
    raw = read_checkpoint(path)
    state, _ = extract_state_dict(raw, path)
    model_keys = backbone.model.state_dict().keys()
    found = find_backbone_prefix(state, model_keys, prefix)
    stripped = {k[len(found) :]: v for k, v in state.items() if k.startswith(found)}
    if not any(k in model_keys for k in stripped):
        raise CheckpointError(
            f"{path}: none of its {len(state)} tensors fits backbone {backbone.arch} "
            f"(checkpoint keys e.g. {sorted(state)[:4]}; "
            f"model keys e.g. {sorted(model_keys)[:4]}); check --backbone or pass --prefix"
        )
    return stripped, found


def _has_card(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors" and card_path(path).exists()


def resolve_model(
    spec: str | Path,
    *,
    bands: Sequence[str],
    img_size: int | tuple[int, int],
    backbone: str | None = None,
    sensor: str | None = None,
    seed: int = 0,
    prefix: str | None = None,
    strict: bool = True,
    name: str | None = None,
) -> ResolvedModel:
    """Build the backbone of ``spec`` (see the module docstring) for the data's ``bands``."""
    text = str(spec)
    if text.startswith("random:"):
        arch = text.split(":", 1)[1] or backbone
        if not arch:
            raise ConfigError("random:<backbone> needs a backbone name, e.g. random:vit_test")
        torch.manual_seed(seed)
        bb = create_backbone(arch, bands=list(bands), img_size=img_size, sensor=sensor)
        bb.eval()
        return ResolvedModel(
            name=name or f"random {arch}",
            spec=text,
            backbone=bb,
            key=_key("random", arch, tuple(bb.bands), bb.img_size, seed),
            info={"init": "random", "seed": seed},
        )
    if is_published_name(text):
        return resolve_published_model(
            text, bands=bands, img_size=img_size, backbone=backbone, sensor=sensor, name=name
        )
    if text.startswith("rgb:"):
        return resolve_rgb_baseline(
            text[4:], bands=bands, img_size=img_size, backbone=backbone, sensor=sensor, name=name
        )
    path = Path(text)
    if not path.exists():
        raise ConfigError(
            f"model {text!r} is neither an existing file nor random:<backbone> / rgb:<path>"
        )
    if _has_card(path):
        bb = load_model(path)
        card = bb.card or read_card(path)
        return ResolvedModel(
            name=name or path.stem,
            spec=text,
            backbone=bb,
            key=_key("file", card.get("sha256"), card.get("arch"), tuple(bb.bands)),
            normalization=card.get("normalization"),
            info={
                "card": {
                    k: card.get(k) for k in ("arch", "bands", "img_size", "pretraining", "created")
                }
            },
        )
    if not backbone:
        raise ConfigError(
            f"{path}: a checkpoint without a model card needs --backbone <name> "
            "(e.g. --backbone vit_small_patch16)"
        )
    bb = create_backbone(backbone, bands=list(bands), img_size=img_size, sensor=sensor)
    state, found = backbone_state(path, bb, prefix)
    report = load_pretrained(bb, state, strict=strict)
    bb.eval()
    return ResolvedModel(
        name=name or path.stem,
        spec=text,
        backbone=bb,
        key=_key("ckpt", file_sha256(path), backbone, tuple(bb.bands), found),
        info={"prefix": found, "load_report": report.to_dict()},
    )


def resolve_published_model(
    text: str,
    *,
    bands: Sequence[str],
    img_size: int | tuple[int, int],
    backbone: str | None = None,
    sensor: str | None = None,
    name: str | None = None,
) -> ResolvedModel:
    """A published model (``torchgeo:``/``timm:``/``hf:``) built for the data's ``bands``.

    The weights' own bands are matched to the data's by name (bands the model lacks are
    adapted as for ``rgb:`` baselines); no band in common is a :class:`BandMismatchError`
    naming both lists. The normalisation of the weights' metadata is used when it covers
    every band of the data.
    """
    from eofm.data.sensors import match_bands
    from eofm.errors import BandMismatchError
    from eofm.models.zoo import pretrained_options, resolve_published, weights_file

    pw = resolve_published(text)
    arch = backbone or pw.arch
    if not arch:
        raise ConfigError(f"{text}: name the architecture of these weights with --backbone")
    if pw.bands:
        common = []
        for b in bands:
            try:
                match_bands([b], pw.bands, sensor=pw.sensor or sensor)
                common.append(b)
            except Exception:
                continue
        if not common:
            raise BandMismatchError(
                text, pw.bands, tuple(bands), "the model and the data have no band in common"
            )
    path = weights_file(pw)
    bb = create_backbone(
        arch,
        bands=list(bands),
        img_size=img_size,
        sensor=sensor or pw.sensor,
        **pretrained_options(text),
    )
    bb.eval()
    norm = None
    if pw.normalization and all(b in pw.normalization["mean"] for b in bb.bands):
        norm = {
            k: (v if k == "method" else {b: v[b] for b in bb.bands})
            for k, v in pw.normalization.items()
        }
    report = bb.pretrained_report
    return ResolvedModel(
        name=name or text,
        spec=text,
        backbone=bb,
        key=_key("published", text, file_sha256(path, limit=1 << 22), arch, tuple(bb.bands)),
        normalization=norm,
        info={
            "published": pw.describe(),
            "load_report": report.to_dict() if report is not None else None,
        },
    )


def resolve_rgb_baseline(
    path_text: str,
    *,
    bands: Sequence[str],
    img_size: int | tuple[int, int],
    backbone: str | None,
    sensor: str | None = None,
    name: str | None = None,
) -> ResolvedModel:
    """An RGB checkpoint loaded into ``backbone`` built for ``bands`` (bands adapted)."""
    path = Path(path_text)
    if not path.exists():
        raise ConfigError(f"rgb baseline {path}: file does not exist")
    arch = backbone
    overrides: Mapping[str, Any] = {}
    if _has_card(path):
        card = read_card(path)
        arch = str(card["arch"])
        overrides = dict(card.get("timm_overrides") or {})
    if not arch:
        raise ConfigError(f"rgb baseline {path}: name the architecture with --backbone")
    bb = create_backbone(arch, bands=list(bands), img_size=img_size, sensor=sensor, **overrides)
    state, found = backbone_state(path, bb)
    report = load_pretrained(bb, state, strict=False)
    bb.eval()
    return ResolvedModel(
        name=name or f"rgb {path.stem}",
        spec=f"rgb:{path_text}",
        backbone=bb,
        key=_key("rgb", file_sha256(path), arch, tuple(bb.bands), found),
        info={"prefix": found, "load_report": report.to_dict()},
    )
