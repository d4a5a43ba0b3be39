"""data.dataset: csv and data.image_size: label files, class lists, cache keys, checkpoints, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from augment.checks import CheckError
from augment.data import CIFARDataModule
from augment.data.datasets import CACHE_DIRNAME, load_dataset


def _competition(root, n=24, labels=("cat", "dog", "ant"), sizes=((20, 24), (24, 24), (28, 20))):
    """n PNGs of mixed sizes; the CSV names every other id without its extension. Returns the labels written."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines, written = ["id,label"], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)).save(root / f"im{i}.png")
        label = labels[i % len(labels)]
        lines.append(f"im{i}{'.png' if i % 2 else ''},{label}")
        written.append(label)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return written


def test_csv_dataset_string_labels_sorted_classes_and_resize(tmp_path):
    written = _competition(tmp_path)
    images, labels, classes = load_dataset("csv", tmp_path, "train", image_size=16, train_csv="train.csv")
    assert classes == ["ant", "cat", "dog"] and images.shape == (24, 16, 16, 3)
    assert [classes[i] for i in labels] == written


def test_csv_int_labels_and_absolute_csv_path(tmp_path):
    _competition(tmp_path, labels=(10, 2), sizes=((16, 16),))
    dm = CIFARDataModule(dataset="csv", root=str(tmp_path), train_csv=str(tmp_path / "train.csv"), val_size=4)
    assert dm.class_names == [2, 10] and dm.image_size == (16, 16) and dm.num_classes == 2
    assert not dm.has_test and dm.test_dataloader() == []


def test_mixed_sizes_without_image_size_ask_for_it(tmp_path):
    _competition(tmp_path)
    dm = CIFARDataModule(dataset="csv", root=str(tmp_path), train_csv="train.csv", val_size=4)
    with pytest.raises(ValueError, match="set data.image_size"):
        dm.setup("fit")


def test_missing_column_unknown_id_and_bad_settings(tmp_path):
    _competition(tmp_path)
    with pytest.raises(CheckError, match=r"data.label_column must be a column of .*columns found: id, label"):
        _ = CIFARDataModule(dataset="csv", root=str(tmp_path), train_csv="train.csv", label_column="y").class_names
    (tmp_path / "more.csv").write_text("id,label\nim0,cat\nnope,dog\n")
    with pytest.raises(ValueError, match=f"image id 'nope' has no image file in {tmp_path}"):
        load_dataset("csv", tmp_path, "train", image_size=16, train_csv="more.csv")
    with pytest.raises(CheckError, match="data.train_csv must be the label file"):
        CIFARDataModule(dataset="csv", root=str(tmp_path))
    with pytest.raises(CheckError, match="data.train_csv must be null unless data.dataset is csv"):
        CIFARDataModule(dataset="imagefolder", root=str(tmp_path), train_csv="train.csv")
    for bad in (4, [16], [16, 16, 16], 16.0, "16"):
        with pytest.raises(CheckError, match=r"data.image_size must be null, an int or \[height, width\]"):
            CIFARDataModule(dataset="csv", root=str(tmp_path), train_csv="train.csv", image_size=bad)


def test_cache_key_includes_the_size(tmp_path):
    _competition(tmp_path)
    a = load_dataset("csv", tmp_path, "train", image_size=16, train_csv="train.csv")[0]
    b = load_dataset("csv", tmp_path, "train", image_size=[12, 20], train_csv="train.csv")[0]
    assert a.shape[1:3] == (16, 16) and b.shape[1:3] == (12, 20)
    names = sorted(p.name for p in (tmp_path / CACHE_DIRNAME).glob("*.images.npy"))
    assert len(names) == 2 and names[0].startswith("csv-12x20-train-") and names[1].startswith("csv-16x16-train-")
    again = load_dataset("csv", tmp_path, "train", image_size=16, train_csv="train.csv")[0]  # from the cache
    assert np.array_equal(a, again)


def test_imagefolder_gets_image_size(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((10 + len(c), 14, 3), np.uint8)).save(tmp_path / split / c / "x.png")
            Image.fromarray(np.zeros((12, 9, 3), np.uint8)).save(tmp_path / split / c / "y.png")
    dm = CIFARDataModule(dataset="imagefolder", root=str(tmp_path), image_size=[8, 10], val_size=0)
    dm.setup()
    assert dm.arrays("train")[0].shape == (4, 8, 10, 3) and dm.arrays("test")[0].shape == (4, 8, 10, 3)
    assert dm.image_size == (8, 10)


def test_datamodule_state_records_the_data_facts_and_class_counts(tmp_path):
    _competition(tmp_path)
    dm = CIFARDataModule(dataset="csv", root=str(tmp_path), train_csv="train.csv", image_size=16, val_size=6)
    state = dm.state_dict()
    assert state["class_names"] == ["ant", "cat", "dog"] and state["image_size"] == [16, 16]
    assert len(state["mean"]) == 3 and all(0.3 < m < 0.7 for m in state["mean"])
    assert dm.train_class_counts().tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="trained on 2 classes"):
        dm.load_state_dict({"class_names": ["x", "y"]})


def test_class_weighted_soft_target_loss():
    from models.classifier import CifarClassifier

    model = CifarClassifier(backbone="test_resnet", num_classes=3, class_weights=[1.0, 2.0, 3.0])
    assert torch.allclose(model.loss_class_weights, torch.tensor([0.5, 1.0, 1.5]))
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    log_p = torch.log_softmax(logits, 1)
    want = -(soft * torch.tensor([0.5, 1.0, 1.5]) * log_p).sum(1).mean()
    assert torch.allclose(model.loss(logits, soft), want)
    hard = torch.tensor([1, 2])  # int labels: one-hot, the same per-class weighting
    assert torch.allclose(model.loss(logits, hard), -(log_p[0, 1] * 1.0 + log_p[1, 2] * 1.5) / 2)
    with pytest.raises(CheckError, match="model.class_weights must be null, auto or a list of 3 weights > 0"):
        CifarClassifier(backbone="test_resnet", num_classes=3, class_weights=[1.0, 0.0, 1.0])


@pytest.mark.slow
def test_csv_run_end_to_end_with_auto_class_weights_stores_class_names(tmp_path):
    from helpers import run_cli, tiny_args

    _competition(tmp_path / "data", n=36, labels=("cat", "dog", "dog", "dog"))
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "--data.dataset", "csv", "--data.train_csv", "train.csv",
                     "--data.image_size", "24", "--data.val_size", "8", "--model.class_weights", "auto",
                     max_epochs=1)
    result = run_cli(args)
    ckpt_path = next((tmp_path / "runs").rglob("best*.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["CIFARDataModule"]["class_names"] == ["cat", "dog"]
    assert tuple(ckpt["hyper_parameters"]["input_size"]) == (24, 24)
    weights = ckpt["state_dict"]["loss_class_weights"]
    counts = torch.tensor([7.0, 21.0])  # 9 cat, 27 dog; 8 held out stratified (2 cat, 6 dog)
    assert torch.allclose(weights, (1 / counts) / (1 / counts).mean())
    assert "test/acc" not in result
