"""Lightning callbacks for TensorBoard diagnostics and training safety.

- `AugmentedImageGrid`: a grid of the augmented training batch the model really saw.
- `ConfusionMatrixLogger`: confusion-matrix figure and per-class accuracy for val/test.
- `NonFiniteLossGuard`: stops training with a clear error on a NaN/inf loss, keeping the
  last good checkpoint intact.
- `HparamsWithFinalMetrics`: hyperparameters plus final metrics for TensorBoard's HPARAMS tab.

Figures are `matplotlib.figure.Figure` objects rendered by TensorBoard's writer on the Agg
canvas: no pyplot state, no display needed. All callbacks work with any LightningModule that
follows the project conventions (metrics named `train/loss`, `val/acc`, ...; optional
`val_confmat` / `test_confmat` torchmetrics confusion matrices; optional `keep_augmented_batch` /
`last_augmented_batch` handshake) and do nothing (without failing) when the trainer has no
TensorBoardLogger.
"""

from __future__ import annotations

import dataclasses
import math
import os
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

__all__ = [
    "AugmentedImageGrid",
    "ConfusionMatrixLogger",
    "NonFiniteLossGuard",
    "HparamsWithFinalMetrics",
    "denormalize_for_display",
    "flatten_hparams",
    "tensorboard_logger",
]

# Above this many classes the confusion matrix has no per-cell text and no per-class scalars
# (a 100x100 grid of numbers is unreadable and 100 scalar charts drown the Scalars tab).
MAX_ANNOTATED_CLASSES = 20


