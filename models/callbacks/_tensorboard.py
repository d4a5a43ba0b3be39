"""Shared helpers of the callbacks: the run's TensorBoard writer and the one step axis.

Step axis (every tag of a run, Lightning's and the callbacks'):
  - per-batch values (`train/loss_step`, learning rates, `perf/images_per_s`) sit at the index of the
    optimizer step the batch trains, counted from 0, as Lightning logs `on_step` metrics;
  - epoch-level values (epoch means, validation, test, figures, hparams metrics) sit at
    `trainer.global_step` when they are measured: the number of optimizer steps taken so far.
`StepAxis` moves Lightning's own epoch-level metrics onto that axis.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

__all__ = ["tensorboard_logger", "tensorboard_writer", "batch_step", "is_logging_batch"]


def tensorboard_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoardLogger, or None (no logger or other kinds only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of `tensorboard_logger(trainer)`, or None."""
    logger = tensorboard_logger(trainer)
    return None if logger is None else logger.experiment


def batch_step(trainer: pl.Trainer) -> int:
    """Step of the training batch in flight (0 for the first): where Lightning logs `on_step` values."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def is_logging_batch(trainer: pl.Trainer) -> bool:
    """True in a training-batch hook when Lightning writes this batch's `on_step` metrics (log_every_n_steps)."""
    return bool(trainer._logger_connector.should_update_logs)
