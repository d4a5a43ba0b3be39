"""The two training loops bench/train_speed.py times: the hand-written PyTorch anchor and the Lightning runner.

- plain: `PlainLoop`. One `index_select` per batch gathers crop + flip from the uint8 (N, H, W, C) store
  (reflection folded into the index), one fused multiply-add normalizes; no host sync per step.
- lightning: `train_lightning` builds the `models.run.cli.CifarCLI` objects train.py builds (CifarClassifier,
  CIFARDataModule with `loader="device"`, the same callbacks, TensorBoard logger) for a train-only run and
  times each epoch with a callback; `device_dataset_bytes` finds the image tensors its data keeps on the device.
"""

from __future__ import annotations

import math
import statistics
import sys
import unittest.mock
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from augment.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from augment.pipeline import build_batch_augment
from bench.speed_settings import MIX_CONFIG, NUM_CLASSES, SAM_CONFIG, RunResult, Settings
from models.backbones import create_model

__all__ = [
    "crop_flip_normalize",
    "PlainLoop",
    "train_plain",
    "device_dataset_bytes",
    "train_lightning",
]


# ------------------------------------------------------------------------------------------------ plain loop


def _reflect(pos: torch.Tensor, size: int) -> torch.Tensor:
    """Index in [0, size) of position `pos` of a reflect-padded axis (edge pixel not repeated)."""
    pos = pos.abs()
    return torch.where(pos >= size, 2 * (size - 1) - pos, pos)


def crop_flip_normalize(
    images: torch.Tensor,
    index: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    generator: torch.Generator,
    pad: int = 4,
) -> torch.Tensor:
    """Batch `index` (B,) of uint8 `images` (N, H, W, C), randomly shifted by up to `pad` px (reflect) and
    flipped, normalized as `pixel * scale + shift` (per channel) -> float (B, C, H, W), channels_last strides.
    """
    b = index.numel()
    n, h, w, c = images.shape
    if not 0 <= pad < min(h, w):
        raise ValueError(f"pad must be in [0, {min(h, w)}) for reflect padding of {h}x{w} images, got {pad}")
    dev = images.device
    offsets = torch.randint(-pad, pad + 1, (2, b, 1), device=dev, generator=generator)
    flip = torch.randint(0, 2, (b, 1), device=dev, generator=generator, dtype=torch.bool)
    rows = _reflect(torch.arange(h, device=dev) + offsets[0], h)  # (B, H)
    cols = torch.arange(w, device=dev)
    cols = _reflect(torch.where(flip, (w - 1) - cols, cols) + offsets[1], w)  # (B, W)
    flat = (index.view(b, 1, 1) * h + rows.view(b, h, 1)) * w + cols.view(b, 1, w)  # (B, H, W) pixel ids
    pixels = images.view(n * h * w, c).index_select(0, flat.view(-1)).view(b, h, w, c)
    return torch.addcmul(shift, pixels.float(), scale).permute(0, 3, 1, 2)  # NHWC memory = channels_last


def _one_cycle(total_steps: int, pct_start: float) -> Callable[[int], float]:
    """Linear 0 -> 1 over `pct_start` of the steps, then linear 1 -> 0 (same shape as models.optim onecycle)."""
    peak = max(pct_start * total_steps, 1.0)

    def multiplier(step: int) -> float:
        if step < peak:
            return step / peak
        return max(0.0, 1.0 - (step - peak) / max(total_steps - peak, 1.0))

    return multiplier


