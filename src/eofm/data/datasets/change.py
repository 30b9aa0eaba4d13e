"""Change detection: :class:`ChangeDetectionDataset` (image pairs with a change mask)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eofm.data.datasets.base import EODataset, _list_files
from eofm.data.readers import (
    RASTER_SUFFIXES,
    read_raster,
)
from eofm.data.sample import IGNORE_INDEX, Sample
from eofm.errors import DataError, EmptyDatasetError, MissingLabelError


class ChangeDetectionDataset(EODataset):
    """Bi-temporal pairs with a change mask: ``root/{A,B,label}/<same name>`` (LEVIR/OSCD-like).

    The mask is binarised (non-zero = change) unless ``binary=False``. A pair without its
    second image or mask is an error, or with ``on_error="skip"`` left out and listed in
    :attr:`skipped`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        before: str = "A",
        after: str = "B",
        label: str = "label",
        binary: bool = True,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        dirs = [self.root / d for d in (before, after, label)]
        for d in dirs:
            if not d.is_dir():
                raise DataError(d, "folder does not exist")
        a_files = _list_files(dirs[0], extensions)
        if not a_files:
            raise EmptyDatasetError(dirs[0], "no images")
        b_map = {p.stem: p for p in _list_files(dirs[1], extensions)}
        m_map = {p.stem: p for p in _list_files(dirs[2], extensions)}
        self.records: list[tuple[Path, Path, Path]] = []
        for a in a_files:
            err: DataError | None = None
            if a.stem not in b_map:
                err = DataError(a, f"no second-date image {a.stem!r} in {dirs[1]}")
            elif a.stem not in m_map:
                err = MissingLabelError(a, f"no change mask {a.stem!r} in {dirs[2]}")
            if err is None:
                self.records.append((a, b_map[a.stem], m_map[a.stem]))
            elif self.on_error == "raise":
                raise err
            else:  # on_error="skip": an incomplete pair is left out and counted
                self.skipped[str(a)] = str(err)
                warnings.warn(f"skipped {a}: {err}", stacklevel=2)
        if not self.records:
            raise EmptyDatasetError(self.root, "no complete image pair (A, B and label)")
        self.binary = binary
        self.class_names = ("no_change", "change") if binary else None

    def load(self, index: int) -> Sample:
        a, b, m = self.records[index]
        image, bands, valid = self.read_image(a)
        image2, bands2, valid2 = self.read_image(b)
        if bands2 != bands or image2.shape != image.shape:
            raise DataError(
                b,
                f"second date has bands {bands2} and shape {tuple(image2.shape)}; "
                f"first date {a} has {bands} and {tuple(image.shape)}",
            )
        mask = read_raster(m).data[0].astype(np.int64)
        if self.binary:
            mask = (mask > 0).astype(np.int64)
        if mask.shape != tuple(image.shape[1:]):
            raise DataError(m, f"mask shape {mask.shape} differs from image {tuple(image.shape)}")
        both = valid & valid2
        mask_t = torch.from_numpy(mask)
        mask_t[~both] = IGNORE_INDEX
        return {
            "image": image,
            "image2": image2,
            "bands": bands,
            "valid": both,
            "mask": mask_t,
            "path": str(a),
        }
