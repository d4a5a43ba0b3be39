"""Resuming from ``ckpt_path``: the checkpoint is read once, before fit, and checked against this run.

A checkpoint that cannot continue (not a file, truncated, not Lightning's, weights of another model, an
optimizer state of another optimizer or parameter grouping) is one line naming ``ckpt_path``, the setting
and both values. Settings that change safely on resume (epochs, schedule length, logging, augmentation
strengths) are not compared.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from augment.checks import CheckError
from models.optim import OptimizerConfig, optimizer_class, param_groups

__all__ = [
    "CKPT_ALIASES",
    "check_resumable",
    "continue_checkpoint_dir",
    "is_local_checkpoint",
    "load_checkpoint_file",
    "local_path",
    "read_checkpoint",
]

CKPT_ALIASES = ("last", "best", "hpc", "registry")
# Model settings whose change makes the saved weights or optimizer state meaningless for this run.
FIXED_MODEL_KEYS = ("backbone", "num_classes", "cifar_stem_resolved", "norm", "norm_groups")
# Data settings that decide which images are trained on and which are validated on (and so what the
# checkpoint's metrics and best-checkpoint choice mean); a resume must keep them.
FIXED_DATA_KEYS = (
    "dataset", "val_size", "num_folds", "fold", "bootstrap", "train_subset", "seed",
    "image_size", "train_csv", "id_column", "label_column",
)


def local_path(path: Any) -> Any:
    """A user's path as the shell means it: ``~`` expanded, ``file://`` URLs turned into local paths."""
    if not isinstance(path, str):
        return path
    if path.startswith("file://"):
        parsed = urlparse(path)
        path = unquote(parsed.path) if parsed.netloc in ("", "localhost") else path
    return os.path.expanduser(path) if path.startswith("~") else path


def is_local_checkpoint(ckpt_path: Any) -> bool:
    """A path to a local file, not None, a Lightning alias (last, best, ...) or a URL."""
    return ckpt_path is not None and ckpt_path not in CKPT_ALIASES and "://" not in str(ckpt_path)


def load_checkpoint_file(path: str | os.PathLike, key: str = "ckpt_path", mmap: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint file read as data only (``weights_only=True``: a pickle cannot run code).

    Anything else (missing, truncated, not torch's, a pickle that needs code, no ``state_dict``) is one
    line naming ``key`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckError(key, "an existing checkpoint file", str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise ValueError(
            f"{key} must be a checkpoint that holds only tensors and plain data, got {str(path)!r} "
            "(it asks to run code when loaded, so it is refused unread)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, TypeError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{key} must be a complete torch checkpoint, got {str(path)!r} ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckError(key, "a Lightning checkpoint with a state_dict", str(path))
    return checkpoint


def read_checkpoint(ckpt_path: Any) -> dict[str, Any] | None:
    """The checkpoint at a local ``ckpt_path`` (memory-mapped), or None for no path, an alias or a URL."""
    if not is_local_checkpoint(ckpt_path):
        return None
    return load_checkpoint_file(ckpt_path)


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


def _check_data(ckpt_path: Any, checkpoint: Mapping[str, Any], datamodule: Any) -> None:
    """The validation split (and the data it is carved from) must be the one the checkpoint was trained with."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    now = getattr(datamodule, "hparams", None) or {}
    for key in FIXED_DATA_KEYS:
        if key in saved and key in now and saved[key] != now[key]:
            why = "the held-out validation split would change, so images already trained on would be validated on"
            raise _differs(ckpt_path, f"data.{key}", saved[key], now[key], why)


def check_resumable(ckpt_path: Any, checkpoint: Mapping[str, Any] | None, model: Any, datamodule: Any = None) -> None:
    """One-line ValueError unless ``checkpoint`` (read by :func:`read_checkpoint`) can continue ``model``'s run."""
    if checkpoint is None:
        return
    _check_weights(ckpt_path, checkpoint["state_dict"], model)
    _check_settings(ckpt_path, checkpoint, model)
    if datamodule is not None:
        _check_data(ckpt_path, checkpoint, datamodule)


def continue_checkpoint_dir(trainer: Any, ckpt_path: Any, checkpoint: Mapping[str, Any] | None) -> bool:
    """Continuing a run from its latest checkpoint (``last.ckpt``): keep saving checkpoints in that folder.

    Returns True then.

    Lightning restores a ModelCheckpoint's best score and top-k only when its folder is unchanged; a
    resumed run logs to a new TensorBoard version, so without this the best checkpoint would be picked
    among the resumed epochs only. Any older checkpoint (a best-* file of a finished run) or one moved
    out of its run's folder is a branch: its run is left as it is and this run writes a new folder.
    """
    if checkpoint is None:
        return False
    from models.run.folder import is_latest_checkpoint  # run_folder imports nothing of this module's

    path = Path(ckpt_path).resolve()
    folder = path.parent
    states = checkpoint.get("callbacks", {})
    dirs = {state.get("dirpath") for state in states.values() if isinstance(state, dict)}
    step = int(checkpoint.get("global_step", -1))
    if not is_latest_checkpoint(path, step) or not any(d and Path(d).resolve() == folder for d in dirs):
        print(f"ckpt_path {ckpt_path} is not the latest checkpoint of its run: this run branches from it into a "
              "new run folder and leaves that run as it is")
        return False
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(folder)
    return True
