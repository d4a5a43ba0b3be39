"""`FitProgress`: console lines about the whole fit (Lightning's progress bar shows the current epoch only)."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from augment.checks import is_int, is_real, require

__all__ = ["FitProgress", "format_duration", "CPU_RECIPE"]

CPU_RECIPE = "configs/cpu_smoke.yaml"


def format_duration(seconds: float) -> str:
    """41.2 s, 12 min 05 s, 3 h 08 min, 2 d 05 h."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs:02d} s"
    if seconds < 86400:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d {hours:02d} h"


def _clock(seconds_from_now: float) -> str:
    end = datetime.datetime.now() + datetime.timedelta(seconds=seconds_from_now)
    return end.strftime("%H:%M") if seconds_from_now < 20 * 3600 else end.strftime("%a %d %b %H:%M")


class FitProgress(pl.Callback):
    """Progress of the whole fit, printed on rank zero (through the progress bar when there is one).

    - After the first training epoch this process runs, and every `every_n_epochs` epochs after it
      (0: only the first), one line: the epoch's wall time (validation included), the time per
      optimizer step, and when the fit ends at that pace (remaining planned steps x time per step;
      early stopping can end it sooner), e.g.
      `epoch 1/30: 41.2 s, 0.47 s/step; the fit ends in about 20 min 36 s (around 22:41) at this pace`.
    - On a CPU device: after `probe_steps` optimizer steps past the first, when the planned steps at
      the measured pace take longer than `cpu_warn_after_s`, a warning with that estimate that
      points to a GPU or to `configs/cpu_smoke.yaml`.
    The last line is kept in `last_line`.
    """

    def __init__(self, every_n_epochs: int = 10, probe_steps: int = 3, cpu_warn_after_s: float = 2 * 3600.0) -> None:
        super().__init__()
        require(is_int(every_n_epochs) and every_n_epochs >= 0, "every_n_epochs", ">= 0", every_n_epochs)
        require(is_int(probe_steps) and probe_steps >= 1, "probe_steps", ">= 1", probe_steps)
        require(is_real(cpu_warn_after_s) and cpu_warn_after_s > 0, "cpu_warn_after_s", "> 0", cpu_warn_after_s)
        self.every_n_epochs = every_n_epochs
        self.probe_steps = probe_steps
        self.cpu_warn_after_s = float(cpu_warn_after_s)
        self.last_line = ""
        self.cpu_estimate_s: float | None = None
        self._epochs_seen = 0
        self._epoch_start = 0.0
        self._epoch_start_step = 0
        self._probe: tuple[int, float] | None = None  # (global step, time) after the first step
        self._probe_done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epochs_seen = 0
        self._probe, self._probe_done = None, trainer.strategy.root_device.type != "cpu"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_start_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._probe_done:
            return
        step, now = trainer.global_step, time.perf_counter()
        if self._probe is None:
            self._probe = (step, now)  # the first step (allocations, warm-up) stays out of the pace
            return
        first_step, first_time = self._probe
        if step - first_step < self.probe_steps:
            return
        self._probe_done = True
        pace = (now - first_time) / (step - first_step)
        remaining = trainer.estimated_stepping_batches - step
        self.cpu_estimate_s = pace * remaining if math.isfinite(remaining) else math.inf
        if self.cpu_estimate_s > self.cpu_warn_after_s:
            rank_zero_warn(
                f"training on the CPU at {pace:.2f} s per step: the remaining {remaining:g} steps take about "
                f"{format_duration(self.cpu_estimate_s)}; use a GPU (trainer.accelerator gpu), or {CPU_RECIPE} "
                "for a CPU run that finishes in minutes"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epochs_seen += 1
        first = self._epochs_seen == 1
        if not first and not (self.every_n_epochs and (self._epochs_seen - 1) % self.every_n_epochs == 0):
            return
        seconds = time.perf_counter() - self._epoch_start
        steps = trainer.global_step - self._epoch_start_step
        line = f"epoch {trainer.current_epoch + 1}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            line += f"/{trainer.max_epochs}"
        line += f": {format_duration(seconds)}"
        remaining = trainer.estimated_stepping_batches - trainer.global_step
        if steps > 0:
            pace = seconds / steps
            line += f", {pace:.3g} s/step"
            if math.isfinite(remaining):
                left = max(remaining, 0) * pace
                line += f"; the fit ends in about {format_duration(left)} (around {_clock(left)}) at this pace"
        self.last_line = line
        if trainer.is_global_zero:
            pl_module.print(line)
