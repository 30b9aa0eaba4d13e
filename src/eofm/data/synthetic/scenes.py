"""Land-cover scene sets: maps, Sentinel-2 and Sentinel-1 renderings and labels, in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from eofm.data.synthetic._common import (
    CHUNK,
    F32,
    I64,
    assign_classes,
    check_args,
    chunks,
    progress_bar,
    resolve_class,
    rng_for,
)
from eofm.data.synthetic.landcover import CLASS_NAMES, class_fractions, make_layout, multi_hot
from eofm.data.synthetic.render import S1_BANDS, S2_BANDS, render_s1, render_s2
from eofm.errors import ConfigError

SENSORS = ("s2", "s1")
_TAG_LANDCOVER = 1


@dataclass
class SceneSet:
    """Synthetic land-cover scenes held in memory."""

    s2: npt.NDArray[np.uint16] | None  # (N, 13, H, W) reflectance x 10000, S2_BANDS order
    s1: F32 | None  # (N, 2, H, W) sigma0 in dB, bands ("VV", "VH")
    masks: npt.NDArray[np.uint8]  # (N, H, W) class indices
    fractions: F32  # (N, K) class fractions
    labels: I64  # (N,) dominant class
    class_names: tuple[str, ...]

    s2_bands: tuple[str, ...] = S2_BANDS
    s1_bands: tuple[str, ...] = S1_BANDS

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def multi_hot(self, threshold: float = 0.05) -> npt.NDArray[np.float32]:
        """Multi-label targets (N, K): 1 where a class covers at least ``threshold``."""
        return multi_hot(self.fractions, threshold)


def _check_sensors(sensors: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sensors, str):
        sensors = (sensors,)
    out = tuple(s.lower() for s in sensors)
    bad = [s for s in out if s not in SENSORS]
    if bad or not out:
        raise ConfigError(f"sensors must be a non-empty subset of {SENSORS}, got {tuple(sensors)}")
    return out


def iter_landcover(
    n: int,
    size: int = 64,
    *,
    seed: int = 0,
    heavy_tail: float | None = None,
    dominant_class: str | int = "cropland",
    sensors: Sequence[str] = SENSORS,
) -> Iterator[tuple[int, SceneSet]]:
    """Yield ``(start_index, SceneSet)`` batches of at most :data:`CHUNK` scenes.

    Concatenating the batches gives exactly :func:`generate_landcover`'s result.
    """
    check_args(n, size, seed, heavy_tail)
    dominant = resolve_class(dominant_class, CLASS_NAMES)
    which = _check_sensors(sensors)
    themes = assign_classes(seed, _TAG_LANDCOVER, n, len(CLASS_NAMES), heavy_tail, dominant)
    return _iter(n, size, seed, themes, which)


def _iter(
    n: int, size: int, seed: int, themes: I64, which: tuple[str, ...]
) -> Iterator[tuple[int, SceneSet]]:
    for index, start, stop in chunks(n, CHUNK):
        layout = make_layout(rng_for(seed, _TAG_LANDCOVER, index, 0), themes[start:stop], size)
        s2 = render_s2(rng_for(seed, _TAG_LANDCOVER, index, 1), layout) if "s2" in which else None
        s1 = render_s1(rng_for(seed, _TAG_LANDCOVER, index, 2), layout) if "s1" in which else None
        fractions = class_fractions(layout.mask)
        labels = fractions.argmax(axis=1).astype(np.int64)
        yield start, SceneSet(s2, s1, layout.mask, fractions, labels, CLASS_NAMES)


def generate_landcover(
    n: int,
    size: int = 64,
    *,
    seed: int = 0,
    heavy_tail: float | None = None,
    dominant_class: str | int = "cropland",
    sensors: Sequence[str] = SENSORS,
    progress: bool = False,
) -> SceneSet:
    """Generate ``n`` synthetic land-cover scenes of ``size`` x ``size`` pixels (10 m).

    Classes are balanced by default; with ``heavy_tail=h`` a share ``h`` of the scenes is
    built around ``dominant_class`` (and labelled with it), the rest spread evenly over the
    other classes. ``sensors`` picks which of Sentinel-2 (``"s2"``) and Sentinel-1 (``"s1"``)
    to render. Deterministic for a given ``seed``.
    """
    parts: list[SceneSet] = []
    with progress_bar(n, progress, "synthetic scenes") as bar:
        for _, part in iter_landcover(
            n,
            size,
            seed=seed,
            heavy_tail=heavy_tail,
            dominant_class=dominant_class,
            sensors=sensors,
        ):
            parts.append(part)
            bar.update(len(part))
    return _concat(parts)


def _concat(parts: list[SceneSet]) -> SceneSet:
    s2 = None if parts[0].s2 is None else np.concatenate([p.s2 for p in parts if p.s2 is not None])
    s1 = None if parts[0].s1 is None else np.concatenate([p.s1 for p in parts if p.s1 is not None])
    return SceneSet(
        s2=s2,
        s1=s1,
        masks=np.concatenate([p.masks for p in parts]),
        fractions=np.concatenate([p.fractions for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        class_names=parts[0].class_names,
    )
