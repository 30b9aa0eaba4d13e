"""What augmentation hands a method: the view request (:class:`ViewSpec`) and the augmented
views of one batch with their crop geometry (:class:`Views`). ``eofm.methods.base`` re-exports
both as part of the engine/method contract."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ViewSpec", "Views"]


@dataclass(frozen=True)
class ViewSpec:
    """What views a method needs from each image.

    ``global_views`` crops of ``global_size`` (``None``: the input size) and ``local_views`` of
    ``local_size`` (multi-crop). ``crop_scale`` bounds the random-resized-crop area fractions.
    ``geometric=False`` keeps views pixel-aligned (photometric changes only), as masked image
    modelling wants; dense methods keep geometry but need :attr:`Views.boxes` to match pixels.
    """

    global_views: int = 2
    local_views: int = 0
    global_size: int | None = None
    local_size: int = 32
    crop_scale: tuple[float, float] = (0.25, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.25)
    geometric: bool = True


@dataclass
class Views:
    """The augmented views of one batch, global views first.

    ``boxes[i]`` is ``(B, 4)`` float ``(x0, y0, x1, y1)`` of view ``i``'s crop in the source
    image, in pixels; ``flips[i]`` is ``(B,)`` bool for a horizontal flip applied after the crop
    and ``rot90[i]`` is ``(B,)`` int64 counter-clockwise quarter turns applied after the flip.
    Together they let dense methods find the same ground location in two views.
    """

    images: list[Tensor]
    boxes: list[Tensor] = field(default_factory=list)
    flips: list[Tensor] = field(default_factory=list)
    rot90: list[Tensor] = field(default_factory=list)
    num_global: int = 2
