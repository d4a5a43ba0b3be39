"""Data safety: `--overwrite` replaces only a run that train.py made, a resume or a branch never rewrites a
finished run or re-carves the validation split, a file the project reads back is validated, and an
interrupted phase never exits 0.

Real in-process CLI runs (`models.run.cli.main`, what train.py calls) on tiny data. Each refusal asserts the
exit code, the single error line and that no file on disk changed.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from helpers import main_cli, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Names, sizes and modification times of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture(scope="module")
def finished(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 2-epoch run in version `exp1`, beside an unrelated user file; (the save_dir, its args)."""
    root = tmp_path_factory.mktemp("safety")
    (root / "notes.txt").write_text("the user's own file")
    args = tiny_args(tiny_data, root, "--trainer.logger.init_args.version", "exp1", "--run_test", "false")
    assert main_cli(args) == 0
    return root, args


@pytest.mark.parametrize(
    "overrides",
    [
        ["--trainer.logger.init_args.name=", "--trainer.logger.init_args.version="],
        ["--trainer.logger.init_args.version", ".."],
        ["--trainer.logger.init_args.version", "../../elsewhere"],
    ],
    ids=["empty_name_and_version", "dotdot_version", "version_outside_save_dir"],
)
def test_overwrite_never_deletes_a_parent_or_the_root(
    overrides: list[str], finished: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, args = finished
    parent = root.parent
    before = snapshot(parent)
    assert main_cli([*args, *overrides, "--overwrite", "true"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: trainer.logger.init_args.version must be a folder name that puts the run strictly")
    assert snapshot(parent) == before


def test_overwrite_leaves_checkpoints_no_run_wrote(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "M"
    models.mkdir()
    (models / "teammate.ckpt").write_bytes(b"not ours")
    args = tiny_args(tiny_data, tmp_path / "runs", "--checkpoint.dirpath", str(models), "--run_test", "false",
                     max_epochs=1)
    assert main_cli([*args, "--overwrite", "true"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "checkpoint.dirpath must be a run folder made by train.py" in line and "leaves it alone" in line, line
    assert main_cli(args) == 2  # without --overwrite: refused, naming what is there
    assert "holds checkpoint files that no run of train.py wrote" in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in models.iterdir()) == ["teammate.ckpt"]


def test_overwrite_in_a_shared_checkpoint_folder_removes_only_the_run_s_own_files(
    tiny_data: Path, tmp_path: Path
) -> None:
    models = tmp_path / "M"
    args = tiny_args(tiny_data, tmp_path / "runs", "--checkpoint.dirpath", str(models), "--run_test", "false",
                     max_epochs=1)
    assert main_cli(args) == 0
    marker = json.loads((models / "cifar_aug_run.json").read_text())
    assert marker["status"] == "finished"
    assert sorted(marker["files"]) == sorted(p.name for p in models.glob("*.ckpt"))
    (models / "notes.ckpt").write_bytes(b"the user's file, added later")
    assert main_cli([*args, "--overwrite", "true"]) == 0
    assert (models / "notes.ckpt").read_bytes() == b"the user's file, added later"
    assert len(list(models.glob("best-*.ckpt"))) == 1  # the new run's selected checkpoint


def test_file_url_checkpoint_is_a_local_path(
    finished: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`file://` is resolved before every check: the resume checks and the run-folder claim both apply."""
    root, args = finished
    last = root / "tiny" / "exp1" / "checkpoints" / "last.ckpt"
    before = snapshot(root)
    assert main_cli([*args, "--ckpt_path", last.as_uri(), "--model.optimizer.name", "adamw"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "model.optimizer.name" in line and "'nesterov'" in line and "'adamw'" in line, line
    (best,) = last.parent.glob("best-*.ckpt")  # another checkpoint into the occupied exp1: the claim refuses
    assert main_cli([*args, "--ckpt_path", best.as_uri()]) == 2
    assert "a branch from it needs a new run folder" in error_line(capsys.readouterr().err)
    assert main_cli([*args, "--ckpt_path", f"file://{last}x"]) == 2
    assert "ckpt_path must be an existing checkpoint file" in error_line(capsys.readouterr().err)
    assert snapshot(root) == before


def test_branch_from_a_best_checkpoint_leaves_the_finished_run_as_it_was(
    finished: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, args = finished
    run = root / "tiny" / "exp1"
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    before = snapshot(run)
    auto_version = [a for a in args if a not in ("--trainer.logger.init_args.version", "exp1")]
    assert main_cli([*auto_version, "--trainer.max_epochs", "3", "--ckpt_path", str(best)]) == 0
    assert "branches from it into a new run folder" in capsys.readouterr().out
    assert snapshot(run) == before
    (branch,) = [p for p in (root / "tiny").iterdir() if p.name != "exp1"]
    assert (branch / "checkpoints" / "last.ckpt").is_file()
    # With the finished run's own version named, the branch is refused rather than written into it.
    assert main_cli([*args, "--ckpt_path", str(best)]) == 2
    assert "a branch from it needs a new run folder" in error_line(capsys.readouterr().err)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("setting", "value", "saved"),
    [("data.seed", "1", "0"), ("data.val_size", "32", "24"), ("data.train_subset", "40", "None")],
)
def test_resume_that_would_recarve_the_validation_split_is_refused(
    setting: str, value: str, saved: str, finished: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, args = finished
    last = root / "tiny" / "exp1" / "checkpoints" / "last.ckpt"
    before = snapshot(root)
    assert main_cli([*args, "--trainer.max_epochs", "3", f"--{setting}", value, "--ckpt_path", str(last)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{setting}={saved}" in line and "validation split would change" in line, line
    assert snapshot(root) == before


def test_no_validation_batches_trains_and_keeps_every_epoch(tiny_data: Path, tmp_path: Path) -> None:
    args = tiny_args(tiny_data, tmp_path, "--trainer.limit_val_batches", "0", "--run_test", "false")
    assert main_cli(args) == 0
    (last,) = tmp_path.rglob("last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1


class SigtermInTest(pl.Callback):
    """Sends this process SIGTERM at the first test batch (a scheduler stopping the job)."""

    def on_test_batch_start(self, *args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_test_is_not_a_success_and_the_test_can_be_rerun(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tiny_data, tmp_path, "--trainer.logger.init_args.version", "v", "--data.eval_batch_size", "8")
    terminated = [*args, "--trainer.callbacks+=test_data_safety.SigtermInTest"]
    assert main_cli(terminated) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted (SIGTERM) during test: the fit finished and is saved" in err, err
    marker = json.loads((tmp_path / "tiny" / "v" / "cifar_aug_run.json").read_text())
    assert (marker["status"], marker["phase"]) == ("interrupted", "test")
    command = err.strip().splitlines()[-1].split("test it with: ", 1)[1]
    assert "--ckpt_path" in command and command.endswith("last.ckpt")
    assert main_cli([*args, "--ckpt_path", command.rsplit(" ", 1)[1]]) == 0
    out = capsys.readouterr().out
    assert "test acc" in out and "not run" not in out
    assert json.loads((tmp_path / "tiny" / "v" / "cifar_aug_run.json").read_text())["status"] == "finished"


def test_two_runs_started_together_get_different_version_folders(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    from models.run.folder import claim_version_folder

    first, second = (TensorBoardLogger(str(tmp_path), name="exp") for _ in range(2))
    assert first.version == second.version == 0  # both looked before either wrote
    claim_version_folder(first)
    claim_version_folder(second)
    assert (first.version, second.version) == (0, 1)
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["version_0", "version_1"]
