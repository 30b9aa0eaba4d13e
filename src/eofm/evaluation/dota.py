"""DOTA-style detection data: label files, the folder dataset, and synthetic scenes.

Labels: one object per line, ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` (optional
``imagesource:``/``gsd:`` header lines); :func:`parse_dota`, :func:`format_dota`,
:class:`DotaDataset` (``root/images/*`` + ``root/labelTxt/<stem>.txt``),
:func:`write_synthetic_detection` (rotated ships and buildings for tests and the demo).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eofm.data.datasets import EODataset
from eofm.data.readers import RASTER_SUFFIXES
from eofm.data.sample import Sample
from eofm.errors import DataError, EmptyDatasetError
from eofm.evaluation.boxes import Array, obb_to_poly, poly_to_hbox, poly_to_obb, polygon_iou


@dataclass
class DotaObject:
    """One labelled object: a 4-point polygon ``(4, 2)`` (x, y), its class and difficulty."""

    polygon: Array
    label: str
    difficult: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotaObject):
            return NotImplemented
        return (
            self.label == other.label
            and self.difficult == other.difficult
            and np.allclose(self.polygon, other.polygon)
        )

    @property
    def hbox(self) -> Array:
        return poly_to_hbox(self.polygon)

    @property
    def obb(self) -> Array:
        return poly_to_obb(self.polygon)


def parse_dota(text: str, source: str | Path | None = None) -> list[DotaObject]:
    """Objects of a DOTA label file's text (header lines ``imagesource:``/``gsd:`` skipped)."""
    objects: list[DotaObject] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.lower().startswith(("imagesource:", "gsd:")):
            continue
        parts = line.split()
        if len(parts) not in (9, 10):
            raise DataError(
                source,
                f"line {line_no}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]', "
                f"got {len(parts)} fields: {line!r}",
            )
        try:
            coords = np.asarray([float(v) for v in parts[:8]], dtype=np.float64).reshape(4, 2)
            difficult = int(parts[9]) if len(parts) == 10 else 0
        except ValueError:
            raise DataError(source, f"line {line_no}: non-numeric coordinates: {line!r}") from None
        objects.append(DotaObject(coords, parts[8], difficult))
    return objects


def read_dota(path: str | Path) -> list[DotaObject]:
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "DOTA label file does not exist")
    return parse_dota(p.read_text(encoding="utf-8"), p)


def _num(v: float) -> str:
    return f"{v:.1f}" if float(v).is_integer() else f"{v:.6g}"


def format_dota(
    objects: Sequence[DotaObject], *, imagesource: str | None = None, gsd: float | None = None
) -> str:
    """DOTA label text for ``objects`` (the inverse of :func:`parse_dota`)."""
    lines = []
    if imagesource is not None:
        lines.append(f"imagesource:{imagesource}")
    if gsd is not None:
        lines.append(f"gsd:{gsd}")
    for o in objects:
        coords = " ".join(_num(v) for v in np.asarray(o.polygon).reshape(-1))
        lines.append(f"{coords} {o.label} {int(o.difficult)}")
    return "\n".join(lines) + "\n"


def write_dota(path: str | Path, objects: Sequence[DotaObject], **header: Any) -> None:
    Path(path).write_text(format_dota(objects, **header), encoding="utf-8")


class DotaDataset(EODataset):
    """DOTA-style folder: ``root/images/<name>.<ext>`` and ``root/labelTxt/<name>.txt``.

    Samples hold ``image``, ``bands``, ``objects`` (list of :class:`DotaObject`) and ``path``.
    """

    def __init__(
        self, root: str | Path, *, classes: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**{k: v for k, v in kwargs.items() if v is not None})
        self.root = Path(root)
        images = sorted(
            p for p in (self.root / "images").iterdir() if p.suffix.lower() in RASTER_SUFFIXES
        )
        if not images:
            raise EmptyDatasetError(self.root / "images", "no images")
        self.records: list[tuple[Path, Path]] = []
        names: set[str] = set()
        for img in images:
            lab = self.root / "labelTxt" / f"{img.stem}.txt"
            if not lab.exists():
                raise DataError(img, f"no label file {lab}")
            self.records.append((img, lab))
            names.update(o.label for o in read_dota(lab))
        self.class_names = tuple(classes) if classes is not None else tuple(sorted(names))

    def __len__(self) -> int:
        return len(self.records)

    def sample_path(self, index: int) -> str:
        return str(self.records[index][0])

    def load(self, index: int) -> Sample:
        img, lab = self.records[index]
        image, bands, valid = self.read_image(img)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "objects": read_dota(lab),
            "path": str(img),
        }


def write_synthetic_detection(
    out_dir: str | Path, *, n: int = 120, size: int = 96, seed: int = 0
) -> Path:
    """A DOTA-style folder of ``n`` RGB scenes with rotated ``ship`` (long, bright) and
    ``building`` (squarish, red roof) objects; a few tiny ships are marked difficult."""
    from PIL import Image, ImageDraw

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        base = np.full((size, size), 90.0)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 6, size / 2)
            base += rng.normal(0, 15) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rgb = np.stack([base * 0.9, base, base * 1.1], -1) + rng.normal(0, 6, (size, size, 3))
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        objects: list[DotaObject] = []
        boxes: list[Array] = []
        for _ in range(int(rng.integers(2, 6))):
            cls = "ship" if rng.random() < 0.5 else "building"
            if cls == "ship":
                w, h, colour = rng.uniform(16, 26), rng.uniform(5, 8), (235, 235, 225)
            else:
                w, h, colour = rng.uniform(10, 15), rng.uniform(8, 12), (185, 80, 60)
            difficult = 0
            if cls == "ship" and rng.random() < 0.15:
                w, h, difficult = rng.uniform(6, 8), rng.uniform(2.5, 3.5), 1
            for _try in range(20):
                obb = np.asarray(
                    [
                        rng.uniform(4, size - 4),
                        rng.uniform(4, size - 4),
                        w,
                        h,
                        rng.uniform(-math.pi / 2, math.pi / 2),
                    ]
                )
                poly = obb_to_poly(obb)
                if poly.min() < 1 or poly.max() > size - 2:
                    continue
                if any(
                    polygon_iou(poly, obb_to_poly(b)) > 0
                    or np.hypot(*(b[:2] - obb[:2])) < (b[2] + w) / 2
                    for b in boxes
                ):
                    continue
                boxes.append(obb)
                draw.polygon([tuple(p) for p in poly], fill=colour)
                objects.append(DotaObject(poly, cls, difficult))
                break
        name = f"P{i:05d}"
        img.save(root / "images" / f"{name}.png")
        write_dota(
            root / "labelTxt" / f"{name}.txt", objects, imagesource="eofm-synthetic", gsd=1.0
        )
    (root / "done.json").write_text(json.dumps({"n": n, "size": size, "seed": seed}))
    return root
