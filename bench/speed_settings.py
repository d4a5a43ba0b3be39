"""Settings, results and data setup of bench/train_speed.py: what both training loops share.

`Settings` holds the device, model, schedule and precision both loops use and the clock epochs are timed on;
`RunResult` the timings of one run. The data helpers give CIFAR-10-shaped uint8 images (synthetic or the
real train split), write them as an ImageFolder tree for the Lightning path, and pick the stratified
subset `CIFARDataModule` trains on.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augment.data.splits import stratified_subset

__all__ = [
    "NUM_CLASSES",
    "SAM_CONFIG",
    "MIX_CONFIG",
    "Settings",
    "RunResult",
    "synthetic_cifar",
    "load_cifar10_train",
    "write_imagefolder",
    "train_subset",
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
