"""Embedding extraction for curation: any dataset, any model, streamed to a memory-mapped
``.npy`` file, resumable, split across ranks.

The rows are cut into chunks of ``chunk_size`` samples; rank ``r`` of ``w`` embeds the chunks
``r, r + w, r + 2w, ...`` and writes its rows of the one shared ``(N, D)`` float32 file
(``np.lib.format.open_memmap``, so ``np.load(path, mmap_mode="r")`` reads it). After each
chunk the rows are flushed to disk and then the chunk is recorded in the rank's progress file
``<stem>.progress.<rank>.json``: an interrupted extraction restarts at the first unfinished
chunk, with any number of ranks (the done chunks of every progress file count). Batches never
straddle chunks, so a resumed extraction computes exactly the rows an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from eofm.data.sample import Sample
from eofm.errors import ConfigError, DataError

__all__ = [
    "BandStatistics",
    "embed_function",
    "embedding_progress",
    "extract_embeddings",
    "load_embeddings",
]

Array = npt.NDArray[Any]
EmbedFn = Callable[[Tensor], Tensor]


class BandStatistics(nn.Module):
    """A feature extractor without weights: per-band mean and standard deviation of each
    (normalised) image, ``(B, 2C)``. A sanity baseline for curation (``--model bandstats``);
    curation during pretraining uses the model being trained."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.float().flatten(2)
        return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        r, w = 0, 1
    return (int(rank) if rank is not None else r), (int(world_size) if world_size else w)


def embed_function(model: Any) -> EmbedFn:
    """``model.embed`` when the model has one (every ``SSLMethod``: DINO embeds with its
    teacher), else ``model`` itself (a backbone's pooled embedding)."""
    fn = getattr(model, "embed", None)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    if callable(model):
        return model  # type: ignore[no-any-return]
    raise ConfigError(f"cannot embed with {type(model).__name__}: it is not callable")


def _progress_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.progress.*.json"))


