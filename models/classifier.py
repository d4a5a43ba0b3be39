"""The LightningModule: timm backbone, batch regularizers on the device, soft-target loss, metrics,
optimizer + per-step schedule, weight EMA and flip test-time augmentation.

One training step: `x: (B, C, H, W)` float, normalized, `y: (B,)` int64 -> Cutout -> Mixup/CutMix
-> input noise (`augment.pipeline.build_batch_augment`, seeded per run) -> backbone -> loss.

- Loss: the pipeline always returns soft targets `(B, K)` with label smoothing inside ->
  `augment.soft_target_cross_entropy`.
- Metrics (torchmetrics, epoch-level, synced across ranks): `train/loss`, `train/acc`, `train/acc5`,
  `val/...`, `test/...`. train/acc is measured on the augmented inputs against the original labels.
  val/test loss is plain cross-entropy (no smoothing) of the evaluated (EMA, TTA) predictions.
  `train/loss_step`: this rank's batch loss, written every `trainer.log_every_n_steps` steps.
- `val_confmat` / `test_confmat`: confusion matrices updated every eval step, read and reset by
  `models.callbacks.ConfusionMatrixLogger` (and reset here at each eval epoch start).
- EMA (`ema_decay > 0`): a `timm.utils.ModelEmaV3` copy of the backbone, updated after every
  optimizer step; validation and test then run on the EMA weights. It lives in the state dict, so
  checkpoints resume it exactly; its parameters are frozen, so no optimizer or callback trains them.
- `tta_flip`: validation and test average the softmax of `x` and `x.flip(3)`.
- Checkpoints also hold the batch-augmentation generator state, so a resumed run draws the same
  Mixup/CutMix/Cutout/noise randomness as an uninterrupted one.
- SAM / ASAM (`optimizer.sam`): `models.sam.SAM` calls Lightning's step closure twice. The second
  call reuses the first call's augmented batch, updates no metrics and leaves BatchNorm running
  statistics as the first call left them; Lightning clips gradients (and calls
  `on_before_optimizer_step`, where `WeightNoise` restores clean weights) after each call, so the
  perturbation comes from the clipped gradient at the noisy point and the update from the clipped
  gradient at w + e(w). `train/loss` is the first call's loss; the step output's `loss` (read by
  callbacks) is the second's. Needs `accumulate_grad_batches` 1 and a precision other than 16-mixed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from augment.checks import check_bool, check_int, check_real, field_prefix, require
from augment.losses import soft_target_cross_entropy
from augment.pipeline import (
    SECTIONS,
    Compose,
    CutMixConfig,
    CutoutConfig,
    MixingConfig,
    MixupConfig,
    NoiseConfig,
    as_config,
    build_batch_augment,
)
from augment.targets import to_soft
from models.backbones import create_model
from models.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler, param_groups
from models.sam import SAM, preserve_bn_stats

__all__ = ["ACCURACY_METRICS", "CifarClassifier", "flip_tta_log_probs"]

RNG_STATE_KEY = "batch_augment_rng_state"
_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads nearby seeds / ranks apart




def flip_tta_log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax of `model(x)` and `model(x.flip(3))`; x: (B, C, H, W) -> (B, K)."""
    both = torch.stack([F.log_softmax(model(x).float(), 1), F.log_softmax(model(x.flip(3)).float(), 1)])
    return torch.logsumexp(both, dim=0) - math.log(2.0)


def _check_backbone(name: Any) -> None:
    """One-line ValueError for a name timm does not know, with close names as suggestions."""
    require(isinstance(name, str) and bool(name), "model.backbone", "a timm model name", name)
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
    raise ValueError(f"model.backbone must be a timm model name, got {name!r}{hint}")  # with a hint: not CheckError


