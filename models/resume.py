"""Resuming from ``ckpt_path``: the checkpoint is read once, before fit, and checked against this run.

A checkpoint that cannot continue (not a file, truncated, not Lightning's, weights of another model, an
optimizer state of another optimizer or parameter grouping) is one line naming ``ckpt_path``, the setting
and both values. Settings that change safely on resume (epochs, schedule length, logging, augmentation
strengths) are not compared.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from augment.checks import CheckError
from models.optim import OptimizerConfig, optimizer_class, param_groups

__all__ = ["CKPT_ALIASES", "is_local_checkpoint", "read_checkpoint", "check_resumable", "continue_checkpoint_dir"]

CKPT_ALIASES = ("last", "best", "hpc", "registry")
# Model settings whose change makes the saved weights or optimizer state meaningless for this run.
FIXED_MODEL_KEYS = ("backbone", "num_classes", "cifar_stem_resolved", "norm", "norm_groups")


def is_local_checkpoint(ckpt_path: Any) -> bool:
    """A path to a local file, not None, a Lightning alias (last, best, ...) or a URL."""
    return ckpt_path is not None and ckpt_path not in CKPT_ALIASES and "://" not in str(ckpt_path)


def read_checkpoint(ckpt_path: Any) -> dict[str, Any] | None:
    """The checkpoint at a local ``ckpt_path`` (memory-mapped), or None for no path, an alias or a URL."""
    if not is_local_checkpoint(ckpt_path):
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckError("ckpt_path", "an existing checkpoint file", str(ckpt_path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=zipfile.is_zipfile(path))
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"ckpt_path must be a complete torch checkpoint, got {str(ckpt_path)!r} ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckError("ckpt_path", "a Lightning checkpoint with a state_dict", str(ckpt_path))
    return checkpoint


def _check_weights(ckpt_path: Any, state: Mapping[str, Any], model: torch.nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise ValueError(
            f"ckpt_path must hold weights of this model config, got {str(ckpt_path)!r}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} reshaped tensors (e.g. {first!r}); "
            "resume with the config that wrote the checkpoint"
        )


def _differs(ckpt_path: Any, key: str, saved: Any, now: Any, why: str) -> ValueError:
    return ValueError(
        f"ckpt_path {str(ckpt_path)!r} was saved with {key}={saved!r} but this run has {now!r} ({why}); "
        f"resume with {key} {saved}, or start a new run without ckpt_path"
    )


def _check_settings(ckpt_path: Any, checkpoint: Mapping[str, Any], model: Any) -> None:
    saved = checkpoint.get("hyper_parameters") or {}
    now = model.hparams
    for key in FIXED_MODEL_KEYS:
        if key in saved and key in now and saved[key] != now[key]:
            raise _differs(
                ckpt_path, f"model.{key}", saved[key], now[key], "the saved weights belong to another network"
            )
    saved_opt = OptimizerConfig(**saved["optimizer"]) if "optimizer" in saved else None
    if saved_opt is None:
        return
    now_opt = model.optimizer_config
    if optimizer_class(saved_opt.name) is not optimizer_class(now_opt.name):
        why = (
            f"a {optimizer_class(saved_opt.name).__name__} state cannot drive "
            f"{optimizer_class(now_opt.name).__name__}"
        )
        raise _differs(ckpt_path, "model.optimizer.name", saved_opt.name, now_opt.name, why)
    if (saved_opt.sam is None) != (now_opt.sam is None):
        raise _differs(ckpt_path, "model.optimizer.sam", saved_opt.sam, now_opt.sam, "SAM wraps the optimizer state")
    states = checkpoint.get("optimizer_states") or []
    if states:
        saved_groups = len(states[0].get("param_groups", []))
        groups = len(param_groups(model.backbone, now_opt.weight_decay, now_opt.exclude_norm_and_bias))
        if saved_groups != groups:
            key = "model.optimizer.exclude_norm_and_bias"
            if saved_opt.exclude_norm_and_bias == now_opt.exclude_norm_and_bias:
                key = "model.optimizer.weight_decay"
            old, new = (getattr(cfg, key.rsplit(".", 1)[1]) for cfg in (saved_opt, now_opt))
            why = f"{saved_groups} parameter groups were saved, this run builds {groups}"
            raise _differs(ckpt_path, key, old, new, why)


def check_resumable(ckpt_path: Any, checkpoint: Mapping[str, Any] | None, model: Any) -> None:
    """One-line ValueError unless ``checkpoint`` (read by :func:`read_checkpoint`) can continue ``model``'s run."""
    if checkpoint is None:
        return
    _check_weights(ckpt_path, checkpoint["state_dict"], model)
    _check_settings(ckpt_path, checkpoint, model)


def continue_checkpoint_dir(trainer: Any, ckpt_path: Any, checkpoint: Mapping[str, Any] | None) -> None:
    """Resuming from a file a ModelCheckpoint wrote: keep saving checkpoints in that folder.

    Lightning restores a ModelCheckpoint's best score and top-k only when its folder is unchanged; a
    resumed run logs to a new TensorBoard version, so without this the best checkpoint would be picked
    among the resumed epochs only.
    """
    if checkpoint is None:
        return
    folder = Path(ckpt_path).resolve().parent
    states = checkpoint.get("callbacks", {})
    dirs = {state.get("dirpath") for state in states.values() if isinstance(state, dict)}
    if any(d and Path(d).resolve() == folder for d in dirs):
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(folder)
