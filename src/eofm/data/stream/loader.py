"""The DataLoader of a streamed pool: litdata's ``StreamingDataLoader`` (rank x worker
sharding, resumable state) whose saved state counts the batches trained on, and a map-style
view of a pool for passes by index (embedding a pool for dynamic pruning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litdata import StreamingDataLoader
from torch.utils.data import Dataset

from eofm.data.sample import Sample
from eofm.data.stream.pool import StreamedPool

__all__ = ["PoolByIndex", "ResumableStreamLoader"]


class ResumableStreamLoader(StreamingDataLoader):  # type: ignore[misc]
    """``StreamingDataLoader`` whose :meth:`state_dict` counts ``trained_batches()`` batches.

    A training loop fetches batches ahead (Lightning one), so the loader's own count, taken
    when a checkpoint is saved, includes batches not trained on yet: a resumed run would
    skip them. With ``trained_batches`` set, the state is that of a loader that yielded
    exactly those batches (litdata replays batches round-robin over the workers).
    """

    def __init__(self, dataset: StreamedPool, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        #: Batches of this epoch the model has trained on (``None``: the loader's own count).
        self.trained_batches: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = super().state_dict()
        if self.trained_batches is None or not self.batch_size:
            return state
        k = int(self.trained_batches())
        if k * self.batch_size >= int(state["num_samples_yielded"]):
            return state
        n = k * int(self.batch_size)
        state["num_samples_yielded"] = n
        state["latest_worker_idx"] = (k - 1) % max(1, self.num_workers)
        state["dataset"] = self.dataset.state_dict(n, self.num_workers, self.batch_size)
        return state


class PoolByIndex(Dataset[Sample]):
    """Map-style view of a :class:`StreamedPool`: ``view[i]`` is sample ``i`` (its chunk is
    downloaded into the pool's cache on first use; read in index order, chunk after chunk)."""

    def __init__(self, pool: StreamedPool) -> None:
        self.pool = pool
        self.bands = pool.bands
        self.sensor = pool.sensor

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int) -> Sample:
        out: Sample = self.pool[int(index)]
        return out