def tensorboard_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoardLogger, or None (no logger or other kinds only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def _tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    logger = tensorboard_logger(trainer)
    return None if logger is None else logger.experiment


def denormalize_for_display(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Undo `(x - mean) / std` and clamp to [0, 1] for display; x: (B, C, H, W) -> float (B, C, H, W).

    mean/std are per channel, in [0, 1] units or in [0, 255] units (detected by max(mean) > 1).
    Integer inputs are taken as 0..255 pixels and only rescaled.
    """
    if not x.is_floating_point():
        return x.float().div(255.0).clamp(0.0, 1.0)
    x = x.float()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
        std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
        x = x * std_t + mean_t
        if max(mean) > 1.0:
            x = x / 255.0
    return x.clamp(0.0, 1.0)


class AugmentedImageGrid(pl.Callback):
    """Log a grid of the augmented training batch to TensorBoard as `train/augmented_batch`.

    Logged at the first batch of epoch 0 and of every `every_n_epochs`-th epoch after it, rank zero
    only, at the global step of that batch (0 for the first). Images are un-normalized with `trainer.datamodule.mean/std`
    when present and clamped to [0, 1]; at most `max_images` are shown.

    Handshake with the LightningModule (which owns the batch augmentation):
      1. `on_train_batch_start` of a logging batch sets `pl_module.keep_augmented_batch = True`.
      2. The module's `training_step`, seeing the flag, stores the input it trained on (after
         Cutout / Mixup / CutMix / noise) as `pl_module.last_augmented_batch = x.detach()`,
         float (B, C, H, W), normalized.
      3. `on_train_batch_end` reads it, sets the flag back to False and the attribute to None
         (freeing the device memory), and logs the grid.
    A module without the handshake gets the batch's images as they arrived (per-sample
    augmentation only), or `pl_module.augment_preview(x, y)[0]` when it defines that method.
    """

    def __init__(self, every_n_epochs: int = 5, max_images: int = 32) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self._capturing = False
        self._step = 0

    def _wants(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        return (
            batch_idx == 0
            and trainer.current_epoch % self.every_n_epochs == 0
            and trainer.is_global_zero
            and _tensorboard_writer(trainer) is not None
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._wants(trainer, batch_idx):
            pl_module.keep_augmented_batch = True
            pl_module.last_augmented_batch = None
            self._capturing = True
            self._step = trainer.global_step  # the step this batch trains, before the optimizer increments it

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._capturing:
            return
        self._capturing = False
        pl_module.keep_augmented_batch = False
        images = getattr(pl_module, "last_augmented_batch", None)
        pl_module.last_augmented_batch = None
        if images is None:
            images = self._fallback_images(pl_module, batch)
        if images is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        shown = denormalize_for_display(images[: self.max_images].detach(), mean, std).cpu().contiguous()
        grid = make_grid(shown, nrow=math.ceil(math.sqrt(shown.shape[0])), padding=2)
        _tensorboard_writer(trainer).add_image("train/augmented_batch", grid, self._step)

    @staticmethod
    def _fallback_images(pl_module: pl.LightningModule, batch: Any) -> torch.Tensor | None:
        if not isinstance(batch, Sequence) or len(batch) < 1:
            return None
        x = batch[0]
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            return None
        preview = getattr(pl_module, "augment_preview", None)
        if callable(preview) and len(batch) > 1:
            with torch.no_grad():
                x = preview(x, batch[1])[0]
        return x


def _confusion_figure(rows: torch.Tensor, names: list[str], title: str) -> Figure:
    """Heat map of a row-normalized (K, K) matrix, true class on rows; cell text for K <= 20."""
    k = rows.shape[0]
    annotate = k <= MAX_ANNOTATED_CLASSES
    side = max(4.0, 0.45 * k + 2.0) if annotate else 10.0
    fig = Figure(figsize=(side, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if annotate:
        ticks = list(range(k))
        ax.set_xticks(ticks, names, rotation=90)
        ax.set_yticks(ticks, names)
        for i in range(k):
            for j in range(k):
                value = rows[i, j].item()
                if value > 0:
                    color = "white" if value > 0.5 else "black"
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return fig


def _per_class_figure(accuracy: torch.Tensor, names: list[str], title: str) -> Figure:
    """Bar chart of per-class accuracy (K,); class names on the axis for K <= 20."""
    k = accuracy.shape[0]
    fig = Figure(figsize=(max(6.0, 0.12 * k + 4.0), 4.0), dpi=100)
    ax = fig.add_subplot()
    ax.bar(range(k), accuracy.nan_to_num(0.0).numpy(), color="tab:blue")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    if k <= MAX_ANNOTATED_CLASSES:
        ax.set_xticks(list(range(k)), names, rotation=90)
    else:
        ax.set_xlabel("class index")
    fig.tight_layout()
    return fig


def _tag_safe(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


class ConfusionMatrixLogger(pl.Callback):
    """Log confusion matrices and per-class accuracy of `pl_module.val_confmat` / `test_confmat`.

    At each validation / test epoch end (not during sanity checking) the metric is computed
    (torchmetrics syncs it across ranks; every rank takes part), then rank zero logs to
    TensorBoard at `trainer.global_step`:
      `<stage>/confusion_matrix`  figure, rows (true class) normalized to sum 1
      `<stage>/per_class_acc`     bar figure of diag / row sum (recall per class)
      `<stage>/class_acc/<name>`  scalars, only for <= 20 classes
    and the metric is reset (also after sanity checking, so its batches never leak into epoch 0).
    Class names come from `trainer.datamodule.class_names` when it has K entries, else indices.
    The last raw matrix per stage stays in `self.last_confusion[stage]` (K, K) on CPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_confusion: dict[str, torch.Tensor] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "test")

    def _log_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        metric = getattr(pl_module, f"{stage}_confmat", None)
        if metric is None:
            return
        if trainer.sanity_checking:
            metric.reset()
            return
        matrix = metric.compute().detach().cpu()  # a collective under DDP: every rank computes
        metric.reset()
        self.last_confusion[stage] = matrix
        writer = _tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or not matrix.sum() > 0:
            return
        matrix = matrix.double()
        support = matrix.sum(dim=1)
        rows = matrix / support.clamp_min(1e-12).unsqueeze(1)
        accuracy = matrix.diagonal() / support  # NaN for classes absent from the split
        names = self._class_names(trainer, matrix.shape[0])
        step = trainer.global_step
        writer.add_figure(
            f"{stage}/confusion_matrix", _confusion_figure(rows, names, f"{stage} confusion matrix"), step
        )
        writer.add_figure(
            f"{stage}/per_class_acc", _per_class_figure(accuracy, names, f"{stage} per-class accuracy"), step
        )
        if matrix.shape[0] <= MAX_ANNOTATED_CLASSES:
            for name, value in zip(names, accuracy.tolist()):
                writer.add_scalar(f"{stage}/class_acc/{_tag_safe(name)}", value, step)

    @staticmethod
    def _class_names(trainer: pl.Trainer, num_classes: int) -> list[str]:
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
        return [str(i) for i in range(num_classes)]


