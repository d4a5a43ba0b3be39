"""End to end: `models.run.cli.run` / `train.py` fit, select on validation, test once, log to TensorBoard.

Tiny synthetic ImageFolder data (4 classes, 32x32) and timm `test_resnet` on the CPU; every run writes
under the test's temporary working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

from helpers import (
    REPO,
    checkpoint_test_loss,
    read_tensorboard,
    run_cli,
    subprocess_env,
    tiny_args,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EPOCHS = 3
SCALAR_TAGS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss")
IMAGE_TAGS = ("train/view/augmented_batch", "val/confusion_matrix", "test/confusion_matrix")


class TrainerSpy:
    """Records the callbacks `Trainer.fit` ran with and every `Trainer.test` call (ckpt_path, best path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fit_callbacks: list[type] = []
        self.tests: list[dict[str, Any]] = []
        fit, test = pl.Trainer.fit, pl.Trainer.test

        def spy_fit(trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
            self.fit_callbacks = [type(c) for c in trainer.callbacks]
            return fit(trainer, *args, **kwargs)

        def spy_test(trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
            ckpt = trainer.checkpoint_callback
            self.tests.append({"ckpt_path": kwargs.get("ckpt_path"), "best": ckpt.best_model_path if ckpt else None})
            return test(trainer, *args, **kwargs)

        monkeypatch.setattr(pl.Trainer, "fit", spy_fit)
        monkeypatch.setattr(pl.Trainer, "test", spy_test)


@pytest.fixture(scope="module")
def fitted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 3-epoch fit + test, run from an empty working directory; shared by the tests below."""
    cwd = tmp_path_factory.mktemp("e2e_cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        spy = TrainerSpy(mp)
        metrics = run_cli(tiny_args(tiny_data, cwd / "work", max_epochs=EPOCHS))
    log_dir = Path(metrics["log_dir"])
    scalars, images = read_tensorboard(log_dir)
    return {"cwd": cwd, "metrics": metrics, "spy": spy, "log_dir": log_dir, "scalars": scalars, "images": images}


def _epoch_of(checkpoint: Path) -> int:
    match = re.search(r"epoch(\d+)", checkpoint.name)
    assert match, f"no epoch in checkpoint name {checkpoint.name}"
    return int(match.group(1))


def test_fit_and_test_return_metrics(fitted: dict[str, Any]) -> None:
    metrics = fitted["metrics"]
    assert metrics["epochs"] == EPOCHS
    assert metrics["global_step"] == EPOCHS * 4  # 96 - 24 val = 72 train images, batch 16, drop_last
    assert metrics["test/acc"] > 0.9  # colour + stripe classes are easy: a tiny ResNet learns them in 3 epochs
    for key in ("test/loss", "test/acc5", "train/loss", "train/acc", "val/acc", "val/acc_best"):
        assert key in metrics, key
    assert metrics["fit_time_s"] > 0
    assert fitted["log_dir"].is_relative_to(fitted["cwd"] / "work")


def test_nothing_written_outside_the_log_dir(fitted: dict[str, Any]) -> None:
    assert os.listdir(fitted["cwd"]) == ["work"]


def test_best_and_last_checkpoints_written(fitted: dict[str, Any]) -> None:
    checkpoints = fitted["log_dir"] / "checkpoints"
    best = sorted(checkpoints.glob("best-epoch*.ckpt"))
    assert len(best) == 1, sorted(p.name for p in checkpoints.iterdir())
    assert (checkpoints / "last.ckpt").is_file()
    assert re.fullmatch(r"best-epoch\d{3}-val_acc[01]\.\d{4}\.ckpt", best[0].name)


def test_resolved_config_saved_beside_the_logs(fitted: dict[str, Any], tiny_data: Path) -> None:
    config = yaml.safe_load((fitted["log_dir"] / "config.yaml").read_text())
    assert config["model"]["backbone"] == "test_resnet"
    assert config["data"]["root"] == str(tiny_data)
    assert config["data"]["val_size"] == 24
    assert config["trainer"]["max_epochs"] == EPOCHS
    assert config["checkpoint"]["monitor"] == "val/acc"
    assert config["early_stopping"]["monitor"] == "val/acc"
    assert config["model"]["mixup"]["alpha"] == 0.0  # defaults are resolved, not left out


def test_tensorboard_tags(fitted: dict[str, Any]) -> None:
    scalars, images = fitted["scalars"], fitted["images"]
    for tag in SCALAR_TAGS:
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert "train/lr" in scalars, sorted(scalars)
    for tag in IMAGE_TAGS:
        assert tag in images, f"{tag} missing from {sorted(images)}"
    assert len(scalars["train/loss"]) == EPOCHS
    assert len(scalars["val/acc"]) == EPOCHS  # sanity-check batches are not logged
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == sorted(steps) and len(set(steps)) == EPOCHS


def test_best_checkpoint_is_selected_on_validation(fitted: dict[str, Any]) -> None:
    val_acc = [value for _, value in fitted["scalars"]["val/acc"]]
    assert fitted["metrics"]["val/acc_best"] == pytest.approx(max(val_acc), abs=1e-6)
    best = next((fitted["log_dir"] / "checkpoints").glob("best-epoch*.ckpt"))
    assert _epoch_of(best) == val_acc.index(max(val_acc))  # the first epoch reaching the maximum
    assert EarlyStopping in fitted["spy"].fit_callbacks


def test_test_runs_once_on_the_best_checkpoint(fitted: dict[str, Any], tiny_data: Path) -> None:
    spy, metrics, checkpoints = fitted["spy"], fitted["metrics"], fitted["log_dir"] / "checkpoints"
    best = next(checkpoints.glob("best-epoch*.ckpt"))
    assert spy.tests == [{"ckpt_path": str(best), "best": str(best)}]
    assert len(fitted["scalars"]["test/acc"]) == 1
    assert len(fitted["images"]["test/confusion_matrix"]) == 1
    # the reported test metrics are those of the best weights, and the last weights differ from them
    assert _epoch_of(best) < EPOCHS - 1, "the fixture run is set up so that val/acc saturates early"
    best_loss, best_acc = checkpoint_test_loss(best, tiny_data)
    last_loss, _ = checkpoint_test_loss(checkpoints / "last.ckpt", tiny_data)
    assert metrics["test/loss"] == pytest.approx(best_loss, rel=1e-5)
    assert metrics["test/acc"] == pytest.approx(best_acc)
    assert last_loss != pytest.approx(best_loss, rel=1e-3)
    test_acc_logged = fitted["scalars"]["test/acc"][0][1]
    assert test_acc_logged == pytest.approx(metrics["test/acc"])


def test_without_validation_tests_the_last_weights(tiny_data: Path, in_tmp_cwd: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spy = TrainerSpy(monkeypatch)
    with pytest.warns(UserWarning, match="val_size is 0"):
        metrics = run_cli(tiny_args(tiny_data, in_tmp_cwd / "work", "--data.val_size", "0", max_epochs=2))
    assert EarlyStopping not in spy.fit_callbacks
    assert metrics["epochs"] == 2 and metrics["global_step"] == 2 * 6  # all 96 images train
    assert "val/acc_best" not in metrics and "val/acc" not in metrics
    assert [call["ckpt_path"] for call in spy.tests] == [None]  # last weights, tested once
    checkpoints = Path(metrics["log_dir"]) / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert "last.ckpt" in names and not any("val_acc" in name for name in names), names
    last_loss, _ = checkpoint_test_loss(checkpoints / "last.ckpt", tiny_data)
    assert metrics["test/loss"] == pytest.approx(last_loss, rel=1e-5)
    scalars, _ = read_tensorboard(metrics["log_dir"])
    assert not [tag for tag in scalars if tag.startswith("val/")]
    assert "test/acc" in scalars and "train/loss" in scalars


def test_logger_off_keeps_outputs_under_default_root_dir(tiny_data: Path, in_tmp_cwd: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`trainer.logger false`: no LearningRateMonitor crash; config.yaml and checkpoints go to runs/, not the cwd."""
    spy = TrainerSpy(monkeypatch)
    args = tiny_args(tiny_data, in_tmp_cwd / "unused", "--trainer.logger", "false", max_epochs=1)
    cut = args.index("--trainer.default_root_dir")
    args = args[:cut] + args[cut + 10:]  # drop default_root_dir and the TensorBoard logger arguments
    assert not [a for a in args if a.startswith("--trainer.logger.")]
    metrics = run_cli(args)
    assert LearningRateMonitor not in spy.fit_callbacks
    assert sorted(os.listdir(in_tmp_cwd)) == ["runs"]
    assert (in_tmp_cwd / "runs" / "config.yaml").is_file()
    assert (in_tmp_cwd / "runs" / "checkpoints" / "last.ckpt").is_file()
    assert metrics["test/acc"] >= 0.0


def test_print_config_prints_yaml_and_exits_without_training(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/cpu_smoke.yaml"),
         "--model.mixup.alpha", "0.3", "--print_config"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["backbone"] == "resnet18"
    assert config["model"]["mixup"]["alpha"] == 0.3
    assert config["data"]["dataset"] == "cifar10"
    assert os.listdir(tmp_path) == []  # nothing trained, nothing logged


def test_train_py_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    """The real entry point: `python train.py --config <yaml>` trains, tests and exits 0."""
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
            "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "script", "default_hp_metric": False}},
        },
        "model": {"backbone": "test_resnet", "cifar_stem": True, "mixup": {"alpha": 0.2}},
        "data": {"dataset": "imagefolder", "root": str(tiny_data), "val_size": 24, "batch_size": 16,
                 "loader": "workers", "num_workers": 0},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", "tiny.yaml"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log_dir = tmp_path / "runs" / "script" / "version_0"
    assert (log_dir / "config.yaml").is_file()
    assert (log_dir / "checkpoints" / "last.ckpt").exists()
    scalars, _ = read_tensorboard(log_dir)
    assert len(scalars["test/acc"]) == 1 and len(scalars["val/acc"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["runs", "tiny.yaml"]
