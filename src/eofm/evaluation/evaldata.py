"""What every protocol gets: :class:`EvalData` (splits, bands, label kind) and the in-memory
:class:`ArrayDataset`; :func:`default_cache_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Subset

from eofm.data.sample import Sample
from eofm.errors import ConfigError

Array = npt.NDArray[Any]


#: Kinds of labels a dataset can provide to the protocols.
KINDS = (
    "classification",
    "multilabel",
    "segmentation",
    "change",
    "detection",
    "regression",
    "pixel_regression",
    "images",
)


def default_cache_dir() -> Path:
    """``$EOFM_CACHE_DIR`` or ``~/.cache/eofm``."""
    env = os.environ.get("EOFM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "eofm"


class ArrayDataset(Dataset[Sample]):
    """Samples held in NumPy arrays (synthetic sets, tests); supports fast ``get_batch``."""

    def __init__(
        self,
        images: Array,
        bands: Sequence[str],
        *,
        labels: Array | None = None,
        masks: Array | None = None,
        targets: Array | None = None,
        images2: Array | None = None,
        class_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        sensor: str | None = None,
        name: str = "arrays",
    ) -> None:
        n = len(images)
        for what, arr in (("labels", labels), ("masks", masks), ("targets", targets)):
            if arr is not None and len(arr) != n:
                raise ConfigError(f"{len(arr)} {what} for {n} images")
        self.images = images
        self.images2 = images2
        self.labels = labels
        self.masks = masks
        self.targets = targets
        self.bands = tuple(bands)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.target_names = tuple(target_names) if target_names is not None else None
        self.sensor = sensor
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def _one(self, arr: Array, i: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arr[i])).to(dtype)

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        out: Sample = {
            "image": self._one(self.images, i, torch.float32),
            "bands": self.bands,
            "path": f"{self.name}[{i}]",
        }
        if self.images2 is not None:
            out["image2"] = self._one(self.images2, i, torch.float32)
        if self.labels is not None:
            lab = self.labels[i]
            out["label"] = torch.as_tensor(lab).to(
                torch.int64 if np.asarray(lab).ndim == 0 else torch.float32
            )
        if self.masks is not None:
            out["mask"] = self._one(self.masks, i, torch.int64)
        if self.targets is not None:
            out["target"] = self._one(self.targets, i, torch.float32)
        return out

    def get_batch(self, indices: Sequence[int] | Array) -> dict[str, Any]:
        """Stacked samples, like :func:`eofm.data.sample.collate_samples`."""
        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32)),
            "bands": self.bands,
        }
        if self.images2 is not None:
            out["image2"] = torch.from_numpy(np.asarray(self.images2[idx], dtype=np.float32))
        if self.labels is not None:
            lab = np.asarray(self.labels[idx])
            out["label"] = torch.from_numpy(
                lab.astype(np.int64) if lab.ndim == 1 else lab.astype(np.float32)
            )
        if self.masks is not None:
            out["mask"] = torch.from_numpy(np.asarray(self.masks[idx], dtype=np.int64))
        if self.targets is not None:
            out["target"] = torch.from_numpy(np.asarray(self.targets[idx], dtype=np.float32))
        out["path"] = [f"{self.name}[{i}]" for i in idx.tolist()]
        return out


@dataclass
class EvalData:
    """A dataset resolved for one protocol: splits, bands and what the labels are."""

    spec: str
    kind: str
    train: Dataset[Sample]
    test: Dataset[Sample]
    val: Dataset[Sample] | None
    bands: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    target_names: tuple[str, ...] | None = None
    sensor: str | None = None
    split_note: str = ""
    #: Stable text identifying data + splits + bands (feature and card caches key on it).
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def sizes(self) -> dict[str, int]:
        out = {"train": len(self.train), "test": len(self.test)}  # type: ignore[arg-type]
        if self.val is not None:
            out["val"] = len(self.val)  # type: ignore[arg-type]
        return out

    def skipped(self) -> dict[str, str]:
        """Files left out (``skip_bad``): path -> why, over every split's dataset."""
        out: dict[str, str] = {}
        for ds in (self.train, self.val, self.test):
            while isinstance(ds, Subset):
                ds = ds.dataset
            out.update(getattr(ds, "skipped", None) or {})
        return out

    def summary(self) -> dict[str, Any]:
        skipped = self.skipped()
        return {
            **(
                {"skipped": len(skipped), "skipped_files": dict(list(skipped.items())[:20])}
                if skipped
                else {}
            ),
            "spec": self.spec,
            "kind": self.kind,
            "bands": list(self.bands),
            "classes": list(self.class_names) if self.class_names else None,
            "targets": list(self.target_names) if self.target_names else None,
            "splits": self.sizes(),
            "split_note": self.split_note,
        }
