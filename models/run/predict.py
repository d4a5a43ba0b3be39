"""Ensemble prediction from trained runs: members resolved from run / study folders, softmax averaged over
members and test-time views.

- A member is a checkpoint file, a run folder (its selected checkpoint, see `run_checkpoint`) or a folder
  of runs (a k-fold or bagging study: every run folder below it, sorted by path).
- Every checkpoint is read with ``torch.load(weights_only=True)``: a checkpoint is data, a pickle that asks
  to run code is refused unread (`models.run.resume.load_checkpoint_file`).
- The evaluated network is the classifier's `eval_model`: the EMA copy when the run used EMA.
- Inputs are uint8 (N, H, W, 3) at the members' image size, normalized with each member's stored mean/std
  exactly as its validation loader did (`augment.crop.to_normalized_float`).
- Probabilities: mean over members and views of softmax(logits) (views: `none` = the image, `flip` = the
  image and its horizontal mirror).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from augment.checks import CheckError
from augment.crop import to_normalized_float
from models.run.resume import load_checkpoint_file

__all__ = [
    "TTA_VIEWS",
    "Member",
    "checkpoint_facts",
    "run_checkpoint",
    "resolve_members",
    "load_member",
    "load_members",
    "check_members_agree",
    "eval_network",
    "views",
    "predict_probs",
]

TTA_VIEWS = {"none": 1, "flip": 2}
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


@dataclass
class Member:
    """One trained network ready to predict: its evaluated network (EMA if used) and the data facts it needs."""

    path: Path
    network: nn.Module
    class_names: list[Any]
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ema: bool
    channels_last: bool = False


# ----------------------------------------------------------------------------------------------------------
# Which checkpoints


def _selected_by_last(files: list[Path], last: Path) -> Path | None:
    """The best-* file that ``last.ckpt``'s monitored checkpoint callback names as its best model."""
    state = load_checkpoint_file(last, key="--members").get("callbacks") or {}
    names = {f.name: f for f in files}
    for key, value in state.items():
        if str(key).startswith("RunCheckpoint") and isinstance(value, dict):
            best = Path(str(value.get("best_model_path") or "")).name
            if best in names:
                return names[best]
    return None


