"""The LightningModule that trains any :class:`~eofm.methods.base.SSLMethod`, and callbacks."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from eofm.augment.multiview import MultiViewAugment
from eofm.data.stats import Normalizer
from eofm.errors import ConfigError, NonFiniteLossError
from eofm.methods.base import SSLMethod
from eofm.methods.heads import cosine_schedule
from eofm.training.config import OptimConfig
from eofm.training.sharding import ShardingOptions, is_sharded, shard_method

__all__ = [
    "AtomicCheckpointIO",
    "FinalCheckpoint",
    "InterruptCheckpoint",
    "PretrainModule",
    "ThroughputMonitor",
    "atomic_torch_save",
    "build_optimizer",
    "lr_lambda",
    "param_groups",
    "remove_partial_checkpoints",
    "step_seed",
]

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token", "dist_token")


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for (run seed, optimiser step, rank): a resumed run draws the same views."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) & (
        (1 << 64) - 1
    )
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 63) - 1)


def param_groups(
    module: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True
) -> list[dict[str, Any]]:
    """Two groups of trainable parameters: with weight decay, and without (biases, norms,
    position embeddings, tokens: every parameter with fewer than 2 dimensions)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if no_decay_norm_bias and (p.ndim <= 1 or leaf in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "apply_wd": True})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "apply_wd": False})
    if not groups:
        raise ConfigError("the method has no trainable parameters")
    return groups


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig, lr: float) -> Any:
    """AdamW, SGD or LARS (lightly's) over ``groups``."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=lr, momentum=cfg.momentum)
    raise ConfigError(f"optim.name={cfg.name!r}: use adamw, sgd or lars")  # pragma: no cover


def lr_lambda(
    total_steps: int, warmup_steps: int, min_ratio: float, schedule: str
) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine decay
    to ``min_ratio`` at ``total_steps`` (or constant)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class PretrainModule(pl.LightningModule):
    """Trains ``method``: normalise on the device, make views, ``forward_loss``, step.

    ``method`` owns the backbone and its heads/teachers; ``augment`` makes the views the
    method's ``view_spec`` asks for; ``normalizer`` z-scores batches after they reach the
    device. Each step reseeds torch's global generator and the augmentation generator from
    ``(seed, step, rank)``, so a resumed run continues exactly as an uninterrupted one.
    Optional method hooks used when present: ``on_before_optimizer_step(step, max_steps)``
    and ``export_backbone()``.

    A NaN or infinite loss (on any rank) raises :class:`~eofm.errors.NonFiniteLossError` with
    ``nonfinite="stop"``; with ``"skip"`` the step's update is dropped (gradients discarded
    before the optimiser step, buffers such as BatchNorm statistics restored, no EMA update;
    the step still counts) until ``max_nonfinite_skips`` such steps in a row stop the run.
    """

    def __init__(
        self,
        method: SSLMethod,
        augment: MultiViewAugment,
        optim: OptimConfig,
        *,
        normalizer: Normalizer | None = None,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        nonfinite: str = "stop",
        max_nonfinite_skips: int = 5,
        sharding: ShardingOptions | None = None,
    ) -> None:
        super().__init__()
        if nonfinite not in ("stop", "skip"):
            raise ConfigError(f"trainer.nonfinite_loss={nonfinite!r}: use stop or skip")
        self.method = method
        self.augment = augment
        self.normalizer = normalizer
        self.optim_cfg = optim
        self.seed = int(seed)
        self.total_steps = 0
        self.nonfinite = nonfinite
        self.max_nonfinite_skips = max(1, int(max_nonfinite_skips))
        #: Steps whose update was dropped for a non-finite loss (in total, and in a row).
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._skip_update = False
        self._generator: torch.Generator | None = None
        #: FSDP2 options (``trainer.strategy: fsdp``); ``None``: the method is not sharded.
        self.sharding = sharding
        if config is not None:
            self.save_hyperparameters(config)

    # -- sharding ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``trainer.strategy: fsdp``), shard the method with
        FSDP2 over the data-parallel mesh; other strategies leave it whole."""
        if self.sharding is None or is_sharded(self.method):
            return
        mesh = self.device_mesh
        if mesh is None:
            raise ConfigError("FSDP sharding needs Lightning's ModelParallelStrategy")
        shard_method(self.method, mesh["data_parallel"], self.sharding)

    # -- data on the device ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        image = batch["image"]
        if self.normalizer is not None:
            image = self.normalizer(image)
        else:
            image = torch.nan_to_num(image.float(), nan=0.0)
        batch["image"] = image
        return batch

    def _views_generator(self, device: torch.device, seed: int) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        return self._generator

    # -- training ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        cfg = self.optim_cfg
        if cfg.weight_decay_end is None:
            return
        wd = cosine_schedule(
            self.global_step, self.total_steps, cfg.weight_decay, cfg.weight_decay_end
        )
        for opt in self._optimizers():
            for group in opt.param_groups:
                if group.get("apply_wd", True):
                    group["weight_decay"] = wd

    def _optimizers(self) -> list[Any]:
        opts = self.optimizers(use_pl_optimizer=False)
        return list(opts) if isinstance(opts, list) else [opts]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images: Tensor = batch["image"]
        seed = step_seed(self.seed, self.global_step, self.global_rank)
        torch.manual_seed(seed)
        gen = self._views_generator(images.device, seed ^ 0x5DEECE66D)
        with torch.autocast(images.device.type, enabled=False):  # views in float32
            views = self.augment(images.float(), self.method.view_spec, generator=gen)
        # with "skip", the buffers a forward pass updates (BatchNorm statistics, DINO's centre)
        # are kept so that a skipped step leaves no trace
        buffers = (
            {k: b.detach().clone() for k, b in self.method.named_buffers()}
            if self.nonfinite == "skip"
            else None
        )
        out = self.method.forward_loss(views, batch)
        loss = out["loss"]
        bs = images.shape[0]
        self._skip_update = False
        if self._any_rank_nonfinite(loss):
            if buffers is not None:
                with torch.no_grad():
                    for k, b in self.method.named_buffers():
                        b.copy_(buffers[k])
            return self._nonfinite_step(loss, bs)
        self.consecutive_skips = 0
        if self.nonfinite == "skip":
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for key, value in out.items():
            if key == "loss" or not isinstance(value, Tensor) or value.numel() != 1:
                continue
            self.log(f"train/{key}", value.detach().float(), batch_size=bs)
        opt = self._optimizers()[0]
        self.log("train/lr", float(opt.param_groups[0]["lr"]), batch_size=bs)
        return loss

    # -- non-finite losses -------------------------------------------------------------------
    def _any_rank_nonfinite(self, loss: Tensor) -> bool:
        """Whether the loss is NaN/inf on this rank or on any other (so that every rank
        stops or skips at the same step and DDP's collectives stay matched)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(())
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad.item() > 0)

    def _nonfinite_step(self, loss: Tensor, batch_size: int) -> Tensor:
        value = float(loss.detach().float().item())
        what = (
            f"the {self.method.name} loss is {value}"
            if not math.isfinite(value)
            else f"the {self.method.name} loss is non-finite on another rank"
        )
        hint = (
            "lower optim.lr, set optim.grad_clip, check the data normalisation, or set "
            "trainer.nonfinite_loss=skip"
        )
        if self.nonfinite == "stop":
            raise NonFiniteLossError(
                f"{what} at step {self.global_step}; the run stopped ({hint})", self.global_step
            )
        self.consecutive_skips += 1
        self.skipped_steps += 1
        if self.consecutive_skips >= self.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"{what} at step {self.global_step}: {self.consecutive_skips} non-finite losses "
                f"in a row (trainer.max_nonfinite_skips={self.max_nonfinite_skips}); the run "
                f"stopped ({hint})",
                self.global_step,
            )
        rank_zero_warn(f"{what} at step {self.global_step}: the step's update is skipped")
        self._skip_update = True
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=batch_size)
        # a finite zero that reaches every trainable parameter: DDP's gradient hooks all fire,
        # and the gradients (zeros, not NaN) are discarded before the optimiser step
        params = [_local(p) for p in self.method.parameters() if p.requires_grad]
        zero = sum((p.sum() * 0.0 for p in params), torch.zeros((), device=loss.device))
        return zero

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["eofm_nonfinite"] = {
            "skipped_steps": int(self.skipped_steps),
            "consecutive_skips": int(self.consecutive_skips),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("eofm_nonfinite") or {}
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self._skip_update:
            # optimisers skip parameters without gradients: no update, no moment, no decay
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            return
        hook = getattr(self.method, "on_before_optimizer_step", None)
        if callable(hook):
            hook(self.global_step, self.total_steps)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._skip_update:
            return  # no EMA update from a skipped step
        # global_step counts completed steps and is incremented after this hook returns
        self.method.on_step_end(self.global_step + 1, self.total_steps)

    # -- optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "the run length is unknown (streamed data without trainer.max_steps); "
                "set trainer.max_steps"
            )
        self.total_steps = int(total)
        world = self.trainer.world_size
        datamodule = getattr(self.trainer, "datamodule", None)
        batch = int(datamodule.cfg.batch_size) if datamodule is not None else 0
        global_batch = batch * world * self.trainer.accumulate_grad_batches
        lr = cfg.lr
        if cfg.base_batch_size:
            lr = cfg.lr * global_batch / cfg.base_batch_size
        groups = param_groups(self.method, cfg.weight_decay, cfg.no_decay_norm_bias)
        optimizer = build_optimizer(groups, cfg, lr)
        warmup = max(int(cfg.warmup_steps), int(cfg.warmup_fraction * self.total_steps))
        min_ratio = cfg.min_lr / lr if lr > 0 else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.total_steps, warmup, min_ratio, cfg.schedule)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def _local(p: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 parameter (a ``DTensor``); other tensors unchanged."""
    to_local = getattr(p, "to_local", None)
    return to_local() if callable(to_local) else p


