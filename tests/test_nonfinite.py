"""Non-finite loss: the run stops with one `error:` line naming the bad step, exits 2, and keeps its last
good checkpoint (loadable, finite weights); no checkpoint is written after the bad step."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from test_bad_input import cli_args

from helpers import make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # see conftest  # end-to-end runs

STEPS_PER_EPOCH = 3  # 4 classes x 8 train images, 8 held out for validation, batch 8


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(
        tmp_path_factory.mktemp("nonfinite_data"), num_classes=4, train_per_class=8, test_per_class=2
    )


def _main(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str]:
    from models.run.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return code, errors[0]


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("every_n_train_steps", [0, 1], ids=["epoch_checkpoints", "step_checkpoints"])
def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(
    every_n_train_steps: int, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from models.classifier import CifarClassifier

    bad_step = STEPS_PER_EPOCH + 1  # epoch 1, batch 1: after one good epoch (and its checkpoints)
    clean_loss = CifarClassifier.loss

    def loss_turning_nan(self, logits, targets):
        loss = clean_loss(self, logits, targets)
        return loss * float("nan") if self.global_step == bad_step else loss

    monkeypatch.setattr(CifarClassifier, "loss", loss_turning_nan)
    extra = ["--trainer.max_epochs", "3"]
    if every_n_train_steps:  # unmonitored: a file after every step (whatever the guard's check interval)
        extra += ["--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1",
                  "--checkpoint.filename", "step{step}",
                  "--checkpoint.every_n_train_steps", str(every_n_train_steps)]
    code, line = _main(cli_args(data, tmp_path / "runs", *extra), tmp_path, monkeypatch, capsys)

    assert code == 2
    assert re.search(rf"non-finite loss \(nan\) at global step {bad_step}, epoch 1, batch 1\b", line), line
    kept = Path(line.rsplit("kept at ", 1)[1])
    assert kept.is_file() and kept.parent.name == "checkpoints"
    # The last good state: the end of epoch 0 (epoch checkpoints) or the step just before the bad one.
    expected_step = bad_step if every_n_train_steps else STEPS_PER_EPOCH
    steps = []
    for path in sorted((tmp_path / "runs").rglob("*.ckpt")):  # nothing after the bad step, no NaN weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert _all_finite(ckpt["state_dict"]), path
        steps.append(ckpt["global_step"])
    assert max(steps) == expected_step  # and nothing good was lost
    assert torch.load(kept, map_location="cpu", weights_only=True)["global_step"] <= expected_step
    model = CifarClassifier.load_from_checkpoint(kept, map_location="cpu")
    assert _all_finite(model.state_dict())
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_diverging_learning_rate_stops_with_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A real divergence (lr 1e12, no schedule) rather than an injected NaN: caught at the step it happens."""
    extra = [
        "--trainer.max_epochs", "3",
        "--model.optimizer.name", "sgd",
        "--model.optimizer.lr", "1e12",
        "--model.optimizer.weight_decay", "0",
        "--model.scheduler.name", "none",
    ]
    code, line = _main(cli_args(data, tmp_path / "runs", *extra), tmp_path, monkeypatch, capsys)
    assert code == 2
    match = re.search(r"non-finite loss \((nan|inf|-inf)\) at global step (\d+), epoch (\d+), batch (\d+)", line)
    assert match, line
    step, epoch, batch = (int(g) for g in match.groups()[1:])
    assert step == epoch * STEPS_PER_EPOCH + batch
    for path in (tmp_path / "runs").rglob("*.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] <= step and _all_finite(ckpt["state_dict"]), path
