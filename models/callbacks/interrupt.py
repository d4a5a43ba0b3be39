"""Ctrl-C during fit: the first one stops at the end of the current batch, a second one at once."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

__all__ = ["CtrlCAtBatchEnd"]


class CtrlCAtBatchEnd(pl.Callback):
    """The first Ctrl-C during fit takes effect at the end of the current batch, a second one at once.

    A KeyboardInterrupt raised straight from the signal can land inside a weakref callback or a
    ``__del__`` (frequent with many tensors alive), where Python prints "Exception ignored" and drops it;
    raised from a batch-end hook it always reaches Lightning's interrupt handling.
    """

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _stop_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._stop_if_requested()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._stop_if_requested()
