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

The card format lives in :mod:`eofm.data.card` and the normaliser in
:mod:`eofm.data.normalizer`; both are re-exported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch.utils.data import DataLoader

from eofm.data.card import (
    CARD_FORMAT,
    CARD_NAME,
    CARD_VERSION,
    DEFAULT_PERCENTILES,
    Array,
    BandStats,
    DatasetCard,
    _as_array,
    percentile_key,
)
from eofm.data.normalizer import (
    STD_EPS,
    Normalizer,
    NormMethod,
)
from eofm.data.sensors import Sensor, find_sensor, match_bands
from eofm.errors import (
    BandMismatchError,
    ConfigError,
    DataError,
    EmptyDatasetError,
)
from eofm.progress import progress as progress_bar


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
    with progress_bar(total=total, disable=not progress, desc="band statistics", unit="img") as bar:
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


__all__ = [
    "CARD_FORMAT",
    "CARD_NAME",
    "CARD_VERSION",
    "DEFAULT_PERCENTILES",
    "STD_EPS",
    "Array",
    "BandStats",
    "DatasetCard",
    "NormMethod",
    "Normalizer",
    "compute_stats",
    "load_or_compute_card",
    "percentile_key",
]
