"""Class imbalance on CIFAR-10: five classes cut to 10% of their images, balanced test accuracy with and
without ``model.class_weights: auto`` at the same budget.

    python -m bench.imbalance --cifar10 /tmp/c10 --out /tmp/imbalance [--per-class 1000 --epochs 10]

Builds a csv dataset (PNG files + train.csv) from the CIFAR-10 train split: ``per_class`` images of classes
5-9 and ``per_class // 10`` of classes 0-4 (seeded), trains the same run twice through ``models.run.cli``
(class weights off, then auto; both keep the checkpoint of the best validation balanced accuracy,
``val/bal_acc``) and prints the balanced accuracy (mean per-class recall) on the full
CIFAR-10 test split, plus the mean recall of the cut and the kept classes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from augment.data import load_dataset
from augment.data.datasets import CIFAR10_CLASSES


def build(cifar10: Path, out: Path, per_class: int, seed: int) -> Path:
    """Write the imbalanced csv dataset under ``out/data``; return its root."""
    from PIL import Image

    root = out / "data"
    if (root / "train.csv").is_file():
        return root
    images, labels, _ = load_dataset("cifar10", cifar10, "train")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[: per_class // 10 if c < 5 else per_class] for c in range(10)]
    index = np.sort(np.concatenate(keep))
    root.mkdir(parents=True, exist_ok=True)
    lines = ["id,label"]
    for i in index:
        Image.fromarray(images[i]).save(root / f"{i:05d}.png")
        lines.append(f"{i:05d},{CIFAR10_CLASSES[labels[i]]}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def balanced_accuracy(ckpt_path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Per-class recall (10,) of a checkpoint's evaluated network (as ``train.py predict`` loads it) on uint8
    (N, H, W, 3) images with CIFAR-10 labels ``labels`` (class names ``classes`` in label order)."""
    from models.run.predict import load_member, predict_probs

    member = load_member(ckpt_path)
    order = [member.class_names.index(c) for c in classes]  # sorted names -> CIFAR label order
    pred = predict_probs([member], images, batch_size=500)[:, order].argmax(1)
    return np.array([(pred[labels == c] == c).mean() for c in range(10)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", type=Path, required=True, help="torchvision CIFAR-10 folder (cifar_export.py)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/imbalance"))
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from models.run.cli import run

    root = build(args.cifar10, args.out, args.per_class, args.seed)
    test_images, test_labels, classes = load_dataset("cifar10", args.cifar10, "test")
    for weights in ("null", "auto"):
        start = time.perf_counter()
        run(["--seed_everything", str(args.seed), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             f"--trainer.max_epochs={args.epochs}", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(args.out / f"runs-{weights}"),
             "--trainer.logger.class_path", "pytorch_lightning.loggers.TensorBoardLogger",
             "--trainer.logger.init_args.save_dir", str(args.out / f"runs-{weights}"),
             "--model.backbone", args.backbone, "--model.optimizer.lr", "0.1", "--model.label_smoothing", "0.1",
             "--model.class_weights", weights, "--data.dataset", "csv", "--data.root", str(root),
             "--data.train_csv", "train.csv", "--data.val_size", "0.1", "--data.batch_size", "128",
             "--data.loader", "device", "--checkpoint.monitor", "val/bal_acc", "--overwrite", "true"])
        seconds = time.perf_counter() - start
        ckpt = next((args.out / f"runs-{weights}").rglob("best*.ckpt"))
        recall = balanced_accuracy(ckpt, test_images, test_labels, list(classes))
        print(f"class_weights={weights}: balanced accuracy {recall.mean():.4f}, cut classes {recall[:5].mean():.4f}, "
              f"kept classes {recall[5:].mean():.4f}, fit {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
