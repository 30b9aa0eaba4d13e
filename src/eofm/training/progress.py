"""Lightning progress as plain lines, for runs whose stderr is a file or a pipe.

:class:`PlainProgressBar` replaces Lightning's tqdm bar when stderr is not a terminal (see
:func:`eofm.progress.use_plain`): one line at the start, one every ``log_every_n_steps`` steps
or :func:`eofm.progress.interval_s` seconds (whichever comes first), and one at the end::

    step 20/30 (67%), loss 4.1023, 52.1 img/s, 0:03 left

No carriage returns, so a log file reads line by line (``tail -f``, CI logs).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar

from eofm.progress import format_duration, interval_s


def batch_images(batch: Any) -> int:
    """Images in a batch (a tensor, a sample dict with ``image``, or a list of views)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, dict):
        value = batch.get("image", next(iter(batch.values()), None))
        return batch_images(value) if value is not None else 0
    if isinstance(batch, (list, tuple)) and batch:
        return batch_images(batch[0])
    return 0


class PlainProgressBar(ProgressBar):
    """Plain step lines (step, loss, images/s, time left) instead of a tqdm bar."""

    def __init__(self, every_n_steps: int | None = None, every_s: float | None = None) -> None:
        super().__init__()
        self._enabled = True
        self.every_n_steps = every_n_steps
        self.every_s = interval_s() if every_s is None else every_s
        self._start = 0.0
        self._first_step = 0
        self._images = 0
        self._last_time = 0.0
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _write(self, trainer: pl.Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=sys.stderr, flush=True)

    def _total(self, trainer: pl.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = trainer.estimated_stepping_batches
        return int(est) if est != float("inf") else None

    def line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The line for the current step."""
        step = int(trainer.global_step)
        total = self._total(trainer)
        parts = [f"step {step}/{total} ({100.0 * step / total:.0f}%)" if total else f"step {step}"]
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        elapsed = time.monotonic() - self._start
        done = step - self._first_step
        if elapsed > 0 and done > 0:
            if self._images:
                parts.append(f"{self._images * trainer.world_size / elapsed:.1f} img/s")
            if total and step < total:
                parts.append(f"{format_duration((total - step) * elapsed / done)} left")
        return ", ".join(parts)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last_time = time.monotonic()
        self._first_step = self._last_step = int(trainer.global_step)
        self._images = 0
        total = self._total(trainer)
        self._write(trainer, f"training: step {self._first_step}/{total if total else '?'}")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += batch_images(batch)
        step = int(trainer.global_step)
        if step == self._last_step:
            return  # gradient accumulation: the optimizer step has not happened yet
        every_n = self.every_n_steps or getattr(trainer, "log_every_n_steps", None) or 50
        now = time.monotonic()
        if step - self._last_step >= every_n or now - self._last_time >= self.every_s:
            self._last_step, self._last_time = step, now
            self._write(trainer, self.line(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.monotonic() - self._start
        if int(trainer.global_step) != self._last_step:
            self._write(trainer, self.line(trainer, pl_module))
        self._write(
            trainer, f"training done: step {trainer.global_step} in {format_duration(elapsed)}"
        )
