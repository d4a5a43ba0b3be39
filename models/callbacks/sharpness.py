"""The `sharpness:` section: measure both sharpness measures of `models.sharpness` after fit and log them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from augment.checks import check_bool, check_choice, check_int, check_real, field_prefix
from models.run.resume import load_checkpoint_file
from models.sharpness import HPARAM_METRICS, WEIGHTS, SharpnessResult, measure_sharpness, training_subset

__all__ = ["Sharpness"]


class Sharpness(pl.Callback):
    """Measure both sharpness measures after fit (YAML: `sharpness: {enable: true, ...}`).

    At the end of training (every rank computes the same numbers; rank zero logs) the evaluated
    network (`pl_module.eval_model`: the EMA copy when enabled, else the model itself) is measured on
    `num_images` un-augmented training images (`training_subset`), with the weights of the best
    checkpoint of the trainer's ModelCheckpoint (`weights="best"`, the ones the CLI tests; the final
    weights when none was saved) or the final weights (`weights="last"`). Results:
      - TensorBoard scalars `sharpness/hessian_max_eig`, `sharpness/eps_sharpness`, `sharpness/loss`,
        `sharpness/hessian_iterations` at the last global step, and the settings as text
        `sharpness/settings`;
      - HPARAMS metrics: the scalar tags `sharpness/hessian_max_eig` and `sharpness/eps_sharpness`
        themselves (added to the run's `HparamsWithFinalMetrics` record; no copies under `hp/`);
      - the `sharpness/*` values in `trainer.callback_metrics`, so `models.run.cli.run` returns them;
      - `self.result`, a SharpnessResult.
    """

    def __init__(
        self,
        enable: bool = False,
        num_images: int = 2048,
        batch_size: int = 256,
        hessian_iterations: int = 20,
        hessian_tol: float = 1e-3,
        eps: float = 1e-3,
        eps_steps: int = 10,
        seed: int = 0,
        weights: str = "best",
    ) -> None:
        super().__init__()
        with field_prefix("sharpness"):
            self.enable = check_bool("enable", enable)
            self.num_images = check_int("num_images", num_images, low=1)
            self.batch_size = check_int("batch_size", batch_size, low=1)
            self.hessian_iterations = check_int("hessian_iterations", hessian_iterations, low=1)
            self.hessian_tol = check_real("hessian_tol", hessian_tol, 0.0)
            self.eps = check_real("eps", eps, 0.0, low_open=True)
            self.eps_steps = check_int("eps_steps", eps_steps, low=1)
            self.seed = check_int("seed", seed, low=0)
            self.weights = check_choice("weights", weights, WEIGHTS)
        self.result: SharpnessResult | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enable or stage != "fit":
            return
        from models.callbacks import HparamsWithFinalMetrics

        for callback in trainer.callbacks:
            if isinstance(callback, HparamsWithFinalMetrics):
                callback.METRICS = (*callback.METRICS, *(m for m in HPARAM_METRICS if m not in callback.METRICS))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enable:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not all(hasattr(datamodule, a) for a in ("train_indices", "arrays", "mean", "std")):
            rank_zero_warn("sharpness needs a CIFARDataModule (its un-augmented training images); not measured")
            return
        images, labels = training_subset(datamodule, self.num_images, self.seed)
        model = getattr(pl_module, "eval_model", pl_module)
        device = next(model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        with self._weights(trainer, pl_module, model) as source:
            result = measure_sharpness(
                model, images, labels, self.hessian_iterations, self.hessian_tol, self.eps, self.eps_steps,
                self.seed, self.batch_size,
            )
        result.settings["weights"] = source
        result.settings["module"] = "ema" if getattr(pl_module, "ema", None) is not None else "model"
        self.result = result
        for name, value in result.metrics().items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(result.metrics(), step=trainer.global_step)
            writer = getattr(trainer.logger, "experiment", None)
            if hasattr(writer, "add_text"):
                writer.add_text("sharpness/settings", json.dumps(result.settings), trainer.global_step)

    @contextmanager
    def _weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module) -> Iterator[str]:
        """The best checkpoint's weights loaded into `model` for the measurement (restored after), or none."""
        callback = trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") if self.weights == "best" else ""
        prefix = next((f"{name}." for name, sub in pl_module.named_modules() if sub is model and name), "")
        if not path or not Path(path).is_file():
            yield "last"
            return
        state = load_checkpoint_file(path, key="sharpness: best checkpoint", mmap=False)["state_dict"]
        best = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best)
        try:
            yield f"best ({Path(path).name})"
        finally:
            model.load_state_dict(saved)
