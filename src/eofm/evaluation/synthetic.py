"""Synthetic evaluation sets (``synthetic:<kind>``): generated once, cached as arrays.

Kinds: ``landcover``, ``multilabel``, ``wavemode``, ``change``, ``ndvi`` and ``detection`` (see
:mod:`eofm.evaluation.data`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from eofm.evaluation.evaldata import Array, ArrayDataset

SYNTHETIC_KINDS = ("landcover", "multilabel", "wavemode", "change", "ndvi", "detection")


SYNTH_DEFAULTS = {
    "landcover": (600, 32),
    "multilabel": (600, 32),
    "wavemode": (400, 64),
    "change": (160, 64),
    "ndvi": (160, 64),
    "detection": (120, 96),
}


def synthetic_arrays(
    sk: str, n: int, size: int, seed: int, folder: Path, progress: bool
) -> dict[str, Array]:
    path = folder / "arrays.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Array]
    if sk == "wavemode":
        from eofm.data.synthetic import generate_wavemode

        w = generate_wavemode(n, size, seed=seed, progress=progress)
        out = {
            "images": w.images.astype(np.float32),
            "labels": w.labels,
            "targets": np.stack([w.hs, w.wind_speed], 1).astype(np.float32),
        }
    else:
        from eofm.data.synthetic import generate_landcover

        sensors = ("s2", "s1") if sk == "ndvi" else ("s2",)
        pairs = sk == "change"
        s = generate_landcover(n * (2 if pairs else 1), size, seed=seed, sensors=sensors)
        assert s.s2 is not None
        if sk == "landcover":
            out = {
                "images": s.s2,
                "labels": s.labels,
                "masks": s.masks,
                "fractions": s.fractions,
                "multi_hot": s.multi_hot(),
            }
        elif sk == "ndvi":
            assert s.s1 is not None
            s2 = s.s2.astype(np.float32)
            from eofm.data.synthetic import S2_BANDS

            nir, red = s2[:, S2_BANDS.index("B08")], s2[:, S2_BANDS.index("B04")]
            ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
            out = {"images": s.s1.astype(np.float32), "targets": ndvi[:, None].astype(np.float32)}
        else:
            out = make_change_pairs(s.s2, s.masks, n, seed)
    tmp = folder / "arrays.tmp.npz"
    np.savez(tmp, **out)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return out


def make_change_pairs(s2: Array, masks: Array, n: int, seed: int) -> dict[str, Array]:
    """Pairs (scene i, scene i with blobs pasted from scene n + i); change = pasted pixels whose
    land-cover class differs. The second date gets a small radiometric gain."""
    rng = np.random.default_rng(seed + 7)
    size = s2.shape[-1]
    before = s2[:n].astype(np.float32)
    after = before.copy()
    change = np.zeros((n, size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        region = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 10, size / 4, 2)
            region |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        src = n + i
        after[i][:, region] = s2[src][:, region]
        change[i] = region & (masks[i] != masks[src])
        after[i] *= np.float32(rng.normal(1.0, 0.03))
    return {
        "images": before,
        "images2": after,
        "masks": change,
    }


def synthetic_dataset(sk: str, kind: str, a: dict[str, Array], spec: str) -> ArrayDataset:
    from eofm.data.synthetic import CLASS_NAMES, S1_BANDS, S2_BANDS, WV_BANDS, WV_CLASS_NAMES

    name = spec
    if sk == "wavemode":
        if kind == "regression":
            return ArrayDataset(
                a["images"],
                WV_BANDS,
                targets=a["targets"],
                target_names=("hs", "wind_speed"),
                sensor="sentinel1_wv",
                name=name,
            )
        return ArrayDataset(
            a["images"],
            WV_BANDS,
            labels=a["labels"],
            class_names=WV_CLASS_NAMES,
            sensor="sentinel1_wv",
            name=name,
        )
    if sk == "ndvi":
        return ArrayDataset(
            a["images"],
            S1_BANDS,
            targets=a["targets"],
            target_names=("ndvi",),
            sensor="sentinel1_grd",
            name=name,
        )
    if sk == "change":
        return ArrayDataset(
            a["images"],
            S2_BANDS,
            images2=a["images2"],
            masks=a["masks"],
            class_names=("no_change", "change"),
            sensor="sentinel2_l1c",
            name=name,
        )
    common: dict[str, Any] = {"sensor": "sentinel2_l1c", "name": name}
    if kind == "segmentation":
        return ArrayDataset(
            a["images"], S2_BANDS, masks=a["masks"], class_names=CLASS_NAMES, **common
        )
    if kind == "multilabel":
        return ArrayDataset(
            a["images"], S2_BANDS, labels=a["multi_hot"], class_names=CLASS_NAMES, **common
        )
    if kind == "regression":
        return ArrayDataset(
            a["images"], S2_BANDS, targets=a["fractions"], target_names=CLASS_NAMES, **common
        )
    return ArrayDataset(
        a["images"], S2_BANDS, labels=a["labels"], class_names=CLASS_NAMES, **common
    )
