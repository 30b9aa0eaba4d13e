"""Backbones for any band set: a timm model behind one interface, and a registry of names.

:func:`create_backbone` builds a registered architecture for the bands asked for (any number)
and an image size. The returned :class:`Backbone` gives a pooled embedding (``forward``) and
dense feature maps (``forward_features``) for segmentation, detection and change-detection heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal

import timm
import torch
from torch import Tensor, nn

from eofm.data.sensors import Sensor, get_sensor, normalise_band_name
from eofm.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from eofm.models.adapt import AdaptationReport

Family = Literal["vit", "swin", "swinv2", "resnet"]
FAMILIES: tuple[str, ...] = ("vit", "swin", "swinv2", "resnet")

#: The bands a backbone gets when none are named: plain RGB.
DEFAULT_BANDS: tuple[str, ...] = ("red", "green", "blue")


@dataclass(frozen=True)
class BackboneSpec:
    """Registry entry: how to build one architecture with timm, and what it is.

    ``timm_name`` is the timm architecture created with ``timm_kwargs`` as overrides (for
    example a smaller depth for a test variant, or parallel blocks for the billion-scale family).
    """

    name: str
    family: Family
    timm_name: str
    img_size: int
    embed_dim: int
    patch_size: int | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: Parameter count reported in the literature for this model, if any (for checks).
    paper_params: int | None = None
    tags: tuple[str, ...] = ()

    def num_params(self, in_chans: int = 3, img_size: int | None = None) -> int:
        """Parameters of this architecture with ``in_chans`` bands and no classifier.

        Built on the meta device, so even billion-parameter models cost no memory.
        """
        key = (self.name, in_chans, img_size or self.img_size)
        if key not in _PARAM_CACHE:
            model = build_timm_model(
                self, in_chans=in_chans, img_size=img_size or self.img_size, device="meta"
            )
            _PARAM_CACHE[key] = sum(p.numel() for p in model.parameters())
        return _PARAM_CACHE[key]

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (no parameter count; see :meth:`num_params`)."""
        return {
            "name": self.name,
            "family": self.family,
            "timm_name": self.timm_name,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "description": self.description,
            "paper_params": self.paper_params,
            "tags": list(self.tags),
        }


_REGISTRY: dict[str, BackboneSpec] = {}
_PARAM_CACHE: dict[tuple[str, int, int], int] = {}


def register_backbone(
    name: str,
    *,
    family: Family,
    timm_name: str,
    img_size: int,
    embed_dim: int,
    patch_size: int | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    description: str = "",
    paper_params: int | None = None,
    tags: Iterable[str] = (),
    overwrite: bool = False,
) -> BackboneSpec:
    """Register an architecture under ``name`` (users may add their own)."""
    if family not in FAMILIES:
        raise ConfigError(f"backbone family {family!r} is not one of {list(FAMILIES)}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ConfigError(f"backbone {name!r} is already registered; pass overwrite=True")
    spec = BackboneSpec(
        name=key,
        family=family,
        timm_name=timm_name,
        img_size=img_size,
        embed_dim=embed_dim,
        patch_size=patch_size,
        timm_kwargs=dict(timm_kwargs or {}),
        description=description,
        paper_params=paper_params,
        tags=tuple(tags),
    )
    _REGISTRY[key] = spec
    return spec


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (case-insensitive)."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnknownNameError("backbone", name, list_backbones()) from None


def list_backbones(family: str | None = None, tag: str | None = None) -> list[str]:
    """Registered backbone names, optionally only one family or those carrying ``tag``."""
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family) and (tag is None or tag in s.tags)
    )


def build_timm_model(
    spec: BackboneSpec,
    *,
    in_chans: int,
    img_size: int | tuple[int, int],
    device: str | torch.device | None = None,
    **overrides: Any,
) -> nn.Module:
    """The bare timm model of ``spec`` without classifier and without pretrained weights."""
    kwargs: dict[str, Any] = {**spec.timm_kwargs, **overrides}
    if spec.family != "resnet":
        kwargs["img_size"] = img_size
    if spec.family == "vit":
        kwargs.setdefault("dynamic_img_size", True)
    try:
        with torch.device(device) if device is not None else nullcontext():
            model = timm.create_model(
                spec.timm_name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs
            )
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot build backbone {spec.name!r} (timm {spec.timm_name}) with {in_chans} bands, "
            f"image size {img_size} and options {_describe(kwargs)}: {exc}"
        ) from exc
    return model


