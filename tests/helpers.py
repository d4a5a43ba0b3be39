"""Shared test helpers (imported by test modules as `from helpers import ...`).

- `make_imagefolder(root, ...)`: writes `root/{train,test}/<class>/<i>.png`, 32x32 RGB, where each class
  has its own colour and stripe orientation (plus pixel noise), so even a tiny CNN learns it in a few steps.
- `tiny_args(root, workdir, ...)`: the `models.run.cli.run` argument list of a seconds-long CPU run.
- `run_cli(args)` / `main_cli(args)`: `models.run.cli.run(args)` / `models.run.cli.main(args)`.
- `read_tensorboard(log_dir)`, `checkpoint_test_loss(...)`, `subprocess_env()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Class colours (RGB) of the synthetic data; stripes alternate horizontal / vertical with the class index.
CLASS_COLOURS = np.array(
    [[220, 40, 40], [40, 200, 40], [40, 60, 220], [230, 210, 40], [200, 40, 200], [40, 200, 210]], dtype=np.int16
)


def synthetic_images(num_classes: int, per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, size, size, 3) and labels (N,): class colour, class-oriented stripes, noise."""
    if not 2 <= num_classes <= len(CLASS_COLOURS):
        raise ValueError(f"num_classes must be in [2, {len(CLASS_COLOURS)}], got {num_classes}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    coords = np.arange(size)
    stripes_h = ((coords[:, None] // 4) % 2).repeat(size, axis=1)  # (H, W) horizontal bands
    stripes = np.stack([stripes_h, stripes_h.T])  # (2, H, W)
    pattern = stripes[labels % 2][..., None]  # (N, H, W, 1)
    colour = CLASS_COLOURS[labels][:, None, None, :]  # (N, 1, 1, 3)
    images = colour * (0.55 + 0.45 * pattern) + rng.normal(0.0, 12.0, (len(labels), size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def make_imagefolder(
    root: Path, num_classes: int = 4, train_per_class: int = 24, test_per_class: int = 8, seed: int = 0
) -> Path:
    """Write a `root/{train,test}/class_<k>/<i>.png` tree of synthetic 32x32 images; return root."""
    from PIL import Image

    for split, per_class, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        images, labels = synthetic_images(num_classes, per_class, split_seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def tiny_args(root: Path, workdir: Path, *extra: str, max_epochs: int = 2, name: str = "tiny") -> list[str]:
    """`models.run.cli.run` arguments for a fast CPU run on the ImageFolder at `root`, logging under `workdir`.

    timm `test_resnet` (CIFAR stem), fp32, GPU-style loader on the CPU, 24 validation images, batch 16,
    no progress bar; `extra` arguments come last and override these.
    """
    return [
        "--seed_everything", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        f"--trainer.max_epochs={max_epochs}",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(workdir),
        "--trainer.logger.class_path", "pytorch_lightning.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(workdir),
        "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.default_hp_metric", "false",
        "--model.backbone", "test_resnet",
        "--model.cifar_stem", "true",
        "--model.optimizer.lr", "0.05",
        "--data.dataset", "imagefolder",
        "--data.root", str(root),
        "--data.val_size", "24",
        "--data.batch_size", "16",
        "--data.loader", "device",
        "--data.num_workers", "0",
        *extra,
    ]


def run_cli(args: list[str] | dict) -> dict[str, Any]:
    """`models.run.cli.run(args)`: only `args` is read (the CLI ignores pytest's own sys.argv)."""
    from models.run.cli import run

    return run(args)


def main_cli(args: list[str]) -> int:
    """`models.run.cli.main(args)`: the exit code of train.py for these arguments."""
    from models.run.cli import main

    return main(args)


def subprocess_env() -> dict[str, str]:
    """Environment for `python train.py` subprocesses: repo importable, one OpenMP thread."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("PYTHONWARNINGS", None)
    return env


def read_tensorboard(log_dir: str | Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """All event files of a run: ({scalar tag: [(step, value), ...]}, {image tag: [step, ...]})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


def checkpoint_test_loss(checkpoint: str | Path, root: Path) -> tuple[float, float]:
    """(mean NLL, accuracy) of a checkpoint's eval model on the test split of the ImageFolder at `root`."""
    import torch
    import torch.nn.functional as F

    from augment.data import CIFARDataModule
    from models.classifier import CifarClassifier

    model = CifarClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    data = CIFARDataModule(dataset="imagefolder", root=str(root), val_size=24, batch_size=16, loader="device")
    data.setup("test")
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in data.test_dataloader():
            log_probs = model.eval_log_probs(x)
            nll += F.nll_loss(log_probs, y, reduction="sum").item()
            correct += (log_probs.argmax(1) == y).sum().item()
            count += y.numel()
    return nll / count, correct / count
