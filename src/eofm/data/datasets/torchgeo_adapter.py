"""Any torchgeo dataset by class name: :class:`TorchGeoDataset` (samples in the eofm format)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eofm.data.datasets.base import EODataset
from eofm.data.readers import (
    Raster,
)
from eofm.data.sample import Sample
from eofm.errors import DataError, UnknownNameError


class TorchGeoDataset(EODataset):
    """Any torchgeo dataset by class name, its samples converted to eofm's form.

    Band names come from the torchgeo dataset's ``bands`` (or ``all_bands``) attribute, or
    from ``band_names``. ``download`` is passed through (it needs internet).
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        download: bool = False,
        dataset_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            import torchgeo.datasets as tgd
        except ImportError as err:  # pragma: no cover - depends on the install
            raise DataError(None, "torchgeo is not installed", "pip install 'eofm[geo]'") from err
        cls = getattr(tgd, name, None)
        if cls is None or not isinstance(cls, type):
            known = [n for n in dir(tgd) if isinstance(getattr(tgd, n), type)]
            raise UnknownNameError("torchgeo dataset", name, known)
        try:
            self.dataset = cls(root=str(root), download=download, **dict(dataset_kwargs or {}))
        except Exception as err:  # torchgeo raises DatasetNotFoundError and others
            raise DataError(root, f"torchgeo {name} could not be opened: {err}") from err
        self.name = name
        names = getattr(self.dataset, "bands", None) or getattr(self.dataset, "all_bands", None)
        self.source_bands = tuple(self.band_names or names or ())
        classes = getattr(self.dataset, "classes", None)
        if classes is not None:
            self.class_names = tuple(str(c) for c in classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_path(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def load(self, index: int) -> Sample:
        raw = self.dataset[index]
        image = raw["image"]
        arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if arr.ndim == 4:  # time series: keep the first date
            arr = arr[0]
        bands = self.source_bands or tuple(f"band_{i + 1}" for i in range(arr.shape[0]))
        if len(bands) != arr.shape[0]:
            bands = tuple(f"band_{i + 1}" for i in range(arr.shape[0]))
        raster = Raster(arr, tuple(bands), self.sample_path(index))
        if self.requested_bands is not None:
            raster = raster.select(self.requested_bands, sensor=self.sensor)
        tensor, names, valid = self.to_tensor(raster)
        out: Sample = {"image": tensor, "bands": names, "valid": valid, "path": raster.path}
        if "label" in raw:
            label = raw["label"]
            out["label"] = label if isinstance(label, torch.Tensor) else torch.tensor(label)
        if "mask" in raw:
            out["mask"] = torch.as_tensor(raw["mask"]).long().squeeze(0)
        return out