def _describe(kwargs: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={getattr(v, '__name__', v)!r}" for k, v in kwargs.items()) + "}"


def resolve_bands(
    bands: Sequence[str] | str | int | None, sensor: str | Sensor | None = None
) -> tuple[tuple[str, ...], str | None]:
    """Band names and sensor name for ``bands``.

    ``bands`` may be a sequence of names, a sensor name (all its bands), a number of channels
    (named ``band_0``...) or ``None`` (plain RGB). With a ``sensor``, names are made canonical.
    """
    sensor_name = get_sensor(sensor).name if sensor is not None else None
    names: tuple[str, ...]
    if bands is None:
        names = DEFAULT_BANDS
    elif isinstance(bands, bool):
        raise ConfigError(f"bands must be names, a sensor name or a count, not {bands!r}")
    elif isinstance(bands, int):
        if bands < 1:
            raise ConfigError(f"a backbone needs at least one band, got {bands}")
        names = tuple(f"band_{i}" for i in range(bands))
    elif isinstance(bands, str):
        sens = get_sensor(bands)
        if sensor_name is not None and sensor_name != sens.name:
            raise ConfigError(f"bands={bands!r} names sensor {sens.name}, but sensor={sensor_name}")
        sensor_name = sens.name
        names = sens.band_names
    else:
        names = tuple(str(b) for b in bands)
        if not names:
            raise ConfigError("a backbone needs at least one band, got an empty band list")
    if sensor_name is not None:
        names = get_sensor(sensor_name).canonical(names)
    keys = [normalise_band_name(n) for n in names]
    dupes = sorted({n for n, k in zip(names, keys, strict=True) if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"band names must be unique; repeated: {dupes}")
    return names, sensor_name


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def _vit_feature_indices(depth: int, count: int = 4) -> list[int]:
    """Evenly spaced block indices ending with the last block (2, 5, 8, 11 for depth 12)."""
    picks = sorted({max(0, math.ceil(depth * (i + 1) / count) - 1) for i in range(count)})
    return picks


class Backbone(nn.Module):
    """A timm model for a named band set, with a pooled embedding and dense feature maps.

    Attributes:
        model: the timm model (``patch_embed``, ``blocks``... for methods such as MAE).
        arch: registry name; ``bands``: band names in input-channel order; ``sensor``: sensor
        name when known; ``embed_dim``: size of the pooled embedding; ``feature_channels`` and
        ``feature_strides``: channels and stride of each dense map; ``img_size``: (H, W) the
        model was built for; ``patch_size``: patch (ViT, Swin) or ``None`` (ResNet).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        *,
        bands: Sequence[str],
        img_size: tuple[int, int],
        sensor: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.arch = spec.name
        self.family: str = spec.family
        self.bands: tuple[str, ...] = tuple(bands)
        self.sensor = sensor
        self.img_size = img_size
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.embed_dim = int(getattr(model, "num_features", spec.embed_dim))
        self.card: dict[str, Any] | None = None
        self.pretrained_report: AdaptationReport | None = None
        self.patch_size: int | None
        self._feature_indices: list[int]
        timm_model: Any = model
        if spec.family == "vit":
            self.patch_size = int(timm_model.patch_embed.patch_size[0])
            self._feature_indices = _vit_feature_indices(len(timm_model.blocks))
            self.feature_channels = [self.embed_dim] * len(self._feature_indices)
            self.feature_strides = [self.patch_size] * len(self._feature_indices)
        else:
            info = list(timm_model.feature_info)
            if spec.family == "resnet":
                info = info[1:]  # drop the stem; keep layer1..layer4 (strides 4..32)
                self.patch_size = None
                self._feature_indices = list(range(1, len(info) + 1))
            else:
                self.patch_size = int(timm_model.patch_embed.patch_size[0])
                self._feature_indices = list(range(len(info)))
            self.feature_channels = [int(i["num_chs"]) for i in info]
            self.feature_strides = [int(i["reduction"]) for i in info]

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    @property
    def first_conv(self) -> str:
        """State-dict prefix of the layer that sees the bands (``patch_embed.proj``/``conv1``)."""
        return "conv1" if self.family == "resnet" else "patch_embed.proj"

    @property
    def timm_name(self) -> str:
        return self.spec.timm_name

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise ConfigError(
                f"backbone {self.arch} expects (B, {len(self.bands)}, H, W) input for bands "
                f"{list(self.bands)}; got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding ``(B, embed_dim)``."""
        self._check_input(x)
        out: Tensor = self.model(x)
        return out

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Dense feature maps ``(B, C_i, H_i, W_i)`` at ``feature_strides``.

        ViT: patch tokens of evenly spaced blocks reshaped to maps at stride = patch size.
        Swin: the four stages (strides 4-32). ResNet: layer1..layer4 (strides 4-32).
        """
        self._check_input(x)
        timm_model: Any = self.model
        feats = timm_model.forward_intermediates(
            x, indices=self._feature_indices, intermediates_only=True
        )
        return list(feats)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, bands={list(self.bands)}, img_size={self.img_size}"


def create_backbone(
    name: str,
    bands: Sequence[str] | str | int | None = None,
    img_size: int | tuple[int, int] | None = None,
    pretrained: str | PathLike[str] | None = None,
    *,
    sensor: str | Sensor | None = None,
    source_bands: Sequence[str] | None = None,
    source_sensor: str | Sensor | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """Build the registered backbone ``name`` for ``bands`` at ``img_size``.

    ``bands``: band names (``["B04", "B03", "B02", "B08"]``), a sensor name (all its bands),
    a channel count, or ``None`` for RGB. ``pretrained``: a published name
    (``torchgeo:...``, ``timm:...``, ``hf:...``; see :mod:`eofm.models.zoo`) or a checkpoint
    path loaded with
    :func:`eofm.models.adapt.load_pretrained` (band adaptation, position-embedding and patch
    resampling; ``strict`` makes any mismatch an error). The report is kept in
    ``backbone.pretrained_report``. ``device="meta"`` builds without memory. Extra keyword
    arguments go to the timm constructor (e.g. ``drop_path_rate``).
    """
    spec = get_backbone_spec(name)
    names, sensor_name = resolve_bands(bands, sensor)
    size = _pair(img_size if img_size is not None else spec.img_size)
    model = build_timm_model(spec, in_chans=len(names), img_size=size, device=device, **timm_kwargs)
    backbone = Backbone(
        spec, model, bands=names, img_size=size, sensor=sensor_name, overrides=timm_kwargs
    )
    if pretrained is not None:
        from eofm.models.adapt import load_pretrained
        from eofm.models.zoo import is_published_name, resolve_published, weights_file

        if is_published_name(pretrained):  # torchgeo:/timm:/hf: names (eofm.models.zoo)
            published = resolve_published(str(pretrained))
            pretrained = weights_file(published)
            source_bands = source_bands or published.bands
            source_sensor = source_sensor or published.sensor
            strict = False  # heads and classifiers of the published file are reported
        backbone.pretrained_report = load_pretrained(
            backbone,
            pretrained,
            source_bands=source_bands,
            source_sensor=source_sensor,
            strict=strict,
        )
    return backbone


def _reg(
    name: str,
    family: Family,
    timm_name: str,
    img: int,
    dim: int,
    patch: int | None,
    desc: str,
    tags: Iterable[str] = (),
    **kw: Any,
) -> None:
    register_backbone(
        name,
        family=family,
        timm_name=timm_name,
        img_size=img,
        embed_dim=dim,
        patch_size=patch,
        description=desc,
        tags=tags,
        timm_kwargs=kw,
    )


def _register_builtins() -> None:
    vit: list[tuple[str, str, int, int, int, str]] = [
        ("vit_tiny_patch16", "vit_tiny_patch16_224", 224, 192, 16, "ViT-Ti/16"),
        ("vit_small_patch16", "vit_small_patch16_224", 224, 384, 16, "ViT-S/16"),
        (
            "vit_small_patch14",
            "vit_small_patch14_dinov2",
            224,
            384,
            14,
            "ViT-S/14, DINOv2 layout (layer scale); SoftCon ViT-S/14",
        ),
        ("vit_small_patch8", "vit_small_patch8_224", 224, 384, 8, "ViT-S/8"),
        ("vit_base_patch16", "vit_base_patch16_224", 224, 768, 16, "ViT-B/16"),
        (
            "vit_base_patch14",
            "vit_base_patch14_dinov2",
            224,
            768,
            14,
            "ViT-B/14, DINOv2 layout (layer scale); SoftCon ViT-B/14",
        ),
        ("vit_base_patch8", "vit_base_patch8_224", 224, 768, 8, "ViT-B/8"),
        ("vit_large_patch16", "vit_large_patch16_224", 224, 1024, 16, "ViT-L/16"),
        ("vit_large_patch14", "vit_large_patch14_dinov2", 224, 1024, 14, "ViT-L/14, DINOv2 layout"),
        ("vit_huge_patch14", "vit_huge_patch14_224", 224, 1280, 14, "ViT-H/14"),
        (
            "vit_giant_patch14",
            "vit_giant_patch14_dinov2",
            224,
            1536,
            14,
            "ViT-g/14, DINOv2 layout (SwiGLU MLP)",
        ),
    ]
    for name, timm_name, img, dim, patch, desc in vit:
        _reg(name, "vit", timm_name, img, dim, patch, desc)
    _reg("swin_tiny", "swin", "swin_tiny_patch4_window7_224", 224, 768, 4, "Swin-T v1, window 7")
    _reg("swin_small", "swin", "swin_small_patch4_window7_224", 224, 768, 4, "Swin-S v1, window 7")
    _reg(
        "swin_base",
        "swin",
        "swin_base_patch4_window7_224",
        224,
        1024,
        4,
        "Swin-B v1, window 7 (ImageNet-22k layout)",
    )
    _reg("swin_large", "swin", "swin_large_patch4_window7_224", 224, 1536, 4, "Swin-L v1, window 7")
    _reg("swinv2_tiny", "swinv2", "swinv2_tiny_window8_256", 256, 768, 4, "Swin-T v2, window 8")
    _reg("swinv2_small", "swinv2", "swinv2_small_window8_256", 256, 768, 4, "Swin-S v2, window 8")
    _reg("swinv2_base", "swinv2", "swinv2_base_window8_256", 256, 1024, 4, "Swin-B v2, window 8")
    _reg("resnet18", "resnet", "resnet18", 224, 512, None, "ResNet-18")
    _reg("resnet50", "resnet", "resnet50", 224, 2048, None, "ResNet-50 (SoftCon RN50 layout)")
    # Tiny variants for tests and smoke runs.
    _reg(
        "vit_test",
        "vit",
        "vit_tiny_patch16_224",
        32,
        64,
        8,
        "tiny ViT for tests: depth 2, width 64, 2 heads, patch 8",
        tags=("test",),
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
    )
    _reg(
        "swin_test",
        "swin",
        "swin_tiny_patch4_window7_224",
        32,
        192,
        4,
        "tiny Swin v1 for tests: width 24, one block per stage, window 4",
        tags=("test",),
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(2, 2, 4, 4),
        window_size=4,
    )
    _reg(
        "swinv2_test",
        "swinv2",
        "swinv2_tiny_window8_256",
        32,
        192,
        4,
        "tiny Swin v2 for tests: width 24, one block per stage, window 4",
        tags=("test",),
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(2, 2, 4, 4),
        window_size=4,
    )
    _reg(
        "resnet_test",
        "resnet",
        "resnet18",
        32,
        512,
        None,
        "small ResNet for tests: ResNet-18 with one block per stage",
        tags=("test",),
        layers=(1, 1, 1, 1),
    )


_register_builtins()


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