class PlainLoop:
    """The anchor: model, SGD-Nesterov, one-cycle schedule and optional Mixup/CutMix; `step()` trains one batch."""

    def __init__(self, settings: Settings, images: torch.Tensor, labels: torch.Tensor, mix: bool) -> None:
        dev = settings.device
        self.settings, self.images, self.labels = settings, images, labels
        self.steps_per_epoch = images.shape[0] // settings.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"--subset must be >= --batch-size ({settings.batch_size}), got {images.shape[0]} images")
        torch.manual_seed(settings.seed)
        model = create_model(settings.backbone, NUM_CLASSES).to(dev)
        self.format = torch.channels_last if settings.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.format)
        self.net = torch.compile(model) if settings.compile else model
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.lr, momentum=settings.momentum, nesterov=True,
        )
        total = self.steps_per_epoch * settings.epochs
        self.schedule = LambdaLR(self.optimizer, _one_cycle(total, settings.pct_start))
        self.generator = torch.Generator(device=dev).manual_seed(settings.seed)
        self.mixer = (
            build_batch_augment(MIX_CONFIG, NUM_CLASSES, settings.label_smoothing, generator=self.generator)
            if mix else None
        )
        std = torch.tensor(CIFAR10_STD, device=dev)
        self.scale, self.shift = 1.0 / (255.0 * std), -torch.tensor(CIFAR10_MEAN, device=dev) / std
        self.perm = torch.empty(0, dtype=torch.int64, device=dev)
        self.position = 0

    def step(self) -> torch.Tensor:
        """Train one batch (a new permutation at each epoch start); returns the detached loss, no host sync."""
        s, bs = self.settings, self.settings.batch_size
        if self.position == 0:
            self.perm = torch.randperm(self.images.shape[0], device=s.device, generator=self.generator)
        idx = self.perm[self.position * bs : (self.position + 1) * bs]
        self.position = (self.position + 1) % self.steps_per_epoch
        x = crop_flip_normalize(self.images, idx, self.scale, self.shift, self.generator)
        x = x.contiguous(memory_format=self.format)
        y = self.labels[idx]
        targets = y
        if self.mixer is not None:
            x, targets = self.mixer(x, y)
            x = x.contiguous(memory_format=self.format)
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.bf16):
            logits = self.net(x)
        if self.mixer is not None:
            loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach()


def train_plain(settings: Settings, images_np: np.ndarray, labels_np: np.ndarray, mix: bool) -> RunResult:
    """Train with the hand-written loop; data is copied to the device once as uint8 (N, H, W, C)."""
    dev = settings.device
    images = torch.from_numpy(images_np).to(dev)
    labels = torch.from_numpy(labels_np).to(dev)
    loop = PlainLoop(settings, images, labels, mix)
    epoch_s: list[float] = []
    loss_sum = torch.zeros((), device=dev)
    for _ in range(settings.epochs):
        start = settings.now()
        loss_sum = torch.zeros((), device=dev)
        for _ in range(loop.steps_per_epoch):
            loss_sum += loop.step()
        epoch_s.append(settings.now() - start)
    steps = loop.steps_per_epoch
    return RunResult("plain", mix, epoch_s, steps * settings.batch_size, float(loss_sum / steps),
                     data_bytes=images.nbytes + labels.nbytes, data_note=f"uint8 {images.nbytes / 1e6:.1f} MB")


# ------------------------------------------------------------------------------------------------ Lightning


def device_dataset_bytes(obj: Any, device: torch.device, depth: int = 4) -> dict[torch.dtype, int]:
    """Bytes of 4-D image tensors on `device` reachable from `obj` (attributes, lists, dicts), by dtype."""
    found: dict[int, torch.Tensor] = {}

    def walk(value: Any, level: int) -> None:
        if isinstance(value, torch.Tensor):
            if value.device.type == device.type and value.dim() == 4:
                found[id(value)] = value
            return
        if level == 0 or isinstance(value, (str, bytes, int, float, np.ndarray, torch.nn.Module)):
            return
        if isinstance(value, dict):
            items = list(value.values())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif hasattr(value, "__dict__") and type(value).__module__.split(".")[0] in ("augment", "models", "bench"):
            items = list(vars(value).values())
        else:
            return
        for item in items:
            walk(item, level - 1)

    walk(obj, depth)
    totals: dict[torch.dtype, int] = {}
    storages: set[int] = set()
    for tensor in found.values():
        key = tensor.untyped_storage().data_ptr()
        if key in storages:
            continue
        storages.add(key)
        totals[tensor.dtype] = totals.get(tensor.dtype, 0) + tensor.untyped_storage().nbytes()
    return totals


def _epoch_clock(settings: Settings):  # a factory: keeps Lightning out of the import of this module
    import pytorch_lightning as pl

    class EpochClock(pl.Callback):
        """Wall time from each train epoch start to the next (checkpointing and callbacks included)."""

        def __init__(self) -> None:
            self.starts: list[float] = []
            self.end = 0.0
            self.images: list[int] = []
            self.data_bytes: dict[torch.dtype, int] = {}

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not self.starts:  # loaders exist now; fit's teardown frees them before trainer.fit returns
                self.data_bytes = device_dataset_bytes(trainer.datamodule, pl_module.device)
            self.starts.append(settings.now())
            self.images.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            self.images[-1] += int(batch[1].shape[0])

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.end = settings.now()

        @property
        def epoch_s(self) -> list[float]:
            bounds = [*self.starts, self.end]
            return [b - a for a, b in zip(bounds, bounds[1:])]

    return EpochClock()


