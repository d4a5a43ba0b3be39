"""Training speed: a hand-written PyTorch loop (the anchor) vs the project's Lightning path, same model.

Both train the same timm backbone (CIFAR stem, `models.backbones.create_model`) with SGD-Nesterov,
a per-step one-cycle schedule, label smoothing, bf16 autocast on CUDA and channels_last, from uint8
images that live on the device with per-sample random crop (reflect pad 4) + flip done there:

- plain: this file's loop. One `index_select` per batch gathers crop + flip from the uint8 (N, H, W, C)
  store (reflection folded into the index), one fused multiply-add normalizes; no host sync per step.
- lightning: `models.cli.CifarCLI` (the objects train.py builds: CifarClassifier, CIFARDataModule with
  `loader="device"`, the same callbacks, TensorBoard logger), no validation split, progress bar off,
  checkpointing off and on.
- `--mix on`: both apply the project's per-sample Mixup/CutMix switch (`augment.pipeline`), so the
  ratio still isolates framework overhead.
- `--sam`: one more Lightning run with SAM (`model.optimizer.sam`, rho 0.05) around the same optimizer;
  a line under the table gives its s/epoch against the plain Lightning run of the same invocation.

Runs are in one process (cudnn autotune is paid once, in the first run's first epoch). The first epoch
of every run is reported apart and left out of the steady s/epoch mean. Epochs are timed in wall time
after a device sync on CUDA, in this process's CPU time on CPU (a shared machine; one torch thread).
Peak memory is `torch.cuda.max_memory_allocated` per run (reset between runs). One markdown table
comes last. `--profile` instead counts torch ops per step and tensor-to-host reads per epoch of both
loops (`bench.host_sync.HostSyncAudit`); see docs/performance.md.

    python -m bench.train_speed --device cuda --data-root data/cifar10     # GPU: resnet18, bf16, batch 512
    python -m bench.train_speed --device cpu --repeats 3                    # CPU: test_resnet, 2048 images
    python -m bench.train_speed --device cpu --subset 512 --batch-size 64 --profile
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from augment.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from augment.data.splits import stratified_subset
from augment.pipeline import build_batch_augment
from bench.host_sync import HostSyncAudit, epoch_window, profile_tables
from models.backbones import create_model

__all__ = [
    "Settings",
    "RunResult",
    "MIX_CONFIG",
    "synthetic_cifar",
    "load_cifar10_train",
    "crop_flip_normalize",
    "PlainLoop",
    "train_plain",
    "train_lightning",
    "device_dataset_bytes",
    "write_imagefolder",
    "train_subset",
    "profile_steps",
    "merge_repeats",
    "markdown_table",
    "sam_cost_lines",
    "main",
]

NUM_CLASSES = 10
SAM_CONFIG = {"rho": 0.05, "adaptive": False}
MIX_CONFIG = {
    "mixup": {"alpha": 0.2},
    "cutmix": {"alpha": 1.0},
    "mixing": {"prob": 1.0, "switch_prob": 0.5, "per_sample": True},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Settings:
    """What both loops share: device, model, schedule, precision."""

    device: torch.device
    backbone: str = "resnet18"
    epochs: int = 4
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    pct_start: float = 0.25
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    clock: str = "wall"  # wall (perf_counter after a device sync) | process (this process's CPU time)

    def now(self) -> float:
        """Seconds on the run's clock; a shared CPU machine gives steadier ratios with process CPU time."""
        _sync(self.device)
        return time.process_time() if self.clock == "process" else time.perf_counter()


@dataclass
class RunResult:
    """Timings of one training run; `epoch_s[0]` is the warm-up epoch."""

    name: str
    mix: bool
    epoch_s: list[float]
    images_per_epoch: int
    final_loss: float
    peak_bytes: int | None = None
    data_bytes: int = 0
    data_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_s(self) -> float:
        return self.epoch_s[0]

    @property
    def steady_s(self) -> float:
        """Mean s/epoch without the first epoch (the first one alone if that is all there is)."""
        rest = self.epoch_s[1:] or self.epoch_s
        return statistics.mean(rest)

    @property
    def images_per_s(self) -> float:
        return self.images_per_epoch / self.steady_s


# ------------------------------------------------------------------------------------------------ data


def synthetic_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, 32, 32, 3) and int64 labels (n,) in [0, 10), CIFAR-10's shapes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n, dtype=np.int64)


