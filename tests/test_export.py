"""`train.py export`: ONNX and TorchScript of a run's evaluated network (EMA weights), uint8 input with the
normalization inside, logits equal to PyTorch's; refusals are one line."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from competition_data import kfold_study, reference_logits

from models.run.commands import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kfold_study(tmp_path_factory).runs[0]


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


@pytest.mark.slow
def test_onnx_export_equals_pytorch_with_ema_weights(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert main(["export", "--member", str(run), "--format", "onnx", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "EMA weights" in stdout and "opset 18" in stdout and "max abs logit diff" in stdout
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    assert side["class_names"] == [3, 7, 11, 20]  # the training CSV's integer labels
    assert side["input"]["shape"] == ["batch", 3, 32, 32] and side["input"]["dtype"] == "uint8"
    assert side["opset"] == 18 and side["ema_weights"] is True and side["check"]["max_abs_diff"] <= 1e-4
    assert _declared_opset(out) == 18
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch axis
        images = _images(n)
        got = session.run(["logits"], {"images": images})[0]
        ema, trained = reference_logits(run, images)
        assert got.shape == (n, 4)
        assert np.abs(got - ema).max() <= 1e-4
        assert np.abs(got - trained).max() > 1e-3  # the EMA copy was exported, not the trained weights


def _declared_opset(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.slow
def test_onnx_opset_below_18(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model17.onnx"
    assert main(["export", "--member", str(run), "--format", "onnx", "--opset", "17", "--output", str(out)]) == 0
    assert "(torchscript, opset 17)" in capsys.readouterr().out
    assert _declared_opset(out) == 17
    assert json.loads((tmp_path / "model17.onnx.json").read_text())["exporter"] == "torchscript"


@pytest.mark.slow
def test_torchscript_export_equals_pytorch(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.pt"
    assert main(["export", "--member", str(run), "--format", "torchscript", "--output", str(out)]) == 0
    assert "as torchscript (trace)" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out))
    images = _images(3, seed=2)
    with torch.no_grad():
        got = loaded(torch.from_numpy(images)).numpy()
    assert np.abs(got - reference_logits(run, images)[0]).max() <= 1e-4


@pytest.fixture
def fake_study(tmp_path: Path) -> Path:
    """Two run folders whose checkpoints are never read by the checks under test."""
    for fold in (0, 1):
        folder = tmp_path / "study" / f"fold{fold}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "best-epoch000.ckpt").write_bytes(b"unread")
    return tmp_path / "study"


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_refusals(fake_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = fake_study / "fold0"
    taken = tmp_path / "taken.onnx"
    taken.write_text("keep me")
    args = ["export", "--member", str(run), "--format", "onnx"]
    assert main([*args, "--output", str(taken)]) == 2
    assert "--output must be a file that does not exist yet (add --overwrite" in _one_line_error(capsys)
    assert taken.read_text() == "keep me"
    assert main(["export", "--member", str(run), "--format", "torchscript", "--opset", "17",
                 "--output", str(tmp_path / "m.pt")]) == 2
    assert "--opset must be left out with --format torchscript" in _one_line_error(capsys)
    assert main(["export", "--member", str(fake_study), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--member must be one run folder or checkpoint (this folder holds 2 runs)" in _one_line_error(capsys)
    assert main(["export", "--member", str(tmp_path / "nope"), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--member must be existing run folders or checkpoint files" in _one_line_error(capsys)
    assert main(["export", "--member", str(run), "--format", "tflite", "--output", str(tmp_path / "m")]) == 2
    assert "invalid choice: 'tflite'" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study", "taken.onnx"]


def test_missing_export_extra_is_one_line(fake_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    member = str(fake_study / "fold0")
    assert main(["export", "--member", member, "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "cifar-aug[export]"' in _one_line_error(capsys)


@pytest.mark.slow
def test_failed_check_keeps_nothing(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    import models.run.export

    real = models.run.export.reference_logits
    monkeypatch.setattr(models.run.export, "reference_logits", lambda member, images: real(member, images) + 1e-2)
    assert main(["export", "--member", str(run), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert "export check failed" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []
