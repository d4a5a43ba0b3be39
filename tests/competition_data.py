"""Shared by the competition-workflow tests: PNG folders of synthetic images and two trained k-fold runs.

`kfold_study(tmp_path_factory)` trains, once per test session, the two folds of a 2-fold study on a tiny
4-class ImageFolder (timm test_resnet, EMA on, 2 epochs) under `<tmp>/study/fold<k>/`; every test module
that needs trained members shares it (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import make_imagefolder, run_cli, synthetic_images, tiny_args


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
    the mean/std of the run's DataModule: computed here without models.predict."""
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
    dm = CIFARDataModule(dataset=data["dataset"], root=data["root"])
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).float() / 255 - mean) / std
    with torch.no_grad():
        return model.ema.module.eval()(x).numpy(), model.backbone.eval()(x).numpy()


@dataclass
class Study:
    root: Path  # the ImageFolder the runs trained on
    study_dir: Path  # holds fold0/ and fold1/
    runs: list[Path]  # the run folders (logger version folders)
    metrics: list[dict[str, Any]]


_CACHE: dict[str, Study] = {}


def kfold_study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The two trained folds (trained on first use in this session)."""
    if "study" not in _CACHE:
        import torch

        base = tmp_path_factory.mktemp("competition")
        root = make_imagefolder(base / "data")
        study_dir = base / "study"
        runs, metrics = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for fold in (0, 1):
                args = tiny_args(root, study_dir, "--model.ema_decay", "0.9", "--data.num_folds", "2",
                                 "--data.fold", str(fold), "--trainer.logger.init_args.version", "run",
                                 "--run_test", "false", name=f"fold{fold}")
                result = run_cli(args)
                metrics.append(result)
                runs.append(Path(result["log_dir"]))
        finally:
            torch.set_num_threads(threads)
        _CACHE["study"] = Study(root, study_dir, runs, metrics)
    return _CACHE["study"]
