"""Scalar plumbing: one step axis for every tag, learning rates per step, a custom-scalars layout.

- `StepAxis`: Lightning writes epoch-level metrics at the step of the epoch's last batch and the test
  metrics one step later, and adds an `epoch` scalar to every write it places itself; this callback
  puts them all at `trainer.global_step`, where the callbacks' figures and hparams metrics are, and
  keeps the `epoch` staircase out of the file.
- `LearningRateLogger`: Lightning's `LearningRateMonitor` writing `train/lr` (one curve while all
  parameter groups share the rate), from step 0 on.
- `TrainValLayout`: TensorBoard's Custom Scalars tab with train and val loss, and train and val
  accuracy, overlaid in one chart each, and the learning rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor

from models.callbacks._tensorboard import batch_step, is_logging_batch, tensorboard_writer

__all__ = ["StepAxis", "LearningRateLogger", "TrainValLayout", "collapse_shared_lr", "lr_tag", "DEFAULT_LAYOUT"]


class StepAxis(pl.Callback):
    """Put Lightning's epoch-level metrics at `trainer.global_step` (see `models.callbacks._tensorboard`).

    Logs `step` (Lightning's documented override of the x value of a logged dict) at the end of every
    training, validation and test epoch, so the train epoch means, val and test metrics of a run share
    the step of the figures and hparams metrics of that moment. On the batches whose per-step metrics
    Lightning writes (`log_every_n_steps`) it logs `step` too, with Lightning's own value (the batch's
    optimizer step, counted from 0): a write that names its step gets no `epoch` scalar from Lightning,
    so the file has no `epoch` tag (the step axis already says where epochs end).
    """

    @staticmethod
    def _log_step(pl_module: pl.LightningModule, trainer: pl.Trainer) -> None:
        pl_module.log("step", float(trainer.global_step), on_step=False, on_epoch=True, reduce_fx="max", sync_dist=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if is_logging_batch(trainer):
            pl_module.log("step", float(batch_step(trainer)), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_step(pl_module, trainer)

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


def lr_tag(key: str) -> str:
    """Lightning's learning-rate key as a `train/` tag: `lr-SGD` -> `train/lr`, `lr-SGD/a` -> `train/lr/a`.

    Momentum / weight-decay keys (`lr-SGD-momentum`) become `train/momentum` / `train/weight_decay`.
    """
    for suffix in ("-momentum", "-weight_decay"):
        if key.endswith(suffix):
            return lr_tag(key[: -len(suffix)]).replace("train/lr", f"train/{suffix[1:]}", 1)
    _, sep, group = key.partition("/")
    return "train/lr" + (f"/{group}" if sep else "")


class LearningRateLogger(LearningRateMonitor):
    """`LearningRateMonitor` that writes `train/lr`: one curve while the optimizer's groups share the rate.

    With `logging_interval="step"` the rates are logged at step 0 and then every `log_every_n_steps`
    steps, each at the step of the batch it applies to (a one-cycle warm-up and peak show as they
    happen). Groups with different rates get `train/lr/<group name>`; with more than one optimizer the
    tags keep Lightning's names (`lr-SGD`, `lr-Adam`) to stay apart.
    """

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_start(trainer, *args, **kwargs)
        if (self.logging_interval != "epoch" and batch_step(trainer) == 0
                and not trainer._logger_connector.should_update_logs):
            stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=0)

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        stats = collapse_shared_lr(super()._extract_stats(trainer, interval))
        if len(trainer.optimizers) > 1:
            return stats
        return {lr_tag(key): value for key, value in stats.items()}


DEFAULT_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "train vs val": {
        "loss (epoch means)": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
        "top-1 accuracy": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
        "learning rate": ["Multiline", [r"^train/lr(/.*)?$"]],
        "top-5 accuracy": ["Multiline", [r"^train/acc5$", r"^val/acc5$"]],
    },
}


class TrainValLayout(pl.Callback):
    """Write a Custom Scalars layout once at fit start (rank zero): charts that overlay tags by regex.

    `layout`: `{category: {chart title: ["Multiline", [tag regex, ...]]}}` (TensorBoard's format);
    default `DEFAULT_LAYOUT` (train vs val loss, top-1 accuracy, the learning rate, top-5 accuracy).
    """

    def __init__(self, layout: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> None:
        super().__init__()
        self.layout = {k: {t: list(c) for t, c in v.items()} for k, v in (layout or DEFAULT_LAYOUT).items()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.add_custom_scalars(self.layout)
