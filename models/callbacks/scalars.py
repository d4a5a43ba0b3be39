"""Scalar plumbing: one step axis for every tag, learning rates per step, a custom-scalars layout.

- `StepAxis`: Lightning writes epoch-level metrics at the step of the epoch's last batch and the test
  metrics one step later with an extra `epoch` point; this callback puts them all at
  `trainer.global_step`, where the callbacks' figures and hparams metrics are.
- `LearningRateLogger`: Lightning's `LearningRateMonitor`, with one `lr-<Optimizer>` tag while all
  parameter groups of an optimizer share their learning rate.
- `TrainValLayout`: TensorBoard's Custom Scalars tab with train and val loss, and train and val
  accuracy, overlaid in one chart each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor

from models.callbacks._tensorboard import tensorboard_writer

__all__ = ["StepAxis", "LearningRateLogger", "TrainValLayout", "collapse_shared_lr", "DEFAULT_LAYOUT"]


class StepAxis(pl.Callback):
    """Put Lightning's epoch-level metrics at `trainer.global_step` (see `models.callbacks._tensorboard`).

    Logs `step` (Lightning's documented override of the x value of a logged dict) at the end of every
    training, validation and test epoch, and `epoch` at the end of every training epoch. With it the
    train epoch means, val and test metrics of a run share the step of the figures and hparams
    metrics of that moment, and test metrics get no `epoch` point. Per-batch metrics keep Lightning's
    step (the batch's own optimizer step, counted from 0).
    """

    @staticmethod
    def _log_step(pl_module: pl.LightningModule, trainer: pl.Trainer) -> None:
        pl_module.log("step", float(trainer.global_step), on_step=False, on_epoch=True, reduce_fx="max", sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_step(pl_module, trainer)
        pl_module.log("epoch", float(trainer.current_epoch), on_step=False, on_epoch=True, reduce_fx="max",
                      sync_dist=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_step(pl_module, trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_step(pl_module, trainer)


def collapse_shared_lr(stats: Mapping[str, float]) -> dict[str, float]:
    """`{"lr-SGD/decay": a, "lr-SGD/no_decay": a}` -> `{"lr-SGD": a}`; groups with different rates stay apart.

    Only learning-rate keys (`lr-<name>/<group>`) are merged; momentum / weight-decay keys pass through.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for key in stats:
        head, sep, _ = key.partition("/")
        if key.startswith("lr-") and sep and not key.endswith(("-momentum", "-weight_decay")):
            groups[head].append(key)
    out: dict[str, float] = {}
    for key, value in stats.items():
        head = key.partition("/")[0]
        members = groups.get(head, [])
        if key in members and len(members) > 1 and len({stats[m] for m in members}) == 1:
            out[head] = value
        else:
            out[key] = value
    return out


class LearningRateLogger(LearningRateMonitor):
    """`LearningRateMonitor` that writes one `lr-<Optimizer>` curve when the optimizer's groups share the rate.

    With `logging_interval="step"` the rates are logged every `log_every_n_steps` steps, at the step
    of the batch they apply to (a one-cycle peak shows as it happens).
    """

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        return collapse_shared_lr(super()._extract_stats(trainer, interval))


DEFAULT_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "train vs val": {
        "loss (epoch means)": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "top-1 accuracy": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
        "top-5 accuracy": ["Multiline", [r"^train/acc5$", r"^val/acc5$"]],
    },
}


class TrainValLayout(pl.Callback):
    """Write a Custom Scalars layout once at fit start (rank zero): charts that overlay tags by regex.

    `layout`: `{category: {chart title: ["Multiline", [tag regex, ...]]}}` (TensorBoard's format);
    default `DEFAULT_LAYOUT` (train vs val loss, top-1 and top-5 accuracy).
    """

    def __init__(self, layout: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> None:
        super().__init__()
        self.layout = {k: {t: list(c) for t, c in v.items()} for k, v in (layout or DEFAULT_LAYOUT).items()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.add_custom_scalars(self.layout)
