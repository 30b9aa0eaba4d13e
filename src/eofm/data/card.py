"""The dataset card: per-band statistics of a dataset in one JSON file (``eofm_card.json``).

:class:`BandStats` (count, mean, std, min, max, percentiles, excluded pixels) per band and
:class:`DatasetCard` (bands, sensor, what was read, when) with ``save``/``load``; computed by
:func:`eofm.data.stats.compute_stats`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from eofm.data.sensors import find_sensor, match_bands
from eofm.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
)

CARD_NAME = "eofm_card.json"


CARD_FORMAT = "eofm-dataset-card"


CARD_VERSION = 1


DEFAULT_PERCENTILES: tuple[float, ...] = (1, 2, 50, 98, 99)


Array = npt.NDArray[Any]


def percentile_key(q: float) -> str:
    """Key of percentile ``q`` in :attr:`BandStats.percentiles`: ``p2``, ``p50``, ``p2.5``."""
    return f"p{float(q):g}"


def _float_or_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _none_to_nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None and numpy scalars/arrays as plain Python."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class BandStats:
    """Statistics of one band over the valid pixels of a dataset."""

    name: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    nodata_fraction: float
    #: Pixels excluded because they equal a ``nodata`` value or a sample's ``valid`` is False.
    nodata_count: int = 0
    #: Pixels excluded because they are NaN or infinite.
    nonfinite_count: int = 0

    def percentile(self, q: float) -> float:
        """The stored percentile ``q`` (as computed; see :func:`compute_stats`)."""
        return self.percentiles[percentile_key(q)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mean", "std", "min", "max", "nodata_fraction"):
            d[key] = _float_or_none(d[key])
        d["percentiles"] = {k: _float_or_none(v) for k, v in self.percentiles.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStats:
        return cls(
            name=str(d["name"]),
            count=int(d["count"]),
            mean=_none_to_nan(d["mean"]),
            std=_none_to_nan(d["std"]),
            min=_none_to_nan(d["min"]),
            max=_none_to_nan(d["max"]),
            percentiles={str(k): _none_to_nan(v) for k, v in d["percentiles"].items()},
            nodata_fraction=_none_to_nan(d["nodata_fraction"]),
            nodata_count=int(d.get("nodata_count", 0)),
            nonfinite_count=int(d.get("nonfinite_count", 0)),
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class DatasetCard:
    """Per-band statistics of a dataset, cached as a small JSON file next to the data."""

    bands: tuple[str, ...]
    stats: dict[str, BandStats]
    num_samples: int
    sensor: str | None = None
    source: str = ""
    created: str = field(default_factory=_now)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "version": CARD_VERSION,
            "bands": list(self.bands),
            "num_samples": self.num_samples,
            "sensor": self.sensor,
            "source": self.source,
            "created": self.created,
            "stats": {name: s.to_dict() for name, s in self.stats.items()},
            "extra": _json_safe(self.extra),
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the card atomically (temporary file, then :func:`os.replace`)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), "utf-8")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> DatasetCard:
        """Read a card; raises :class:`DataError` when missing, CorruptFileError when unreadable."""
        p = Path(path)
        if not p.is_file():
            raise DataError(p, "dataset card not found")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("format") != CARD_FORMAT:
                raise ValueError(f"not an {CARD_FORMAT} file")
            return cls(
                bands=tuple(str(b) for b in d["bands"]),
                stats={str(k): BandStats.from_dict(v) for k, v in d["stats"].items()},
                num_samples=int(d["num_samples"]),
                sensor=d.get("sensor"),
                source=str(d.get("source", "")),
                created=str(d.get("created", "")),
                extra=dict(d.get("extra") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptFileError(p, f"cannot read dataset card: {exc}") from exc

    def _names(self, bands: Sequence[str] | None) -> list[str]:
        if bands is None:
            return list(self.bands)
        idx = match_bands(
            bands, self.bands, sensor=find_sensor(self.sensor), path=self.source or None
        )
        return [self.bands[i] for i in idx]

    def mean_std(self, bands: Sequence[str] | None = None) -> tuple[Array, Array]:
        """Mean and std (float64) of ``bands``, matched by name, in the requested order."""
        names = self._names(bands)
        mean = np.array([self.stats[n].mean for n in names], dtype=np.float64)
        std = np.array([self.stats[n].std for n in names], dtype=np.float64)
        return mean, std

    def percentile_range(
        self, bands: Sequence[str] | None = None, low: float = 2, high: float = 98
    ) -> tuple[Array, Array]:
        """Percentiles ``low`` and ``high`` of ``bands``, by name, in the requested order."""
        names = self._names(bands)
        try:
            lo = np.array([self.stats[n].percentile(low) for n in names], dtype=np.float64)
            hi = np.array([self.stats[n].percentile(high) for n in names], dtype=np.float64)
        except KeyError as exc:
            raise ConfigError(
                f"dataset card has no percentile {exc.args[0]}; recompute with percentiles="
            ) from None
        return lo, hi


def _as_array(value: Any) -> Array:
    if isinstance(value, torch.Tensor):
        out: Array = value.detach().cpu().numpy()
        return out
    return np.asarray(value)
