"""Checks that run before any fit work: the Trainer and callback settings this CLI passes through, settings
that are legal but would make a run or its report meaningless, and the run folder (never overwritten).

Every failure is one :class:`augment.checks.CheckError` line ``<key> must be <rule>, got <value>``.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.connector import _PRECISION_INPUT

from augment.checks import CheckError, check_bool, check_choice, check_int, check_real, is_int, is_real, require
from augment.erasing import hole_side
from models.classifier import ACCURACY_METRICS

__all__ = [
    "LOGGED_METRICS",
    "check_batch_statistics",
    "check_config_files",
    "check_forward",
    "check_meaningful",
    "check_settings",
]

# What CifarClassifier logs at epoch level (the names a ModelCheckpoint / EarlyStopping may monitor).
LOGGED_METRICS = tuple(f"{stage}/{name}" for stage in ("val", "train") for name in (*ACCURACY_METRICS, "loss"))


def _literal_values(hint: Any) -> tuple[Any, ...]:
    """Every value of a (nested) ``Literal`` / ``Union`` of literals, as Lightning annotates its choices."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return args
    return tuple(value for arg in args for value in _literal_values(arg))


PRECISIONS = _literal_values(_PRECISION_INPUT)  # Lightning's own list: it cannot drift


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
    # label smoothing: one rule, augment.targets.check_smoothing, applied where the batch pipeline is built
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


def check_batch_statistics(backbone: Any, batch_size: int, train_size: int, world_size: int = 1) -> None:
    """BatchNorm cannot train on a batch of one image (it has no batch statistics): refuse before fit.

    The smallest training batch a rank sees is ``batch_size``, or the whole per-rank split when that is
    smaller (the training loaders drop a last partial batch only when a full one exists).
    """
    from torch import nn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        return
    per_rank = -(-train_size // max(world_size, 1))
    smallest = min(batch_size, per_rank)
    if smallest < 2:
        if batch_size < 2:
            rule = ">= 2 with BatchNorm (one image per batch has no batch statistics; or set model.norm to group, "
            rule += "layer or instance)"
            raise CheckError("data.batch_size", rule, batch_size)
        rule = f"a training split of >= 2 images per process with BatchNorm (this one has {train_size} for "
        rule += f"{world_size} process(es))"
        raise CheckError("data.val_size", rule, train_size)


# Untrusted YAML: aliases may expand a small file into an enormous tree ("billion laughs").
MAX_CONFIG_NODES = 100_000


def _expanded_nodes(node: Any, memo: dict[int, int]) -> int:
    """Nodes of the YAML tree with every alias expanded, counted without expanding it (memoised)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive alias counts once instead of looping
        value = node.value if isinstance(node.value, list) else []
        children = [part for item in value for part in (item if isinstance(item, tuple) else (item,))]
        memo[key] = 1 + sum(_expanded_nodes(child, memo) for child in children)
    return memo[key]


def _config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def check_config_files(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config FILE`` checked (and ``~`` expanded): a YAML mapping, small once expanded.

    An empty, unreadable, malformed or non-mapping file is one line naming it, before anything is parsed.
    """
    import os

    import yaml

    out = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            out[i + 1] = os.path.expanduser(argv[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + os.path.expanduser(arg.split("=", 1)[1])
    for path in _config_paths(out):
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"--config must be an existing YAML file, got {path!r} (it does not exist)")
        try:
            text = file.read_text()
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--config {path} cannot be read: {err.__class__.__name__}: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--config {path} is not valid YAML (error parsing config{where}: {problem})") from None
        if node is None:
            raise ValueError(f"--config {path} is empty: it must be a YAML mapping of settings (see configs/)")
        if not isinstance(node, yaml.MappingNode):
            kind = {yaml.SequenceNode: "a list", yaml.ScalarNode: "a single value"}.get(type(node), "not a mapping")
            raise ValueError(f"--config {path} must be a YAML mapping of settings (see configs/), got {kind}")
        if _expanded_nodes(node, {}) > MAX_CONFIG_NODES:
            raise ValueError(
                f"--config {path} expands to more than {MAX_CONFIG_NODES} values through YAML aliases: refused"
            )
    return out
