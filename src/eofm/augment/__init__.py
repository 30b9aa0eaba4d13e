"""Multi-view batched augmentations for Earth-observation pretraining (see ``multiview``).

- :class:`MultiViewAugment` / :class:`AugmentConfig`: views for a method's ``ViewSpec``.
- :mod:`eofm.augment.ops`: the batched operations (crops, flips, rotations, band jitter,
  RGB-only colour jitter, band dropout, SAR speckle and gain, blur).
- :func:`view_to_source` / :func:`source_to_view`: map pixels between views and the source.
"""

from eofm.augment.geometry import source_to_view, view_to_source
from eofm.augment.multiview import AugmentConfig, MultiViewAugment, sar_scale_of, sensor_kind_of
from eofm.augment.ops import rgb_indices

__all__ = [
    "AugmentConfig",
    "MultiViewAugment",
    "rgb_indices",
    "sar_scale_of",
    "sensor_kind_of",
    "source_to_view",
    "view_to_source",
]
