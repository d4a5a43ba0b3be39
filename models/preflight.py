"""Checks that run before any fit work: the Trainer and callback settings this CLI passes through, settings
that are legal but would make a run or its report meaningless, and the run folder (never overwritten).

Every failure is one :class:`augment.checks.CheckError` line ``<key> must be <rule>, got <value>``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from augment.checks import CheckError, check_bool, check_choice, check_int, check_real, is_int, is_real, require
from augment.erasing import hole_side
from models.resume import is_local_checkpoint

__all__ = ["LOGGED_METRICS", "check_settings", "check_meaningful", "check_forward", "RunFolder"]

# What CifarClassifier logs at epoch level (the names a ModelCheckpoint / EarlyStopping may monitor).
LOGGED_METRICS = ("val/acc", "val/acc5", "val/loss", "train/acc", "train/acc5", "train/loss")
PRECISIONS = (
    "64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16",
    "16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true", 64, 32, 16,
)


def _optional(check: Any, key: str, value: Any, *args: Any, **kwargs: Any) -> None:
    if value is not None:
        check(key, value, *args, **kwargs)


def _int_or_fraction(key: str, value: Any, int_low: int) -> None:
    """An int count >= int_low or a float fraction in [0, 1] (Lightning's limit_* / val_check_interval)."""
    whole = isinstance(value, float) and value.is_integer() and value >= int_low  # YAML/CLI may hand 2 as 2.0
    ok = (is_int(value) and value >= int_low) or (isinstance(value, float) and 0.0 <= value <= 1.0) or whole
    require(ok, key, f"an int >= {int_low} or a float fraction in [0, 1]", value)


def _check_trainer(get: Any) -> None:
    _optional(check_int, "trainer.accumulate_grad_batches", get("trainer.accumulate_grad_batches"), low=1)
    _optional(check_int, "trainer.check_val_every_n_epoch", get("trainer.check_val_every_n_epoch"), low=1)
    _optional(check_int, "trainer.log_every_n_steps", get("trainer.log_every_n_steps"), low=1)
    _optional(check_int, "trainer.num_sanity_val_steps", get("trainer.num_sanity_val_steps"), low=-1)
    _optional(check_int, "trainer.min_epochs", get("trainer.min_epochs"), low=0)
    _optional(check_int, "trainer.max_epochs", get("trainer.max_epochs"), low=-1)
    _optional(check_int, "trainer.max_steps", get("trainer.max_steps"), low=-1)
    _optional(check_real, "trainer.gradient_clip_val", get("trainer.gradient_clip_val"), low=0)
    _optional(
        check_choice, "trainer.gradient_clip_algorithm", get("trainer.gradient_clip_algorithm"), ("norm", "value")
    )
    _optional(check_choice, "trainer.precision", get("trainer.precision"), PRECISIONS)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        if get(f"trainer.{key}") is not None:
            _int_or_fraction(f"trainer.{key}", get(f"trainer.{key}"), 0)
    interval = get("trainer.val_check_interval")
    if interval is not None:
        ok = (is_int(interval) and interval >= 1) or (isinstance(interval, float) and 0.0 < interval <= 1.0)
        require(ok, "trainer.val_check_interval", "an int >= 1 (batches) or a float fraction in (0, 1]", interval)
    for key in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary", "inference_mode"):
        _optional(check_bool, f"trainer.{key}", get(f"trainer.{key}"))


def _check_callbacks(get: Any) -> None:
    for section in ("checkpoint", "early_stopping"):
        monitor = get(f"{section}.monitor")
        if section == "early_stopping" or monitor is not None:
            check_choice(f"{section}.monitor", monitor, LOGGED_METRICS)
        check_choice(f"{section}.mode", get(f"{section}.mode"), ("min", "max"))
    _optional(check_int, "checkpoint.save_top_k", get("checkpoint.save_top_k"), low=-1)
    _optional(check_int, "checkpoint.every_n_epochs", get("checkpoint.every_n_epochs"), low=0)
    _optional(check_int, "checkpoint.every_n_train_steps", get("checkpoint.every_n_train_steps"), low=0)
    _optional(check_int, "early_stopping.patience", get("early_stopping.patience"), low=0)
    _optional(check_real, "early_stopping.min_delta", get("early_stopping.min_delta"))
    _optional(check_real, "weight_noise.std", get("weight_noise.std"), low=0)


def check_settings(config: Mapping[str, Any] | Any) -> None:
    """The Trainer, checkpoint, early-stopping and weight-noise keys of a parsed CLI config."""
    _check_trainer(config.get)
    _check_callbacks(config.get)


def _section(hparams: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A config section of the classifier's hyperparameters (plain dicts there); {} when absent."""
    return hparams.get(key) or {}


def check_meaningful(config: Any, hparams: Mapping[str, Any], image_size: tuple[int, int], num_classes: int) -> None:
    """Refuse settings that train nothing or erase the signal; warn about ones that likely do harm."""
    get = config.get
    if get("trainer.max_epochs") == 0:
        raise CheckError("trainer.max_epochs", ">= 1 (0 trains nothing and would test the random initial weights)", 0)
    if get("trainer.max_steps") == 0:
        raise CheckError("trainer.max_steps", "-1 (off) or >= 1 (0 trains nothing)", 0)
    limit = get("trainer.limit_train_batches")
    if limit is not None and limit == 0:
        raise CheckError("trainer.limit_train_batches", "> 0 (0 trains nothing)", limit)
    side = min(image_size)
    cutout = _section(hparams, "cutout")
    if cutout.get("n_holes", 0) > 0 and cutout.get("p", 1.0) > 0:
        hole = hole_side(cutout.get("size", 0), *image_size)
        if hole >= side:
            rule = f"< the image side {side} (a {hole}-pixel hole erases every image)"
            raise CheckError("model.cutout.size", rule, cutout.get("size"))
    if get("data.cutout_holes") and get("data.cutout_size") is not None and get("data.cutout_size") >= side:
        rule = f"< the image side {side} (a hole that size erases every image)"
        raise CheckError("data.cutout_size", rule, get("data.cutout_size"))
    smoothing = hparams.get("label_smoothing", 0.0)
    uniform = (num_classes - 1) / num_classes
    if is_real(smoothing) and smoothing >= uniform:
        rule = f"< {uniform:g} for {num_classes} classes (at {uniform:g} every target is uniform)"
        raise CheckError("model.label_smoothing", rule, smoothing)
    _warn_harmful(get, hparams, num_classes)


def _warn_harmful(get: Any, hparams: Mapping[str, Any], num_classes: int) -> None:
    optimizer = _section(hparams, "optimizer")
    name, lr = optimizer.get("name"), optimizer.get("lr")
    adaptive = name in ("adam", "adamw", "rmsprop", "adagrad")
    if is_real(lr) and ((adaptive and lr > 0.1) or lr > 10):
        warnings.warn(f"model.optimizer.lr {lr} is very large for {name}: the run will likely diverge", stacklevel=3)
    std = _section(hparams, "input_noise").get("std", 0.0)
    if is_real(std) and std > 3:
        warnings.warn(f"model.input_noise.std {std} is several times the images' own std: noise buries them",
                      stacklevel=3)
    subset = get("data.train_subset")
    if subset is not None and subset < num_classes:
        warnings.warn(f"data.train_subset {subset} is fewer images than the {num_classes} classes", stacklevel=3)


def check_forward(backbone: Any, image_size: tuple[int, int], channels: int = 3) -> None:
    """One forward of a 2-image batch of the data's size: a network that cannot take it fails now, in one line."""
    import torch

    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(2, channels, *image_size))
    except (RuntimeError, AssertionError, ValueError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        rule = f"a network that takes {image_size[0]}x{image_size[1]} images (its forward fails: {reason})"
        raise CheckError(
            "model.backbone", rule, getattr(backbone, "default_cfg", {}).get("architecture", "?")
        ) from None
    finally:
        backbone.train(was_training)


class RunFolder:
    """Where a run writes (log folder, checkpoint folder), and the rule that an earlier run is never replaced.

    A folder that already holds a run is refused unless the resumed checkpoint lies inside it (continuing
    that run) or ``overwrite`` is set (then the earlier run's files are removed first).
    """

    def __init__(self, log_dir: str | None, checkpoint_dir: str | None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def _holds_run(self) -> list[Path]:
        held = []
        if self.log_dir is not None and self.log_dir.is_dir() and any(self.log_dir.iterdir()):
            held.append(self.log_dir)
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob("*.ckpt")):
            held.append(self.checkpoint_dir)
        return held

    @staticmethod
    def _continues(ckpt_path: Any, held: list[Path]) -> bool:
        """Resuming the run in ``held``: a local checkpoint inside it, or Lightning's own alias / URL."""
        if ckpt_path is None:
            return False
        if not is_local_checkpoint(ckpt_path):
            return True
        path = Path(ckpt_path).resolve()
        return any(folder.resolve() in path.parents for folder in held)

    def claim(self, ckpt_path: Any, overwrite: bool, key: str, value: Any) -> None:
        """Refuse (CheckError naming ``key``) or clear an occupied folder; a resume of the run inside passes."""
        held = self._holds_run()
        if not held or self._continues(ckpt_path, held):
            return
        if not overwrite:
            folder = held[0]
            last = next(iter(sorted(folder.rglob("last.ckpt"))), None)
            hint = f"pass --ckpt_path {last} to continue it, " if last else ""
            rule = f"a new run folder ({folder} holds a run: {hint}or pass --overwrite true to replace it)"
            raise CheckError(key, rule, value)
        for folder in held:
            if folder == self.checkpoint_dir and folder != self.log_dir:
                for ckpt in folder.glob("*.ckpt"):
                    ckpt.unlink()
            else:
                shutil.rmtree(folder)
