"""Shared by the competition-workflow tests: PNG folders of synthetic images and two trained k-fold runs.

`kfold_study(tmp_path_factory)` trains, once per test session, the two folds of a 2-fold study on a tiny
CSV-labelled folder (96 PNGs of 4 synthetic classes with the integer labels 3, 7, 11, 20; every other image
stored at 40x40 and resized by `data.image_size 32`; timm test_resnet, EMA on, 2 epochs) under
`<tmp>/study/fold<k>/`; every test module that needs trained members shares it (a few seconds on 2 CPU
cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_cli, synthetic_images, tiny_args

LABELS = [3, 7, 11, 20]  # the integer class labels of the training CSV


def write_pngs(folder: Path, images: np.ndarray, names: list[str]) -> list[Path]:
    """Write uint8 (N, H, W, 3) images as `folder/<name>` PNG files; return the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names):
        path = folder / name
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def sample_images(n: int = 12, size: int = 32, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic images of the 4 training classes (their colours and stripes), labels (n,)."""
    per_class = -(-n // 4)
    images, labels = synthetic_images(4, per_class, seed, size)
    order = np.random.default_rng(seed).permutation(len(labels))[:n]
    return images[order], labels[order]


def reference_logits(run: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(EMA logits, trained-backbone logits) of a run's best checkpoint for uint8 (N, 3, H, W), normalized with
    the mean/std of the run's DataModule: computed here without models.run.predict."""
    import inspect

    import torch

    from augment.data import CIFARDataModule
    from models.classifier import CifarClassifier

    ckpt_path = next((run / "checkpoints").glob("best*.ckpt"))
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    names = set(inspect.signature(CifarClassifier.__init__).parameters)
    model = CifarClassifier(**{k: v for k, v in checkpoint["hyper_parameters"].items() if k in names})
    model.load_state_dict(checkpoint["state_dict"])
    data = checkpoint["datamodule_hyper_parameters"]
    keys = ("dataset", "root", "train_csv", "id_column", "label_column", "image_size")
    dm = CIFARDataModule(**{k: data[k] for k in keys if k in data})
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).float() / 255 - mean) / std
    with torch.no_grad():
        return model.ema.module.eval()(x).numpy(), model.backbone.eval()(x).numpy()


@dataclass
class Study:
    root: Path  # the image folder the runs trained on (train.csv inside)
    labels: dict[str, int]  # id -> label of the training CSV
    study_dir: Path  # holds fold0/ and fold1/
    runs: list[Path]  # the run folders (logger version folders)
    metrics: list[dict[str, Any]]


_CACHE: dict[str, Study] = {}


def _csv_data(root: Path) -> tuple[Path, dict[str, int]]:
    """96 PNGs (24 per class) in a shuffled id order, every other one upscaled to 40x40, and train.csv
    (ids with and without the extension, integer labels); returns (root, id -> label)."""
    from PIL import Image

    images, classes = synthetic_images(4, 24, seed=0)
    order = np.random.default_rng(0).permutation(len(classes))
    names = [f"s{i:03d}.png" for i in range(len(classes))]
    paths = write_pngs(root, images[order], names)
    for path in paths[::2]:
        Image.open(path).resize((40, 40), Image.BICUBIC).save(path)
    ids = [n if i % 3 == 0 else n.removesuffix(".png") for i, n in enumerate(names)]
    labels = {i: LABELS[k] for i, k in zip(ids, classes[order])}
    (root / "train.csv").write_text("id,label\n" + "".join(f"{i},{label}\n" for i, label in labels.items()))
    return root, labels


def kfold_study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The two trained folds (trained on first use in this session)."""
    if "study" not in _CACHE:
        import torch

        base = tmp_path_factory.mktemp("competition")
        root, labels = _csv_data(base / "data")
        study_dir = base / "study"
        runs, metrics = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for fold in (0, 1):
                args = tiny_args(root, study_dir, "--data.dataset", "csv", "--data.train_csv", "train.csv",
                                 "--data.image_size", "32", "--model.ema_decay", "0.9", "--data.num_folds", "2",
                                 "--data.fold", str(fold), "--trainer.logger.init_args.version", "run",
                                 "--run_test", "false", name=f"fold{fold}")
                result = run_cli(args)
                metrics.append(result)
                runs.append(Path(result["log_dir"]))
        finally:
            torch.set_num_threads(threads)
        _CACHE["study"] = Study(root, labels, study_dir, runs, metrics)
    return _CACHE["study"]