class NonFiniteLossGuard(pl.Callback):
    """Stop training with `FloatingPointError` when the training loss is NaN or inf.

    The loss (`outputs["loss"]`, a returned tensor, or a float) of every batch is kept on its
    device and checked with `torch.isfinite` only every `check_every_n_steps` optimizer steps
    (when `trainer.global_step` is a multiple of it, or the window holds that many batches), before
    validation and at epoch end: one device sync per check instead of one per step. Default 1 is
    right on CPU; on a GPU use e.g. 10-50. The error names the exact bad step, e.g.
    `non-finite loss (nan) at global step 123, epoch 1, batch 7; the last good checkpoint is kept
    at <path or 'none saved yet'>`, and `trainer.should_stop` is set.

    Checkpoints: this callback runs before every ModelCheckpoint in the same hook (Lightning puts
    checkpoint callbacks last), so a check that fails prevents that step's save. ModelCheckpoint
    does not save on exceptions unless `save_on_exception=True`; this guard turns that off for the
    failing run so the NaN weights never overwrite `last.ckpt`. Keep `every_n_train_steps` a
    multiple of `check_every_n_steps`, else a save may land inside an unchecked window.
    `OnExceptionCheckpoint` would still write the bad weights to its own file (a warning says so).
    Under DDP the decision is reduced across ranks, so all ranks raise together.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__()
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._losses: list[torch.Tensor] = []
        self._where: list[tuple[int, int, int]] = []  # (global step, epoch, batch) per kept loss
        self._step_at_start = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, OnExceptionCheckpoint):
                rank_zero_warn(
                    "OnExceptionCheckpoint saves the current weights when NonFiniteLossGuard raises; "
                    f"after a non-finite loss {callback.ckpt_path} will hold non-finite weights"
                )
            every = getattr(callback, "_every_n_train_steps", 0)
            if isinstance(callback, ModelCheckpoint) and every and every % self.check_every_n_steps:
                rank_zero_warn(
                    f"ModelCheckpoint(every_n_train_steps={every}) is not a multiple of "
                    f"check_every_n_steps={self.check_every_n_steps}: a checkpoint may be saved after an "
                    "unchecked non-finite loss"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        self._losses.append(loss.detach().float().reshape(()))
        self._where.append((self._step_at_start, trainer.current_epoch, batch_idx))
        at_boundary = trainer.global_step % self.check_every_n_steps == 0
        if at_boundary or len(self._losses) >= self.check_every_n_steps:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Check the unchecked window before any checkpoint is written: raising here aborts the write."""
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses).cpu()  # the one device sync per window
        where, self._losses, self._where = self._where, [], []
        bad = (~torch.isfinite(losses)).nonzero().flatten()
        any_bad = trainer.strategy.reduce_boolean_decision(bool(bad.numel()), all=False)
        if not any_bad:
            return
        trainer.should_stop = True
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.save_on_exception = False  # never let the bad weights overwrite last.ckpt
        kept = self._last_checkpoint(trainer) or "none saved yet"
        if bad.numel():
            i = int(bad[0])
            step, epoch, batch_idx = where[i]
            raise FloatingPointError(
                f"non-finite loss ({losses[i].item()}) at global step {step}, epoch {epoch}, batch {batch_idx}; "
                f"the last good checkpoint is kept at {kept}"
            )
        raise FloatingPointError(
            f"non-finite loss on another rank between global steps {where[0][0]} and {where[-1][0]}; "
            f"the last good checkpoint is kept at {kept}"
        )

    @staticmethod
    def _last_checkpoint(trainer: pl.Trainer) -> str | None:
        paths = [
            path
            for callback in trainer.checkpoint_callbacks
            if isinstance(callback, ModelCheckpoint)
            for path in (callback.last_model_path, callback.best_model_path)
            if path and os.path.isfile(path)
        ]
        return max(paths, key=os.path.getmtime) if paths else None


