"""The competition workflow end to end on real images: a CSV-labelled folder of CIFAR-10 PNGs of mixed sizes,
2-fold training (oof.csv per fold, the study's CV summary), then `train.py predict` with both folds and flip
TTA into a submission whose accuracy on the held-back labels is compared with the OOF estimate.

4000 training PNGs (400 per class, every other one upscaled to 40x40), 1000 test PNGs, configs/cpu_smoke.yaml
for 3 epochs per fold. Measured (CPU, 2 shared cores, one torch thread): about 62 s of CPU time (104 s wall
on a busy machine); OOF accuracy 0.272 (folds 0.259, 0.285), submission accuracy 0.301 (chance 0.1).

Needs CIFAR10_ROOT (torchvision files: `python ../shared/data/cifar_export.py cifar10 /tmp/c10 --format
torchvision`); skips without it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from competition_data import write_pngs

from bench.study.oof import write_study_oof
from helpers import REPO, run_cli
from models.run.commands import main

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TRAIN_PER_CLASS, TEST_PER_CLASS = 400, 100


def _cifar10_root() -> Path:
    value = os.environ.get("CIFAR10_ROOT")
    if not value:
        pytest.skip("CIFAR10_ROOT is not set: export the lossless CIFAR-10 copy and point CIFAR10_ROOT at it")
    return Path(value)


def _competition(folder: Path) -> list[str]:
    """train/ + train.csv (ids without extension, class names as labels; every other image upscaled to
    40x40), test/ + sample_submission.csv; returns the held-back test labels in sample order."""
    from PIL import Image

    from augment.data import load_dataset

    images, labels, classes = load_dataset("cifar10", _cifar10_root(), "train")
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == k), TRAIN_PER_CLASS + TEST_PER_CLASS,
                                        replace=False) for k in range(10)])
    rng.shuffle(picked)
    is_test = np.zeros(len(picked), bool)
    for k in range(10):
        is_test[np.flatnonzero(labels[picked] == k)[:TEST_PER_CLASS]] = True
    splits = {"train": picked[~is_test], "test": picked[is_test]}
    held: list[str] = []
    for split, index in splits.items():
        names = [f"{split}_{i:05d}.png" for i in range(len(index))]
        paths = write_pngs(folder / split, images[index], names)
        for path in paths[::2]:  # mixed sizes: data.image_size 32 resizes them back
            Image.open(path).resize((40, 40), Image.BICUBIC).save(path)
        rows = [(n[:-4], classes[labels[i]]) for n, i in zip(names, index)]
        with (folder / ("train.csv" if split == "train" else "sample_submission.csv")).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label"])
            writer.writerows(rows if split == "train" else [(r[0], classes[0]) for r in rows])
        if split == "test":
            held = [r[1] for r in rows]
    return held


def test_kfold_oof_then_submission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "competition"
    held = _competition(data)
    runs = tmp_path / "runs"
    run_dirs = []
    for fold in (0, 1):
        metrics = run_cli([
            "--config", str(REPO / "configs/cpu_smoke.yaml"),
            "--data.dataset", "csv",
            "--data.root", str(data / "train"),
            "--data.train_csv", str(data / "train.csv"),
            "--data.image_size", "32",
            "--data.train_subset", "null",
            "--data.num_folds", "2",
            "--data.fold", str(fold),
            "--trainer.max_epochs", "3",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(runs),
            "--trainer.logger.init_args.name", "kfold",
            "--trainer.logger.init_args.version", f"fold{fold}",
            "--run_test", "false",
        ])
        run_dirs.append(Path(metrics["log_dir"]))
        assert (run_dirs[-1] / "oof.csv").is_file()
    summary = write_study_oof(runs / "kfold", run_dirs)
    assert summary["images"] == 10 * TRAIN_PER_CLASS  # every training image predicted once, out of fold
    assert summary["oof_accuracy"] > 0.2, summary  # chance: 0.1

    submission = tmp_path / "submission.csv"
    code = main(["predict", "--members", str(runs / "kfold"), "--images", str(data / "test"),
                 "--ids", str(data / "sample_submission.csv"), "--tta", "flip", "--output", str(submission)])
    assert code == 0, capsys.readouterr().err
    assert "x 2 members x 2 views (flip)" in capsys.readouterr().out
    with submission.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (data / "sample_submission.csv").open(newline="") as f:
        assert [r["id"] for r in rows] == [r["id"] for r in csv.DictReader(f)]
    accuracy = np.mean([r["label"] == label for r, label in zip(rows, held)])
    assert accuracy > 0.2, accuracy
    # close to the OOF estimate of one fold's model; the two-fold ensemble with flip TTA may do a little better
    assert summary["oof_accuracy"] - 0.03 <= accuracy <= summary["oof_accuracy"] + 0.08, (accuracy, summary)