class ThroughputMonitor(Callback):
    """Images per second over all devices, in the progress bar and the logs."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._last: float | None = None
        self.rate: float | None = None
        self.images = 0
        self.seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._last = now
            return
        dt = now - self._last
        self._last = now
        n = int(batch["image"].shape[0]) * trainer.world_size
        if dt <= 0:
            return
        self.images += n
        self.seconds += dt
        rate = n / dt
        self.rate = (
            rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
        )
        pl_module.log("img_s", self.rate, prog_bar=True, on_step=True, on_epoch=False)

    @property
    def mean_rate(self) -> float | None:
        """Images per second over the whole run (data loading included)."""
        return self.images / self.seconds if self.seconds > 0 else None


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a hidden temporary file beside ``path``, flushed to disk, then renamed
    over ``path``: a reader (or a run killed mid-write) sees the old file or the new one,
    never a half-written one. The temporary file is removed if saving fails."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _default_permissions(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _default_permissions(path: Path) -> None:
    """``mkstemp`` files are private (0600): give the file the mode ``open`` would have."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~mask)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_checkpoints(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_torch_save` left in ``folder``."""
    root = Path(folder)
    removed = []
    if root.is_dir():
        for f in root.glob(".*.tmp"):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but every local checkpoint is written atomically.

    Lightning 2.6 writes through an fsspec transaction whose temporary file lives in the
    system's temporary folder; ``shutil.move`` then *copies* it into the run folder whenever
    the two are on different filesystems, so a run killed during that copy leaves a truncated
    ``.ckpt``. Here the temporary file sits next to the target, is fsync'ed and renamed with
    ``os.replace`` (atomic on POSIX and Windows). Remote URLs use Lightning's own path.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))


