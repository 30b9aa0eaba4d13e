"""``pack_dataset``: any map-style eofm dataset into shards (sizes fitted, dtypes narrowed,
float images as float16 where lossless enough)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from eofm.data.sample import Sample
from eofm.data.sensors import Sensor
from eofm.data.shards.format import Array, _to_numpy, narrow_dtype
from eofm.data.shards.writer import ShardWriter, _path_entry, _path_text
from eofm.errors import (
    BandMismatchError,
    DataError,
    EmptyDatasetError,
)
from eofm.progress import progress as tqdm

# --------------------------------------------------------------------------------------------
# pack_dataset


def _numpy_samples(batch: list[Sample]) -> list[Sample]:
    """Collate for packing: tensors become numpy arrays, which cross from DataLoader workers
    by plain pickling (one shared-memory segment per small tensor is far slower)."""
    return [
        {k: (_to_numpy(v) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for s in batch
    ]


def _resample(image: Array, mask: Array | None, h: int, w: int) -> tuple[Array, Array | None]:
    """Resample to ``h`` x ``w``: images by area averaging when shrinking both sides, else
    bilinear (anti-aliased along a shrinking side); integral images stay integral; masks
    nearest."""
    integral = narrow_dtype(image).dtype.kind in "iu"
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if h <= image.shape[1] and w <= image.shape[2]:
        out = F.interpolate(t, size=(h, w), mode="area")
    else:
        shrink = h < image.shape[1] or w < image.shape[2]
        out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    resized = out[0].numpy()
    image = np.round(resized) if integral else resized
    if mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        mask = F.interpolate(m, size=(h, w), mode="nearest")[0, 0].numpy().astype(np.int64)
    return image, mask


def _fit_size(
    image: Array, mask: Array | None, size: int, fit: str = "crop"
) -> tuple[Array, Array | None]:
    """Bring an image (and its mask) to ``size`` x ``size``.

    ``fit="crop"`` center-crops, upsampling first images whose shorter side is below
    ``size``; ``fit="resize"`` resamples the whole image to ``size`` x ``size`` (the aspect
    ratio changes for non-square images)."""
    _, h, w = image.shape
    if fit == "resize":
        return (image, mask) if (h, w) == (size, size) else _resample(image, mask, size, size)
    if h < size or w < size:
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        image, mask = _resample(image, mask, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    image = image[:, top : top + size, left : left + size]
    if mask is not None:
        mask = mask[top : top + size, left : left + size]
    return image, mask


#: Largest error float16 storage may add, relative to ``max(|value|, std of the image)``.
FLOAT16_TOLERANCE = 1e-3


def float16_if_close(image: Array, tolerance: float = FLOAT16_TOLERANCE) -> tuple[Array, float]:
    """``image`` as float16 with its worst relative error, or unchanged with ``inf``.

    The error of each value is taken relative to ``max(|value|, std of the image)``, so values
    near zero (dB around 0, dark linear backscatter) are judged against the image's spread.
    NaN (nodata) stays NaN; values beyond float16's range keep the image in its dtype.
    """
    if image.dtype.kind != "f" or image.dtype.itemsize <= 2 or image.size == 0:
        return image, float("inf")
    finite = np.isfinite(image)
    if not finite.any():
        return image, float("inf")
    values = image[finite].astype(np.float64)
    if np.abs(values).max() >= 65504.0 or np.isinf(image).any():
        return image, float("inf")
    half = image.astype(np.float16)
    err = np.abs(half[finite].astype(np.float64) - values)
    scale = np.maximum(np.abs(values), max(float(values.std()), 1e-12))
    worst = float((err / scale).max())
    return (half, worst) if worst <= tolerance else (image, worst)


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_binary(arr: Array) -> bool:
    return arr.dtype.kind == "b" or bool(np.isin(arr, (0, 1)).all())


def pack_dataset(
    dataset: Dataset[Sample],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = 4096,
    num_workers: int = 0,
    progress: bool = True,
    size: int | None = None,
    fit: str = "crop",
    float16: bool = False,
) -> Path:
    """Pack a map-style dataset of sample dicts into shards under ``out_dir``; return the folder.

    Images must share one shape; otherwise a :class:`DataError` names the first odd file, and
    ``size=N`` brings every image and mask to N x N: ``fit="crop"`` center-crops (upsampling
    smaller images first), ``fit="resize"`` resamples the whole image (masks nearest).
    Float images whose values are all integral are stored in the smallest integer dtype that
    holds them (JPEG pixels read as float32 0..255 are stored as uint8), so round trips are
    bit-identical. Labels: integer scalars are classes, 0/1 vectors multi-hot labels, anything
    else (float scalars, other vectors) goes to ``target``; a ``target`` key is kept as is.
    The dataset's ``sensor`` and ``class_names`` (or ``classes``) attributes are recorded.
    Only ``image``, ``label``, ``mask``, ``target`` and ``path`` are stored.
    ``float16=True`` stores non-integral float images (SAR backscatter, reflectance) as float16
    when :func:`float16_if_close` finds them lossless enough for every image (else float32);
    the choice and the worst relative error go to the index's ``storage`` entry.
    A full disk aborts the pack (its partial files removed) with a :class:`DataError` naming
    ``out_dir``.
    """
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError("pack_dataset needs a map-style dataset with __len__") from exc
    root_hint = getattr(dataset, "root", None)
    if total == 0:
        raise EmptyDatasetError(root_hint, "dataset has no samples to pack")
    if fit not in ("crop", "resize"):
        raise ValueError(f"fit must be 'crop' or 'resize', got {fit!r}")
    sensor_attr = getattr(dataset, "sensor", None)
    sensor = sensor_attr.name if isinstance(sensor_attr, Sensor) else sensor_attr
    class_names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
    if class_names is not None and not all(isinstance(c, str) for c in class_names):
        class_names = None
    loader: DataLoader[Sample] = DataLoader(
        dataset,
        batch_size=32,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_numpy_samples,
    )
    samples = (s for batch in loader for s in batch)
    writer: ShardWriter | None = None
    first_shape: tuple[int, ...] | None = None
    first_path: str | None = None
    label_kind: str | None = None
    source_dtype: str | None = None
    worst_f16 = 0.0
    try:
        for sample in tqdm(samples, total=total, disable=not progress, desc="packing", unit="img"):
            path = _path_entry(sample.get("path"))
            where = _path_text(path)
            image = _to_numpy(sample["image"])
            bands = tuple(sample.get("bands") or getattr(dataset, "bands", ()) or ())
            if not bands:
                raise DataError(where, "sample has no 'bands' and the dataset no .bands")
            mask = None if sample.get("mask") is None else _to_numpy(sample["mask"])
            if image.ndim != 3:
                raise DataError(where, f"image must be (C, H, W), got shape {image.shape}")
            if size is not None:
                image, mask = _fit_size(image, mask, size, fit)
            elif first_shape is not None and image.shape != first_shape:
                raise DataError(
                    where,
                    f"image shape {image.shape} differs from {first_shape} of the first sample"
                    f" ({first_path})",
                    "pass size=N to center-crop/resize every image to N x N",
                )
            if writer is None:
                first_shape, first_path = image.shape, where
                writer = ShardWriter(
                    out_dir, bands, sensor=sensor, shard_size=shard_size, class_names=class_names
                )
            elif bands != writer.bands:
                raise BandMismatchError(where, writer.bands, bands, "samples differ in bands")
            label, target = None, sample.get("target")
            raw = sample.get("label")
            if raw is not None:
                arr = _to_numpy(raw)
                kind = (
                    "class"
                    if arr.ndim == 0 and arr.dtype.kind in "iub"
                    else "multilabel"
                    if arr.ndim == 1 and _is_binary(arr)
                    else "target"
                )
                if label_kind is None:
                    label_kind = kind
                elif kind != label_kind and not (label_kind == "target" and kind != "class"):
                    raise DataError(
                        where,
                        f"label {arr.tolist()} is a {kind} but earlier ones were {label_kind}",
                    )
                if label_kind == "target":
                    if target is not None:
                        raise DataError(where, "sample has both a regression label and a target")
                    target = arr.astype(np.float32)
                else:
                    label = arr
            stored = narrow_dtype(np.ascontiguousarray(image))
            if float16 and stored.dtype.kind == "f":
                source_dtype = source_dtype or str(stored.dtype)
                stored, err = float16_if_close(stored)
                worst_f16 = max(worst_f16, err)
            writer.add(
                stored,
                label=label,
                mask=None if mask is None else narrow_dtype(mask),
                target=target,
                path=path,
            )
        assert writer is not None
        if source_dtype is not None:
            final = writer.index()["dtype"]
            writer.storage = {
                "source_dtype": source_dtype,
                "dtype": final,
                "float16": final == "float16",
                "max_relative_error": worst_f16 if final == "float16" else 0.0,
                "tolerance": FLOAT16_TOLERANCE,
            }
        return writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if _disk_full(exc):
            raise DataError(
                out_dir,
                f"disk full while packing ({os.strerror(errno.ENOSPC)}); the partial shards were"
                " removed",
                "free space there, point EOFM_CACHE_DIR elsewhere, or set data.cache: false",
            ) from exc
        raise