def load_cifar10_train(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 train split from a torchvision folder: uint8 (50000, 32, 32, 3), int64 (50000,)."""
    from augment.data.datasets import load_dataset

    images, labels, _ = load_dataset("cifar10", root, "train")
    return images, labels


def write_imagefolder(root: Path, images: np.ndarray, labels: np.ndarray, test_per_class: int = 8) -> Path:
    """Write images as `root/{train,test}/<class>/<i>.png` (PNG, no compression) so CIFARDataModule reads them."""
    from PIL import Image

    for split, (xs, ys) in {"train": (images, labels), "test": _test_slice(images, labels, test_per_class)}.items():
        for k in range(NUM_CLASSES):
            (root / split / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(xs, ys)):
            Image.fromarray(img).save(root / split / f"class_{label}" / f"{i:05d}.png", compress_level=0)
    return root


def _test_slice(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(NUM_CLASSES)])
    return images[keep], labels[keep]


def train_subset(images: np.ndarray, labels: np.ndarray, n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The images CIFARDataModule(val_size=0, train_subset=n, seed=seed) trains on (all when n is None)."""
    if n is None or n >= len(labels):
        return images, labels
    keep = stratified_subset(labels, n, seed)
    return images[keep], labels[keep]


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
    """`models.cli.CifarCLI` objects for a train-only run: no early stopping, checkpoints last-only or off;
    `guard_every` overrides `NonFiniteLossGuard.check_every_n_steps` (how often the loss is read to the host);
    `sam` wraps the optimizer in SAM."""
    from pytorch_lightning.callbacks import Checkpoint, EarlyStopping

    from models.cli import CifarCLI, LastCheckpoint

    with unittest.mock.patch.object(sys, "argv", sys.argv[:1]):  # the config is all in args, not sys.argv
        cli = CifarCLI(_cli_args(settings, root, mix, workdir, subset, sam))
    kept = []
    for callback in cli.trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            continue  # no validation split: nothing to monitor (as models.cli.run does)
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
    """Train through `models.cli.CifarCLI` (train.py's objects); checkpoints every epoch when `checkpoint`."""
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


# ------------------------------------------------------------------------------------------------ report


def merge_repeats(runs: list[RunResult]) -> list[RunResult]:
    """One result per (name, mix), in first-seen order: the first run's warm-up epoch, then the steady
    epochs of every repeat (each repeat's own first epoch left out); peak memory is the largest seen."""
    merged: dict[tuple[str, bool], RunResult] = {}
    for run in runs:
        key = (run.name, run.mix)
        if key not in merged:
            merged[key] = dataclasses.replace(run, epoch_s=list(run.epoch_s), extra=dict(run.extra))
            continue
        into = merged[key]
        into.epoch_s += run.epoch_s[1:]
        into.final_loss = run.final_loss
        if run.peak_bytes is not None:
            into.peak_bytes = max(into.peak_bytes or 0, run.peak_bytes)
    return list(merged.values())


def _mb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def markdown_table(results: list[RunResult]) -> str:
    """One row per run; ratios against the plain run with the same mix setting."""
    anchors = {r.mix: r for r in results if r.name == "plain"}
    lines = [
        "| run | mix | first epoch s | s/epoch | img/s | time vs plain | peak MiB | mem vs plain | data on device "
        "| last-epoch loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        anchor = anchors.get(r.mix)
        t_ratio = f"{r.steady_s / anchor.steady_s:.3f}x" if anchor else "n/a"
        m_ratio = f"{r.peak_bytes / anchor.peak_bytes:.3f}x" if anchor and r.peak_bytes and anchor.peak_bytes else "n/a"
        lines.append(
            f"| {r.name} | {'on' if r.mix else 'off'} | {r.first_s:.2f} | {r.steady_s:.3f} | {r.images_per_s:,.0f} "
            f"| {t_ratio} | {_mb(r.peak_bytes)} | {m_ratio} | {r.data_note} | {r.final_loss:.3f} |"
        )
    return "\n".join(lines)


def sam_cost_lines(results: list[RunResult]) -> str:
    """'SAM step cost' lines: s/epoch of each `lightning +sam` run over the `lightning` run with the same mix."""
    base = {r.mix: r for r in results if r.name == "lightning"}
    lines = [
        f"SAM step cost (mix {'on' if r.mix else 'off'}): {r.steady_s / base[r.mix].steady_s:.2f}x the s/epoch of "
        f"the same Lightning run without SAM ({r.steady_s:.3f} vs {base[r.mix].steady_s:.3f} s)"
        for r in results
        if r.name == "lightning +sam" and r.mix in base
    ]
    return "\n\n" + "\n".join(lines) if lines else ""


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _measure(device: torch.device, train: Callable[..., RunResult], *args: Any) -> RunResult:
    """`train(*args)` with the device's peak-memory counter reset before and read after."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = train(*args)
    if device.type == "cuda":
        result.peak_bytes = torch.cuda.max_memory_allocated(device)
    print(f"  {result.name} mix={'on' if result.mix else 'off'}: epochs "
          + " ".join(f"{s:.3f}" for s in result.epoch_s) + f" s, loss {result.final_loss:.3f}", flush=True)
    return result


# ------------------------------------------------------------------------------------------------ profile


def profile_steps(settings: Settings, root: Path, images: np.ndarray, labels: np.ndarray, subset: int | None) -> str:
    """Epoch 1 of both loops under torch.profiler (op counts) and HostSyncAudit (tensor-to-host call sites)."""
    from torch.profiler import ProfilerActivity, profile

    settings = Settings(**{**settings.__dict__, "epochs": 3})
    dev = settings.device
    loop = PlainLoop(settings, torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev), mix=False)
    for _ in range(loop.steps_per_epoch):  # epoch 0: warm-up
        loop.step()
    plain_audit, light_audit = HostSyncAudit(), HostSyncAudit()
    with profile(activities=[ProfilerActivity.CPU]) as plain_prof, plain_audit:
        losses = [loop.step() for _ in range(loop.steps_per_epoch)]
        float(torch.stack(losses).mean())  # the anchor's one read per epoch
    light_prof = profile(activities=[ProfilerActivity.CPU])

    def enter() -> None:
        light_prof.__enter__()
        light_audit.__enter__()

    def exit_() -> None:
        light_audit.__exit__(None, None, None)
        light_prof.__exit__(None, None, None)

    window = epoch_window(enter, exit_)
    with tempfile.TemporaryDirectory() as tmp:
        cli = _lightning_trainer(settings, root, False, False, Path(tmp), subset, [window])
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    plain_ops = {e.key: e.count for e in plain_prof.key_averages()}
    light_ops = {e.key: e.count for e in light_prof.key_averages()}
    audits = {"plain": plain_audit, "lightning": light_audit}
    return profile_tables(plain_ops, light_ops, loop.steps_per_epoch, window.steps, audits)


# ------------------------------------------------------------------------------------------------ main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default=None, help="timm name (default resnet18 on CUDA, test_resnet on CPU)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run, the first is warm-up (default 4 / 3)")
    p.add_argument("--subset", type=int, default=None, help="train images (default all on CUDA, 2048 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 128 on CPU")
    p.add_argument("--data-root", default=None, help="CIFAR-10 torchvision folder; default synthetic uint8 data")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--clock", choices=("auto", "wall", "process"), default="auto",
                   help="auto: wall time on CUDA, this process's CPU time on CPU (steadier on a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --clock process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone in both loops")
    p.add_argument("--mix", choices=("off", "on", "both"), default="both", help="per-sample Mixup/CutMix switch")
    p.add_argument("--checkpoint", choices=("off", "on", "both"), default="both", help="Lightning checkpointing")
    p.add_argument("--repeats", type=int, default=1, help="run every loop this many times, interleaved")
    p.add_argument("--guard-every", type=int, default=None, metavar="N",
                   help="add a Lightning run whose NonFiniteLossGuard reads the loss every N steps")
    p.add_argument("--sam", action="store_true",
                   help="add a Lightning run with SAM (rho 0.05); its s/epoch vs plain Lightning is SAM's step cost")
    p.add_argument("--loops", default="plain,lightning", help="comma list of plain, lightning")
    p.add_argument("--profile", action="store_true", help="only profile one epoch of each loop: op counts, host syncs")
    p.add_argument("--max-time-ratio", type=float, default=None, help="exit 1 if lightning/plain s/epoch exceeds it")
    p.add_argument("--table-out", default=None, help="also write the markdown table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    on_gpu = device.type == "cuda"
    settings = Settings(
        device=device,
        backbone=args.backbone or ("resnet18" if on_gpu else "test_resnet"),
        epochs=args.epochs or (4 if on_gpu else 3),
        batch_size=args.batch_size or (512 if on_gpu else 128),
        bf16=args.precision == "bf16" or (args.precision == "auto" and on_gpu),
        channels_last=True,
        compile=args.compile,
        clock=("wall" if on_gpu else "process") if args.clock == "auto" else args.clock,
    )
    if settings.epochs < 1:
        raise SystemExit(f"error: --epochs must be >= 1, got {settings.epochs}")
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1, got {args.repeats}")
    saved = (torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark)
    threads = args.threads or (1 if settings.clock == "process" else None)
    if threads:  # idle OpenMP workers spin, which process CPU time would count: one thread by default
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = on_gpu
    try:
        return _run(args, settings)
    finally:  # leave the process as found (the test suite calls main in-process)
        torch.set_num_threads(saved[0])
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _run(args: argparse.Namespace, settings: Settings) -> int:
    on_gpu = settings.device.type == "cuda"
    subset = args.subset if args.subset is not None else (None if on_gpu else 2048)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        tmp_path = Path(tmp)
        if args.data_root:
            images, labels = load_cifar10_train(args.data_root)
            source, root = f"CIFAR-10 train ({args.data_root})", Path(args.data_root)
        else:  # the Lightning path reads files: write the synthetic images as an ImageFolder tree
            images, labels = synthetic_cifar(subset or 50000, settings.seed)
            source, root = "synthetic uint8", None
            if "lightning" in args.loops or args.profile:
                root = write_imagefolder(tmp_path / "data", images, labels)
        if subset is not None and subset > len(labels):
            raise SystemExit(f"error: --subset must be <= {len(labels)}, got {subset}")
        lightning_subset = subset if subset is not None and subset < len(labels) else None
        images, labels = train_subset(images, labels, lightning_subset, settings.seed)
        if args.profile:
            print(profile_steps(settings, root, images, labels, lightning_subset))
            return 0
        return _run_all(args, settings, images, labels, root, lightning_subset, tmp_path, source)


def _run_all(args: argparse.Namespace, settings: Settings, images: np.ndarray, labels: np.ndarray, root: Path | None,
             subset: int | None, tmp: Path, source: str) -> int:
    device = settings.device
    mixes = {"off": [False], "on": [True], "both": [False, True]}[args.mix]
    checkpoints = {"off": [False], "on": [True], "both": [False, True]}[args.checkpoint]
    loops = [name.strip() for name in args.loops.split(",")]
    print(f"train_speed: {_device_name(device)}, torch {torch.__version__}, {settings.backbone}, batch "
          f"{settings.batch_size}, {'bf16 autocast' if settings.bf16 else 'fp32'}, channels_last, "
          f"{'compiled, ' if settings.compile else ''}{len(images)} images ({source}), {settings.epochs} epochs/run",
          flush=True)
    runs: list[RunResult] = []
    for _ in range(args.repeats):  # repeats interleave the loops, so slow phases of a shared machine hit all
        for mix in mixes:
            if "plain" in loops:
                runs.append(_measure(device, train_plain, settings, images, labels, mix))
            if "lightning" in loops:
                for checkpoint in checkpoints if not mix else [False]:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(_measure(device, train_lightning, settings, root, mix, checkpoint, work, subset))
                if args.guard_every and not mix:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(
                        _measure(device, train_lightning, settings, root, mix, False, work, subset, args.guard_every)
                    )
                if args.sam:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(_measure(device, train_lightning, settings, root, mix, False, work, subset, None, True))
    results = merge_repeats(runs)
    table = markdown_table(results) + sam_cost_lines(results)
    header = (f"\n## train_speed on {_device_name(device)}\n\n{settings.backbone}, batch {settings.batch_size}, "
              f"{'bf16 autocast' if settings.bf16 else 'fp32'}, channels_last, {len(images)} train images "
              f"({source}), {settings.epochs} epochs per run x {args.repeats}; s/epoch = mean without each run's "
              f"first epoch, {'wall time' if settings.clock == 'wall' else 'process CPU time'}; "
              f"torch {torch.__version__}\n")
    print(header)
    print(table, flush=True)
    if args.table_out:
        Path(args.table_out).write_text(header + "\n" + table + "\n")
    status = 0
    for r in results:
        if r.name.startswith("lightning") and r.extra.get("float_data_bytes"):
            print(f"FAIL: {r.name} keeps {r.extra['float_data_bytes'] / 1e6:.1f} MB of float images on the device")
            status = 1
    if args.max_time_ratio is not None:
        anchors = {r.mix: r for r in results if r.name == "plain"}
        for r in results:
            ratio = r.steady_s / anchors[r.mix].steady_s if r.mix in anchors else 0.0
            plain_lightning = r.name.startswith("lightning") and "+ckpt" not in r.name and "+sam" not in r.name
            if plain_lightning and ratio > args.max_time_ratio:
                print(f"FAIL: {r.name} mix={r.mix} takes {ratio:.3f}x the plain loop's time (> {args.max_time_ratio})")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
