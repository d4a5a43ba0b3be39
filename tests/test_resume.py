"""Resuming from `last.ckpt` with `--ckpt_path` continues a run exactly where it stopped.

Runs on tiny synthetic data with the GPU-style loader on the CPU, Mixup (batch-augmentation RNG in the
checkpoint) and EMA (in the state dict), compared with an uninterrupted run of the same config:
same epochs and global step, TensorBoard steps that continue, bitwise-equal final weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from helpers import read_tensorboard, run_cli, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 72 training images, batch 16, drop_last
# step schedule: lr x0.1 from epoch 2 on, a function of the step only, so a 1-epoch run and a 3-epoch run
# share their first epoch's learning rates
STATEFUL = ("--model.mixup.alpha", "0.4", "--model.ema_decay", "0.9",
            "--model.scheduler.name", "step", "--model.scheduler.step_size", "2")


class StopAfterFirstEpoch(pl.Callback):
    """Ends fit after epoch 0 as if the job had been killed there (last.ckpt of epoch 0 is written)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def _run(root: Path, workdir: Path, name: str, epochs: int, *extra: str) -> dict[str, Any]:
    return run_cli(tiny_args(root, workdir, *STATEFUL, *extra, max_epochs=epochs, name=name))


def _last(metrics: dict[str, Any]) -> Path:
    return Path(metrics["log_dir"]) / "checkpoints" / "last.ckpt"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert any(key.startswith("ema.") for key in wa)  # the EMA copy is part of what must match
    different = [key for key in wa if not torch.equal(wa[key], wb[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("resume_full")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        return _run(tiny_data, workdir, "full", EPOCHS)


def test_resume_after_a_one_epoch_run(tiny_data: Path, in_tmp_cwd: Path, uninterrupted: dict[str, Any]) -> None:
    first = _run(tiny_data, in_tmp_cwd, "part", 1)
    assert first["epochs"] == 1 and first["global_step"] == STEPS_PER_EPOCH
    resumed = _run(tiny_data, in_tmp_cwd, "part", EPOCHS, "--ckpt_path", str(_last(first)))

    assert resumed["epochs"] == uninterrupted["epochs"] == EPOCHS
    assert resumed["global_step"] == uninterrupted["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["log_dir"] != first["log_dir"]  # a new TensorBoard version for the resumed part...
    assert not (Path(resumed["log_dir"]) / "checkpoints").exists()  # ...but checkpoints stay in the resumed folder
    assert torch.load(_last(first), weights_only=True)["global_step"] == EPOCHS * STEPS_PER_EPOCH
    _assert_same_weights(_last(first), _last(uninterrupted))
    # the best-checkpoint state came through the checkpoint: same best score, same test of the best weights
    assert resumed["val/acc_best"] == uninterrupted["val/acc_best"]
    assert resumed["test/loss"] == uninterrupted["test/loss"]

    first_log, _ = read_tensorboard(first["log_dir"])
    resumed_log, _ = read_tensorboard(resumed["log_dir"])
    full_log, _ = read_tensorboard(uninterrupted["log_dir"])
    first_steps = [step for step, _ in first_log["train/loss"]]
    resumed_steps = [step for step, _ in resumed_log["train/loss"]]
    assert len(first_steps) == 1 and len(resumed_steps) == EPOCHS - 1
    assert min(resumed_steps) > max(first_steps)  # global_step continued, it was not reset
    assert first_log["train/loss"] + resumed_log["train/loss"] == full_log["train/loss"]
    assert first_log["val/acc"] + resumed_log["val/acc"] == full_log["val/acc"]


def test_resume_an_interrupted_onecycle_run(tiny_data: Path, in_tmp_cwd: Path) -> None:
    """One-cycle depends on the planned length: a run killed mid-way and resumed with the same config is exact."""
    onecycle = ("--model.scheduler.name", "onecycle")
    stop = ("--trainer.callbacks", json.dumps([{"class_path": f"{__name__}.StopAfterFirstEpoch"}]))
    full = _run(tiny_data, in_tmp_cwd, "full", EPOCHS, *onecycle, "--run_test", "false")
    killed = _run(tiny_data, in_tmp_cwd, "part", EPOCHS, *onecycle, *stop, "--run_test", "false")
    assert killed["epochs"] == 1 and killed["global_step"] == STEPS_PER_EPOCH
    resumed = _run(tiny_data, in_tmp_cwd, "part", EPOCHS, *onecycle, "--run_test", "false",
                   "--ckpt_path", str(_last(killed)))
    assert resumed["global_step"] == full["global_step"] == EPOCHS * STEPS_PER_EPOCH
    _assert_same_weights(_last(killed), _last(full))
    assert resumed["train/loss"] == full["train/loss"]
    assert "test/acc" not in resumed  # run_test false
