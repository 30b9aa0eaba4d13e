"""Explicit normalisation from a dataset card: :class:`Normalizer` (z-score, percentile
min-max, SoftCon), matching bands by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from eofm.data.card import Array, DatasetCard, _as_array
from eofm.data.sample import Sample
from eofm.data.sensors import match_bands
from eofm.errors import (
    BandMismatchError,
    ConfigError,
)

#: Floor on the standard deviation (and percentile span) a normaliser divides by: a constant
#: band has std 0 and is mapped to 0 instead of NaN/inf.
STD_EPS = 1e-6


NormMethod = Literal["zscore", "minmax_percentile", "softcon"]


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
