"""Cases the reliability principles cover: a path means what it means in the shell, a setting means what its
library documents, no internals' error reaches the user, the user's explicit setting wins, every file the
project reads may be empty or hostile, and an error message stays one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import main_cli, run_cli, tiny_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.slow
def test_tilde_in_ckpt_path_is_the_home_folder(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    args = tiny_args(tiny_data, tmp_path / "runs", "--trainer.logger.init_args.version", "v", "--run_test", "false",
                     max_epochs=1)
    assert main_cli(args) == 0
    resumed = run_cli([*args, "--trainer.max_epochs", "2", "--ckpt_path", "~/runs/tiny/v/checkpoints/last.ckpt"])
    assert resumed["epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("limit", "steps"), [("1", 1), ("2", 2), ("0.5", 2)])
def test_limit_train_batches_int_is_a_count_float_a_fraction(
    limit: str, steps: int, tiny_data: Path, tmp_path: Path
) -> None:
    """72 training images in batches of 16 (drop_last): 4 batches an epoch; 1 means one batch, 0.5 half."""
    metrics = run_cli(tiny_args(tiny_data, tmp_path, "--trainer.limit_train_batches", limit, "--run_test", "false",
                                max_epochs=1))
    assert metrics["global_step"] == steps


@pytest.mark.slow
def test_batch_of_one_with_batchnorm_is_refused_naming_the_batch_size(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_cli(tiny_args(tiny_data, tmp_path, "--data.batch_size", "1")) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: data.batch_size must be >= 2 with BatchNorm") and "got 1" in line, line
    assert not any(tmp_path.rglob("*.ckpt"))


def test_a_training_split_of_one_image_with_batchnorm_is_refused() -> None:
    from augment.checks import CheckError
    from models.run.preflight import check_batch_statistics

    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    gn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    check_batch_statistics(bn, batch_size=16, train_size=2)  # one batch of two: fine
    check_batch_statistics(gn, batch_size=1, train_size=1)  # no batch statistics needed
    with pytest.raises(CheckError, match="data.val_size must be a training split of >= 2 images per process"):
        check_batch_statistics(bn, batch_size=16, train_size=3, world_size=3)
    with pytest.raises(CheckError, match="data.batch_size must be >= 2"):
        check_batch_statistics(bn, batch_size=1, train_size=100)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty: it must be a YAML mapping of settings"),
        ("# only a comment\n", "is empty: it must be a YAML mapping of settings"),
        ("- a\n- b\n", "must be a YAML mapping of settings (see configs/), got a list"),
        ("model: {backbone: [resnet18\n", "is not valid YAML (error parsing config at line"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
            "expands to more than 100000 values through YAML aliases",
        ),
    ],
    ids=["empty", "comment_only", "list", "malformed", "alias_bomb"],
)
def test_config_file_that_is_not_a_settings_mapping_is_one_line(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main_cli(["--config", str(config)]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --config {config} ") and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_missing_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_cli([f"--config={tmp_path / 'nope.yaml'}"]) == 2
    assert "--config must be an existing YAML file" in error_line(capsys.readouterr().err)


def test_tilde_in_config_path_is_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text("")
    assert main_cli(["--config", "~/c.yaml"]) == 2  # found (and refused as empty), not "does not exist"
    assert f"--config {tmp_path / 'c.yaml'} is empty" in error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_enable_checkpointing_false_turns_checkpoints_off(tiny_data: Path, tmp_path: Path) -> None:
    metrics = run_cli(tiny_args(tiny_data, tmp_path, "--trainer.enable_checkpointing", "false", max_epochs=1))
    assert "test/acc" in metrics  # tested with the final weights
    assert not list(tmp_path.rglob("*.ckpt"))


class Payload:
    """A pickle that runs a command when loaded."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.flag}",))


def test_a_checkpoint_that_would_run_code_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = tmp_path / "payload_ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "epoch": Payload(flag)}, crafted)
    assert main_cli(["--ckpt_path", str(crafted), "--trainer.accelerator", "cpu"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"ckpt_path must be a checkpoint that holds only tensors and plain data, got '{crafted}'" in line, line
    assert not flag.exists()

    from models.run.resume import load_checkpoint_file

    with pytest.raises(ValueError, match="asks to run code when loaded"):
        load_checkpoint_file(crafted, key="sharpness: best checkpoint")
    assert not flag.exists()


def test_sam_refusal_of_a_parameter_list_stays_one_line() -> None:
    from models.sam import SAM

    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(60)]
    with pytest.raises(ValueError) as err:
        SAM(params)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200, str(err.value)
    assert "got a list of 60 items" in str(err.value)
