"""Cosine k-nearest-neighbour classification with temperature-weighted votes (DINO protocol).

Each test embedding takes its ``k`` most similar training embeddings (cosine similarity
``s``); neighbour ``j`` votes for its label with weight ``exp(s_j / T)``. Multi-label data
get the weighted mean of the neighbours' multi-hot vectors as scores. Search runs with a
chunked torch matmul, or faiss (``IndexFlatIP``) when asked for and installed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from eofm.errors import ConfigError

Array = npt.NDArray[Any]


def _normalise(x: Array | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return F.normalize(t, dim=1)


def nearest_neighbours(
    train: Array,
    test: Array,
    k: int,
    *,
    backend: Literal["torch", "faiss"] = "torch",
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities ``(N_test, k)`` and indices into ``train`` of the nearest neighbours."""
    xb = _normalise(train)
    xq = _normalise(test)
    k = min(k, xb.shape[0])
    if backend == "faiss":
        try:
            import faiss
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ConfigError("knn backend 'faiss' needs faiss-cpu installed") from err
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb.numpy())
        sims, idx = index.search(xq.numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64))
    if backend != "torch":
        raise ConfigError(f"knn backend must be 'torch' or 'faiss', not {backend!r}")
    sims_all, idx_all = [], []
    for lo in range(0, xq.shape[0], chunk):
        s = xq[lo : lo + chunk] @ xb.T
        top = s.topk(k, dim=1)
        sims_all.append(top.values)
        idx_all.append(top.indices)
    return torch.cat(sims_all), torch.cat(idx_all)


def knn_scores(
    train_x: Array,
    train_y: Array,
    test_x: Array,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    backend: Literal["torch", "faiss"] = "torch",
) -> torch.Tensor:
    """Class scores ``(N_test, K)``: temperature-weighted votes of the ``k`` nearest neighbours.

    ``train_y``: class indices ``(N,)`` or multi-hot rows ``(N, K)``. Multi-label scores are
    the weighted mean of the neighbours' rows (in 0..1).
    """
    if temperature <= 0:
        raise ConfigError(f"knn temperature must be positive, got {temperature}")
    sims, idx = nearest_neighbours(train_x, test_x, k, backend=backend)
    weights = (sims / temperature).exp()
    y = torch.as_tensor(np.asarray(train_y))
    if y.ndim == 1:
        kk = int(num_classes if num_classes is not None else int(y.max()) + 1)
        votes = F.one_hot(y[idx].long(), kk).float()  # (N, k, K)
        return (votes * weights[..., None]).sum(1)
    rows = y.float()[idx]  # (N, k, K)
    return (rows * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
