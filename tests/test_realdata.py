"""Real CIFAR data: a short configs/cpu_smoke.yaml run learns CIFAR-10; the CIFAR-100 datamodule serves
100 classes in the right counts and shapes.

Needs the exported data: CIFAR10_ROOT (torchvision files, `cifar-10-batches-py/`) and CIFAR100_ROOT
(ImageFolder `train/<class>/`, `test/<class>/`); each test skips with the reason when its variable is unset.
The first load of a fresh export decodes and caches under `<root>/.cifar_aug_cache` (~1 s CIFAR-10,
~7 s CIFAR-100 on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, read_tensorboard, run_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _root(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set: export the lossless CIFAR copy and point {variable} at it")
    root = Path(value)
    if not root.is_dir():
        pytest.fail(f"{variable}={value} is not a folder")
    return root


def test_cpu_smoke_recipe_learns_cifar10(in_tmp_cwd: Path) -> None:
    """2 epochs (batch 64) on a 4000-image stratified subset, tested on 2560 test images.

    Measured (CPU, 2 shared cores, one thread): ~30 s; val/acc 0.325, test/acc 0.33 (chance: 0.10);
    2000 images gave only ~0.24.
    """
    root = _root("CIFAR10_ROOT")
    metrics = run_cli([
        "--config", str(REPO / "configs/cpu_smoke.yaml"),
        "--data.root", str(root),
        "--data.train_subset", "4000",
        "--data.val_size", "1000",
        "--trainer.max_epochs", "2",
        "--trainer.limit_test_batches", "10",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(in_tmp_cwd / "runs"),
    ])
    assert metrics["epochs"] == 2
    assert metrics["val/acc_best"] > 0.2, metrics
    assert metrics["test/acc"] > 0.2, metrics
    scalars, _ = read_tensorboard(metrics["log_dir"])
    assert len(scalars["test/acc"]) == 1
    assert scalars["test/acc"][0][1] == pytest.approx(metrics["test/acc"])
    val_acc = [value for _, value in scalars["val/acc"]]
    assert len(val_acc) == 2 and max(val_acc) == pytest.approx(metrics["val/acc_best"])


def test_cifar100_datamodule_counts_and_batches() -> None:
    from augment.data import CIFARDataModule
    from augment.data.datasets import CIFAR100_CLASSES

    root = _root("CIFAR100_ROOT")
    data = CIFARDataModule(dataset="cifar100", root=str(root), val_size=5000, batch_size=256, loader="device")
    assert data.num_classes == 100
    data.setup("fit")
    data.setup("test")
    assert data.class_names == list(CIFAR100_CLASSES)  # the exported folders are in label order
    images, labels = data._arrays["train"]
    assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=100).tolist() == [500] * 100
    assert len(data.train_indices) == 45000 and len(data.val_indices) == 5000
    assert np.bincount(labels[data.val_indices], minlength=100).tolist() == [50] * 100  # stratified
    assert not set(data.train_indices.tolist()) & set(data.val_indices.tolist())
    test_labels = data._arrays["test"][1]
    assert np.bincount(test_labels, minlength=100).tolist() == [100] * 100

    for loader, batch_size in ((data.train_dataloader(), 256), (data.val_dataloader(), 256),
                               (data.test_dataloader(), 256)):
        x, y = next(iter(loader))
        assert x.shape == (batch_size, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (batch_size,) and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) < 100
        assert abs(float(x.mean())) < 0.5  # normalized with the CIFAR-100 statistics
    assert len(data.train_dataloader()) == 45000 // 256  # drop_last on train
    assert len(data.test_dataloader()) == -(-10000 // 256)
