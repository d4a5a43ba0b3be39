"""`train.py predict`: members (checkpoints, run folders, study folders), the ensemble's probabilities
(members x TTA views), the submission CSV (order, columns, label / probs), and refusals in one line."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from competition_data import kfold_study, reference_logits, sample_images, write_pngs

from models.run.commands import main, submission_table
from models.run.predict import run_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["3", "7", "11", "20"]  # the training CSV's integer labels, as the CSV writes them


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), 1).numpy()


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return kfold_study(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[str]]:
    """8 test PNGs named img_<k>.png in a shuffled name order; (folder, images in sorted name order, names)."""
    folder = tmp_path_factory.mktemp("test_images")
    pixels, _ = sample_images(8)
    names = [f"img_{k}.png" for k in (5, 2, 7, 0, 3, 6, 1, 4)]
    write_pngs(folder, pixels, names)
    order = np.argsort(names)
    return folder, pixels[order], sorted(names)


def _nchw(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def _with_facts(src: Path, dst: Path, **facts) -> Path:
    """A copy of checkpoint `src` at `dst` recording other data facts (class_names, image_size) in the
    DataModule's state (`augment.data.images.checkpoint_data_info` reads them there first)."""
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    checkpoint.setdefault("CIFARDataModule", {}).update(facts)  # where a run records them
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dst)
    return dst


def _best(run: Path) -> Path:
    return next((run / "checkpoints").glob("best*.ckpt"))


# ----------------------------------------------------------------------------------------------------------
# Ensemble


