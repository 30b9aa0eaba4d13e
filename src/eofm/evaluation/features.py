"""Batched, cached feature extraction and the preprocessing every protocol shares.

:class:`Preprocess` selects the model's bands from the data by name, resizes to the model's
input size when needed and normalises (from the model card when it has statistics, else from
a dataset card computed on the training split). :func:`extract_features` runs the frozen
backbone over a dataset in batches with a progress bar and caches the pooled embeddings as
``.npy`` keyed by the model's hash, the data, the split and the bands; an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eofm.data.sample import Sample
from eofm.data.sensors import match_bands
from eofm.data.stats import DatasetCard, Normalizer, load_or_compute_card
from eofm.errors import BandMismatchError
from eofm.evaluation.data import EvalData, base_dataset
from eofm.evaluation.models import ResolvedModel

Array = npt.NDArray[Any]


@dataclass
class Preprocess:
    """Band selection by name, resizing and normalisation of ``(B, C, H, W)`` batches."""

    band_index: list[int] | None
    normalizer: Normalizer
    size: tuple[int, int] | None = None
    description: str = ""

    def __call__(self, images: Tensor) -> Tensor:
        x = images
        if self.band_index is not None:
            x = x[:, self.band_index]
        if self.normalizer.mean.device != x.device:
            self.normalizer.to(x.device)
        x = self.normalizer(x)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(
                x, size=self.size, mode="bilinear", align_corners=False, antialias=True
            )
        return x

    def select(self, images: Tensor) -> Tensor:
        """Band selection only (no normalisation), for dense tasks on raw values."""
        return images if self.band_index is None else images[:, self.band_index]

    def key(self) -> str:
        n = self.normalizer
        parts = [
            self.band_index,
            self.size,
            n.method,
            [round(float(v), 6) for v in n.mean],
            [round(float(v), 6) for v in n.std],
        ]
        return json.dumps(parts)


def dataset_card(
    data: EvalData, cache_dir: Path, *, max_samples: int = 2000, progress: bool = False
) -> DatasetCard:
    """Per-band statistics of the training split, cached under ``cache_dir/cards``."""
    path = cache_dir / "cards" / f"{data.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return load_or_compute_card(path, data.train, max_samples=max_samples, progress=progress)


def make_preprocess(
    model: ResolvedModel,
    data: EvalData,
    cache_dir: Path,
    *,
    size: int | tuple[int, int] | None = None,
    method: str = "zscore",
    progress: bool = False,
) -> Preprocess:
    """Preprocessing for ``model`` on ``data`` (see the module docstring)."""
    bands = model.bands
    index: list[int] | None = None
    if tuple(bands) != tuple(data.bands):
        try:
            index = match_bands(bands, data.bands, sensor=data.sensor or model.backbone.sensor)
        except BandMismatchError as err:
            raise BandMismatchError(
                data.spec,
                bands,
                data.bands,
                f"the model needs bands the data does not have ({err.reason})",
            ) from None
    norm = model.normalization
    desc: str
    if norm and "mean" in norm and "std" in norm and method == "zscore":
        mean = [float(norm["mean"][b]) for b in bands]
        std = [float(norm["std"][b]) for b in bands]
        normalizer = Normalizer(mean, std, bands=bands, method="zscore")
        desc = "model card (z-score)"
    else:
        card = dataset_card(data, cache_dir, progress=progress)
        names = [data.bands[i] for i in index] if index is not None else list(data.bands)
        normalizer = Normalizer.from_card(card, names, method=method)  # type: ignore[arg-type]
        normalizer.bands = tuple(bands)
        desc = f"dataset card of the training split ({method})"
    size_t = (size, size) if isinstance(size, int) else size
    return Preprocess(index, normalizer, size_t, desc)


def _resize_collate(size: tuple[int, int] | None, key: str) -> Any:
    def collate(batch: Sequence[Sample]) -> dict[str, Any]:
        images = []
        for s in batch:
            img = s["image"]
            if size is not None and tuple(img.shape[-2:]) != size:
                img = F.interpolate(
                    img[None], size=size, mode="bilinear", align_corners=False, antialias=True
                )[0]
            images.append(img)
        out: dict[str, Any] = {"image": torch.stack(images)}
        if key in batch[0]:
            out[key] = torch.stack([torch.as_tensor(s[key]) for s in batch])
        return out

    return collate


def label_key(dataset: Dataset[Sample]) -> str:
    """``"label"`` or ``"target"``: which field holds what the protocol predicts."""
    sample = dataset[0]
    return "label" if "label" in sample else "target"


def iter_batches(
    dataset: Dataset[Sample],
    *,
    batch_size: int,
    start: int = 0,
    size: tuple[int, int] | None = None,
    num_workers: int = 0,
    key: str = "label",
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(images, labels)`` batches in order from sample ``start``; the fast ``get_batch``
    path is used for shards and array datasets (also under ``Subset``)."""
    inner, idx = base_dataset(dataset)
    n = len(idx)
    from eofm.data.cache import batch_reader

    get_batch = batch_reader(inner) if start < n else getattr(inner, "get_batch", None)
    if get_batch is not None:
        other = "target" if key == "label" else "label"  # packing files regression labels
        for lo in range(start, n, batch_size):
            batch = get_batch(idx[lo : lo + batch_size])
            images = batch["image"]
            if size is not None and tuple(images.shape[-2:]) != size:
                images = F.interpolate(
                    images, size=size, mode="bilinear", align_corners=False, antialias=True
                )
            yield images, batch.get(key, batch.get(other))
        return
    if size is None:
        first = dataset[0]["image"]
        size = (int(first.shape[-2]), int(first.shape[-1]))
    sub = torch.utils.data.Subset(dataset, list(range(start, n)))
    loader: DataLoader[Sample] = DataLoader(
        sub,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_resize_collate(size, key),
    )
    for batch in loader:
        yield batch["image"], batch.get(key)


