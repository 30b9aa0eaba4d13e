"""Small fake files in the real formats, written by tests (torchgeo's habit)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    descriptions: Sequence[str] | None = None,
    nodata: float | None = None,
    gsd: float = 10.0,
) -> Path:
    """Write ``(C, H, W)`` ``data`` as a georeferenced GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=c,
        dtype=data.dtype,
        crs="EPSG:32632",
        transform=from_origin(500000, 5000000, gsd, gsd),
        nodata=nodata,
    ) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def write_png(path: Path, data: np.ndarray) -> Path:
    """Write ``(H, W, 3)`` or ``(H, W)`` uint8 as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path)
    return path


def band_ramp(c: int, h: int = 16, w: int = 16, dtype: str = "uint16") -> np.ndarray:
    """Band ``i`` is filled with ``100 * (i + 1)`` plus a small ramp, so bands are recognisable."""
    base = (np.arange(c, dtype=np.float64)[:, None, None] + 1) * 100
    ramp = np.arange(h * w, dtype=np.float64).reshape(1, h, w) % 7
    return (base + ramp).astype(dtype)


def class_folder(root: Path, classes: Sequence[str], per_class: int, c: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        for i in range(per_class):
            data = (band_ramp(c) + rng.integers(0, 5, (c, 16, 16)) + k * 1000).astype("uint16")
            write_geotiff(
                root / name / f"{name}_{i}.tif", data, descriptions=[f"B0{j + 1}" for j in range(c)]
            )
    return root


def bigearthnet_patch(root: Path, name: str, labels: Sequence[str]) -> Path:
    """One BigEarthNet-v1-like patch folder: 12 band files at 10/20/60 m and a label JSON."""
    import json

    sizes = {10: 12, 20: 6, 60: 2}
    gsd = {
        "B01": 60,
        "B02": 10,
        "B03": 10,
        "B04": 10,
        "B05": 20,
        "B06": 20,
        "B07": 20,
        "B08": 10,
        "B8A": 20,
        "B09": 60,
        "B11": 20,
        "B12": 20,
    }
    folder = root / name
    for i, (band, g) in enumerate(gsd.items()):
        n = sizes[g]
        data = np.full((1, n, n), 100 * (i + 1), dtype="uint16")
        write_geotiff(folder / f"{name}_{band}.tif", data, gsd=g)
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": list(labels)}))
    return folder
