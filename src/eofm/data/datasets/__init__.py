"""Dataset kinds over real files. Every dataset yields the sample dict of :mod:`eofm.data.sample`.

- :class:`ClassificationFolder` (class sub-folders), :class:`ClassificationCSV`
- :class:`MultiLabelCSV`, :class:`MultiLabelJSON`, :class:`BigEarthNet` (one file per band)
- :class:`SegmentationDataset` (integer or colour-coded masks)
- :class:`ChangeDetectionDataset` (image pairs with a change mask)
- :class:`UnlabelledPool` (a glob), :class:`TorchGeoDataset` (any torchgeo dataset by class name)

Bands are selected by name (``bands=``); ``band_names=`` declares the file's order when the file
does not name its bands. Nodata pixels become NaN in ``image`` and False in ``valid``.

One module per kind (``classification``, ``multilabel``, ``segmentation``, ``change``, ``pool``,
``torchgeo_adapter``) on the shared base :class:`~eofm.data.datasets.base.EODataset`; every name
is re-exported here, so ``from eofm.data.datasets import ...`` is the import to use.
"""

from __future__ import annotations

from eofm.data.datasets.base import (
    EODataset,
    OnError,
    Transform,
)
from eofm.data.datasets.change import (
    ChangeDetectionDataset,
)
from eofm.data.datasets.classification import (
    EUROSAT_MS_BANDS,
    ClassificationCSV,
    ClassificationFolder,
)
from eofm.data.datasets.multilabel import (
    BIGEARTHNET_CLASSES_43,
    BigEarthNet,
    MultiLabelCSV,
    MultiLabelJSON,
)
from eofm.data.datasets.multilabel import _MultiLabelBase as _MultiLabelBase
from eofm.data.datasets.pool import (
    UnlabelledPool,
)
from eofm.data.datasets.segmentation import (
    DUBAI_CLASSES,
    DUBAI_COLOURS,
    SegmentationDataset,
    Sen1Floods11,
    dubai_segmentation,
)
from eofm.data.datasets.torchgeo_adapter import (
    TorchGeoDataset,
)

__all__ = [
    "BIGEARTHNET_CLASSES_43",
    "DUBAI_CLASSES",
    "DUBAI_COLOURS",
    "EUROSAT_MS_BANDS",
    "BigEarthNet",
    "ChangeDetectionDataset",
    "ClassificationCSV",
    "ClassificationFolder",
    "EODataset",
    "MultiLabelCSV",
    "MultiLabelJSON",
    "OnError",
    "SegmentationDataset",
    "Sen1Floods11",
    "TorchGeoDataset",
    "Transform",
    "UnlabelledPool",
    "dubai_segmentation",
]
