"""Out-of-fold predictions: a k-fold run's oof.csv (models.callbacks.oof) and the study's CV summary
(bench.study.oof)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from competition_data import kfold_study

from bench.study.oof import find_oof_runs, main, write_study_oof
from models.callbacks.oof import HeldOutPredictions, oof_header, write_oof


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_kfold_runs_write_held_out_predictions(tmp_path_factory: pytest.TempPathFactory) -> None:
    study = kfold_study(tmp_path_factory)
    classes = ["3", "7", "11", "20"]  # the CSV's integer labels, sorted as numbers
    held_out: list[set[str]] = []
    for fold, (run, metrics) in enumerate(zip(study.runs, study.metrics)):
        path = run / "oof.csv"
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        assert header == ["id", "fold", "label", "pred", *(f"prob_{c}" for c in classes)]
        rows = _rows(path)
        assert len(rows) == 48  # half of 4 x 24 training images
        assert {r["fold"] for r in rows} == {str(fold)}
        probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert [r["pred"] for r in rows] == [classes[k] for k in probs.argmax(1)]
        assert all(r["label"] == str(study.labels[r["id"]]) for r in rows)  # the CSV's ids and labels
        assert [r["label"] for r in rows].count("3") == 12  # stratified folds
        accuracy = np.mean([r["label"] == r["pred"] for r in rows])
        assert metrics["oof/acc"] == pytest.approx(accuracy, abs=1e-6)
        # the selected checkpoint's weights on its validation split: the run's best val/acc (one image of slack
        # for a near tie that a different batch order could flip)
        assert accuracy == pytest.approx(metrics["val/acc_best"], abs=1 / 48 + 1e-9)
        held_out.append({r["id"] for r in rows})
    assert not held_out[0] & held_out[1]
    assert held_out[0] | held_out[1] == set(study.labels)  # every training image held out exactly once


def test_no_kfold_no_file(tmp_path: Path) -> None:
    trainer = SimpleNamespace(datamodule=SimpleNamespace(num_folds=0, val_indices=np.arange(3)),
                              log_dir=str(tmp_path), loggers=[], default_root_dir=str(tmp_path))
    HeldOutPredictions().on_train_end(trainer, None)
    assert list(tmp_path.iterdir()) == []


def test_write_oof_rows(tmp_path: Path) -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    write_oof(tmp_path / "oof.csv", ["a.png", "b"], 3, np.array([0, 1]), probs, [10, 2, 7], "id")
    with (tmp_path / "oof.csv").open(newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == oof_header([10, 2, 7]) == ["id", "fold", "label", "pred", "prob_10", "prob_2", "prob_7"]
    assert lines[1] == ["a.png", "3", "10", "10", "0.7", "0.2", "0.1"]
    assert lines[2] == ["b", "3", "2", "7", "0.1", "0.1", "0.8"]


def _fold(folder: Path, fold: int, pairs: list[tuple[str, str]], start: int = 0) -> Path:
    """A run folder with an oof.csv of (label, pred) pairs; ids start..start+n-1."""
    folder.mkdir(parents=True)
    probs = np.full((len(pairs), 2), 0.5)
    for i, (_, pred) in enumerate(pairs):
        probs[i, int(pred == "b")] = 0.9
        probs[i, int(pred != "b")] = 0.1
    labels = np.array([int(lab == "b") for lab, _ in pairs])
    write_oof(folder / "oof.csv", list(range(start, start + len(pairs))), fold, labels, probs, ["a", "b"], "index")
    return folder


@pytest.fixture
def three_folds(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    _fold(study / "v" / "fold2", 2, [("a", "a"), ("b", "b"), ("a", "a"), ("b", "b")], 6)  # 4 of 4
    _fold(study / "v" / "fold0", 0, [("a", "a"), ("b", "b"), ("a", "b"), ("b", "b")], 0)  # 3 of 4
    _fold(study / "v" / "fold1", 1, [("a", "b"), ("b", "b")], 4)  # 1 of 2
    return study


def test_cv_summary_math(three_folds: Path) -> None:
    runs = find_oof_runs(three_folds)
    assert [r.name for r in runs] == ["fold0", "fold1", "fold2"]
    summary = write_study_oof(three_folds, list(reversed(runs)))
    assert [(f["fold"], f["images"], f["accuracy"]) for f in summary["folds"]] == [(0, 4, 0.75), (1, 2, 0.5),
                                                                                 (2, 4, 1.0)]
    assert summary["mean_accuracy"] == 0.75
    assert summary["std_accuracy"] == 0.25  # sample std (n - 1) of 0.75, 0.5, 1.0
    assert summary["oof_accuracy"] == 0.8 and summary["correct"] == 8 and summary["images"] == 10
    joined = _rows(three_folds / "oof.csv")
    assert [r["index"] for r in joined] == [str(i) for i in range(10)]  # fold by fold
    assert json.loads((three_folds / "cv_summary.json").read_text())["oof_accuracy"] == 0.8
    md = (three_folds / "cv_summary.md").read_text()
    assert "| 1 | 2 | 0.5000 |" in md
    assert "0.7500 +- 0.2500" in md and "OOF accuracy: 0.8000 (8 of 10 held-out images)" in md
    assert find_oof_runs(three_folds) == runs  # the joined file is not a run


def test_cv_refusals(tmp_path: Path) -> None:
    a = _fold(tmp_path / "a", 0, [("a", "a")])
    b = _fold(tmp_path / "b", 0, [("b", "a")])
    with pytest.raises(ValueError, match="fold 0 appears twice"):
        write_study_oof(tmp_path / "s", [a, b])
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no oof.csv"):
        write_study_oof(tmp_path / "s", [a, tmp_path / "c"])
    d = tmp_path / "d"
    d.mkdir()
    (d / "oof.csv").write_text("id,fold,label,pred,prob_x\n1,1,x,x,1\n")
    with pytest.raises(ValueError, match="other columns"):
        write_study_oof(tmp_path / "s", [a, d])
    assert not (tmp_path / "s").exists()  # nothing written when refused


def test_command_line(three_folds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(three_folds)]) == 0
    out = capsys.readouterr().out
    assert "OOF accuracy: 0.8000" in out and (three_folds / "cv_summary.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: no run folder below") and "oof.csv" in err
