"""Published foundation models by name: torchgeo weight enums, timm and Hugging Face files.

Names:

- ``torchgeo:<Enum>.<MEMBER>`` (``torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO``,
  ``torchgeo:ResNet50_Weights.SENTINEL1_ALL_MOCO``, SatlasPretrain, SeCo, DOFA...): the
  architecture, bands and normalisation come from the enum's metadata and transforms; the file
  is torchgeo's (``<file name of its URL>``).
- ``timm:<model>[.<tag>]`` (``timm:vit_small_patch14_dinov2.lvd142m``): an RGB timm model;
  normalisation from its pretrained config (scaled to 0..255 pixel values).
- ``hf:<org>/<repo>/<file>``: a file of a Hugging Face repository (architecture given with
  ``backbone=``, or an eofm model card beside it).

Weights are looked for, in this order, in ``$EOFM_WEIGHTS_DIR/<file>``, torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``) and the Hugging Face cache
(``$HF_HOME/hub/models--<org>--<repo>/snapshots/*/<file>``); with ``download=True`` (and a
network) a missing file is fetched there, otherwise the error says which file to place where.
Files are always read with ``weights_only=True`` or as safetensors
(:func:`eofm.models.checkpoints.read_checkpoint`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eofm.errors import CheckpointError, ConfigError, UnknownNameError

__all__ = [
    "PREFIXES",
    "PublishedWeights",
    "is_published_name",
    "list_published",
    "pretrained_options",
    "resolve_published",
]

PREFIXES = ("torchgeo:", "timm:", "hf:")


def is_published_name(text: str | os.PathLike[str] | None) -> bool:
    """True for ``torchgeo:...``, ``timm:...`` and ``hf:...`` names."""
    return isinstance(text, str) and text.startswith(PREFIXES)


@dataclass
class PublishedWeights:
    """What a published name stands for: the weight file, its architecture and its data."""

    name: str
    family: str
    #: eofm backbone name (``eofm.models.list_backbones()``); ``None``: to be given.
    arch: str | None
    timm_name: str | None
    #: Bands the weights were trained on, in their order (``None``: unknown).
    bands: tuple[str, ...] | None
    sensor: str | None
    filename: str
    url: str | None = None
    hf_repo: str | None = None
    img_size: int | None = None
    #: ``{"mean": {band: v}, "std": {band: v}}`` on raw pixel values, or ``None``.
    normalization: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def candidates(self) -> list[Path]:
        """Where the file is looked for, in order."""
        out: list[Path] = []
        env = os.environ.get("EOFM_WEIGHTS_DIR")
        if env:
            out.append(Path(env).expanduser() / self.filename)
        out.append(_torch_hub_dir() / "checkpoints" / self.filename)
        if self.hf_repo:
            snapshots = _hf_hub_dir() / f"models--{self.hf_repo.replace('/', '--')}" / "snapshots"
            found = sorted(snapshots.glob(f"*/{self.filename}")) if snapshots.is_dir() else []
            out.extend(found or [snapshots / "<revision>" / self.filename])
        return out

    def locate(self) -> Path | None:
        """The first place the file is, or ``None``."""
        return next((p for p in self.candidates() if p.is_file()), None)

    def fetch(self, download: bool = False) -> Path:
        """The local file; downloaded when missing and ``download`` is true."""
        found = self.locate()
        if found is not None:
            return found
        if download:
            return self._download()
        places = "\n  ".join(str(p) for p in self.candidates())
        source = self.url or (f"https://huggingface.co/{self.hf_repo}" if self.hf_repo else "")
        raise CheckpointError(
            f"the weights of {self.name} are not on this machine; place {self.filename} in one"
            f" of:\n  {places}\n(download it from {source}, or set EOFM_WEIGHTS_DIR to the"
            " folder holding it)",
        )

    def _download(self) -> Path:
        if self.url:
            import torch.hub

            target = _torch_hub_dir() / "checkpoints" / self.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(self.url, str(target), progress=True)
            return target
        if self.hf_repo:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(self.hf_repo, self.filename))
        raise CheckpointError(f"{self.name} names no download location for {self.filename}")

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (for ``eofm models list`` and model cards)."""
        where = self.locate()
        return {
            "name": self.name,
            "arch": self.arch,
            "timm_name": self.timm_name,
            "bands": list(self.bands) if self.bands else None,
            "sensor": self.sensor,
            "img_size": self.img_size,
            "file": self.filename,
            "cached": str(where) if where else None,
            **{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))},
        }