def _plain(value: Any) -> Any:
    """Dataclasses -> dicts (tuples kept), so hparams load with torch.load(weights_only=True) and YAML."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


ACCURACY_METRICS = ("acc", "acc5", "bal_acc")
"""The accuracy metrics every stage logs as ``<stage>/<name>`` (beside ``<stage>/loss``)."""


def _accuracy_metrics(num_classes: int) -> MetricCollection:
    """top-1 `acc` and top-min(5, K) `acc5`, micro-averaged, and `bal_acc` (balanced accuracy: the mean of
    the per-class recalls of the classes present), no per-update validation (no host sync)."""
    metrics = (
        MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False),
        MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", validate_args=False),
        MulticlassAccuracy(num_classes, top_k=1, average="macro", validate_args=False),
    )
    return MetricCollection(
        compute_groups=False,  # top-1 / top-5 states can match on a first batch; never merge them
        metrics=dict(zip(ACCURACY_METRICS, metrics, strict=True)),
    )


class CifarClassifier(pl.LightningModule):
    """Image classifier over a timm backbone with on-device batch regularizers (see module docstring).

    Every argument is a YAML key under `model:`; nested configs (`mixup`, `optimizer`, ...) take
    their dataclass or a mapping of its fields.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        cifar_stem: bool | str = "auto",
        norm: str = "batch",
        norm_groups: int = 32,
        norm_strict: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pretrained: bool = False,
        mixup: MixupConfig = MixupConfig(),
        cutmix: CutMixConfig = CutMixConfig(),
        mixing: MixingConfig = MixingConfig(),
        cutout: CutoutConfig = CutoutConfig(),
        input_noise: NoiseConfig = NoiseConfig(),
        label_smoothing: float = 0.0,
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
        ema_decay: float = 0.0,
        ema_warmup: bool = True,
        tta_flip: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        input_size: int | list[int] | tuple[int, int] | None = None,
        class_weights: str | list[float] | None = None,
    ) -> None:
        super().__init__()
        given = locals()  # the batch-op sections (mixup, cutmix, ...) are read by name, as SECTIONS lists them
        batch_sections = {key: as_config(cls, given[key], f"model.{key}") for key, cls in SECTIONS.items()}
        optimizer = as_config(OptimizerConfig, optimizer, "model.optimizer")
        scheduler = as_config(SchedulerConfig, scheduler, "model.scheduler")
        _check_backbone(backbone)
        check_int("model.num_classes", num_classes, low=2)
        check_real("model.label_smoothing", label_smoothing, 0, 1, high_open=True)
        check_real("model.ema_decay", ema_decay, 0, 1, high_open=True)
        ok = class_weights is None or class_weights == "auto" or (
            isinstance(class_weights, (list, tuple)) and len(class_weights) == num_classes
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in class_weights))
        require(ok, "model.class_weights", f"null, auto or a list of {num_classes} weights > 0", class_weights)
        flags = dict(norm_strict=norm_strict, pretrained=pretrained)
        flags.update(ema_warmup=ema_warmup, tta_flip=tta_flip)
        for name, value in dict(flags, channels_last=channels_last, compile=compile).items():
            check_bool(f"model.{name}", value)
        self.save_hyperparameters()
        for store in (self._hparams, self._hparams_initial):
            for key in list(store):
                store[key] = _plain(batch_sections.get(key, store[key]))

        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.optimizer_config = optimizer
        self.scheduler_config = scheduler
        self.batch_augment_config = batch_sections
        # Built once, here (this also checks it); set_generator gives it a device generator at the first step.
        with field_prefix("model"):  # label_smoothing's one rule (augment.targets.check_smoothing), as model.*
            self._batch_augment = build_batch_augment(self.batch_augment_config, num_classes, self.label_smoothing)
        self.tta_flip = tta_flip
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        self.backbone = create_model(
            backbone,
            num_classes,
            cifar_stem=cifar_stem,
            norm=norm,
            norm_groups=norm_groups,
            norm_strict=norm_strict,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            pretrained=pretrained,
            image_size=input_size,  # linked from data.image_size (h, w); None: 32x32
        )
        # Class weights of the loss (model.class_weights): auto = inverse training-split frequency, mean 1,
        # filled in at fit start from the DataModule's train_class_counts().
        self.class_weights = class_weights
        if class_weights is not None:
            auto = class_weights == "auto"
            init = torch.ones(num_classes) if auto else torch.tensor(class_weights, dtype=torch.float)
            self.register_buffer("loss_class_weights", init / init.mean())
        adaptation = self.backbone.cifar_adaptation
        rank_zero_info(f"model.cifar_stem={cifar_stem}: {adaptation}")
        for store in (self._hparams, self._hparams_initial):  # the adaptation auto chose, for the record
            store["cifar_stem_resolved"] = adaptation.stem
        self.backbone.to(memory_format=self.memory_format)
        self.ema: ModelEmaV3 | None = None
        if ema_decay > 0:
            self.ema = ModelEmaV3(self.backbone, decay=float(ema_decay), use_warmup=ema_warmup)
            self.ema.requires_grad_(False)
            self.ema.train()  # timm leaves it in eval mode; Lightning warns about that at fit start
        if compile:
            self.backbone.compile()  # in place: state-dict keys stay those of the plain backbone

        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.train_metrics = _accuracy_metrics(num_classes)
        self.val_metrics = _accuracy_metrics(num_classes)
        self.test_metrics = _accuracy_metrics(num_classes)
        self.val_confmat = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.test_confmat = MulticlassConfusionMatrix(num_classes, validate_args=False)

        self.keep_augmented_batch = False  # AugmentedImageGrid handshake (models.callbacks)
        self.last_augmented_batch: torch.Tensor | None = None
        self.last_input_batch: torch.Tensor | None = None
        self.last_augmented_targets: torch.Tensor | None = None
        self._augment_generator: torch.Generator | None = None
        self._pending_rng_state: torch.Tensor | None = None
        self._ema_step_seen = -1
        self._sam_second_pass = False  # SAM handshake: True while SAM re-runs the step at w + e(w)
        self._sam_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----- forward and evaluation -------------------------------------------------------------

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the trained (non-EMA) backbone for x: (B, C, H, W)."""
        return self.backbone(self._prepare(x))

    @property
    def eval_model(self) -> nn.Module:
        """The network validation and test use: the EMA copy when enabled, else the backbone."""
        return self.ema.module if self.ema is not None else self.backbone

    def eval_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log-probabilities (B, K) of `eval_model`, flip-TTA averaged when `tta_flip`."""
        x = self._prepare(x)
        model = self.eval_model
        if self.tta_flip:
            return flip_tta_log_probs(model, x)
        return F.log_softmax(model(x).float(), dim=1)

    # ----- batch augmentation -----------------------------------------------------------------

    def _augment_seed(self) -> int:
        """Seed of the augmentation generator: from torch.initial_seed() (seed_everything) and the rank."""
        return (torch.initial_seed() * _SEED_MIX + self.global_rank + 1) % (2**63)

    def batch_augment(self) -> Compose:
        """The Cutout -> Mixup/CutMix -> noise pipeline, drawing from a generator on the model's device."""
        if self._augment_generator is None or self._augment_generator.device.type != self.device.type:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self._augment_seed())
            if self._pending_rng_state is not None:
                self._restore_generator(generator, self._pending_rng_state)
                self._pending_rng_state = None
            self._augment_generator = generator
            self._batch_augment.set_generator(generator)
        return self._batch_augment

    @staticmethod
    def _restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
        try:
            generator.set_state(state)
        except (RuntimeError, ValueError):  # saved on another device type: keep the fresh seed
            rank_zero_warn(
                f"batch augmentation RNG state from the checkpoint does not fit a {generator.device.type} "
                "generator; augmentation randomness restarts from the run seed"
            )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Soft targets (B, K) from the pipeline (smoothing already inside): soft cross-entropy;
        int labels (B,): cross-entropy with `label_smoothing`. With class weights w (K,) each class term is
        weighted: mean over the batch of -sum_k w_k t_k log p_k (PyTorch's cross_entropy with probability targets)."""
        smoothing = 0.0 if targets.is_floating_point() else self.label_smoothing
        if self.class_weights is None:
            return soft_target_cross_entropy(logits, targets, smoothing)
        soft = targets if targets.is_floating_point() else to_soft(targets, self.num_classes, smoothing)
        log_p = F.log_softmax(logits.float(), dim=1)
        return -(soft.float() * self.loss_class_weights * log_p).sum(1).mean()

    def on_fit_start(self) -> None:
        """model.class_weights auto: inverse frequency of the training split's labels, normalized to mean 1."""
        if self.class_weights != "auto":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        require(hasattr(datamodule, "train_class_counts"), "model.class_weights",
                "null or a list when the data has no train_class_counts()", "auto")
        counts = torch.as_tensor(datamodule.train_class_counts(), dtype=torch.float).clamp_min(1)
        weights = 1.0 / counts
        self.loss_class_weights.copy_(weights / weights.mean())

    # ----- steps --------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._sam_second_pass and self._sam_batch is not None:  # same augmented batch, no metric updates
            x, targets = self._sam_batch
            return self.loss(self.backbone(x), targets)
        x, y = batch
        x = self._prepare(x)
        inputs = x.detach().clone() if self.keep_augmented_batch else None  # ops may work in place
        augment = self.batch_augment()
        augment.set_epoch(self.current_epoch)  # mixing stops at mixing.stop_epoch
        x, targets = augment(x, y)  # soft targets (B, K), label smoothing inside
        x = self._prepare(x)
        if self.keep_augmented_batch:
            self.last_input_batch, self.last_augmented_batch = inputs, x.detach()
            self.last_augmented_targets = targets.detach()
        if self.optimizer_config.sam is not None:
            self._sam_batch = (x, targets)
        logits = self.backbone(x)
        loss = self.loss(logits, targets)
        self.train_loss.update(loss.detach(), weight=y.shape[0])
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)  # this rank's batch, no sync
        self._log_metrics("train", self.train_metrics)
        return loss

    def _log_metrics(self, stage: str, metrics: MetricCollection) -> None:
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, sync_dist=True)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        log_probs = self.eval_log_probs(x)
        loss = F.nll_loss(log_probs, y)
        loss_metric: MeanMetric = getattr(self, f"{stage}_loss")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        loss_metric.update(loss, weight=y.shape[0])
        metrics.update(log_probs, y)
        getattr(self, f"{stage}_confmat").update(log_probs.argmax(1), y)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, sync_dist=True)
        self._log_metrics(stage, metrics)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities (B, K) of `eval_model` (EMA, flip TTA as configured)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.eval_log_probs(x).exp()

    def on_validation_epoch_start(self) -> None:
        self.val_confmat.reset()

    def on_test_epoch_start(self) -> None:
        self.test_confmat.reset()

    # ----- EMA ----------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._ema_step_seen = self.global_step  # after a resume: the restored step
        if self.ema is not None:  # timm's stochastic-rounding generator was made on the init device
            generator = getattr(self.ema, "_sr_generator", None)
            if isinstance(generator, torch.Generator) and generator.device.type != self.device.type:
                self.ema._sr_generator = torch.Generator(device=self.device).manual_seed(
                    self.ema.stochastic_rounding_seed
                )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA once per optimizer step (skips accumulation micro-batches)."""
        if self.ema is None or self.global_step == self._ema_step_seen:
            return
        self._ema_step_seen = self.global_step
        self.ema.update(self.backbone, step=self.global_step)

    # ----- optimizer ----------------------------------------------------------------------------

    def _steps_per_epoch(self, total_steps: float) -> float:
        trainer = self.trainer
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            return float(math.ceil(batches / trainer.accumulate_grad_batches))
        if math.isfinite(total_steps) and trainer.max_epochs and trainer.max_epochs > 0:
            return total_steps / trainer.max_epochs
        return 1.0  # unknown epoch length: epochs in the schedule count as steps

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optimizer_config
        groups = param_groups(self.backbone, cfg.weight_decay, cfg.exclude_norm_and_bias)
        optimizer = build_optimizer(groups, cfg)
        if isinstance(optimizer, SAM):
            self._check_sam_trainer()
            optimizer.second_pass = self._sam_second_pass_context
        total_steps = self.trainer.estimated_stepping_batches
        scheduler = build_scheduler(optimizer, self.scheduler_config, total_steps, self._steps_per_epoch(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _check_sam_trainer(self) -> None:
        trainer = self.trainer
        require(trainer.accumulate_grad_batches == 1, "trainer.accumulate_grad_batches",
                "1 with model.optimizer.sam (SAM would re-run only the last micro-batch)",
                trainer.accumulate_grad_batches)
        require(trainer.precision != "16-mixed", "trainer.precision",
                "32-true, bf16-mixed or bf16-true with model.optimizer.sam (the 16-mixed gradient scaler "
                "steps without a closure)", trainer.precision)

    @contextmanager
    def _sam_second_pass_context(self) -> Iterator[None]:
        """Around SAM's second closure call: flag it for `training_step`, keep BatchNorm statistics."""
        self._sam_second_pass = True
        try:
            with preserve_bn_stats(self.backbone):
                yield
        finally:
            self._sam_second_pass = False
            self._sam_batch = None

    # ----- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._augment_generator is not None:
            checkpoint[RNG_STATE_KEY] = self._augment_generator.get_state()
        elif self._pending_rng_state is not None:
            checkpoint[RNG_STATE_KEY] = self._pending_rng_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RNG_STATE_KEY)
        if state is None:
            return
        self._pending_rng_state = state.cpu()
        self._augment_generator = None  # remade (with this state) at the next training step
