"""`TrainingSpeedMonitor`: images per second, epoch wall time and CUDA peak memory as TensorBoard scalars.

The tags sit under `train/speed/`: in TensorBoard's `train` group, after the loss, accuracy and
learning-rate cards (cards sort by name), and no group of their own that would sort before `val`.

Timing uses the host clock only, with no device synchronization of its own: on a GPU the host runs
ahead of the device by the depth of the launch queue, and each window between two logging steps
starts right after Lightning's own logging sync, so window rates are the device's rate up to that
queue and the totals are exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from models.callbacks._tensorboard import batch_step, is_logging_batch

__all__ = ["TrainingSpeedMonitor", "batch_size_of", "cuda_peak_memory_gib", "SPEED_GROUP"]

SPEED_GROUP = "train/speed"


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (a tensor, or a tuple / list / dict of them)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            if isinstance(item, torch.Tensor) and item.ndim:
                return int(item.shape[0])
    return 0


def cuda_peak_memory_gib(device: torch.device, reset: bool = True) -> float | None:
    """Peak memory allocated by tensors on a CUDA device since the last reset, in GiB; None off CUDA.

    Reads the caching allocator's host-side counters (no device synchronization).
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak


class TrainingSpeedMonitor(pl.Callback):
    """Log training speed to every logger (rank zero; images count all ranks: batch x world size).

      `train/speed/images_per_s`         training images per second over the window since the previous
                                         logging step (every `log_every_n_steps`), validation time left
                                         out; at the step of the window's last batch
      `train/speed/epoch_time_s`         wall time of the training epoch, validation included
      `train/speed/val_time_s`           wall time of the epoch's validation runs
      `train/speed/epoch_images_per_s`   the epoch's training images per second, validation left out
      `train/speed/cuda_peak_memory_gib` peak CUDA memory allocated during the epoch (CUDA only)
    The epoch values sit at `trainer.global_step` at the end of the epoch. Totals of the fit are kept
    in `train_images`, `train_seconds` (validation left out) and `images_per_s`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_images = 0
        self.train_seconds = 0.0
        self._epoch_start = self._window_start = 0.0
        self._window_images = self._epoch_images = 0
        self._val_start = self._val_window = self._val_epoch = 0.0

    @property
    def images_per_s(self) -> float:
        """Training images per second over the whole fit so far (validation left out); NaN before any."""
        return self.train_images / self.train_seconds if self.train_seconds > 0 else math.nan

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._window_start = time.perf_counter()
        self._window_images = self._epoch_images = 0
        self._val_window = self._val_epoch = 0.0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = batch_size_of(batch) * trainer.world_size
        self._window_images += images
        self._epoch_images += images
        if not is_logging_batch(trainer):
            return
        now = time.perf_counter()
        seconds = now - self._window_start - self._val_window
        if seconds > 0 and self._window_images and trainer.is_global_zero:
            self._log(trainer, {f"{SPEED_GROUP}/images_per_s": self._window_images / seconds}, batch_step(trainer))
        self._window_start, self._window_images, self._val_window = now, 0, 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._val_start
        self._val_window += seconds
        self._val_epoch += seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_seconds = time.perf_counter() - self._epoch_start
        train_seconds = max(epoch_seconds - self._val_epoch, 1e-9)
        self.train_images += self._epoch_images
        self.train_seconds += train_seconds
        metrics = {f"{SPEED_GROUP}/epoch_time_s": epoch_seconds,
                   f"{SPEED_GROUP}/epoch_images_per_s": self._epoch_images / train_seconds}
        if self._val_epoch > 0:
            metrics[f"{SPEED_GROUP}/val_time_s"] = self._val_epoch
        peak = cuda_peak_memory_gib(pl_module.device, reset=False)
        if peak is not None:
            metrics[f"{SPEED_GROUP}/cuda_peak_memory_gib"] = peak
        if trainer.is_global_zero:
            self._log(trainer, metrics, trainer.global_step)

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
