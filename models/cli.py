"""The command line: LightningCLI over `CifarClassifier` and `CIFARDataModule`, fit then test in one call.

`python train.py --config configs/cifar10_resnet18.yaml [--model.mixup.alpha 0.2 ...]` fits with
checkpoint selection and early stopping on the held-out validation split, then tests the best
checkpoint once on the test split. `run(args)` does the same from Python and returns the final metrics
(the study runner uses it).
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from augment.data import CIFARDataModule
from models.callbacks import (
    AugmentedImageGrid,
    ConfusionMatrixLogger,
    HparamsWithFinalMetrics,
    NonFiniteLossGuard,
)
from models.classifier import CifarClassifier
from models.regularizers import WeightNoise

__all__ = ["CifarCLI", "UserError", "run", "main"]

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ImportError, FloatingPointError)


class UserError(Exception):
    """A bad config value, missing data or a diverged run: reported in one line, without a traceback."""


def _trainer_defaults() -> dict[str, Any]:
    return {
        "default_root_dir": "runs",
        "logger": {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "cifar", "default_hp_metric": False},
        },
        "callbacks": [
            LearningRateMonitor(logging_interval="epoch"),
            AugmentedImageGrid(),
            ConfusionMatrixLogger(),
            NonFiniteLossGuard(check_every_n_steps=50),  # one host sync per 50 steps, exact step still named
            HparamsWithFinalMetrics(),
        ],
        "max_epochs": 30,
        "log_every_n_steps": 50,
    }


class CifarCLI(LightningCLI):
    """LightningCLI with the project's callbacks as top-level config sections and `ckpt_path` to resume."""

    def __init__(self, args: list[str] | dict | Namespace | None = None, **kwargs: Any) -> None:
        super().__init__(
            CifarClassifier,
            CIFARDataModule,
            run=False,
            args=args,
            auto_configure_optimizers=False,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=_trainer_defaults(),
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("model.channels_last", "data.channels_last")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": "link",  # last.ckpt links to the best file when they coincide
                "checkpoint.filename": "best-epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": "val/acc", "early_stopping.mode": "max", "early_stopping.patience": 20}
        )
        parser.add_lightning_class_args(WeightNoise, "weight_noise")
        parser.set_defaults({"weight_noise.std": 0.0})
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="Checkpoint to resume fit from.")
        parser.add_argument("--run_test", type=bool, default=True, help="Test the selected checkpoint after fit.")


def _without_validation(trainer: Any) -> None:
    """val_size 0: no early stopping, and checkpoints keep only the last epoch."""
    warnings.warn("data.val_size is 0: early stopping is off and the last epoch is tested", stacklevel=2)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, EarlyStopping)]
    for cb in trainer.checkpoint_callbacks:
        cb.monitor = None
        cb.save_top_k = 1
        cb.mode = "min"
    trainer.limit_val_batches = 0


def _final_metrics(trainer: Any, test_results: list[dict], fit_time_s: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.best_model_score is not None:
        metrics["val/acc_best"] = float(ckpt.best_model_score)
    for result in test_results:
        metrics.update({k: float(v) for k, v in result.items()})
    metrics["epochs"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    metrics["fit_time_s"] = fit_time_s
    metrics["log_dir"] = trainer.log_dir
    return metrics


def run(args: list[str] | dict | None = None) -> dict[str, Any]:
    """Parse config, fit (resuming from `ckpt_path` if given), test the selected checkpoint; return metrics."""
    cli = CifarCLI(args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    config = cli.config
    if not datamodule.has_val:
        _without_validation(trainer)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=config.get("ckpt_path"))
    fit_time_s = time.perf_counter() - start
    test_results: list[dict] = []
    if config.get("run_test", True):
        ckpt = trainer.checkpoint_callback
        use_best = datamodule.has_val and ckpt is not None and bool(ckpt.best_model_path)
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path="best" if use_best else None)
    return _final_metrics(trainer, test_results, fit_time_s)


def main(argv: list[str] | None = None) -> int:
    """Entry point of train.py: one-line errors and exit code 2 for user errors, no traceback."""
    torch.set_float32_matmul_precision("high")
    try:
        run(argv)
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