def _progress_path(path: Path, rank: int) -> Path:
    return path.parent / f"{path.stem}.progress.{rank}.json"


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def embedding_progress(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the progress files of ``path`` record: ``n``, ``dim``, ``chunk_size``,
    ``chunks``, ``done`` (sorted chunk ids), ``complete``, ``settings``."""
    p = Path(path)
    meta: dict[str, Any] | None = None
    done: set[int] = set()
    for f in _progress_files(p):
        try:
            entry = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        head = {k: entry.get(k) for k in ("n", "chunk_size", "settings")}
        if meta is None:
            meta = dict(entry)
        elif {k: meta.get(k) for k in head} != head:
            raise DataError(f, "progress files of different extractions sit side by side")
        if meta.get("dim") is None:
            meta["dim"] = entry.get("dim")
        done.update(int(c) for c in entry.get("done", []))
    if meta is None:
        return {"n": None, "chunks": 0, "done": [], "complete": False}
    chunks = math.ceil(int(meta["n"]) / int(meta["chunk_size"])) if meta["n"] else 0
    return {
        "n": meta["n"],
        "dim": meta.get("dim"),
        "chunk_size": meta["chunk_size"],
        "chunks": chunks,
        "done": sorted(done),
        "complete": len(done) >= chunks and p.is_file(),
        "settings": meta.get("settings"),
    }


def load_embeddings(
    path: str | os.PathLike[str], *, require_complete: bool = True
) -> np.memmap[Any, np.dtype[np.float32]]:
    """The ``(N, D)`` embeddings at ``path``, memory-mapped read-only; with
    ``require_complete`` an unfinished extraction is an error naming the missing chunks."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "no embeddings file here")
    if require_complete:
        info = embedding_progress(p)
        if not info["complete"]:
            missing = info["chunks"] - len(info["done"])
            raise DataError(
                p,
                f"the extraction is unfinished ({missing} of {info['chunks']} chunks missing)",
                "run extract_embeddings again to resume it",
            )
    out: np.memmap[Any, np.dtype[np.float32]] = np.load(p, mmap_mode="r")
    return out


def _open_or_create(path: Path, shape: tuple[int, int]) -> Any:
    """The shared memmap: opened when it exists, else created once (atomically: the first
    rank to hard-link its fresh file wins, the others open that one)."""
    if not path.is_file():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npy")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        del mm
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    mm = np.load(path, mmap_mode="r+")
    if tuple(mm.shape) != shape or mm.dtype != np.float32:
        raise DataError(
            path,
            f"holds embeddings of shape {tuple(mm.shape)} {mm.dtype}, expected {shape} float32",
            "delete it or choose another output path",
        )
    return mm


def _image_collate(size: tuple[int, int] | None) -> Callable[[Sequence[Sample]], Tensor]:
    def collate(batch: Sequence[Sample]) -> Tensor:
        images = []
        for s in batch:
            img = torch.as_tensor(s["image"]).float()
            if size is not None and tuple(img.shape[-2:]) != size:
                img = F.interpolate(
                    img[None], size=size, mode="bilinear", align_corners=False, antialias=True
                )[0]
            images.append(img)
        return torch.stack(images)

    return collate


def _batches(
    dataset: Dataset[Sample],
    batches: list[Array],
    size: tuple[int, int] | None,
    num_workers: int,
) -> Iterator[Tensor]:
    """Image tensors of ``batches`` (index arrays), in order."""
    from eofm.data.cache import batch_reader

    get_batch = batch_reader(dataset)
    if get_batch is not None:
        for idx in batches:
            images = torch.as_tensor(get_batch(idx)["image"]).float()
            if size is not None and tuple(images.shape[-2:]) != size:
                images = F.interpolate(
                    images, size=size, mode="bilinear", align_corners=False, antialias=True
                )
            yield images
        return
    loader: DataLoader[Sample] = DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        collate_fn=_image_collate(size),
    )
    yield from loader


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def extract_embeddings(
    model: Any,
    dataset: Dataset[Sample],
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    normalizer: Callable[[Tensor], Tensor] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    image_size: int | tuple[int, int] | None = None,
    l2_normalize: bool = False,
    num_workers: int = 0,
    autocast: torch.dtype | None = None,
    progress: bool = True,
    overwrite: bool = False,
    barrier: bool = True,
) -> Path:
    """Embed every sample of ``dataset`` with ``model`` into the ``(N, D)`` float32 file
    ``out_path`` (``.npy``, memory-mappable); returns the path (see the module docstring).

    ``model``: an ``SSLMethod`` (its ``embed``), a backbone or any callable on ``(B, C, H, W)``
    batches; it runs in eval mode under ``torch.no_grad`` and its mode is restored after.
    ``normalizer``: applied to each batch on the device (e.g. a
    :class:`~eofm.data.stats.Normalizer`); without one, NaNs become 0. ``image_size``:
    resize every image (bilinear, antialiased) when it differs. ``l2_normalize``: write unit
    rows. ``rank``/``world_size``: this process's share (default: from
    ``torch.distributed`` when initialised; else the whole set). ``overwrite``: start over
    instead of resuming. Under an initialised process group all ranks meet at a barrier at
    the end (``barrier=False`` to skip), so the file is complete when this returns.
    """
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    r, w = _rank_world(rank, world_size)
    if not 0 <= r < w:
        raise ConfigError(f"rank {r} is outside 0..{w - 1}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(None, "the dataset is empty: nothing to embed")
    bs = max(1, int(batch_size))
    chunk = int(chunk_size) if chunk_size else bs * 8
    chunk = max(bs, (chunk // bs) * bs)  # a whole number of batches
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    settings = {"l2_normalize": bool(l2_normalize), "image_size": list(size) if size else None}
    if overwrite and r == 0:
        for f in _progress_files(path):
            f.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    info = embedding_progress(path)
    if info["n"] is not None and (info["n"], info["chunk_size"], info["settings"]) != (
        n,
        chunk,
        settings,
    ):
        raise ConfigError(
            f"{path}: an extraction with other settings is there (n={info['n']}, "
            f"chunk_size={info['chunk_size']}, {info['settings']}); use overwrite=True "
            "or another output path"
        )
    if info["n"] is not None and not path.is_file():
        info = {"done": []}  # progress without the file: start over
    done = set(info["done"])
    chunks = math.ceil(n / chunk)
    mine = list(range(r, chunks, w))
    pending = [c for c in mine if c not in done]
    own_done = sorted(c for c in done if c in set(mine))
    state: dict[str, Any] = {
        "n": n,
        "dim": info.get("dim"),
        "chunk_size": chunk,
        "settings": settings,
        "rank": r,
        "world_size": w,
        "done": own_done,
    }
    if pending:
        _run(
            model,
            dataset,
            path,
            pending,
            state,
            chunk=chunk,
            bs=bs,
            n=n,
            normalizer=normalizer,
            device=device,
            size=size,
            l2=l2_normalize,
            num_workers=num_workers,
            autocast=autocast,
            progress=progress and r == 0,
        )
    dist = torch.distributed
    if barrier and dist.is_available() and dist.is_initialized() and dist.get_world_size() == w:
        dist.barrier()
    return path


def _run(
    model: Any,
    dataset: Dataset[Sample],
    path: Path,
    pending: list[int],
    state: dict[str, Any],
    *,
    chunk: int,
    bs: int,
    n: int,
    normalizer: Callable[[Tensor], Tensor] | None,
    device: str | torch.device | None,
    size: tuple[int, int] | None,
    l2: bool,
    num_workers: int,
    autocast: torch.dtype | None,
    progress: bool,
) -> None:
    from eofm.progress import progress as progress_bar

    fn = embed_function(model)
    dev = torch.device(device) if device is not None else _model_device(model)
    modules = [m for m in (model,) if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    if isinstance(normalizer, nn.Module):
        normalizer.to(dev)
    batches: list[Array] = []
    owner: list[int] = []
    for c in pending:
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        for b in range(lo, hi, bs):
            batches.append(np.arange(b, min(hi, b + bs), dtype=np.int64))
            owner.append(c)
    left = {c: 0 for c in pending}
    for c in owner:
        left[c] += 1
    progress_file = _progress_path(path, int(state["rank"]))
    mm: Any = None
    bar = progress_bar(total=sum(len(b) for b in batches), desc="embedding", disable=not progress)
    amp = (
        torch.autocast(dev.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), amp:
            for idx, c, images in zip(
                batches, owner, _batches(dataset, batches, size, num_workers)
            ):
                x = images.to(dev, non_blocking=True)
                x = normalizer(x) if normalizer is not None else torch.nan_to_num(x, nan=0.0)
                if size is not None and tuple(x.shape[-2:]) != size:
                    x = F.interpolate(
                        x, size=size, mode="bilinear", align_corners=False, antialias=True
                    )
                emb = fn(x).float()
                if emb.ndim != 2:
                    emb = emb.reshape(emb.shape[0], -1)
                if l2:
                    emb = F.normalize(emb, dim=1)
                rows = emb.cpu().numpy()
                if mm is None:
                    mm = _open_or_create(path, (n, int(rows.shape[1])))
                    state["dim"] = int(rows.shape[1])
                mm[idx[0] : idx[-1] + 1] = rows
                bar.update(len(idx))
                left[c] -= 1
                if left[c] == 0:  # chunk complete: flush rows, then record it
                    mm.flush()
                    state["done"] = sorted({*state["done"], c})
                    _write_json(progress_file, state)
    finally:
        bar.close()
        if mm is not None:
            mm.flush()
            del mm
        for m, flag in zip(modules, was_training):
            m.train(flag)
