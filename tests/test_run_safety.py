"""Runs that cannot continue say why in one line and change nothing; no run folder is ever overwritten;
`last.ckpt` is the end of every training epoch; a full disk and Ctrl-C lose nothing.

Real in-process CLI runs (`models.run.cli.main`, what train.py calls) on tiny data; one real `python train.py`
subprocess for SIGINT. Each refusal asserts the exit code, the single error line and that no file on disk
changed (names, sizes and modification times of everything under the run folder).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, main_cli, subprocess_env, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # end-to-end runs


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def _epoch(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


@pytest.fixture(scope="module")
def first_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One finished 2-epoch nesterov run in version `exp1`; returns (its folder, its arguments)."""
    workdir = tmp_path_factory.mktemp("first_run")
    args = tiny_args(tiny_data, workdir, "--trainer.logger.init_args.version", "exp1", "--run_test", "false")
    assert main_cli(args) == 0
    return workdir / "tiny" / "exp1", args


# (case, overrides of the resumed run, setting named, saved value, this run's value)
INCOMPATIBLE_RESUMES = [
    ("optimizer_class", ["--model.optimizer.name", "adamw"], "model.optimizer.name", "'nesterov'", "'adamw'"),
    ("param_groups", ["--model.optimizer.exclude_norm_and_bias", "false"],
     "model.optimizer.exclude_norm_and_bias", "True", "False"),
    ("norm_kind", ["--model.norm", "group", "--model.norm_groups", "2"], "ckpt_path", "", ""),
    ("backbone", ["--model.backbone", "resnet10t"], "ckpt_path", "", ""),
]


@pytest.mark.parametrize(("case", "extra", "setting", "saved", "now"), INCOMPATIBLE_RESUMES,
                         ids=[c[0] for c in INCOMPATIBLE_RESUMES])
