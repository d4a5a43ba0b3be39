"""CIFARDataModule: argument checks, splits, loaders (gpu path on CPU tensors, cpu path) and a Lightning fit."""

import os
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from augment.data import CIFARDataModule
from augment.data.datasets import CIFAR10_MEAN, CIFAR100_STD, channel_stats, load_dataset
from augment.data.loaders import DeviceBatchLoader
from augment.data.splits import class_counts

CLASSES = ("ant", "bee", "cat", "dog")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """ImageFolder with 4 classes: 20 train and 5 test 8x8 images each (pixel [0,0,0] = class id)."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 5)):
        for c, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img[0, 0, 0] = c
                Image.fromarray(img).save(folder / f"{i:02d}.png")
    return str(root)


def _dm(tree, **kw):
    args = dict(dataset="imagefolder", root=tree, val_size=8, batch_size=16, loader="device", num_workers=0, padding=2)
    args.update(kw)
    return CIFARDataModule(**args)


# --------------------------------------------------------------------------------------------------
# Facts right after __init__


def test_properties_available_after_init(tree):
    dm = _dm(tree)
    assert dm.num_classes == 4 and dm.class_names == list(CLASSES)
    images, _, _ = load_dataset("imagefolder", tree, "train")
    mean, std = channel_stats(images)
    np.testing.assert_allclose(dm.mean, mean)
    np.testing.assert_allclose(dm.std, std)
    cifar = CIFARDataModule(root="/nonexistent")  # CIFAR facts need no data on disk
    assert cifar.num_classes == 10 and cifar.mean == CIFAR10_MEAN
    c100 = CIFARDataModule(dataset="cifar100", root="/nonexistent")
    assert c100.num_classes == 100 and c100.std == CIFAR100_STD
    assert dm.has_val


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="mnist"), "data.dataset must be one of cifar10, cifar100, imagefolder, csv, got 'mnist'"),
        (dict(loader="tpu"), "data.loader must be one of auto, device, workers, got 'tpu'"),
        (dict(num_folds=1), "data.num_folds must be 0 \\(off\\) or an int >= 2, got 1"),
        (dict(num_folds=5, fold=5), "data.fold must be an int in \\[0, 5\\)"),
        (dict(fold=2), "data.fold must be 0 when data.num_folds is 0"),
        (dict(val_size=-1), "data.val_size must be an int count >= 0 or a float fraction in \\[0, 1\\), got -1"),
        (dict(val_size=1.5), "data.val_size must be"),
        (dict(batch_size=0), "data.batch_size must be an int >= 1, got 0"),
        (dict(eval_batch_size=0), "data.eval_batch_size must be null or an int >= 1"),
        (dict(num_workers=-1), "data.num_workers must be an int >= 0"),
        (dict(padding=-2), "data.padding must be an int >= 0"),
        (dict(train_subset=0), "data.train_subset must be null or an int >= 1"),
        (dict(cutout_holes=-1), "data.cutout_holes must be an int >= 0"),
        (dict(seed=-3), "data.seed must be an int >= 0"),
    ],
)
def test_argument_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFARDataModule(**kwargs)


def test_val_size_too_large_fails_at_setup(tree):
    dm = _dm(tree, val_size=80)
    with pytest.raises(ValueError, match="data.val_size must be an int count in \\[0, 80\\)"):
        dm.setup("fit")


def test_missing_root_error(tmp_path):
    dm = CIFARDataModule(dataset="cifar10", root=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="point data.root at a local copy"):
        dm.setup("fit")


# --------------------------------------------------------------------------------------------------
# Splits


def _labels(tree):
    return load_dataset("imagefolder", tree, "train")[1]


def test_stratified_val_split_sizes_disjoint_and_seeded(tree):
    dm = _dm(tree, val_size=8)
    dm.setup("fit")
    y = _labels(tree)
    assert len(dm.val_indices) == 8 and len(dm.train_indices) == 72
    assert class_counts(y[dm.val_indices], 4).tolist() == [2, 2, 2, 2]
    assert np.intersect1d(dm.train_indices, dm.val_indices).size == 0
    again = _dm(tree, val_size=8)
    again.setup("fit")
    assert np.array_equal(again.val_indices, dm.val_indices)
    other = _dm(tree, val_size=8, seed=1)
    other.setup("fit")
    assert not np.array_equal(other.val_indices, dm.val_indices)
    frac = _dm(tree, val_size=0.25)
    frac.setup("fit")
    assert class_counts(y[frac.val_indices], 4).tolist() == [5, 5, 5, 5]


def test_kfold_folds_cover_train_and_never_overlap(tree):
    vals = []
    for fold in range(4):
        dm = _dm(tree, num_folds=4, fold=fold)
        dm.setup("fit")
        assert np.intersect1d(dm.train_indices, dm.val_indices).size == 0
        assert class_counts(_labels(tree)[dm.val_indices], 4).tolist() == [5] * 4
        vals.append(dm.val_indices)
    assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(80))


def test_train_subset_and_bootstrap_stay_out_of_val(tree):
    dm = _dm(tree, val_size=8, train_subset=40, bootstrap=True)
    dm.setup("fit")
    assert len(dm.train_indices) == 40
    assert len(np.unique(dm.train_indices)) < 40  # drawn with replacement
    assert np.intersect1d(dm.train_indices, dm.val_indices).size == 0
    sub = _dm(tree, val_size=8, train_subset=40)
    sub.setup("fit")
    assert class_counts(_labels(tree)[sub.train_indices], 4).tolist() == [10] * 4
    assert set(dm.train_indices) <= set(sub.train_indices)


def test_val_size_zero_warns_and_has_no_val_loader(tree):
    with pytest.warns(UserWarning, match="early stopping"):
        dm = _dm(tree, val_size=0)
    assert not dm.has_val
    dm.setup("fit")
    assert len(dm.train_indices) == 80
    assert dm.val_dataloader() == []


# --------------------------------------------------------------------------------------------------
# Loaders


def test_gpu_loader_on_cpu_tensors(tree):
    dm = _dm(tree, val_size=8, eval_batch_size=5, channels_last=True)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train, DeviceBatchLoader) and dm.resolved_loader == "device"
    assert len(train) == 72 // 16 and train.drop_last
    x, y = next(iter(train))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    val_y = torch.cat([y for _, y in val])
    assert len(val_y) == 8 and torch.equal(val_y, torch.from_numpy(_labels(tree)[dm.val_indices]))
    test_y = torch.cat([y for _, y in test])
    assert len(test) == 4 and len(test_y) == 20
    # eval batches are the exact normalized images; pixel [0,0,0] carries the class id
    xv, yv = next(iter(val))
    raw = xv[:, 0, 0, 0] * dm.std[0] + dm.mean[0]
    assert torch.equal(torch.round(raw * 255).long(), yv)


def test_cpu_loader_without_workers(tree):
    dm = _dm(tree, loader="workers", val_size=8, cutout_holes=1, cutout_size=2)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert isinstance(train, torch.utils.data.DataLoader) and not train.persistent_workers
    x, y = next(iter(train))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    val = dm.val_dataloader()
    assert sum(len(y) for _, y in val) == 8


def test_cpu_loader_worker_settings(tree):
    dm = _dm(tree, loader="workers", num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers and not loader.pin_memory
    assert loader.worker_init_fn is not None


def test_auto_loader_without_cuda_is_cpu(tree):
    assert _dm(tree, loader="auto").resolved_loader == "workers"


def test_cutout_on_gpu_loader_warns(tree):
    dm = _dm(tree, cutout_holes=1)
    dm.setup("fit")
    with pytest.warns(UserWarning, match="cutout_holes applies to the workers loader only"):
        dm.train_dataloader()


# --------------------------------------------------------------------------------------------------
# A real (tiny) Lightning fit


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3 * 8 * 8, 4)
        self.seen = []

    def training_step(self, batch, _):
        x, y = batch
        self.seen.append(y.clone())
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kw):
    return pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kw,
    )


@pytest.mark.parametrize("loader", ["device", "workers"])
def test_lightning_fit_with_and_without_val(tree, loader):
    model = _Tiny()
    dm = _dm(tree, loader=loader, val_size=8)
    trainer = _trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2 and len(model.seen) == 2 * (72 // 16)
    assert "val/loss" in trainer.callback_metrics
    if loader == "device":  # Lightning set the epoch through loader.sampler: the two epochs' orders differ
        assert trainer.train_dataloader.epoch >= 1
        first, second = torch.cat(model.seen[:4]), torch.cat(model.seen[4:])
        assert not torch.equal(first, second)
    with pytest.warns(UserWarning, match="early stopping"):
        dm0 = _dm(tree, loader=loader, val_size=0)
    trainer0 = _trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer0.fit(_Tiny(), datamodule=dm0)
    assert trainer0.current_epoch == 2 and "val/loss" not in trainer0.callback_metrics


# --------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.realdata
def test_real_cifar10_datamodule_split():
    root = os.environ.get("CIFAR10_ROOT")
    if not root:
        pytest.skip("CIFAR10_ROOT is not set: export the lossless CIFAR-10 copy and point CIFAR10_ROOT at it")
    dm = CIFARDataModule(dataset="cifar10", root=root, val_size=5000, loader="device", batch_size=512)
    dm.setup("fit")
    labels = load_dataset("cifar10", root, "train")[1]
    assert len(dm.train_indices) == 45000 and len(dm.val_indices) == 5000
    assert class_counts(labels[dm.val_indices], 10).tolist() == [500] * 10
    loader = dm.train_dataloader()
    assert len(loader) == 45000 // 512
    x, y = next(iter(loader))
    assert x.shape == (512, 3, 32, 32) and abs(float(x.mean())) < 0.2


@pytest.mark.parametrize("old, new", [("gpu", "device"), ("cpu", "workers")])
def test_former_loader_names_still_work_with_a_future_warning(tree, old, new):
    with pytest.warns(FutureWarning, match=f"data.loader '{old}' is deprecated, use '{new}'"):
        dm = _dm(tree, loader=old)
    assert dm.loader == new and dm.resolved_loader == new


def test_unknown_loader_names_the_allowed_values(tree):
    with pytest.raises(ValueError, match=r"^data\.loader must be one of auto, device, workers, got 'tpu'$"):
        _dm(tree, loader="tpu")