def run_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a run folder's run selected and tested, or None when the folder holds no checkpoint.

    ``folder`` is a run folder (with ``checkpoints/``) or its checkpoint folder. The one ``best-*.ckpt``
    (chosen on validation; with several, the one ``last.ckpt`` names as best); without a best file (a run
    without validation) its one other epoch checkpoint, else ``last.ckpt``.
    """
    folder = Path(folder)
    ckpt_dir = folder / CHECKPOINT_DIR if (folder / CHECKPOINT_DIR).is_dir() else folder
    files = sorted(p for p in ckpt_dir.glob("*.ckpt") if p.is_file())
    if not files:
        return None
    best = [p for p in files if p.name.startswith("best")]
    if len(best) == 1:
        return best[0]
    last = ckpt_dir / LAST
    if len(best) > 1:
        chosen = _selected_by_last(best, last) if last.is_file() else None
        if chosen is None:
            names = ", ".join(p.name for p in best)
            raise CheckError("--members", f"one checkpoint file of {ckpt_dir} (it holds {names})", str(folder))
        return chosen
    others = [p for p in files if p.name != LAST]
    if len(others) == 1:
        return others[0]
    if last.is_file():
        return last
    names = ", ".join(p.name for p in files)
    raise CheckError("--members", f"one checkpoint file of {ckpt_dir} (it holds {names})", str(folder))


def _run_folders_below(folder: Path) -> list[Path]:
    """Every run folder below ``folder``: a folder whose ``checkpoints/`` holds a checkpoint file."""
    found = {p.parent.parent for p in folder.rglob(f"{CHECKPOINT_DIR}/*.ckpt") if p.is_file()}
    return sorted(found)


def resolve_members(paths: Sequence[str | Path], field: str = "--members") -> list[Path]:
    """Checkpoint files of the given members: files as given, run folders -> their selected checkpoint,
    study folders -> the selected checkpoint of every run folder below (sorted)."""
    if not paths:
        raise CheckError(field, "one or more run folders or checkpoint files", "nothing")
    chosen: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            chosen.append(path)
            continue
        if not path.is_dir():
            raise CheckError(field, "existing run folders or checkpoint files", str(raw))
        selected = run_checkpoint(path)
        if selected is not None:
            chosen.append(selected)
            continue
        runs = _run_folders_below(path)
        if not runs:
            raise CheckError(field, "a run folder, a study folder or a checkpoint file; no checkpoint below",
                             str(raw))
        chosen.extend(p for p in (run_checkpoint(r) for r in runs) if p is not None)
    seen: set[Path] = set()
    for path in chosen:
        if path.resolve() in seen:
            raise CheckError(field, "each checkpoint once", f"{path} twice")
        seen.add(path.resolve())
    return chosen


# ----------------------------------------------------------------------------------------------------------
# What a checkpoint holds


def checkpoint_facts(checkpoint: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """class_names (training label order), image_size (h, w), mean and std ([0, 1] units) of a checkpoint,
    as the run recorded them (`augment.data.images.checkpoint_data_info`).

    Checkpoints that predate recorded facts: CIFAR-10/100 (their constants, 32x32) and an ImageFolder
    whose training folder is still there (read from it).
    """
    from augment.data.images import checkpoint_data_info

    facts = dict(zip(("class_names", "image_size", "mean", "std"), checkpoint_data_info(checkpoint)))
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if any(v is None for v in facts.values()) and data.get("dataset") is not None:
        from augment.data.datasets import dataset_classes, dataset_stats

        dataset, root = data["dataset"], data.get("root", "data")
        try:
            if facts["class_names"] is None:
                facts["class_names"] = dataset_classes(dataset, root)
            if facts["mean"] is None or facts["std"] is None:
                facts["mean"], facts["std"] = dataset_stats(dataset, root)
            if facts["image_size"] is None and dataset in ("cifar10", "cifar100"):
                facts["image_size"] = (32, 32)
            elif facts["image_size"] is None:
                from augment.data import load_dataset

                images = load_dataset(dataset, root, "train")[0]
                facts["image_size"] = tuple(images.shape[1:3])
        except (ValueError, FileNotFoundError, OSError):
            pass
    missing = [key for key, value in facts.items() if value is None]
    if missing:
        raise CheckError("--members", f"a checkpoint that records its {', '.join(missing)}", str(path))
    size = facts["image_size"]
    facts["image_size"] = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    facts["class_names"] = list(facts["class_names"])
    facts["mean"] = tuple(float(v) for v in facts["mean"])
    facts["std"] = tuple(float(v) for v in facts["std"])
    return facts


@contextmanager
def _quiet_info() -> Iterator[None]:
    """Lightning's rank-zero info lines (the classifier names its backbone adaptation) held back."""
    from lightning_utilities.core import rank_zero

    logger = rank_zero.log
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _classifier(checkpoint: dict[str, Any], path: Path) -> nn.Module:
    """The CifarClassifier of a checkpoint's hyperparameters with its weights (never compiled, never downloads)."""
    from models.classifier import CifarClassifier

    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "backbone" not in hparams:
        raise CheckError("--members", "checkpoints written by train.py (with the model's hyper_parameters)", str(path))
    accepted = set(inspect.signature(CifarClassifier.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    kwargs.update(compile=False, pretrained=False)
    with _quiet_info():
        model = CifarClassifier(**kwargs)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise CheckError("--members", "checkpoints whose weights fit their own model settings",
                         f"{path} ({reason})") from None
    return model


def eval_network(model: nn.Module) -> nn.Module:
    """The network a classifier evaluates with: its EMA copy when it has one, else the backbone; eval mode."""
    return model.eval_model.eval()


def load_member(path: str | Path) -> Member:
    """One member from its checkpoint file (read as data only)."""
    path = Path(path)
    checkpoint = load_checkpoint_file(path, key="--members", mmap=False)
    facts = checkpoint_facts(checkpoint, path)
    model = _classifier(checkpoint, path)
    network = eval_network(model).requires_grad_(False)
    if len(facts["class_names"]) != model.num_classes:
        raise CheckError("--members", f"checkpoints whose {model.num_classes} outputs match their class list",
                         str(path))
    return Member(path, network, facts["class_names"], facts["image_size"], facts["mean"], facts["std"],
                  ema=model.ema is not None, channels_last=bool(model.channels_last))


def check_members_agree(members: Sequence[Member]) -> None:
    """One line when members differ in class list or image size (their probabilities cannot be averaged)."""
    first = members[0]
    for other in members[1:]:
        if other.class_names != first.class_names:
            raise CheckError(
                "--members", "checkpoints trained on one class list",
                f"{first.path} ({len(first.class_names)} classes: {_short(first.class_names)}) and "
                f"{other.path} ({len(other.class_names)} classes: {_short(other.class_names)})")
        if other.image_size != first.image_size:
            raise CheckError(
                "--members", "checkpoints trained at one image size",
                f"{first.path} ({_hw(first.image_size)}) and {other.path} ({_hw(other.image_size)})")


def load_members(paths: Sequence[str | Path]) -> list[Member]:
    """resolve_members -> load_member each -> check_members_agree."""
    members = [load_member(p) for p in resolve_members(paths)]
    check_members_agree(members)
    return members


def _short(names: Sequence[Any], n: int = 4) -> str:
    shown = ", ".join(str(v) for v in names[:n])
    return shown + (", ..." if len(names) > n else "")


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ----------------------------------------------------------------------------------------------------------
# Prediction


def views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """Test-time views of a (B, C, H, W) batch: `none` -> [x], `flip` -> [x, x mirrored left-right]."""
    if tta not in TTA_VIEWS:
        raise CheckError("--tta", f"one of {', '.join(TTA_VIEWS)}", tta)
    return [x] if tta == "none" else [x, x.flip(3)]


def predict_probs(
    members: Sequence[Member],
    images: np.ndarray,
    tta: str = "none",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean softmax over members and views: images uint8 (N, H, W, 3) -> probabilities float32 (N, K).

    Members run one after another (one network on the device at a time); ``progress(n)`` is called after
    every batch with the number of images it held.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    device = torch.device(device)
    n, k = len(images), len(members[0].class_names)
    total = torch.zeros(n, k, dtype=torch.float64, device=device)
    source = torch.from_numpy(np.ascontiguousarray(images))
    for member in members:
        network = member.network.to(device)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = source[start:start + batch_size].to(device, non_blocking=True)
                x = to_normalized_float(batch, member.mean, member.std, member.channels_last, layout="nhwc")
                for view in views(x, tta):
                    total[start:start + len(batch)] += torch.softmax(network(view).float(), dim=1).double()
                if progress is not None:
                    progress(len(batch))
        member.network.to("cpu")
    total /= len(members) * TTA_VIEWS[tta]
    return total.float().cpu().numpy()


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda on a machine without one is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckError("--device", "auto or cpu on a machine without a CUDA device", device)
    if device not in ("cpu", "cuda"):
        raise CheckError("--device", "one of auto, cpu, cuda", device)
    return torch.device(device)
