"""Streaming per-band statistics, the dataset card that caches them, and a normaliser.

:func:`compute_stats` makes one pass over a dataset (sample dicts) or an iterable of
``(C, H, W)`` arrays. Per band it keeps, in float64:

- count, mean and variance, merged chunk by chunk with Chan's parallel form of Welford's
  update (exact to rounding, whatever the chunking);
- min and max;
- a fixed-size histogram whose range starts at the first chunk's min..max (or
  ``value_range``) and doubles, merging neighbouring bins exactly, whenever a value falls
  outside; percentiles read from it are within one (final) bin width of the exact ones;
- how many pixels were excluded: NaN and +-inf always, values equal to ``nodata``, and pixels a
  sample's ``valid`` mask marks False.

``std`` is the population standard deviation (``ddof=0``, as :func:`numpy.std`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eofm.data.sample import Sample
from eofm.data.sensors import Sensor, find_sensor, match_bands
from eofm.errors import (
    BandMismatchError,
    ConfigError,
    CorruptFileError,
    DataError,
    EmptyDatasetError,
)

__all__ = [
    "CARD_NAME",
    "BandStats",
    "DatasetCard",
    "Normalizer",
    "compute_stats",
    "load_or_compute_card",
]

CARD_NAME = "eofm_card.json"
CARD_FORMAT = "eofm-dataset-card"
CARD_VERSION = 1
DEFAULT_PERCENTILES: tuple[float, ...] = (1, 2, 50, 98, 99)
#: Floor on the standard deviation (and percentile span) a normaliser divides by: a constant
#: band has std 0 and is mapped to 0 instead of NaN/inf.
STD_EPS = 1e-6

Array = npt.NDArray[Any]
NormMethod = Literal["zscore", "minmax_percentile", "softcon"]


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


# --------------------------------------------------------------------------------------------
# streaming accumulator


class _Accumulator:
    """Chan/Welford moments, min/max, excluded counts and a doubling histogram per band."""

    def __init__(
        self,
        nbands: int,
        bins: int,
        nodata: Sequence[float],
        value_range: tuple[float, float] | None,
    ) -> None:
        if bins < 2 or bins % 2:
            raise ConfigError(f"bins must be an even number >= 2, got {bins}")
        c = nbands
        self.bins = bins
        self.nodata = np.asarray(nodata, dtype=np.float64)
        self.value_range = value_range
        self.n = np.zeros(c, dtype=np.int64)
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)
        self.min = np.full(c, np.inf)
        self.max = np.full(c, -np.inf)
        self.nodata_count = np.zeros(c, dtype=np.int64)
        self.nonfinite_count = np.zeros(c, dtype=np.int64)
        self.hist = np.zeros((c, bins), dtype=np.int64)
        self.lo = np.full(c, np.nan)
        self.width = np.full(c, np.nan)

    def update(self, x: Array, valid: Array | None) -> None:
        """Add a chunk ``x`` of shape ``(C, P)``; ``valid`` is an optional ``(P,)`` mask."""
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x)
        all_ok = bool(ok.all())
        if not all_ok:
            self.nonfinite_count += (~ok).sum(axis=1)
        if self.nodata.size:
            hit = np.isin(x, self.nodata)
            if hit.any():
                self.nodata_count += hit.sum(axis=1)
                ok &= ~hit
                all_ok = False
        if valid is not None and not valid.all():
            dropped = ok & ~valid[None, :]
            self.nodata_count += dropped.sum(axis=1)
            ok &= valid[None, :]
            all_ok = False

        if all_ok:
            nb = np.full(x.shape[0], x.shape[1], dtype=np.int64)
            if x.shape[1] == 0:
                return
            mb = x.mean(axis=1)
            d = x - mb[:, None]
            m2b = np.einsum("ij,ij->i", d, d)
            bmin, bmax = x.min(axis=1), x.max(axis=1)
        else:
            nb = ok.sum(axis=1)
            xs = np.where(ok, x, 0.0)
            mb = xs.sum(axis=1) / np.maximum(nb, 1)
            d = np.where(ok, x - mb[:, None], 0.0)
            m2b = np.einsum("ij,ij->i", d, d)
            bmin = np.where(ok, x, np.inf).min(axis=1)
            bmax = np.where(ok, x, -np.inf).max(axis=1)

        # Chan et al. parallel merge of (n, mean, M2).
        na = self.n
        n = na + nb
        safe = np.maximum(n, 1)
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / safe
        self.m2 = self.m2 + m2b + delta * delta * (na * nb / safe)
        self.n = n
        self.min = np.minimum(self.min, bmin)
        self.max = np.maximum(self.max, bmax)

        self._grow_histograms(bmin, bmax, nb)
        idx = np.floor((x - self.lo[:, None]) / self.width[:, None])
        idx = np.clip(np.nan_to_num(idx, nan=0.0), 0, self.bins - 1).astype(np.int64)
        idx += (np.arange(x.shape[0], dtype=np.int64) * self.bins)[:, None]
        flat = idx.ravel() if all_ok else idx[ok]
        self.hist += np.bincount(flat, minlength=self.hist.size).reshape(self.hist.shape)

    def _grow_histograms(self, bmin: Array, bmax: Array, nb: Array) -> None:
        bins = self.bins
        for b in np.flatnonzero(nb > 0):
            lo_v, hi_v = float(bmin[b]), float(bmax[b])
            if math.isnan(self.lo[b]):
                if self.value_range is not None:
                    start, stop = self.value_range
                    lo_v, hi_v = min(lo_v, start), max(hi_v, stop)
                span = hi_v - lo_v
                self.lo[b] = lo_v
                self.width[b] = span / (bins - 1) if span > 0 else max(abs(lo_v), 1.0) * 1e-6
                continue
            while lo_v < self.lo[b] or hi_v >= self.lo[b] + self.width[b] * bins:
                h = self.hist[b]
                merged = h[0::2] + h[1::2]
                new = np.zeros_like(h)
                if lo_v < self.lo[b]:  # old range becomes the upper half
                    new[bins // 2 :] = merged
                    self.lo[b] -= self.width[b] * bins
                else:  # old range becomes the lower half
                    new[: bins // 2] = merged
                self.hist[b] = new
                self.width[b] *= 2

    def percentiles(self, b: int, qs: Sequence[float]) -> dict[str, float]:
        n = int(self.n[b])
        out: dict[str, float] = {}
        cum = np.cumsum(self.hist[b])
        for q in qs:
            key = percentile_key(q)
            if n == 0:
                out[key] = float("nan")
                continue
            rank = q / 100.0 * (n - 1)  # numpy's default (linear) definition
            k = int(np.searchsorted(cum, rank, side="right"))
            k = min(k, self.bins - 1)
            before = float(cum[k - 1]) if k > 0 else 0.0
            inside = max(float(self.hist[b, k]), 1.0)
            frac = min(max((rank - before + 0.5) / inside, 0.0), 1.0)
            value = float(self.lo[b] + (k + frac) * self.width[b])
            out[key] = min(max(value, float(self.min[b])), float(self.max[b]))
        return out

    def band_stats(self, b: int, name: str, qs: Sequence[float]) -> BandStats:
        n = int(self.n[b])
        excluded = int(self.nodata_count[b] + self.nonfinite_count[b])
        seen = n + excluded
        return BandStats(
            name=name,
            count=n,
            mean=float(self.mean[b]) if n else float("nan"),
            std=math.sqrt(max(float(self.m2[b]) / n, 0.0)) if n else float("nan"),
            min=float(self.min[b]) if n else float("nan"),
            max=float(self.max[b]) if n else float("nan"),
            percentiles=self.percentiles(b, qs),
            nodata_fraction=excluded / seen if seen else 0.0,
            nodata_count=int(self.nodata_count[b]),
            nonfinite_count=int(self.nonfinite_count[b]),
        )


# --------------------------------------------------------------------------------------------
# sources


def _as_array(value: Any) -> Array:
    if isinstance(value, torch.Tensor):
        out: Array = value.detach().cpu().numpy()
        return out
    return np.asarray(value)


def _identity(sample: Any) -> Any:
    return sample


_Chunk = tuple[Array, Array | None, tuple[str, ...] | None, Any, int]


def _chunks(
    data: Any, *, max_samples: int | None, num_workers: int, batch_size: int, seed: int
) -> tuple[Iterator[_Chunk], int | None]:
    """Yield ``(images (B, C, ...), valid (B, ...) | None, band names | None, path, B)``."""
    sized = hasattr(data, "__len__") and hasattr(data, "__getitem__")
    if not sized:
        it = iter(cast(Iterable[Any], data))
        total = max_samples

        def gen_iter() -> Iterator[_Chunk]:
            for k, item in enumerate(it):
                if max_samples is not None and k >= max_samples:
                    break
                yield _item_chunk(item)

        return gen_iter(), total

    n = len(data)
    if max_samples is not None and max_samples < n:
        # A spread-out subset: folder datasets are often sorted by class.
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(n, size=max_samples, replace=False))
    else:
        indices = np.arange(n)
    total = int(indices.size)

    if hasattr(data, "get_batch"):

        def gen_batch() -> Iterator[_Chunk]:
            for start in range(0, total, batch_size):
                sel = indices[start : start + batch_size]
                batch = data.get_batch(sel)
                images = _as_array(batch["image"])
                valid = _as_array(batch["valid"]) if batch.get("valid") is not None else None
                yield images, valid, tuple(batch["bands"]), getattr(data, "root", None), len(sel)

        return gen_batch(), total

    if num_workers > 0:
        loader: Iterable[Any] = DataLoader(
            data,
            batch_size=None,
            sampler=indices.tolist(),
            num_workers=num_workers,
            collate_fn=_identity,
        )
    else:
        loader = (data[int(i)] for i in indices)

    def gen_map() -> Iterator[_Chunk]:
        for item in loader:
            yield _item_chunk(item)

    return gen_map(), total


def _item_chunk(item: Any) -> _Chunk:
    if isinstance(item, dict):
        image = _as_array(item["image"])[None]
        valid = _as_array(item["valid"])[None] if item.get("valid") is not None else None
        bands = tuple(item["bands"]) if item.get("bands") is not None else None
        return image, valid, bands, item.get("path"), 1
    return _as_array(item)[None], None, None, None, 1


def _nodata_list(nodata: float | Sequence[float] | None) -> list[float]:
    if nodata is None:
        return []
    if np.ndim(nodata) == 0:
        return [float(cast(float, nodata))]
    return [float(v) for v in cast(Sequence[float], nodata)]


def compute_stats(
    dataset_or_iterable: Any,
    *,
    bands: Sequence[str] | None = None,
    nodata: float | Sequence[float] | None = None,
    max_samples: int | None = None,
    progress: bool = True,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    bins: int = 4096,
    value_range: tuple[float, float] | None = None,
    sensor: str | Sensor | None = None,
    num_workers: int = 0,
    batch_size: int = 256,
    seed: int = 0,
) -> DatasetCard:
    """Per-band statistics of a dataset, in one streaming pass; returns a :class:`DatasetCard`.

    ``dataset_or_iterable`` is a map-style dataset of sample dicts (a subset of
    ``max_samples`` spread over it is used when given; datasets with ``get_batch``, such as
    :class:`~eofm.data.shards.ShardDataset`, are read in batches), or any iterable of sample
    dicts or ``(C, H, W)`` arrays (the first ``max_samples``). ``bands`` selects channels by
    name (required to name the channels of plain arrays, else they are ``band0``...).
    ``nodata`` values, NaN and +-inf are excluded and counted per band. Percentiles come from
    a ``bins``-bin histogram and are within one bin width (``extra["bin_width"]``) of exact.
    """
    if isinstance(bands, str):
        raise TypeError("bands must be a sequence of band names, not one string")
    for q in percentiles:
        if not 0 <= q <= 100:
            raise ConfigError(f"percentiles must lie in 0..100, got {q}")
    nodata_values = _nodata_list(nodata)
    if sensor is None:
        sensor = getattr(dataset_or_iterable, "sensor", None)
    sensor_name = sensor.name if isinstance(sensor, Sensor) else sensor
    sensor_obj = find_sensor(sensor)
    chunks, total = _chunks(
        dataset_or_iterable,
        max_samples=max_samples,
        num_workers=num_workers,
        batch_size=batch_size,
        seed=seed,
    )
    acc: _Accumulator | None = None
    names: tuple[str, ...] | None = None
    index_cache: dict[tuple[str, ...] | None, list[int] | None] = {}
    num = 0
    with tqdm(total=total, disable=not progress, desc="band statistics", unit="img") as bar:
        for images, valid, item_bands, path, count in chunks:
            if images.ndim < 3:
                raise DataError(
                    str(path) if path else None,
                    f"expected (C, H, W) images, got shape {images.shape[1:]}",
                )
            c = images.shape[1]
            if item_bands not in index_cache:
                index_cache[item_bands] = _band_index(bands, item_bands, c, names, sensor_obj, path)
            sel = index_cache[item_bands]
            if names is None:
                if bands is not None and item_bands is not None:
                    # sel is None when the requested bands are the item's, in its order
                    names = item_bands if sel is None else tuple(item_bands[i] for i in sel)
                elif bands is not None:
                    names = tuple(bands)
                else:
                    names = item_bands or tuple(f"band{i}" for i in range(c))
                acc = _Accumulator(len(names), bins, nodata_values, value_range)
            assert acc is not None
            if sel is not None:
                images = images[:, sel]
            # (B, C, ...) -> (C, B * pixels)
            x: Array = np.moveaxis(images.reshape(images.shape[0], images.shape[1], -1), 1, 0)
            x = x.reshape(x.shape[0], -1)
            v = None if valid is None else valid.reshape(-1).astype(bool)
            if v is not None and v.size != x.shape[1]:
                raise DataError(str(path) if path else None, "'valid' mask shape != image shape")
            acc.update(x, v)
            num += count
            bar.update(count)
    if acc is None or names is None:
        raise EmptyDatasetError(
            getattr(dataset_or_iterable, "root", None), "no samples to compute statistics on"
        )
    qs = tuple(float(q) for q in percentiles)
    stats = {name: acc.band_stats(i, name, qs) for i, name in enumerate(names)}
    source = getattr(dataset_or_iterable, "root", None)
    return DatasetCard(
        bands=names,
        stats=stats,
        num_samples=num,
        sensor=sensor_name,
        source=str(source) if source is not None else type(dataset_or_iterable).__name__,
        extra={
            "nodata": nodata_values,
            "max_samples": max_samples,
            "percentiles": list(qs),
            "bins": bins,
            "bin_width": {n: float(acc.width[i]) for i, n in enumerate(names)},
            "ddof": 0,
        },
    )


def _band_index(
    requested: Sequence[str] | None,
    item_bands: tuple[str, ...] | None,
    channels: int,
    first_names: tuple[str, ...] | None,
    sensor: Sensor | None,
    path: Any,
) -> list[int] | None:
    """Channel indices to keep for an item, matching names; None keeps all in order."""
    where = str(path) if path else None
    if item_bands is None:
        want = requested if requested is not None else first_names
        if want is not None and len(want) != channels:
            raise BandMismatchError(where, want, [f"<{channels} unnamed channels>"])
        return None
    if len(item_bands) != channels:
        raise BandMismatchError(where, item_bands, [f"<{channels} channels>"], "bands != image")
    want = requested if requested is not None else first_names
    if want is None:
        return None
    idx = match_bands(want, item_bands, sensor=sensor, path=where)
    return None if idx == list(range(channels)) else idx


# --------------------------------------------------------------------------------------------
# cache


def load_or_compute_card(root: str | os.PathLike[str], dataset: Any, **kw: Any) -> DatasetCard:
    """The card cached at ``root/eofm_card.json``, recomputed when missing, unreadable or stale.

    Stale means: its bands differ from the requested (``bands=``) or dataset's bands, the
    ``nodata``/``max_samples``/``percentiles`` settings differ, or (without ``max_samples``) the
    dataset's length changed. ``kw`` goes to :func:`compute_stats`.
    """
    root_path = Path(root)
    path = root_path / CARD_NAME if root_path.is_dir() or not root_path.suffix else root_path
    expected = kw.get("bands") or getattr(dataset, "bands", None)
    card: DatasetCard | None = None
    if path.is_file():
        try:
            card = DatasetCard.from_json(path)
        except DataError:
            card = None
    if card is not None and not _card_stale(card, dataset, expected, kw):
        return card
    card = compute_stats(dataset, **kw)
    card.source = str(root_path)
    card.to_json(path)
    return card


def _card_stale(card: DatasetCard, dataset: Any, expected: Any, kw: dict[str, Any]) -> bool:
    if expected is not None and tuple(expected) != card.bands:
        return True
    if _nodata_list(kw.get("nodata")) != card.extra.get("nodata", []):
        return True
    if kw.get("max_samples") != card.extra.get("max_samples"):
        return True
    qs = [float(q) for q in kw.get("percentiles", DEFAULT_PERCENTILES)]
    if qs != card.extra.get("percentiles"):
        return True
    if kw.get("max_samples") is None and hasattr(dataset, "__len__"):
        return len(dataset) != card.num_samples
    return False


# --------------------------------------------------------------------------------------------
# normaliser


class Normalizer(torch.nn.Module):
    """Normalise images band by band; works on ``(C, H, W)`` and ``(B, C, H, W)``.

    Methods:

    - ``"zscore"``: ``(x - mean) / std``;
    - ``"minmax_percentile"``: ``(x - low) / (high - low)`` clipped to 0..1, with ``low`` and
      ``high`` the 2nd and 98th percentiles when built :meth:`from_card`;
    - ``"softcon"``: ``(x - (mean - 2 std)) / (4 std)`` clipped to 0..1.

    Divisors are floored at ``eps`` (a constant band has std 0 and maps to 0, not NaN).
    NaN inputs become ``nodata_fill`` after normalisation.
    """

    mean: torch.Tensor
    std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float] | Array | torch.Tensor,
        std: Sequence[float] | Array | torch.Tensor,
        *,
        bands: Sequence[str],
        method: NormMethod = "zscore",
        nodata_fill: float = 0.0,
        low: Sequence[float] | Array | torch.Tensor | None = None,
        high: Sequence[float] | Array | torch.Tensor | None = None,
        eps: float = STD_EPS,
    ) -> None:
        super().__init__()
        if method not in ("zscore", "minmax_percentile", "softcon"):
            raise ConfigError(
                f"unknown normalisation {method!r}; use zscore, minmax_percentile or softcon"
            )
        self.bands = tuple(bands)
        self.method: NormMethod = method
        self.nodata_fill = float(nodata_fill)
        self.eps = float(eps)
        c = len(self.bands)
        mean_t = torch.as_tensor(np.asarray(_as_array(mean), dtype=np.float32)).reshape(-1)
        std_t = torch.as_tensor(np.asarray(_as_array(std), dtype=np.float32)).reshape(-1)
        if mean_t.numel() != c or std_t.numel() != c:
            raise ConfigError(
                f"{c} bands but {mean_t.numel()} means and {std_t.numel()} stds were given"
            )
        if method == "minmax_percentile" and (low is None or high is None):
            raise ConfigError("minmax_percentile needs low= and high= (or use from_card)")
        low_t = (
            mean_t - 2 * std_t
            if low is None
            else torch.as_tensor(np.asarray(_as_array(low), dtype=np.float32)).reshape(-1)
        )
        high_t = (
            mean_t + 2 * std_t
            if high is None
            else torch.as_tensor(np.asarray(_as_array(high), dtype=np.float32)).reshape(-1)
        )
        if low_t.numel() != c or high_t.numel() != c:
            raise ConfigError(f"{c} bands but {low_t.numel()}/{high_t.numel()} low/high values")
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clamp_min(self.eps))
        self.register_buffer("low", low_t.clone())
        self.register_buffer("high", high_t.clone())

    @classmethod
    def from_card(
        cls,
        card: DatasetCard,
        bands: Sequence[str] | None = None,
        method: NormMethod = "zscore",
        *,
        nodata_fill: float = 0.0,
        low_q: float = 2,
        high_q: float = 98,
    ) -> Normalizer:
        """A normaliser for ``bands`` (matched by name, in this order) from a card's stats."""
        mean, std = card.mean_std(bands)
        names = tuple(card._names(bands))
        low = high = None
        if method == "minmax_percentile":
            low, high = card.percentile_range(bands, low_q, high_q)
        return cls(
            mean, std, bands=names, method=method, nodata_fill=nodata_fill, low=low, high=high
        )

    def extra_repr(self) -> str:
        return f"method={self.method!r}, bands={list(self.bands)}"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise ``image`` ``(C, H, W)`` or ``(B, C, H, W)``; returns float32."""
        if image.ndim not in (3, 4) or image.shape[-3] != len(self.bands):
            raise BandMismatchError(
                None,
                self.bands,
                [f"<tensor of shape {tuple(image.shape)}>"],
                "expected (C, H, W) or (B, C, H, W) with one channel per band",
            )
        x = image.float()
        shape = (-1, 1, 1)
        if self.method == "zscore":
            out = (x - self.mean.view(shape)) / self.std.view(shape)
        elif self.method == "minmax_percentile":
            span = (self.high - self.low).clamp_min(self.eps)
            out = ((x - self.low.view(shape)) / span.view(shape)).clamp(0.0, 1.0)
        else:  # softcon
            lo = self.mean - 2 * self.std
            out = ((x - lo.view(shape)) / (4 * self.std).view(shape)).clamp(0.0, 1.0)
        return torch.where(torch.isnan(out), torch.full_like(out, self.nodata_fill), out)

    def normalize_sample(self, sample: Sample) -> Sample:
        """Transform for sample dicts: picks this normaliser's bands by name, then normalises."""
        names = tuple(sample["bands"])
        out = dict(sample)
        image = sample["image"]
        if names != self.bands:
            where = sample.get("path")
            idx = match_bands(self.bands, names, path=None if where is None else str(where))
            image = image[..., idx, :, :]
            out["bands"] = tuple(names[i] for i in idx)
        out["image"] = self(image)
        return out
