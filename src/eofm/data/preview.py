"""Quick looks: RGB composites for optical data, greyscale for SAR, mask overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eofm.data.sample import IGNORE_INDEX, Sample
from eofm.data.sensors import normalise_band_name

_RGB_KEYS = (("RED", "B04"), ("GREEN", "B03"), ("BLUE", "B02"))


def rgb_indices(bands: Sequence[str]) -> list[int] | None:
    """Channel indices of red, green and blue (by common or Sentinel-2 name), if present."""
    keys = [normalise_band_name(b) for b in bands]
    out = []
    for names in _RGB_KEYS:
        hit = next((i for i, k in enumerate(keys) if k in names), None)
        if hit is None:
            return None
        out.append(hit)
    return out


def stretch(image: np.ndarray, low: float = 2, high: float = 98, joint: bool = False) -> np.ndarray:
    """Percentile stretch to ``[0, 1]``, ignoring NaNs.

    Per channel by default. With ``joint=True`` each channel's low percentile is subtracted
    (dark-object subtraction, which removes haze) and one gain is shared by all channels,
    which keeps the colour balance of an RGB composite.
    """
    out = np.zeros(image.shape, dtype=np.float32)
    lows, highs, spans = [], [], []
    for c in range(image.shape[0]):
        finite = image[c][np.isfinite(image[c])]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
        lows.append(float(lo))
        highs.append(float(hi))
        spans.append(max(float(hi - lo), 1e-6))
    for c in range(image.shape[0]):
        # joint: never stretch a near-uniform scene (calm water) by more than 5x its brightness
        span = max(max(spans), 0.2 * max(abs(h) for h in highs)) if joint else spans[c]
        out[c] = np.clip((image[c] - lows[c]) / span, 0, 1)
    return np.nan_to_num(out)


def display_image(image: torch.Tensor | np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` float array ready for ``imshow``: RGB composite when the
    bands include red, green and blue; otherwise the first band in greyscale (SAR)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    idx = rgb_indices(bands)
    if idx is not None:
        rgb: np.ndarray = stretch(arr[idx].astype(np.float32), joint=True).transpose(1, 2, 0)
        return rgb
    grey: np.ndarray = stretch(arr[:1].astype(np.float32))[0]
    return grey


def save_preview(
    samples: Sequence[Sample],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """A grid of samples (with their masks when present) written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    has_mask = any("mask" in s for s in samples)
    cols = min(n, 8)
    rows_per = 2 if has_mask else 1
    rows = int(np.ceil(n / cols)) * rows_per
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, s in enumerate(samples):
        r, c = (i // cols) * rows_per, i % cols
        img = display_image(s["image"], s["bands"])
        axes[r, c].imshow(img, cmap=None if img.ndim == 3 else "gray")
        label = s.get("label")
        if label is not None and class_names is not None:
            lab = torch.as_tensor(label)
            if lab.ndim == 0:
                text = class_names[int(lab)]
            else:
                text = ",".join(class_names[j] for j in torch.nonzero(lab > 0).flatten()[:3])
            axes[r, c].set_title(text[:24], fontsize=7)
        if has_mask and "mask" in s:
            mask = torch.as_tensor(s["mask"]).numpy().astype(float)
            mask[mask == IGNORE_INDEX] = np.nan
            axes[r + 1, c].imshow(mask, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
