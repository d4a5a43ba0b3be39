"""The Lightning callback a study trial adds to its run: per-epoch validation accuracy to Ray Tune."""

from __future__ import annotations

import pytorch_lightning as pl

__all__ = ["ReportEpoch"]


class ReportEpoch(pl.Callback):
    """Reports `val_acc` (and `epoch`) to Ray Tune after each validation epoch of the fit (not the sanity check).

    Outside a Tune session it does nothing, so a config holding it still runs with `train.py`.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if not _in_tune_session():
            return
        from ray import tune

        tune.report({"val_acc": float(trainer.callback_metrics["val/acc"]), "epoch": trainer.current_epoch + 1})
