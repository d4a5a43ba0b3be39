"""Every Lightning callback of the project: TensorBoard diagnostics, progress, checkpoints, regularizers and
training safety.

- `AugmentedImageGrid` (images): the augmented training batch the model really saw, pixel grid and
  labelled (input, augmented) pairs.
- `ConfusionMatrixLogger` (confusion): confusion matrix, sorted per-class accuracy, most-confused pairs.
- `HparamsWithFinalMetrics` (hparams): the applicable hyperparameters with final metrics (HPARAMS tab).
- `NonFiniteLossGuard` (guards): stops training with a clear error on a NaN/inf loss, keeping the
  last good checkpoint intact.
- `StepAxis`, `LearningRateLogger`, `TrainValLayout` (scalars): one step axis for all tags, per-step
  learning rates, a train-vs-val Custom Scalars layout.
- `TrainingSpeedMonitor` (speed): images/s, epoch wall time, CUDA peak memory.
- `FitProgress` (progress): whole-fit progress line with the estimated end, an early warning for
  long CPU runs.
- `RunCheckpoint`, `LastCheckpoint` (checkpoints): the selected checkpoint and `last.ckpt` every epoch.
- `CtrlCAtBatchEnd` (interrupt): the first Ctrl-C stops at the end of the batch, a second one at once.
- `WeightNoise` (weight_noise): Gaussian noise on the weights during training.
- `Sharpness` (sharpness): Hessian eigenvalue and epsilon-sharpness after fit.
- `HeldOutPredictions` (oof): a k-fold run's out-of-fold predictions.

All callbacks work with any LightningModule that follows the project conventions (metrics named
`train/loss`, `val/acc`, ...; optional `val_confmat` / `test_confmat` torchmetrics confusion
matrices; optional `keep_augmented_batch` / `last_augmented_batch` handshake) and do nothing
(without failing) when the trainer has no TensorBoardLogger.
"""

from models.callbacks._tensorboard import tensorboard_logger
from models.callbacks.checkpoints import LastCheckpoint, RunCheckpoint
from models.callbacks.confusion import (
    MAX_ANNOTATED_CLASSES,
    ConfusionMatrixLogger,
    confusion_figure,
    most_confused_markdown,
    most_confused_pairs,
    per_class_figure,
)
from models.callbacks.guards import NonFiniteLossGuard
from models.callbacks.hparams import HparamsWithFinalMetrics, applicable_hparams, flatten_hparams, readable_hparams
from models.callbacks.images import AugmentedImageGrid, augmented_batch_figure, denormalize_for_display, mix_labels
from models.callbacks.interrupt import CtrlCAtBatchEnd
from models.callbacks.oof import HeldOutPredictions
from models.callbacks.progress import FitProgress, format_duration
from models.callbacks.scalars import LearningRateLogger, StepAxis, TrainValLayout, collapse_shared_lr
from models.callbacks.sharpness import Sharpness
from models.callbacks.speed import TrainingSpeedMonitor, cuda_peak_memory_gib
from models.callbacks.weight_noise import WeightNoise

__all__ = [
    "AugmentedImageGrid",
    "CtrlCAtBatchEnd",
    "LastCheckpoint",
    "RunCheckpoint",
    "Sharpness",
    "WeightNoise",
    "ConfusionMatrixLogger",
    "NonFiniteLossGuard",
    "HparamsWithFinalMetrics",
    "StepAxis",
    "LearningRateLogger",
    "TrainValLayout",
    "TrainingSpeedMonitor",
    "FitProgress",
    "HeldOutPredictions",
    "MAX_ANNOTATED_CLASSES",
    "applicable_hparams",
    "augmented_batch_figure",
    "collapse_shared_lr",
    "confusion_figure",
    "cuda_peak_memory_gib",
    "denormalize_for_display",
    "flatten_hparams",
    "format_duration",
    "mix_labels",
    "most_confused_markdown",
    "most_confused_pairs",
    "per_class_figure",
    "readable_hparams",
    "tensorboard_logger",
]
