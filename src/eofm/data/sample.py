"""The one sample format every eofm dataset yields, and its collate function.

A sample is a plain ``dict`` (as in torchgeo) with these keys:

- ``image``: ``float32`` tensor ``(C, H, W)``.
- ``bands``: tuple of the ``C`` band names, in the order of ``image``'s channels.
- ``label`` (optional): ``int64`` scalar for single-label classification, ``float32`` multi-hot
  vector ``(K,)`` for multi-label, ``float32`` scalar or vector for regression.
- ``mask`` (optional): ``int64`` ``(H, W)`` class indices; ``ignore_index`` marks nodata.
- ``image2`` (optional): second date of a change-detection pair, like ``image``.
- ``valid`` (optional): ``bool`` ``(H, W)``, False where any band was nodata or NaN.
- ``path``: the file (or files) the sample came from, for error messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from eofm.errors import BandMismatchError

Sample = dict[str, Any]

#: Mask value for pixels that carry no label (nodata, outside the scene).
IGNORE_INDEX = -1


def collate_samples(batch: Sequence[Sample]) -> dict[str, Any]:
    """Stack samples into a batch; ``bands`` is kept once and must agree across samples."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    first = batch[0]
    bands = tuple(first["bands"])
    for s in batch[1:]:
        if tuple(s["bands"]) != bands:
            raise BandMismatchError(s.get("path"), bands, s["bands"], "samples in a batch differ")
    out: dict[str, Any] = {"bands": bands}
    for key in first:
        if key == "bands":
            continue
        values = [s[key] for s in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
