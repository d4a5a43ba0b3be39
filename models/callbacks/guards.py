"""`NonFiniteLossGuard`: stop training with a clear error on a NaN / inf loss, keeping the last good checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.utilities import rank_zero_warn

from augment.checks import is_int, require

__all__ = ["NonFiniteLossGuard"]


class NonFiniteLossGuard(pl.Callback):
    """Stop training with `FloatingPointError` when the training loss is NaN or inf.

    The loss (`outputs["loss"]`, a returned tensor, or a float) of every batch is kept on its
    device and checked with `torch.isfinite` only every `check_every_n_steps` optimizer steps
    (when `trainer.global_step` is a multiple of it, or the window holds that many batches), before
    validation and at epoch end: one device sync per check instead of one per step. Default 1 is
    right on CPU; on a GPU use e.g. 10-50. The error names the exact bad step, e.g.
    `non-finite loss (nan) at global step 123, epoch 1, batch 7; the last good checkpoint is kept
    at <path or 'none saved yet'>`, and `trainer.should_stop` is set.

    Checkpoints: this callback runs before every ModelCheckpoint in the same hook (Lightning puts
    checkpoint callbacks last), so a check that fails prevents that step's save. ModelCheckpoint
    does not save on exceptions unless `save_on_exception=True`; this guard turns that off for the
    failing run so the NaN weights never overwrite `last.ckpt`. Keep `every_n_train_steps` a
    multiple of `check_every_n_steps`, else a save may land inside an unchecked window.
    `OnExceptionCheckpoint` would still write the bad weights to its own file (a warning says so).
    Under DDP the decision is reduced across ranks, so all ranks raise together.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__()
        require(is_int(check_every_n_steps) and check_every_n_steps >= 1, "check_every_n_steps", ">= 1",
                check_every_n_steps)
        self.check_every_n_steps = check_every_n_steps
        self._losses: list[torch.Tensor] = []
        self._where: list[tuple[int, int, int]] = []  # (global step, epoch, batch) per kept loss
        self._step_at_start = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, OnExceptionCheckpoint):
                rank_zero_warn(
                    "OnExceptionCheckpoint saves the current weights when NonFiniteLossGuard raises; "
                    f"after a non-finite loss {callback.ckpt_path} will hold non-finite weights"
                )
            every = getattr(callback, "_every_n_train_steps", 0)
            if isinstance(callback, ModelCheckpoint) and every and every % self.check_every_n_steps:
                rank_zero_warn(
                    f"ModelCheckpoint(every_n_train_steps={every}) is not a multiple of "
                    f"check_every_n_steps={self.check_every_n_steps}: a checkpoint may be saved after an "
                    "unchecked non-finite loss"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        self._losses.append(loss.detach().float().reshape(()))
        self._where.append((self._step_at_start, trainer.current_epoch, batch_idx))
        at_boundary = trainer.global_step % self.check_every_n_steps == 0
        if at_boundary or len(self._losses) >= self.check_every_n_steps:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Check the unchecked window before any checkpoint is written: raising here aborts the write."""
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses).cpu()  # the one device sync per window
        where, self._losses, self._where = self._where, [], []
        bad = (~torch.isfinite(losses)).nonzero().flatten()
        any_bad = trainer.strategy.reduce_boolean_decision(bool(bad.numel()), all=False)
        if not any_bad:
            return
        trainer.should_stop = True
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.save_on_exception = False  # never let the bad weights overwrite last.ckpt
        kept = self._last_checkpoint(trainer) or "none saved yet"
        if bad.numel():
            i = int(bad[0])
            step, epoch, batch_idx = where[i]
            raise FloatingPointError(
                f"non-finite loss ({losses[i].item()}) at global step {step}, epoch {epoch}, batch {batch_idx}; "
                f"the last good checkpoint is kept at {kept}"
            )
        raise FloatingPointError(
            f"non-finite loss on another rank between global steps {where[0][0]} and {where[-1][0]}; "
            f"the last good checkpoint is kept at {kept}"
        )

    @staticmethod
    def _last_checkpoint(trainer: pl.Trainer) -> str | None:
        paths = [
            path
            for callback in trainer.checkpoint_callbacks
            if isinstance(callback, ModelCheckpoint)
            for path in (callback.last_model_path, callback.best_model_path)
            if path and os.path.isfile(path)
        ]
        return max(paths, key=os.path.getmtime) if paths else None