@pytest.mark.slow
def test_one_member_probs(study, images, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, pixels, names = images
    out = tmp_path / "probs.csv"
    assert main(["predict", "--members", str(study.runs[0]), "--images", str(folder), "--output", str(out),
                 "--format", "probs", "--device", "cpu"]) == 0
    assert "predicted 8 images x 1 member x 1 view (none) on cpu" in capsys.readouterr().out
    header, rows = _read(out)
    assert header == ["id", *CLASSES]
    assert [r["id"] for r in rows] == [n.removesuffix(".png") for n in names]  # file stems, sorted
    got = np.array([[float(r[c]) for c in CLASSES] for r in rows])
    want = _softmax(reference_logits(study.runs[0], _nchw(pixels))[0])  # EMA weights
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.slow
def test_study_folder_two_members_flip_tta(study, images, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, pixels, _ = images
    out = tmp_path / "sub.csv"
    assert main(["predict", "--members", str(study.study_dir), "--images", str(folder), "--output", str(out),
                 "--format", "probs", "--tta", "flip", "--batch-size", "3"]) == 0
    assert "x 2 members x 2 views (flip)" in capsys.readouterr().out
    _, rows = _read(out)
    got = np.array([[float(r[c]) for c in CLASSES] for r in rows])
    x = _nchw(pixels)
    views = [x, np.ascontiguousarray(x[..., ::-1])]
    want = np.mean([_softmax(reference_logits(run, v)[0]) for run in study.runs for v in views], axis=0)
    np.testing.assert_allclose(got, want, atol=2e-6)
    one = np.mean([_softmax(reference_logits(study.runs[0], v)[0]) for v in views], axis=0)
    assert np.abs(one - want).max() > 1e-4  # both members count


@pytest.mark.slow
def test_ids_csv_order_and_columns_kept(study, images, tmp_path: Path) -> None:
    folder, pixels, names = images
    ids = tmp_path / "sample_submission.csv"
    ids.write_text("id,label,note\nimg_6,0,x\nimg_1.png,0,y\nimg_3,0,z\n")
    out = tmp_path / "submission.csv"
    assert main(["predict", "--members", str(study.runs[1]), "--images", str(folder), "--ids", str(ids),
                 "--output", str(out)]) == 0
    header, rows = _read(out)
    assert header == ["id", "label", "note"]
    assert [(r["id"], r["note"]) for r in rows] == [("img_6", "x"), ("img_1.png", "y"), ("img_3", "z")]
    picked = pixels[[names.index(n) for n in ("img_6.png", "img_1.png", "img_3.png")]]
    want = _softmax(reference_logits(study.runs[1], _nchw(picked))[0]).argmax(1)
    assert [r["label"] for r in rows] == [CLASSES[k] for k in want]
    probs = tmp_path / "probs.csv"
    assert main(["predict", "--members", str(study.runs[1]), "--images", str(folder), "--ids", str(ids),
                 "--output", str(probs), "--format", "probs"]) == 0
    assert _read(probs)[0] == ["id", "note", *CLASSES]  # the label column gives way to the class columns


@pytest.mark.slow
def test_int_labels_stay_ints(study, images, tmp_path: Path) -> None:
    folder, _, _ = images
    out = tmp_path / "sub.csv"
    assert main(["predict", "--members", str(study.runs[0]), "--images", str(folder), "--output", str(out)]) == 0
    _, rows = _read(out)
    assert rows and all(r["label"] in CLASSES and str(int(r["label"])) == r["label"] for r in rows)
    named = _with_facts(_best(study.runs[0]), tmp_path / "named" / "member.ckpt", class_names=["a", "b", "c", "d"])
    assert main(["predict", "--members", str(named), "--images", str(folder), "--output", str(tmp_path / "n.csv")]) == 0
    _, named_rows = _read(tmp_path / "n.csv")
    assert [r["label"] for r in named_rows] == ["abcd"[CLASSES.index(r["label"])] for r in rows]


# ----------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.slow
def test_members_must_agree(study, images, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = images
    best = _best(study.runs[0])
    other = _with_facts(best, tmp_path / "other" / "classes.ckpt", class_names=["a", "b", "c", "d"])
    out = tmp_path / "sub.csv"
    assert main(["predict", "--members", str(best), str(other), "--images", str(folder), "--output", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "one class list" in err and str(best) in err and str(other) in err
    bigger = _with_facts(best, tmp_path / "other" / "size.ckpt", image_size=[40, 40])
    assert main(["predict", "--members", str(best), str(bigger), "--images", str(folder), "--output", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "one image size" in err and "32x32" in err and "40x40" in err
    assert not out.exists()


@pytest.mark.slow
def test_bad_images(study, images, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = images
    out = tmp_path / "sub.csv"
    ids = tmp_path / "ids.csv"
    ids.write_text("id,label\nimg_1,0\nno_such_image,0\n")
    member = str(study.runs[0])
    assert main(["predict", "--members", member, "--images", str(folder), "--ids", str(ids), "--output", str(out)]) == 2
    assert "no_such_image" in _one_line_error(capsys)
    broken = tmp_path / "broken"
    write_pngs(broken, sample_images(2)[0], ["a.png", "b.png"])
    (broken / "b.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", "--members", member, "--images", str(broken), "--output", str(out)]) == 2
    assert "b.png" in _one_line_error(capsys)
    assert not out.exists()


def test_output_exists_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "submission.csv"
    out.write_text("mine\n")
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output", str(out)]) == 2
    assert "--output must be a file that does not exist yet (add --overwrite" in _one_line_error(capsys)
    assert out.read_text() == "mine\n"


def test_argument_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "s.csv")
    assert main(["predict", "--images", str(tmp_path), "--output", out]) == 2
    assert "the following arguments are required: --members" in _one_line_error(capsys)
    assert main(["predict", "--members", str(tmp_path / "nope"), "--images", str(tmp_path), "--output", out]) == 2
    assert "--members must be existing run folders or checkpoint files" in _one_line_error(capsys)
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output", out]) == 2
    assert "no checkpoint below" in _one_line_error(capsys)
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path / "x"), "--output", out]) == 2
    assert "--images must be an existing folder of images" in _one_line_error(capsys)
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output", out,
                 "--tta", "five"]) == 2
    assert "invalid choice: 'five'" in _one_line_error(capsys)
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output", out,
                 "--batch-size", "0"]) == 2
    assert "--batch-size must be an int >= 1, got 0" in _one_line_error(capsys)
    if not torch.cuda.is_available():
        assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output", out,
                     "--device", "cuda"]) == 2
        assert "--device must be auto or cpu on a machine without a CUDA device" in _one_line_error(capsys)


