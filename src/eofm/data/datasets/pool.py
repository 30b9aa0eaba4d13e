"""Unlabelled images: :class:`UnlabelledPool` (a glob or a folder)."""

from __future__ import annotations

import glob as globlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eofm.data.datasets.base import EODataset, _list_files
from eofm.data.readers import (
    RASTER_SUFFIXES,
)
from eofm.data.sample import Sample
from eofm.errors import EmptyDatasetError


class UnlabelledPool(EODataset):
    """Unlabelled images matched by a glob (``'archive/**/*.tif'``) or listed explicitly."""

    def __init__(self, pattern: str | Path | Sequence[str | Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(pattern, (str, Path)):
            p = Path(pattern)
            if p.is_dir():
                files = _list_files(p, RASTER_SUFFIXES)
            else:
                files = sorted(Path(f) for f in globlib.glob(str(pattern), recursive=True))
            files = [f for f in files if f.suffix.lower() in RASTER_SUFFIXES]
        else:
            files = [Path(f) for f in pattern]
        if not files:
            raise EmptyDatasetError(str(pattern), "matched no image files")
        self.records: list[Path] = files

    def load(self, index: int) -> Sample:
        path = self.records[index]
        image, bands, valid = self.read_image(path)
        return {"image": image, "bands": bands, "valid": valid, "path": str(path)}
