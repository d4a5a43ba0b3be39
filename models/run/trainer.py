"""The Trainer the CLI builds: Lightning's, with its documented settings meaning what Lightning says.

- ``limit_*_batches``, ``overfit_batches`` and ``val_check_interval`` are annotated ``float | int`` by
  Lightning, so a parser trying the types in order reads ``1`` as ``1.0`` (100% of the batches instead
  of one batch). Here they are ``int | float``: an int is a batch count, a float a fraction.
- ``enable_checkpointing: false`` turns checkpointing off: the ModelCheckpoint callbacks the CLI adds by
  itself are dropped instead of making Lightning refuse the setting.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["CifarTrainer"]


class CifarTrainer(pl.Trainer):
    """``pl.Trainer`` with int-first batch limits and an ``enable_checkpointing`` that always wins."""

    def __init__(
        self,
        *,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        enable_checkpointing: bool | None = None,
        callbacks: list[pl.Callback] | pl.Callback | None = None,
        **kwargs: Any,
    ) -> None:
        if enable_checkpointing is False and callbacks is not None:
            listed = callbacks if isinstance(callbacks, list) else [callbacks]
            callbacks = [c for c in listed if not isinstance(c, ModelCheckpoint)]
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches,
            val_check_interval=val_check_interval,
            enable_checkpointing=enable_checkpointing,
            callbacks=callbacks,
            **kwargs,
        )
