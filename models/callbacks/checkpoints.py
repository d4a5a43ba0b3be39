"""The run's checkpoint callbacks: the selected (best) checkpoint and `last.ckpt` at every epoch end."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint", "RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `{step}` / `{epoch}` in file names are always the trainer's own counters.

    The step-axis callback logs a `step` metric at epoch ends (Lightning's way to set the x value of
    epoch-level scalars); Lightning would otherwise read `{step}` from that stale logged value, so
    mid-epoch step checkpoints would all get the previous epoch end's name and overwrite each other.
    """

    def _monitor_candidates(self, trainer: Any) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["step"] = torch.tensor(trainer.global_step)
        candidates["epoch"] = torch.tensor(trainer.current_epoch)
        return candidates


class LastCheckpoint(RunCheckpoint):
    """Writes `last.ckpt` at the end of every epoch, for resuming.

    Lightning >= 2.6 refreshes a monitored ModelCheckpoint's `save_last` file only in epochs that also
    save a new top-k file, so there `last.ckpt` is the stale best epoch whenever val/acc did not
    improve (and `save_last="link"` links it to that stale file). This unmonitored top-1 checkpoint
    named `last` is rewritten at the end of every training epoch instead (after that epoch's validation,
    when it has one); its own class keeps its state key distinct.
    """

    def __init__(self) -> None:
        super().__init__(
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=True,  # every training epoch, whatever check_val_every_n_epoch is
        )