class FinalCheckpoint(Callback):
    """Save ``last.ckpt`` when training ends, whatever the checkpoint period (every rank
    takes part, as saving is collective under DDP/FSDP).

    With ``periodic`` (the run's ``ModelCheckpoint``), nothing is written when it has already
    saved the final step, and it is told of the final save, so that its own end-of-training
    save (Lightning >= 2.5) does not write a second copy (``last-v1.ckpt``).
    """

    def __init__(self, path: str | Path, periodic: ModelCheckpoint | None = None) -> None:
        self.path = Path(path)
        self.periodic = periodic

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        periodic = self.periodic
        if (
            periodic is not None
            and getattr(periodic, "_last_global_step_saved", None) == trainer.global_step
            and Path(periodic.last_model_path or "") == self.path
            and self.path.is_file()
        ):
            return  # the periodic checkpoint of this very step is last.ckpt already
        trainer.save_checkpoint(self.path, weights_only=False)
        if periodic is not None:
            periodic.last_model_path = str(self.path)
            periodic._last_global_step_saved = trainer.global_step
            periodic._last_checkpoint_saved = str(self.path)


class InterruptCheckpoint(Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, finish the current step, save ``interrupted.ckpt`` and
    stop; a second signal stops at once.

    The signal handlers only set a flag. At the end of every step the ranks agree, with one
    scalar all-reduce, whether any of them was signalled. They then stop after the same step
    and save together, because saving is collective under DDP and FSDP. A collective run from
    inside a signal handler, as Lightning's own SIGTERM handler does, can deadlock a sharded
    run. A second signal raises ``KeyboardInterrupt``. With several processes it saves
    nothing, since the ranks may be at different points; the last periodic checkpoint remains.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved: Path | None = None
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._rank = 0

    # -- signals ------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requested = False
        self._rank = int(trainer.global_rank)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        if self._rank != 0:
            return
        name = signal.Signals(signum).name
        print(
            f"eofm: {name} received; stopping after this step with a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = self.requested
        if trainer.world_size > 1:  # every rank stops after the same step
            flag = torch.tensor(float(stop), device=pl_module.device)
            stop = bool(trainer.strategy.reduce(flag, reduce_op="sum").item() > 0)
        if stop:
            self.requested = True
            # Lightning raises SIGTERMException (a SystemExit) at the end of this step
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    # -- the checkpoint -----------------------------------------------------------------------
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)):
            return
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size > 1:
            rank_zero_info(
                f"stopped at once at step {trainer.global_step}, without a checkpoint (the "
                "ranks may be mid-step); --resume last continues from the last periodic one"
            )
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved = self.path
        rank_zero_info(
            f"interrupted at step {trainer.global_step}; checkpoint saved to {self.path} "
            "(continue with --resume last)"
        )
