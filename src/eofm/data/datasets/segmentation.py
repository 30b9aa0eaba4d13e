"""Semantic segmentation: :class:`SegmentationDataset` (integer or colour-coded masks),
:class:`Sen1Floods11` and :func:`dubai_segmentation`.
"""

from __future__ import annotations

import glob as globlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from eofm.data.datasets.base import EODataset, _list_files, _read_csv, _require_columns
from eofm.data.readers import (
    RASTER_SUFFIXES,
    Raster,
    read_raster,
)
from eofm.data.sample import IGNORE_INDEX, Sample
from eofm.errors import DataError, EmptyDatasetError, MissingLabelError

#: Colours present in the Dubai aerial masks (they differ from its classes.json), mapped to
#: (class index, name); black border pixels are ignored.
DUBAI_COLOURS: dict[str, int] = {
    "#E2A929": 0,  # water
    "#8429F6": 1,  # land (unpaved area)
    "#6EC1E4": 2,  # road
    "#3C1098": 3,  # building
    "#FEDD3A": 4,  # vegetation
    "#9B9B9B": 5,  # unlabeled
    "#000000": IGNORE_INDEX,
}


DUBAI_CLASSES = ("water", "land", "road", "building", "vegetation", "unlabeled")


def _hex_to_rgb(colour: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        c = colour.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    r, g, b = colour
    return (int(r), int(g), int(b))


def _stem_key(path: Path, strip: str | None) -> str:
    stem = path.stem
    return re.sub(strip, "", stem) if strip else stem


class SegmentationDataset(EODataset):
    """Image + mask pairs matched by file stem.

    Masks are integer class maps, or colour-coded RGB images mapped through ``colour_table``
    (``{"#RRGGBB": class_index}``). ``mask_nodata`` values become :data:`IGNORE_INDEX`.
    ``strip`` is a regular expression removed from stems before pairing (e.g. ``_S2Hand$``).
    """

    def __init__(
        self,
        images: str | Path | Sequence[str | Path],
        masks: str | Path | Sequence[str | Path],
        *,
        colour_table: Mapping[str, int] | None = None,
        classes: Sequence[str] | None = None,
        mask_nodata: Sequence[int] = (),
        image_strip: str | None = None,
        mask_strip: str | None = None,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        image_files = self._collect(images, extensions)
        mask_files = self._collect(masks, extensions)
        self.records: list[tuple[Path, Path]] = []
        if not isinstance(images, (str, Path)) and not isinstance(masks, (str, Path)):
            # explicit lists are paired in order; their stems must still agree
            if len(image_files) != len(mask_files):
                raise MissingLabelError(
                    None, f"{len(image_files)} images but {len(mask_files)} masks were given"
                )
            for img, msk in zip(image_files, mask_files):
                if _stem_key(img, image_strip) != _stem_key(msk, mask_strip):
                    raise MissingLabelError(img, f"is paired with mask {msk} of another name")
                self.records.append((img, msk))
        else:
            by_key = {_stem_key(m, mask_strip): m for m in mask_files}
            for img in image_files:
                key = _stem_key(img, image_strip)
                if key in by_key:
                    self.records.append((img, by_key[key]))
                    continue
                err = MissingLabelError(img, f"no mask with stem {key!r} found")
                if self.on_error == "raise":
                    raise err
                self.skipped[str(img)] = str(err)  # on_error="skip": left out, counted
                warnings.warn(f"skipped {img}: {err}", stacklevel=2)
        if not self.records:
            raise EmptyDatasetError(str(images), "no images found")
        self.colour_table = (
            {_hex_to_rgb(k): v for k, v in colour_table.items()} if colour_table else None
        )
        self.mask_nodata = tuple(mask_nodata)
        if classes is not None:
            self.class_names = tuple(classes)

    @staticmethod
    def _collect(spec: str | Path | Sequence[str | Path], extensions: Sequence[str]) -> list[Path]:
        if isinstance(spec, (str, Path)):
            p = Path(spec)
            if p.is_dir():
                return _list_files(p, extensions)
            return sorted(Path(f) for f in globlib.glob(str(spec), recursive=True))
        return [Path(s) for s in spec]

    @classmethod
    def from_csv(
        cls,
        csv_path: str | Path,
        *,
        image_column: str = "image",
        mask_column: str = "mask",
        root: str | Path | None = None,
        **kwargs: Any,
    ) -> SegmentationDataset:
        """Pairs listed in a CSV (paths relative to ``root``, default the CSV's folder)."""
        csv_path = Path(csv_path)
        base = Path(root) if root is not None else csv_path.parent
        rows = _read_csv(csv_path)
        _require_columns(csv_path, rows, [image_column, mask_column])
        for line, r in enumerate(rows, start=2):
            if not r[mask_column].strip():
                raise MissingLabelError(csv_path, f"row {line} has no mask")
        images = [base / r[image_column] for r in rows]
        masks = [base / r[mask_column] for r in rows]
        kwargs.setdefault("image_strip", ".*")  # the CSV pairs them; names may differ
        kwargs.setdefault("mask_strip", ".*")
        return cls(images, masks, **kwargs)

    def read_mask(self, path: Path) -> np.ndarray:
        raster = read_raster(path)
        data = raster.data
        if self.colour_table is not None:
            if data.shape[0] < 3:
                raise DataError(path, f"colour mask needs 3 bands, found {data.shape[0]}")
            rgb = data[:3].astype(np.int64)
            code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            out = np.full(code.shape, -2, dtype=np.int64)
            for (r, g, b), cls_idx in self.colour_table.items():
                out[code == ((r << 16) | (g << 8) | b)] = cls_idx
            if (out == -2).any():
                unknown = np.unique(code[out == -2])[:5]
                colours = [f"#{int(c):06X}" for c in unknown]
                raise DataError(path, f"mask has colours {colours} not in the colour table")
            return out
        if data.shape[0] != 1:
            raise DataError(
                path,
                f"integer mask must have 1 band, found {data.shape[0]}",
                "pass colour_table= for colour-coded masks",
            )
        mask: np.ndarray = data[0].astype(np.int64)
        for v in self.mask_nodata:
            mask[mask == v] = IGNORE_INDEX
        return mask

    def load(self, index: int) -> Sample:
        img_path, mask_path = self.records[index]
        image, bands, valid = self.read_image(img_path)
        mask = self.read_mask(mask_path)
        if mask.shape != tuple(image.shape[1:]):
            raise DataError(
                mask_path,
                f"mask shape {mask.shape} differs from image shape "
                f"{tuple(image.shape[1:])} of {img_path}",
            )
        mask_t = torch.from_numpy(mask)
        mask_t[~valid] = IGNORE_INDEX
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "mask": mask_t,
            "path": str(img_path),
        }


class Sen1Floods11(SegmentationDataset):
    """Sen1Floods11 hand-labelled chips: ``S1``/``S2``/``Labels`` GeoTIFFs, -1 is nodata.

    ``modality="s1s2"`` stacks VV, VH and the 13 S2 bands into one image.
    """

    def __init__(
        self, root: str | Path, *, modality: Literal["s1", "s2", "s1s2"] = "s1", **kwargs: Any
    ) -> None:
        self.root = Path(root)
        self.modality = modality
        folder = "S2" if modality == "s2" else "S1"
        strip = "_S2Hand$" if modality == "s2" else "_S1Hand$"
        if modality == "s2":
            kwargs.setdefault("sensor", "sentinel2_l1c")  # the files name their bands B1..B12
        elif modality == "s1":
            kwargs.setdefault("sensor", "sentinel1_grd")
        super().__init__(
            self.root / folder,
            self.root / "Labels",
            image_strip=strip,
            mask_strip="_LabelHand$",
            mask_nodata=(-1,),
            classes=("not_water", "water"),
            **kwargs,
        )

    def read_image(self, path: str | Path) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        if self.modality != "s1s2":
            return super().read_image(path)
        p = Path(path)
        s1 = read_raster(p, sensor="sentinel1_grd")
        s2_path = self.root / "S2" / p.name.replace("_S1Hand", "_S2Hand")
        s2 = read_raster(s2_path, sensor="sentinel2_l1c")
        raster = Raster(
            np.concatenate([s1.data.astype(np.float32), s2.data.astype(np.float32)]),
            s1.bands + s2.bands,
            str(p),
            None,
        )
        if self.requested_bands is not None:
            raster = raster.select(self.requested_bands)
        return self.to_tensor(raster)


def dubai_segmentation(root: str | Path, **kwargs: Any) -> SegmentationDataset:
    """The Dubai aerial tiles (``Tile N/{images,masks}``) with its colour masks mapped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder does not exist")
    return SegmentationDataset(
        sorted(root.glob("Tile */images/*.jpg")),
        sorted(root.glob("Tile */masks/*.png")),
        colour_table=DUBAI_COLOURS,
        classes=DUBAI_CLASSES,
        image_strip=None,
        **kwargs,
    )