@dataclass
class FeatureSet:
    """Pooled embeddings of one split and its labels (if any)."""

    features: Array
    labels: Array | None
    cached: bool
    path: Path | None = None
    seconds: float = 0.0


def feature_cache_key(model: ResolvedModel, data_key: str, split: str, pre: Preprocess) -> str:
    text = json.dumps([model.key, data_key, split, list(model.bands), pre.key()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _autocast(device: torch.device, amp: bool) -> Any:
    if not amp:
        return nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def embed(
    model: torch.nn.Module,
    images: Tensor,
    pre: Preprocess,
    device: torch.device,
    amp: bool = False,
) -> Tensor:
    """Pooled embeddings of a raw batch (float32, on the CPU)."""
    x = pre(images.to(device))
    with _autocast(device, amp):
        out: Tensor = model(x)
    return out.float().cpu()


def extract_features(
    model: ResolvedModel,
    dataset: Dataset[Sample],
    pre: Preprocess,
    *,
    cache_dir: Path | None = None,
    cache_key: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
    checkpoint_every: int = 4096,
) -> FeatureSet:
    """Pooled embeddings ``(N, D)`` of every sample of ``dataset`` (and its labels).

    With ``cache_dir`` and ``cache_key`` the result is stored as ``<key>.npy`` (+
    ``<key>.labels.npy``); a later call with the same key reads it back without touching the
    model or the data. Partial progress is saved every ``checkpoint_every`` samples, so an
    interrupted extraction resumes.
    """
    import time

    from eofm.progress import progress as progress_bar

    t0 = time.perf_counter()
    n = len(dataset)  # type: ignore[arg-type]
    dev = torch.device(device)
    key = label_key(dataset)
    final = partial = lab_path = meta_path = None
    if cache_dir is not None and cache_key is not None:
        folder = cache_dir / "features"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{cache_key}.npy"
        lab_path = folder / f"{cache_key}.labels.npy"
        partial = folder / f"{cache_key}.partial.npy"
        meta_path = folder / f"{cache_key}.partial.json"
        hit = _read_cache(final, lab_path, n)
        if hit is not None:
            return FeatureSet(hit[0], hit[1], True, final, time.perf_counter() - t0)
    bb = model.backbone.to(dev).eval()
    dim = int(bb.embed_dim)
    start = 0
    feats_mm: Array | None = None
    labels_list: list[Array] = []
    if partial is not None and meta_path is not None and partial.exists() and meta_path.exists():
        resumed = _read_progress(partial, meta_path, n, dim)
        if resumed is not None:
            start, feats_mm, labels_list = resumed
    if feats_mm is None:
        if partial is not None:
            feats_mm = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.float32, shape=(n, dim)
            )
        else:
            feats_mm = np.empty((n, dim), dtype=np.float32)
    done = start
    since = 0
    bar = progress_bar(total=n, initial=start, desc=desc, unit="img", disable=not progress)
    try:
        for images, labels in iter_batches(
            dataset,
            batch_size=batch_size,
            start=start,
            size=pre.size,
            num_workers=num_workers,
            key=key,
        ):
            out = embed(bb, images, pre, dev, amp)
            feats_mm[done : done + len(out)] = out.numpy()
            if labels is not None:
                labels_list.append(labels.numpy())
            done += len(out)
            since += len(out)
            bar.update(len(out))
            if partial is not None and meta_path is not None and since >= checkpoint_every:
                since = 0
                _save_progress(feats_mm, labels_list, partial, meta_path, n, dim, done)
    finally:
        bar.close()
    labels_arr = np.concatenate(labels_list) if labels_list else None
    feats = np.asarray(feats_mm)
    if final is not None and partial is not None and meta_path is not None and lab_path is not None:
        assert isinstance(feats_mm, np.memmap)
        feats_mm.flush()
        del feats_mm
        if labels_arr is not None:
            _save_npy(lab_path, labels_arr)
        elif lab_path.exists():
            lab_path.unlink()
        os.replace(partial, final)  # the features appear last: a complete entry or none
        meta_path.unlink(missing_ok=True)
        Path(str(partial) + ".labels.npy").unlink(missing_ok=True)
        feats = np.load(final)
    return FeatureSet(feats, labels_arr, False, final, time.perf_counter() - t0)


def _save_npy(path: Path, arr: Array) -> None:
    """``np.save`` through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, path)


def _read_cache(final: Path, lab_path: Path, n: int) -> tuple[Array, Array | None] | None:
    """A complete cache entry, or ``None`` (absent, unreadable or not of ``n`` rows)."""
    if not final.exists():
        return None
    try:
        feats = np.load(final, allow_pickle=False)
        labels = np.load(lab_path, allow_pickle=False) if lab_path.exists() else None
    except (OSError, ValueError, EOFError):
        return None
    if len(feats) != n or (labels is not None and len(labels) != n):
        return None
    return feats, labels


def _read_progress(
    partial: Path, meta_path: Path, n: int, dim: int
) -> tuple[int, Array, list[Array]] | None:
    """``(rows done, memmap, labels so far)`` of an interrupted extraction, or ``None``."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("n") != n or meta.get("dim") != dim:
            return None
        start = int(meta["done"])
        feats_mm = np.load(partial, mmap_mode="r+")
        labels: list[Array] = []
        if meta.get("has_labels"):
            saved = np.load(str(partial) + ".labels.npy", allow_pickle=False)
            if len(saved) < start:
                return None
            labels = [saved[:start]]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None  # unreadable progress: start over
    if feats_mm.shape != (n, dim) or not 0 <= start <= n:
        return None
    return start, feats_mm, labels


def _save_progress(
    feats: Array,
    labels: list[Array],
    partial: Path,
    meta_path: Path,
    n: int,
    dim: int,
    done: int,
) -> None:
    if isinstance(feats, np.memmap):
        feats.flush()
    has_labels = bool(labels)
    if has_labels:
        _save_npy(Path(str(partial) + ".labels.npy"), np.concatenate(labels))
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"n": n, "dim": dim, "done": done, "has_labels": has_labels}))
    os.replace(tmp, meta_path)


def split_features(
    model: ResolvedModel,
    data: EvalData,
    pre: Preprocess,
    opts: Any,
    splits: Sequence[str] = ("train", "val", "test"),
) -> dict[str, FeatureSet]:
    """Cached features of each split of ``data`` that exists (``opts``: :class:`Options`)."""
    out: dict[str, FeatureSet] = {}
    for split in splits:
        ds = getattr(data, split)
        if ds is None:
            continue
        key = feature_cache_key(model, data.key, split, pre)
        out[split] = extract_features(
            model,
            ds,
            pre,
            cache_dir=opts.cache_dir if opts.cache else None,
            cache_key=key if opts.cache else None,
            batch_size=opts.batch_size,
            device=opts.device,
            amp=opts.amp,
            num_workers=opts.num_workers,
            progress=opts.progress,
            desc=f"features {split}",
        )
    return out