def _cli_args(
    settings: Settings, root: Path, mix: bool, workdir: Path, subset: int | None, sam: bool = False
) -> dict[str, Any]:
    """The config train.py would get for the same run (no validation split, progress bar off)."""
    model: dict[str, Any] = {
        "backbone": settings.backbone,
        "cifar_stem": True,
        "label_smoothing": settings.label_smoothing,
        "optimizer": {"name": "nesterov", "lr": settings.lr, "momentum": settings.momentum,
                      "weight_decay": settings.weight_decay},
        "scheduler": {"name": "onecycle", "pct_start": settings.pct_start},
        "channels_last": settings.channels_last,
        "compile": settings.compile,
    }
    if mix:
        model.update(MIX_CONFIG)
    if sam:
        model["optimizer"]["sam"] = dict(SAM_CONFIG)
    return {
        "seed_everything": settings.seed,
        "trainer": {
            "accelerator": settings.device.type,
            "devices": 1,
            "precision": "bf16-mixed" if settings.bf16 else "32-true",
            "max_epochs": settings.epochs,
            "benchmark": settings.device.type == "cuda",
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,  # printed before the first epoch; only keeps logs short
            "default_root_dir": str(workdir),
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(workdir), "name": "train_speed", "default_hp_metric": False},
            },
        },
        "model": model,
        "data": {"dataset": "cifar10", "root": str(root), "download": False, "val_size": 0,
                 "batch_size": settings.batch_size, "loader": "device", "train_subset": subset, "seed": settings.seed,
                 "channels_last": settings.channels_last},
        "run_test": False,
    }


def _lightning_trainer(
    settings: Settings,
    root: Path,
    mix: bool,
    checkpoint: bool,
    workdir: Path,
    subset: int | None,
    extra: list[Any],
    guard_every: int | None = None,
    sam: bool = False,
) -> Any:
    """`models.run.cli.CifarCLI` objects for a train-only run: no early stopping, checkpoints last-only or off;
    `guard_every` overrides `NonFiniteLossGuard.check_every_n_steps` (how often the loss is read to the host);
    `sam` wraps the optimizer in SAM."""
    from pytorch_lightning.callbacks import Checkpoint, EarlyStopping

    from models.callbacks import LastCheckpoint
    from models.run.cli import CifarCLI

    with unittest.mock.patch.object(sys, "argv", sys.argv[:1]):  # the config is all in args, not sys.argv
        cli = CifarCLI(_cli_args(settings, root, mix, workdir, subset, sam))
    kept = []
    for callback in cli.trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            continue  # no validation split: nothing to monitor (as models.run.cli.run does)
        if isinstance(callback, Checkpoint) and (not checkpoint or not isinstance(callback, LastCheckpoint)):
            continue  # checkpointing on: only train.py's every-epoch last.ckpt (no monitored metric here)
        if guard_every is not None and hasattr(callback, "check_every_n_steps"):
            callback.check_every_n_steps = guard_every
        kept.append(callback)
    cli.trainer.callbacks = [*kept, *extra]
    cli.trainer.limit_val_batches = 0
    return cli


def train_lightning(
    settings: Settings,
    root: Path,
    mix: bool,
    checkpoint: bool,
    workdir: Path,
    subset: int | None = None,
    guard_every: int | None = None,
    sam: bool = False,
) -> RunResult:
    """Train through `models.run.cli.CifarCLI` (train.py's objects); checkpoints every epoch when `checkpoint`."""
    clock = _epoch_clock(settings)
    cli = _lightning_trainer(settings, root, mix, checkpoint, workdir, subset, [clock], guard_every, sam)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    loss = float(metrics["train/loss"]) if "train/loss" in metrics else math.nan
    name = "lightning" + (" +ckpt" if checkpoint else "") + (f" guard/{guard_every}" if guard_every else "")
    name += " +sam" if sam else ""
    by_dtype = clock.data_bytes
    note = ", ".join(f"{str(dtype).replace('torch.', '')} {nbytes / 1e6:.1f} MB" for dtype, nbytes in by_dtype.items())
    result = RunResult(name, mix, clock.epoch_s, statistics.mean(clock.images), loss,
                       data_bytes=sum(by_dtype.values()), data_note=note or "none found")
    result.extra["float_data_bytes"] = sum(n for d, n in by_dtype.items() if d.is_floating_point)
    return result