def _torch_hub_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir())


def _hf_hub_dir() -> Path:
    cache = os.environ.get("HF_HUB_CACHE")
    if cache:
        return Path(cache).expanduser().parent if Path(cache).name == "hub" else Path(cache)
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def arch_for_timm(timm_name: str) -> str | None:
    """The eofm backbone whose timm architecture is ``timm_name`` (tag after '.' ignored)."""
    from eofm.models.backbones import get_backbone_spec, list_backbones

    base = timm_name.split(".", 1)[0]
    for name in list_backbones():
        spec = get_backbone_spec(name)
        if spec.timm_name == base and not spec.timm_kwargs:
            return name
    return None


# --------------------------------------------------------------------------------------------
# torchgeo


def _canonical_bands(bands: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """torchgeo's band names (``B1``, ``B8a``, ``VV``) as eofm's (``B01``, ``B8A``) + sensor."""
    from eofm.data.sensors import get_sensor, match_bands

    names = [str(b) for b in bands]
    for sensor in ("sentinel2_l1c", "sentinel1_grd", "landsat8_oli"):
        try:
            s = get_sensor(sensor)
            idx = match_bands(names, s.band_names, sensor=s)
        except Exception:
            continue
        return tuple(s.band_names[i] for i in idx), s.name
    if [n.lower() for n in names] == ["r", "g", "b"] or [n.lower() for n in names] == [
        "red",
        "green",
        "blue",
    ]:
        return ("red", "green", "blue"), None
    return tuple(names), None


def _transform_stats(transforms: Any, n: int) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` of the Normalize step in a torchgeo transform pipeline."""
    modules = list(transforms.children()) if hasattr(transforms, "children") else []
    for mod in modules or [transforms]:
        mean, std = getattr(mod, "mean", None), getattr(mod, "std", None)
        if mean is None or std is None:
            flags = getattr(mod, "flags", None)  # kornia keeps them in flags
            if isinstance(flags, dict):
                mean, std = flags.get("mean"), flags.get("std")
        if mean is None or std is None:
            continue

        def values(v: Any) -> list[float]:
            import torch

            t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
            return [float(x) for x in (t.expand(n) if t.numel() == 1 else t)]

        return values(mean), values(std)
    return None


def _torchgeo(name: str, text: str) -> PublishedWeights:
    try:
        import torchgeo.models as tgm
    except ImportError:  # pragma: no cover - torchgeo is a dependency
        raise ConfigError(f"{name}: torchgeo is not installed (pip install torchgeo)") from None
    enum_name, _, member = text.partition(".")
    enum = getattr(tgm, enum_name, None)
    if enum is None or not enum_name.endswith("_Weights"):
        known = [n for n in dir(tgm) if n.endswith("_Weights")]
        raise UnknownNameError("torchgeo weights", enum_name, known)
    try:
        weights = enum[member]
    except KeyError:
        raise UnknownNameError(f"member of {enum_name}", member, [m.name for m in enum]) from None
    meta = dict(weights.meta)
    timm_name = str(meta.get("model", ""))
    raw_bands = meta.get("bands")
    bands, sensor = _canonical_bands(raw_bands) if raw_bands else (None, None)
    if bands is None and meta.get("in_chans") == 3:
        bands = ("red", "green", "blue")
    norm = None
    stats = _transform_stats(weights.transforms, len(bands)) if bands else None
    if stats is not None and bands is not None and len(stats[0]) == len(bands):
        norm = {
            "mean": dict(zip(bands, stats[0])),
            "std": dict(zip(bands, stats[1])),
            "method": "zscore",
        }
    url = str(weights.url)
    return PublishedWeights(
        name=name,
        family="torchgeo",
        arch=arch_for_timm(timm_name) if timm_name else None,
        timm_name=timm_name or None,
        bands=bands,
        sensor=sensor,
        filename=url.rsplit("/", 1)[-1],
        url=url,
        img_size=224 if "vit" in timm_name or "swin" in timm_name else None,
        normalization=norm,
        meta={k: v for k, v in meta.items() if k != "bands"},
    )


# --------------------------------------------------------------------------------------------
# timm and Hugging Face


def _timm(name: str, text: str) -> PublishedWeights:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(text)
    except Exception:
        cfg = None
    if cfg is None:
        base = text.split(".", 1)[0]
        tags = [t for t in timm.list_pretrained(f"{base}*")]
        raise UnknownNameError("timm pretrained model", text, tags or timm.list_models()[:20])
    c: dict[str, Any] = cfg.to_dict()  # type: ignore[no-untyped-call]
    repo = c.get("hf_hub_id") or f"timm/{text}"
    mean, std = c.get("mean"), c.get("std")
    bands = ("red", "green", "blue")
    norm = None
    if mean and std and len(mean) == 3:
        norm = {  # timm's statistics are for 0..1 images; eofm reads 8-bit RGB as 0..255
            "mean": {b: 255.0 * float(m) for b, m in zip(bands, mean)},
            "std": {b: 255.0 * float(s) for b, s in zip(bands, std)},
            "method": "zscore",
        }
    size = c.get("input_size")
    arch = arch_for_timm(text)
    return PublishedWeights(
        name=name,
        family="timm",
        arch=arch,
        timm_name=text.split(".", 1)[0],
        bands=bands,
        sensor=None,
        filename=c.get("hf_hub_filename") or "model.safetensors",
        hf_repo=str(repo),
        img_size=int(size[-1]) if size else None,
        normalization=norm,
        meta={"license": c.get("license"), "tag": c.get("tag")},
    )


_HF = re.compile(r"^(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")


def _hf(name: str, text: str) -> PublishedWeights:
    m = _HF.match(text)
    if not m:
        raise ConfigError(
            f"{name}: expected hf:<org>/<repo>/<file>, e.g. hf:wangyi111/softcon/x.pth"
        )
    filename = m.group("file")
    return PublishedWeights(
        name=name,
        family="hf",
        arch=None,
        timm_name=None,
        bands=None,
        sensor=None,
        filename=filename,
        hf_repo=m.group("repo"),
    )


def resolve_published(name: str) -> PublishedWeights:
    """The :class:`PublishedWeights` of a ``torchgeo:``/``timm:``/``hf:`` name."""
    text = str(name)
    for prefix, parse in (("torchgeo:", _torchgeo), ("timm:", _timm), ("hf:", _hf)):
        if text.startswith(prefix):
            return parse(text, text[len(prefix) :])
    raise ConfigError(f"{name!r} is not a published model name (torchgeo:, timm:, hf:)")


def list_published() -> list[PublishedWeights]:
    """Every torchgeo weight enum member whose architecture eofm builds, and the timm
    pretrained tags of eofm's registered architectures."""
    out: list[PublishedWeights] = []
    try:
        import torchgeo.models as tgm

        for enum_name in sorted(n for n in dir(tgm) if n.endswith("_Weights")):
            for member in getattr(tgm, enum_name):
                try:
                    pw = _torchgeo(
                        f"torchgeo:{enum_name}.{member.name}", f"{enum_name}.{member.name}"
                    )
                except Exception:
                    continue
                if pw.arch is not None:
                    out.append(pw)
    except ImportError:  # pragma: no cover
        pass
    import timm

    from eofm.models.backbones import get_backbone_spec, list_backbones

    seen: set[str] = set()
    for arch in list_backbones():
        spec = get_backbone_spec(arch)
        if spec.timm_kwargs or spec.timm_name in seen:
            continue
        seen.add(spec.timm_name)
        for tag in timm.list_pretrained(f"{spec.timm_name}.*"):
            try:
                out.append(_timm(f"timm:{tag}", tag))
            except Exception:
                continue
    return out


def downloads_allowed() -> bool:
    """False when ``EOFM_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set."""
    return not any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("EOFM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def weights_file(pw: PublishedWeights) -> Path:
    """The local file of ``pw``: found, else downloaded (when allowed), else a clear error."""
    found = pw.locate()
    if found is not None:
        return found
    if not downloads_allowed():
        return pw.fetch(download=False)
    try:
        return pw.fetch(download=True)
    except CheckpointError:
        raise
    except Exception as exc:
        try:
            pw.fetch(download=False)
        except CheckpointError as missing:
            raise CheckpointError(f"{missing} [download failed: {exc}]") from None
        raise  # pragma: no cover


def pretrained_options(name: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Keyword arguments of :func:`~eofm.models.create_backbone` for ``pretrained=name``.

    A published name becomes its local file, with the weights' bands and sensor as the source
    of the band adaptation and ``strict=False`` (their classifier heads are reported, not an
    error); a path or ``None`` is passed on as it is.
    """
    if not is_published_name(name):
        return {"pretrained": name}
    published = resolve_published(str(name))
    return {
        "pretrained": weights_file(published),
        "source_bands": published.bands,
        "source_sensor": published.sensor,
        "strict": False,
    }