_SIMPLE = (bool, int, float, str)


def flatten_hparams(tree: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Flatten nested hyperparameters to `{"a.b.c": simple}` for TensorBoard's HPARAMS tab.

    Mappings, Namespaces and dataclass instances nest with "."; keys starting with "_" are skipped;
    None becomes "None"; lists/tuples of simple values become their str; anything else (tensors,
    modules, callables) is dropped.
    """
    if isinstance(tree, Namespace):
        tree = vars(tree)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        flat: dict[str, bool | int | float | str] = {}
        for key, value in tree.items():
            if str(key).startswith("_"):
                continue  # LightningCLI's `_instantiator`, `_class_path`: bookkeeping, not hyperparameters
            flat.update(flatten_hparams(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if tree is None:
        return {prefix: "None"}
    if isinstance(tree, _SIMPLE):
        return {prefix: tree}
    if isinstance(tree, (list, tuple)) and all(isinstance(v, _SIMPLE) or v is None for v in tree):
        return {prefix: str(list(tree))}
    return {}


class HparamsWithFinalMetrics(pl.Callback):
    """Write hyperparameters with final metrics to TensorBoard's HPARAMS tab.

    Hyperparameters: `pl_module.hparams` under `model.` and `trainer.datamodule.hparams` under
    `data.`, flattened by `flatten_hparams`. Metrics (scalars tagged for the HPARAMS table):
      `hp/val_acc_best`  max of `val/acc` over validation epochs (sanity check excluded)
      `hp/test_acc`, `hp/test_loss`  `test/acc`, `test/loss` of the last test run
    Written once at the end of fit (test metrics NaN until a test runs) or at the end of a
    test-only run; a later test in the same log dir adds the test values as newer points.

    TensorBoard keeps only the first hparams record of a run, so Lightning's automatic
    `hp_metric` placeholder record (TensorBoardLogger's `default_hp_metric=True`) would hide this
    one: `setup` turns `default_hp_metric` off on the logger before Lightning writes it.
    Pass `TensorBoardLogger(..., default_hp_metric=False)` to make that explicit.
    """

    METRICS = ("hp/val_acc_best", "hp/test_acc", "hp/test_loss")

    def __init__(self) -> None:
        super().__init__()
        self.best_val_acc = math.nan
        self._written_dirs: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best_val_acc}  # a resumed fit keeps the best of earlier epochs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_acc = float(state_dict["best_val_acc"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and getattr(logger, "_default_hp_metric", False):
            logger._default_hp_metric = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/acc")
        if value is not None:
            value = float(value)
            if math.isnan(self.best_val_acc) or value > self.best_val_acc:
                self.best_val_acc = value

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, {"hp/val_acc_best": self.best_val_acc})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self._write(
            trainer,
            pl_module,
            {
                "hp/test_acc": float(metrics.get("test/acc", math.nan)),
                "hp/test_loss": float(metrics.get("test/loss", math.nan)),
            },
        )

    def hyperparameters(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Flattened `model.*` and `data.*` hyperparameters of this run."""
        params = flatten_hparams(dict(pl_module.hparams), "model")
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "hparams"):
            params.update(flatten_hparams(dict(datamodule.hparams), "data"))
        return params

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, known: dict[str, float]) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        if logger.log_dir in self._written_dirs:
            logger.log_metrics(known, step=trainer.global_step)
            return
        metrics = {name: known.get(name, math.nan) for name in self.METRICS}
        logger.log_hyperparams(self.hyperparameters(trainer, pl_module), metrics, step=trainer.global_step)
        logger.experiment.flush()
        self._written_dirs.add(logger.log_dir)
