"""Summarise a dataset: counts per class, bands, sizes and value ranges."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from eofm.data.sample import Sample


@dataclass
class DatasetSummary:
    """What ``eofm data inspect`` reports."""

    kind: str
    num_samples: int
    inspected: int
    bands: tuple[str, ...]
    shapes: dict[str, int]
    dtype_range: dict[str, tuple[float, float, float]]
    class_counts: dict[str, int] = field(default_factory=dict)
    invalid_fraction: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        lines = [
            f"dataset:   {self.kind}",
            f"samples:   {self.num_samples} (inspected {self.inspected})",
            f"bands:     {', '.join(self.bands)}",
            "sizes:     " + ", ".join(f"{k} x{v}" for k, v in self.shapes.items()),
            f"nodata:    {self.invalid_fraction:.2%} of pixels NaN or nodata",
        ]
        if self.class_counts:
            width = max(len(k) for k in self.class_counts)
            lines.append("classes:")
            total = sum(self.class_counts.values()) or 1
            for name, count in self.class_counts.items():
                lines.append(f"  {name:<{width}}  {count:>7}  {count / total:6.1%}")
        lines.append("values (min / mean / max per band):")
        for band, (lo, mean, hi) in self.dtype_range.items():
            lines.append(f"  {band:<8} {lo:12.4g} {mean:12.4g} {hi:12.4g}")
        if self.skipped:
            lines.append(f"skipped:   {len(self.skipped)} unreadable files")
            lines += [f"  {p}: {e}" for p, e in list(self.skipped.items())[:10]]
        return "\n".join(lines)


def inspect_dataset(
    dataset: Dataset[Sample], *, max_samples: int | None = None, progress: bool = True
) -> tuple[DatasetSummary, list[Sample]]:
    """Scan up to ``max_samples`` samples (spread over the dataset); return the summary and
    a few samples for a preview."""
    from eofm.progress import progress as progress_bar

    n = len(dataset)  # type: ignore[arg-type]
    if max_samples is not None and max_samples < n:
        indices = np.linspace(0, n - 1, max_samples).astype(int).tolist()
    else:
        indices = list(range(n))
    class_names: Any = getattr(dataset, "class_names", None)
    counts: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    total: np.ndarray | None = None
    pixels = 0
    invalid = 0
    bands: tuple[str, ...] = ()
    preview: list[Sample] = []
    step = max(1, len(indices) // 16)
    for k, i in enumerate(progress_bar(indices, desc="inspecting", disable=not progress)):
        s = dataset[i]
        img = s["image"].double()
        bands = tuple(s["bands"])
        shapes["x".join(str(d) for d in img.shape)] += 1
        flat = img.reshape(img.shape[0], -1)
        finite = torch.isfinite(flat)
        invalid += int((~finite.all(0)).sum())
        pixels += flat.shape[1]
        big = torch.where(finite, flat, torch.tensor(float("nan"), dtype=flat.dtype))
        b_lo = np.nan_to_num(np.nanmin(big.numpy(), axis=1), nan=np.inf)
        b_hi = np.nan_to_num(np.nanmax(big.numpy(), axis=1), nan=-np.inf)
        b_sum = np.nansum(big.numpy(), axis=1)
        if lo is None or hi is None or total is None or lo.shape != b_lo.shape:
            lo, hi, total = b_lo, b_hi, b_sum
        else:
            lo, hi, total = np.minimum(lo, b_lo), np.maximum(hi, b_hi), total + b_sum
        label = s.get("label")
        if label is not None:
            lab = torch.as_tensor(label)
            if lab.ndim == 0 and lab.dtype in (torch.int64, torch.int32):
                counts[class_names[int(lab)] if class_names else str(int(lab))] += 1
            elif lab.ndim == 1:
                for j in torch.nonzero(lab > 0).flatten().tolist():
                    counts[class_names[j] if class_names else str(j)] += 1
        if "mask" in s:
            vals, cnt = torch.unique(s["mask"], return_counts=True)
            for v, c in zip(vals.tolist(), cnt.tolist()):
                if v >= 0:
                    key = class_names[v] if class_names and v < len(class_names) else str(v)
                    counts[f"{key} (pixels)"] += c
        if k % step == 0 and len(preview) < 16:
            preview.append(s)
    assert lo is not None and hi is not None and total is not None
    mean = total / max(pixels, 1)
    ranges = {b: (float(lo[j]), float(mean[j]), float(hi[j])) for j, b in enumerate(bands)}
    summary = DatasetSummary(
        kind=type(dataset).__name__,
        num_samples=n,
        inspected=len(indices),
        bands=bands,
        shapes=dict(shapes.most_common()),
        dtype_range=ranges,
        class_counts=dict(sorted(counts.items())),
        invalid_fraction=invalid / max(pixels, 1),
        skipped=dict(getattr(dataset, "skipped", {})),
    )
    return summary, preview
