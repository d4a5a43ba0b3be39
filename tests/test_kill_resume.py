"""Kill and resume: `python train.py` killed with SIGKILL mid-epoch (twice, while it rewrites a checkpoint
every step) resumes with `--ckpt_path <that checkpoint>`, ends at the configured epoch, and every checkpoint it
leaves loads; a write killed half-way through leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_bad_input import cli_args

from helpers import make_imagefolder

pytestmark = pytest.mark.slow  # subprocesses killed mid-epoch and end-to-end resumes

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3  # 4 classes x 8 train images, 8 held out, batch 8
MAX_EPOCHS = 5


def _train_py(args: list[str], workdir: Path, log_name: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    log = open(workdir / log_name, "w")  # a file, not a pipe: a full pipe would block the run
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=workdir, env=env, stdout=log, stderr=log
    )


def _global_step(path: Path) -> int | None:
    """global_step in the checkpoint, None while it does not exist; a partial file fails the test here."""
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _kill_mid_epoch(proc: subprocess.Popen, last: Path, min_step: int, timeout_s: float = 90.0) -> int:
    """SIGKILL `proc` once `last` holds a mid-epoch step >= min_step; return that step.

    The process is frozen (SIGSTOP) before the final look at `last`, so the checkpoint read is the one it
    leaves behind, and it is killed inside that epoch (it had not finished the epoch's next step)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        step = _global_step(last)
        if step is not None and step >= min_step and step % STEPS_PER_EPOCH:
            proc.send_signal(signal.SIGSTOP)
            step = _global_step(last)
            if step % STEPS_PER_EPOCH:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return step
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no mid-epoch checkpoint with step >= {min_step} within {timeout_s} s")


def _check_loadable(folder: Path) -> list[dict]:
    from models.classifier import CifarClassifier

    checkpoints = []
    for path in sorted(folder.glob("*.ckpt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())
        model = CifarClassifier.load_from_checkpoint(path, map_location="cpu")
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
        checkpoints.append(ckpt)
    return checkpoints


def test_sigkill_mid_epoch_then_resume_finishes_at_max_epochs(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", num_classes=4, train_per_class=8, test_per_class=2)
    ckpt_dir = tmp_path / "ckpts"
    args = cli_args(
        data, tmp_path / "runs",
        "--trainer.max_epochs", str(MAX_EPOCHS),
        "--model.cifar_stem", "true",  # slower steps: a wider window to catch the run mid-epoch
        # An unmonitored top-1 checkpoint rewritten in place after every step (the kill often lands in a
        # write); the epoch-end last.ckpt of the CLI is written too.
        "--checkpoint.dirpath", str(ckpt_dir),
        "--checkpoint.monitor", "null",
        "--checkpoint.filename", "last-step",
        "--checkpoint.save_top_k", "1",
        "--checkpoint.every_n_train_steps", "1",
        "--run_test", "false",
    )
    last = ckpt_dir / "last-step.ckpt"

    killed_at = [_kill_mid_epoch(_train_py(args, tmp_path, "run0.log"), last, min_step=STEPS_PER_EPOCH + 1)]
    assert _global_step(last) == killed_at[0]
    _check_loadable(ckpt_dir)

    resumed = _train_py([*args, "--ckpt_path", str(last)], tmp_path, "run1.log")
    killed_at.append(_kill_mid_epoch(resumed, last, min_step=killed_at[0] + STEPS_PER_EPOCH))
    _check_loadable(ckpt_dir)

    final = _train_py([*args, "--ckpt_path", str(last)], tmp_path, "run2.log")
    assert final.wait(timeout=120) == 0, (tmp_path / "run2.log").read_text()[-3000:]

    checkpoints = _check_loadable(ckpt_dir)
    assert {"last.ckpt", "last-step.ckpt"} <= {p.name for p in ckpt_dir.iterdir()}
    end = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)  # written at epoch end
    assert end["epoch"] == MAX_EPOCHS - 1  # ended at the configured epoch, not before or after
    assert end["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == MAX_EPOCHS
    assert f"`max_epochs={MAX_EPOCHS}` reached" in (tmp_path / "run2.log").read_text()
    # No step lost or repeated: a resumed epoch runs only its remaining steps, on the batches an
    # uninterrupted run would have seen there (the device loader is resumable, see the mid-epoch test).
    assert end["global_step"] == MAX_EPOCHS * STEPS_PER_EPOCH
    assert max(c["global_step"] for c in checkpoints) == end["global_step"]
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith(".")) == []  # no temp files left


def _uninterrupted_then_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, common: list[str], resume_from: str
) -> None:
    """Run `common` to the end with checkpoints in a_ckpts, then again from a_ckpts/`resume_from` into b_ckpts."""
    from models.run.cli import run

    data = make_imagefolder(tmp_path / "data", num_classes=4, train_per_class=8, test_per_class=2)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(cli_args(data, tmp_path / "a", *common, "--checkpoint.dirpath", str(tmp_path / "a_ckpts")))
        resume = [
            "--checkpoint.dirpath", str(tmp_path / "b_ckpts"), "--ckpt_path", str(tmp_path / "a_ckpts" / resume_from)
        ]
        run(cli_args(data, tmp_path / "b", *common, *resume))
    finally:
        torch.set_num_threads(threads)


def test_resume_from_epoch_end_checkpoint_is_bitwise_identical_to_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights, optimizer, schedule, epoch and the batch-augmentation RNG all come back from the checkpoint."""
    common = [
        "--trainer.max_epochs", "3", "--run_test", "false",
        "--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "e{epoch}",
        "--model.mixup.alpha", "0.4", "--model.cutout.n_holes", "1", "--model.cutout.size", "8",
        "--model.input_noise.std", "0.05",
    ]
    _uninterrupted_then_resumed(tmp_path, monkeypatch, common, "e0.ckpt")
    a = torch.load(tmp_path / "a_ckpts/e2.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "b_ckpts/e2.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_resume_from_mid_epoch_checkpoint_is_bitwise_identical_to_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device loader starts the first pass after a restore at the batch the epoch loop continues from,
    so a run resumed from a step inside an epoch sees the batches, crops and flips of one never stopped."""
    common = [
        "--trainer.max_epochs", "3", "--run_test", "false",
        "--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "s{step}",
        "--checkpoint.every_n_train_steps", "1", "--model.mixup.alpha", "0.4", "--model.input_noise.std", "0.05",
    ]
    mid = STEPS_PER_EPOCH + 1  # epoch 1, one of its batches trained
    _uninterrupted_then_resumed(tmp_path, monkeypatch, common, f"s{mid}.ckpt")
    end = 3 * STEPS_PER_EPOCH
    for step in (mid + 1, end):  # the first step after the resume, and the end of training
        a = torch.load(tmp_path / f"a_ckpts/s{step}.ckpt", map_location="cpu", weights_only=True)
        b = torch.load(tmp_path / f"b_ckpts/s{step}.ckpt", map_location="cpu", weights_only=True)
        assert a["global_step"] == b["global_step"] == step
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), step


CRASHING_SAVE = r"""
import os, signal, sys, torch
import models.run.checkpoint_io as checkpoint_io

path = sys.argv[1]
io = checkpoint_io.AtomicCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.zeros(50_000)}, "global_step": 1}, path)


class DiesHalfWay:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, data):
        data = memoryview(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint_io.open = lambda *a, **k: DiesHalfWay(open(*a, **k))
io.save_checkpoint({"state_dict": {"w": torch.ones(50_000)}, "global_step": 2}, path)
"""


def test_write_killed_half_way_keeps_previous_checkpoint(tmp_path: Path) -> None:
    from models.run.checkpoint_io import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    previous = torch.load(path, map_location="cpu", weights_only=True)
    assert previous["global_step"] == 1 and torch.equal(previous["state_dict"]["w"], torch.zeros(50_000))
    (partial,) = [p for p in path.parent.iterdir() if p.name != path.name]  # the half-written temp file
    assert 0 < partial.stat().st_size < path.stat().st_size

    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 3}, path)
    assert torch.load(path, map_location="cpu", weights_only=True)["global_step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the stale temp file is cleaned up


def test_cli_trainer_writes_checkpoints_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.run.checkpoint_io import AtomicCheckpointIO
    from models.run.cli import CifarCLI

    data = make_imagefolder(tmp_path / "data", num_classes=2, train_per_class=4, test_per_class=1)
    monkeypatch.chdir(tmp_path)
    cli = CifarCLI(cli_args(data, tmp_path / "runs", "--data.val_size", "2"))
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