def test_malicious_checkpoint_refused_unrun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload()}, evil)
    (tmp_path / "images").mkdir()
    assert main(["predict", "--members", str(evil), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "s.csv")]) == 2
    err = _one_line_error(capsys)
    assert str(evil) in err and "refused unread" in err
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# Pieces


def test_run_checkpoint_selection(tmp_path: Path) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"x")
    assert run_checkpoint(tmp_path / "run") == ckpts / "last.ckpt"  # only last: a run without validation
    (ckpts / "epoch004-step50.ckpt").write_bytes(b"x")
    assert run_checkpoint(tmp_path / "run") == ckpts / "epoch004-step50.ckpt"
    (ckpts / "best-epoch001-val_acc0.5000.ckpt").write_bytes(b"x")
    assert run_checkpoint(ckpts) == ckpts / "best-epoch001-val_acc0.5000.ckpt"
    (ckpts / "best-epoch003-val_acc0.6000.ckpt").write_bytes(b"x")  # save_top_k 2: last.ckpt names the best
    state = {"best_model_path": "/elsewhere/best-epoch001-val_acc0.5000.ckpt"}
    torch.save({"state_dict": {}, "callbacks": {"RunCheckpoint{'monitor': 'val/loss'}": state}}, ckpts / "last.ckpt")
    assert run_checkpoint(tmp_path / "run") == ckpts / "best-epoch001-val_acc0.5000.ckpt"
    assert run_checkpoint(tmp_path) is None


def test_submission_table_formats() -> None:
    probs = np.array([[0.1, 0.9], [0.6, 0.4]])
    assert submission_table(["a", "b"], probs, ["cat", "dog"], "label") == (
        ["id", "label"], [["a", "dog"], ["b", "cat"]])
    table = [{"image": "a", "label": "?"}, {"image": "b", "label": "?"}]
    assert submission_table(["a", "b"], probs, ["cat", "dog"], "probs", table, id_column="image") == (
        ["image", "cat", "dog"], [["a", "0.1", "0.9"], ["b", "0.6", "0.4"]])
    table = [{"id": "a", "dog": "", "cat": ""}]  # probability columns in the sample's order
    assert submission_table(["a"], probs[:1], ["cat", "dog"], "probs", table) == (
        ["id", "dog", "cat"], [["a", "0.9", "0.1"]])


def test_train_py_dispatches_predict_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from models.run.cli import main as train_main

    out = tmp_path / "taken.csv"
    out.write_text("")
    assert train_main(["predict", "--members", "m", "--images", ".", "--output", str(out)]) == 2
    assert _one_line_error(capsys).startswith("error: --output must be a file that does not exist yet")
    assert train_main(["export", "--help"]) == 0
    assert "--format {onnx,torchscript}" in capsys.readouterr().out


@pytest.mark.slow
def test_train_py_predict_subprocess(study, images, tmp_path: Path) -> None:
    import subprocess
    import sys

    from helpers import REPO, subprocess_env

    folder, _, _ = images
    out = tmp_path / "sub.csv"
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "predict", "--members", str(study.runs[0]), str(study.runs[1]),
         "--images", str(folder), "--output", str(out), "--device", "auto"],
        capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "predicted 8 images x 2 members x 1 view (none) on cpu" in done.stdout
    assert _read(out)[0] == ["id", "label"] and len(_read(out)[1]) == 8


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import models.run.commands

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(models.run.commands, "predict_command", interrupted)
    assert main(["predict", "--members", "m"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C): predict stopped, nothing written"


@pytest.mark.slow
def test_chunked_decoding_gives_the_same_probabilities(study, images, tmp_path: Path) -> None:
    folder, _, _ = images
    outs = []
    for chunk in ("3", "8192"):
        out = tmp_path / f"chunk{chunk}.csv"
        assert main(["predict", "--members", str(study.runs[0]), "--images", str(folder), "--output", str(out),
                     "--format", "probs", "--chunk-size", chunk, "--batch-size", "2"]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 9  # header + 8 images


def test_chunk_size_below_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--members", str(tmp_path), "--images", str(tmp_path), "--output",
                 str(tmp_path / "x.csv"), "--chunk-size", "0"]) == 2
    assert "--chunk-size must be an int >= 1, got 0" in _one_line_error(capsys)
