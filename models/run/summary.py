"""The short summary `train.py` prints at the end of a run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from models.callbacks import HparamsWithFinalMetrics, TrainingSpeedMonitor, format_duration, tensorboard_logger
from models.run.log_dir import tensorboard_command

__all__ = ["run_summary", "print_run_summary"]


def _callback(trainer: pl.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%"


def run_summary(trainer: pl.Trainer, metrics: Mapping[str, Any]) -> str:
    """Best val accuracy and its epoch, test top-1 / top-5 / balanced, fit wall time and images/s, the best
    checkpoint and the TensorBoard command, from `models.run.cli.run`'s metrics and the trainer's callbacks."""
    rows: list[tuple[str, str]] = []
    monitor = metrics.get("monitor", "val/acc")
    best = metrics.get(f"{monitor}_best")
    if best is not None and monitor == "val/acc":
        hparams = _callback(trainer, HparamsWithFinalMetrics)
        epoch = getattr(hparams, "best_val_epoch", -1)
        rows.append(("best val acc", _percent(best) + (f" at epoch {epoch}" if epoch >= 0 else "")))
    elif best is not None:
        rows.append((f"best {monitor}", f"{best:.4f} (the checkpoint's monitor)"))
    else:
        rows.append(("best val acc", "no validation split (the last epoch is tested)"))
    if "test/acc" in metrics:
        test = f"top-1 {_percent(metrics['test/acc'])}"
        if "test/acc5" in metrics:
            test += f", top-5 {_percent(metrics['test/acc5'])}"
        if "test/bal_acc" in metrics:
            test += f", balanced {_percent(metrics['test/bal_acc'])}"
        rows.append(("test acc", test))
    else:
        rows.append(("test acc", "not run (run_test false)"))
    fit = format_duration(float(metrics.get("fit_time_s", math.nan)))
    if "epochs" in metrics:
        fit += f" for {metrics['epochs']} epochs"
    speed = _callback(trainer, TrainingSpeedMonitor)
    if speed is not None and math.isfinite(speed.images_per_s):
        fit += f", {speed.images_per_s:,.0f} train images/s"
    rows.append(("fit", fit))
    if metrics.get("sharpness/hessian_max_eig") is not None:
        eig, eps = metrics["sharpness/hessian_max_eig"], metrics.get("sharpness/eps_sharpness")
        rows.append(("sharpness", f"Hessian max eig {eig:.4g}, eps-sharpness {eps:.4g}%"))
    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "")
    path = best_path or getattr(checkpoint, "last_model_path", "")
    rows.append(("best checkpoint" if best_path else "checkpoint", path or "none saved"))
    logger = tensorboard_logger(trainer)
    rows.append(("TensorBoard", tensorboard_command(logger.log_dir) if logger is not None else "no TensorBoard logger"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(["run summary"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def print_run_summary(trainer: pl.Trainer, metrics: Mapping[str, Any]) -> None:
    """Print `run_summary` on rank zero."""
    if trainer.is_global_zero:
        print(run_summary(trainer, metrics), flush=True)
