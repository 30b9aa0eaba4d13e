"""JPEG / PNG / BMP (Pillow), with the decoded size checked against the file size first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eofm.data.readers import base
from eofm.data.readers.base import (
    Raster,
    Window,
    _check_dtype,
    _check_exists,
    _check_size,
    _resolve_names,
)
from eofm.errors import (
    CorruptFileError,
    DataError,
)

_IMAGE_ITEMSIZE = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def read_image(
    path: str | Path, *, band_names: Sequence[str] | None = None, window: Window | None = None
) -> Raster:
    """Read a JPEG/PNG. RGB files give bands ``red, green, blue``; greyscale gives one band."""
    from PIL import Image

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as img:
            ratio = base.MAX_RATIO["png"] if img.format == "PNG" else base.MAX_RATIO["image"]
            itemsize = _IMAGE_ITEMSIZE.get(img.mode, 1)
            _check_size(path, (len(img.getbands()), img.height, img.width), itemsize, ratio=ratio)
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode == "LA":
                img = img.convert("L")
            if window:
                r, c, h, w = window
                img = img.crop((c, r, c + w, r + h))
            arr = np.asarray(img)
            mode = img.mode
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(path, f"image is too large to decode safely: {err}") from None
    except MemoryError:
        raise DataError(path, "not enough memory to decode the image") from None
    except Exception as err:  # Pillow's decoders raise many types on corrupt data
        raise CorruptFileError(path, f"cannot be decoded as an image: {err}") from err
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise CorruptFileError(path, f"decoded to an unusable array of shape {arr.shape}")
    _check_dtype(path, arr.dtype)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    default = {
        "RGB": ("red", "green", "blue"),
        "RGBA": ("red", "green", "blue", "alpha"),
    }.get(mode, tuple(f"band_{i + 1}" for i in range(arr.shape[0])))
    if mode in ("L", "I", "I;16", "F") and band_names is None:
        default = ("gray",)
    names = _resolve_names(path, [], arr.shape[0], band_names, None) if band_names else default
    return Raster(np.ascontiguousarray(arr), tuple(names), str(path))