def test_resume_that_cannot_continue_is_one_line_and_changes_nothing(
    case: str, extra: list[str], setting: str, saved: str, now: str, first_run: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, args = first_run
    before = _snapshot(folder.parent.parent)
    code = main_cli([*args, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt"), *extra])
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    assert "ckpt_path" in line and setting in line and saved in line and now in line, line
    assert _snapshot(folder.parent.parent) == before


def test_settings_that_change_safely_resume(first_run: tuple[Path, list[str]]) -> None:
    """More epochs, another schedule length and logging interval: the run continues in its own folder."""
    folder, args = first_run
    last = folder / "checkpoints" / "last.ckpt"
    resumed = [*args, "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "2",
               "--model.scheduler.warmup_epochs", "0.5", "--ckpt_path", str(last)]
    assert main_cli(resumed) == 0
    assert _epoch(last) == 2  # epochs 0, 1 from the first run, 2 from the resumed one, same file


def test_rerun_into_an_existing_run_folder_refuses_and_keeps_everything(
    first_run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, args = first_run
    before = _snapshot(folder.parent.parent)
    assert main_cli(args) == 2
    line = _error_line(capsys.readouterr().err)
    assert "trainer.logger.init_args.version must be a new run folder" in line, line
    assert f"pass --ckpt_path {folder / 'checkpoints' / 'last.ckpt'} to continue it" in line
    assert "--overwrite true" in line and "got 'exp1'" in line
    assert _snapshot(folder.parent.parent) == before


def test_overwrite_true_replaces_the_earlier_run_whole(tiny_data: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_data, tmp_path, "--trainer.logger.init_args.version", "v", "--run_test", "false",
                     max_epochs=1)
    assert main_cli(args) == 0
    folder = tmp_path / "tiny" / "v"
    stale = folder / "checkpoints" / "best-epoch099-val_acc0.0000.ckpt"
    stale.write_bytes(b"an earlier run's file")
    assert main_cli([*args, "--overwrite", "true"]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))[-1] == "last.ckpt"


def test_logger_off_rerun_refuses_to_replace_checkpoints(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tiny_data, tmp_path, "--trainer.logger", "false", "--run_test", "false", max_epochs=1)
    assert main_cli(args) == 0
    before = _snapshot(tmp_path)
    assert main_cli(args) == 2
    assert "trainer.default_root_dir must be a new run folder" in _error_line(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("every", "epochs"), [(2, 3), (5, 2)], ids=["last_epoch_unvalidated", "never_validated"])
def test_last_ckpt_is_the_end_of_every_training_epoch(tiny_data: Path, tmp_path: Path, every: int, epochs: int) -> None:
    args = tiny_args(tiny_data, tmp_path, "--trainer.check_val_every_n_epoch", str(every), "--run_test", "false",
                     max_epochs=epochs)
    assert main_cli(args) == 0
    (last,) = tmp_path.rglob("last.ckpt")
    assert _epoch(last) == epochs - 1


def test_disk_full_during_a_checkpoint_write_is_one_line_and_keeps_earlier_checkpoints(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC injected into the second epoch's writes (the fsync of the new file)."""
    import models.run.checkpoint_io as checkpoint_io

    writes = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a checkpoint file (folders are fsynced too)
            writes["n"] += 1
            if writes["n"] > 2:  # epoch 0: best + last written; then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_io.os, "fsync", fsync)
    args = tiny_args(tiny_data, tmp_path, "--run_test", "false", max_epochs=3)
    assert main_cli(args) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: cannot write checkpoint ") and "No space left on device" in line, line
    assert str(tmp_path) in line and "the earlier checkpoints are kept" in line
    monkeypatch.setattr(checkpoint_io.os, "fsync", real_fsync)
    kept = sorted(tmp_path.rglob("*.ckpt"))
    assert [p.name for p in kept if p.name == "last.ckpt"] == ["last.ckpt"]
    assert not list(tmp_path.rglob("*.tmp"))
    for checkpoint in kept:
        assert _epoch(checkpoint) == 0  # every file left is complete and loads


def _ctrl_c_at(epoch: int, batch: int):
    """A LightningModule.on_train_batch_start that raises KeyboardInterrupt (what SIGINT raises) there."""

    def hook(module, batch_data, batch_idx: int) -> None:
        if module.current_epoch == epoch and batch_idx == batch:
            raise KeyboardInterrupt

    return hook


def test_ctrl_c_in_fit_keeps_last_epoch_and_prints_the_resume_command(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.classifier import CifarClassifier

    monkeypatch.setattr(CifarClassifier, "on_train_batch_start", _ctrl_c_at(epoch=1, batch=1), raising=False)
    args = tiny_args(tiny_data, tmp_path, "--run_test", "false", max_epochs=3)
    assert main_cli(args) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning had set SIG_IGN
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interrupted: the last finished epoch is saved; resume with: python train.py ")
    (last,) = tmp_path.rglob("last.ckpt")
    assert err.endswith(f"--ckpt_path {last}") and _epoch(last) == 0
    monkeypatch.undo()
    assert main_cli([*args, "--ckpt_path", str(last)]) == 0  # the printed command's arguments resume
    assert _epoch(last) == 2


def test_sigint_to_train_py_exits_130_with_a_resumable_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_data, tmp_path / "runs", "--run_test", "false", "--trainer.max_epochs", "100000",
                     "--early_stopping.patience", "100000")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err, open(tmp_path / "stdout.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=subprocess_env(),
                                stdout=out, stderr=err)
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("last.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # one Ctrl-C: the fit stops at the end of the current batch
        proc.wait(timeout=60)
    stderr = log.read_text()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    (last,) = tmp_path.rglob("last.ckpt")
    assert f"--ckpt_path {last}" in stderr.strip().splitlines()[-1]
    assert _epoch(last) >= 0 and "state_dict" in torch.load(last, map_location="cpu", weights_only=True)


def test_first_ctrl_c_waits_for_the_batch_end_and_a_second_one_stops_at_once() -> None:
    from models.callbacks import CtrlCAtBatchEnd

    ctrl_c = CtrlCAtBatchEnd()
    ctrl_c.on_train_batch_end()  # nothing requested: training goes on
    ctrl_c.request(signal.SIGINT, None)  # the signal handler itself never raises the first time
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.on_validation_batch_end()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.request(signal.SIGINT, None)
