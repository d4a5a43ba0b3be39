"""CIFARDataModule: CIFAR-10 / CIFAR-100 / ImageFolder / CSV-labelled data, splits and loaders for Lightning.

The module of ``augment.data`` that imports Lightning. Validation always comes from the training
split (stratified hold-out or one of k stratified folds); the official test split is only ever the
test loader. A csv dataset has no labelled test split: ``has_test`` is False and nothing is tested
(testing on the validation split would report the split that selected the checkpoint as a test score).
The DataModule's checkpoint state records the data facts a prediction needs: ``class_names``,
``image_size`` (h, w), ``mean`` and ``std``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from augment.checks import check_bool, check_choice, check_int, field_prefix, is_int, require, shown
from augment.data.datasets import DATASETS, dataset_classes, dataset_stats, load_dataset
from augment.data.loaders import ArrayDataset, DeviceBatchLoader
from augment.data.splits import bootstrap_indices, stratified_kfold, stratified_split, stratified_subset
from augment.data.transforms import WorkerSeeder, eval_transform, train_transform
from augment.policies import build_policy

__all__ = ["CIFARDataModule", "LOADERS", "check_image_size"]

LOADERS = ("auto", "device", "workers")
LOADER_ALIASES = {"gpu": "device", "cpu": "workers"}  # the names before "device" / "workers"


IMAGE_SIZE_RANGE = (8, 4096)


def check_image_size(field: str, value: Any) -> tuple[int, int] | None:
    """``value`` (null, an int or [height, width]) as (h, w) or None; else a CheckError naming ``field``."""
    low, high = IMAGE_SIZE_RANGE
    rule = f"null, an int or [height, width], each an int in [{low}, {high}]"
    if value is None:
        return None
    sides = [value] if is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
    ok = sides is not None and len(sides) in ((1,) if is_int(value) else (2,))
    ok = ok and all(is_int(v) and low <= v <= high for v in sides)
    require(ok, field, rule, value)
    return (int(sides[0]), int(sides[-1]))


def _check_column(field: str, value: Any) -> str:
    require(isinstance(value, str) and value.strip() != "", field, "a column name (a non-empty string)", value)
    return value


def _loader_name(loader: Any) -> str:
    """data.loader checked, with the deprecated gpu / cpu names mapped (and warned about)."""
    if loader in LOADER_ALIASES:
        new = LOADER_ALIASES[loader]
        warnings.warn(f"data.loader {loader!r} is deprecated, use {new!r}", FutureWarning, stacklevel=3)
        return new
    return check_choice("loader", loader, LOADERS)


class CIFARDataModule(pl.LightningDataModule):
    """Loads a dataset as uint8 arrays (cached), carves a seeded stratified validation split from train,
    and serves batches either from device memory (``loader="device"``: crop/flip/normalize batched on
    the model's device) or from DataLoader workers running albumentations (``loader="workers"``).

    Args:
        dataset: cifar10 | cifar100 | imagefolder | csv.
        root: folder holding the data (torchvision CIFAR files, ``train/<class>/*`` and ``test/<class>/*``, or
            for csv the image files named in ``train_csv``).
        train_csv: csv only: the label file, relative to ``root`` or absolute (``~`` expanded).
        id_column: csv only: the column of image ids (a file name with or without its extension).
        label_column: csv only: the column of labels (class names or integers; classes = sorted unique labels).
        image_size: int or [height, width]: resize every image once, when it is decoded into the cache
            (Pillow bicubic, antialiased); null keeps the images' size, which they must share.
        download: let torchvision fetch CIFAR into ``root`` (needs internet; rank 0 in ``prepare_data``).
        val_size: validation samples held out of train: int count or float fraction; 0 = no validation.
        num_folds: k for stratified k-fold validation (replaces ``val_size``); 0 = off.
        fold: which fold is validation, in [0, num_folds).
        bootstrap: resample the training part with replacement (bagging).
        train_subset: use a stratified subset of this many training samples (smoke runs).
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size (default: batch_size).
        loader: device (device-resident) | workers (DataLoader workers + albumentations) | auto (device on
            CUDA, else workers). The former names gpu / cpu still work, with a FutureWarning.
        num_workers: DataLoader workers for the workers loader.
        padding: pixels of reflect padding for the random crop (0 = no crop).
        flip: random horizontal flips.
        cutout_holes: Cutout holes per image on the workers loader (the device loader uses model.cutout).
        cutout_size: Cutout square side in pixels (workers loader).
        seed: seed of splits, shuffling and per-sample augmentation.
        channels_last: batches in channels_last memory format (device loader).
        policy: per-sample policy augmentation after crop/flip, before normalization: none | trivialaugment |
            randaugment | autoaugment, or a mapping ``{name: randaugment, num_ops: 2, magnitude: 9, ...}``
            with the policy's parameters (see ``augment.policies``). The device loader runs it batched on
            the device; the workers loader runs torchvision's own per-image class.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        root: str = "data",
        download: bool = False,
        train_csv: str | None = None,
        id_column: str = "id",
        label_column: str = "label",
        image_size: int | list[int] | None = None,
        val_size: int | float = 5000,
        num_folds: int = 0,
        fold: int = 0,
        bootstrap: bool = False,
        train_subset: int | None = None,
        batch_size: int = 512,
        eval_batch_size: int | None = None,
        loader: str = "auto",
        num_workers: int = 2,
        padding: int = 4,
        flip: bool = True,
        cutout_holes: int = 0,
        cutout_size: int = 16,
        seed: int = 0,
        channels_last: bool = False,
        policy: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        with field_prefix("data"):
            check_choice("dataset", dataset, DATASETS)
            self._size_setting = check_image_size("image_size", image_size)
            if dataset == "csv":
                ok = isinstance(train_csv, str) and train_csv.strip() != ""
                require(ok, "train_csv", "the label file (relative to data.root or absolute) for csv data", train_csv)
            else:
                require(train_csv is None, "train_csv", "null unless data.dataset is csv", train_csv)
            _check_column("id_column", id_column)
            _check_column("label_column", label_column)
            ok = (is_int(val_size) and val_size >= 0) or (isinstance(val_size, float) and 0.0 <= val_size < 1.0)
            require(ok, "val_size", "an int count >= 0 or a float fraction in [0, 1)", val_size)
            require(
                is_int(num_folds) and (num_folds == 0 or num_folds >= 2),
                "num_folds",
                "0 (off) or an int >= 2",
                num_folds,
            )
            if num_folds:
                ok = is_int(fold) and 0 <= fold < num_folds
                require(ok, "fold", f"an int in [0, {num_folds}) (num_folds={num_folds})", fold)
            else:
                require(fold == 0, "fold", "0 when data.num_folds is 0 (k-fold off)", fold)
            check_bool("bootstrap", bootstrap)
            ok = train_subset is None or (is_int(train_subset) and train_subset >= 1)
            require(ok, "train_subset", "null or an int >= 1", train_subset)
            check_int("batch_size", batch_size, low=1)
            ok = eval_batch_size is None or (is_int(eval_batch_size) and eval_batch_size >= 1)
            require(ok, "eval_batch_size", "null or an int >= 1", eval_batch_size)
            loader = _loader_name(loader)
            check_int("num_workers", num_workers, low=0)
            check_int("padding", padding, low=0)
            check_bool("flip", flip)
            check_int("cutout_holes", cutout_holes, low=0)
            check_int("cutout_size", cutout_size, low=1)
            check_int("seed", seed, low=0)
            check_bool("channels_last", channels_last)
            self._policy = build_policy(policy)  # built (and checked) once, before any data is read
        self.save_hyperparameters()

        self.dataset = dataset
        self.root = root
        self.download = download
        self.train_csv = train_csv
        self.id_column = id_column
        self.label_column = label_column
        self.val_size = val_size
        self.num_folds = num_folds
        self.fold = fold
        self.bootstrap = bootstrap
        self.train_subset = train_subset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader = loader
        self.num_workers = num_workers
        self.padding = padding
        self.flip = flip
        self.cutout_holes = cutout_holes
        self.cutout_size = cutout_size
        self.seed = seed
        self.channels_last = channels_last
        self.policy = policy

        self.has_val: bool = bool(num_folds) or val_size != 0  # the one place that decides; the CLI follows it
        if not self.has_val:
            warnings.warn(
                "data.val_size is 0 and k-fold is off: no validation split, so early stopping and "
                "best-checkpoint selection are off and the last epoch is tested (the test split is never "
                "used to select)",
                stacklevel=2,
            )
        self._class_names: list[str] | None = None
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._on_device: dict[str, torch.Tensor] = {}
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None

    # ----------------------------------------------------------------------------------------------
    # Facts available right after __init__ (LightningCLI links data.num_classes -> model.num_classes)

    @property
    def _source(self) -> dict[str, Any]:
        """What a csv dataset needs besides the root (empty for the others)."""
        if self.dataset != "csv":
            return {}
        return {"train_csv": self.train_csv, "id_column": self.id_column, "label_column": self.label_column}

    @property
    def class_names(self) -> list[Any]:
        """Class names in label order (csv: the sorted unique labels, ints or strings as in the file)."""
        if self._class_names is None:
            self._class_names = dataset_classes(self.dataset, self.root, **self._source)
        return self._class_names

    @property
    def has_test(self) -> bool:
        """Whether there is a labelled test split (a csv dataset has none: nothing is tested)."""
        return self.dataset != "csv"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model sees: ``data.image_size``, else the training images' common size
        (32x32 for CIFAR; otherwise reads the training split once, like ``setup``)."""
        if self._size_setting is not None:
            return self._size_setting
        if self.dataset in ("cifar10", "cifar100"):
            return (32, 32)
        images, _ = self.arrays("train")
        return (int(images.shape[1]), int(images.shape[2]))

    @property
    def mean(self) -> tuple[float, ...]:
        return self._normalization()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._normalization()[1]

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            self._stats = dataset_stats(
                self.dataset, self.root, download=self.download, image_size=self._size_setting, **self._source
            )
        return self._stats

    def train_class_counts(self) -> np.ndarray:
        """int64 (num_classes,) images per class in the training part (after subset and bootstrap)."""
        if self.train_indices is None:
            self.setup("fit")
        labels = self.arrays("train")[1][self.train_indices]
        return np.bincount(labels, minlength=self.num_classes).astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The data facts stored in every checkpoint: class_names, image_size (h, w), mean, std."""
        return {
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resuming: the checkpoint's class list must be this data's (else the head's outputs mean other classes)."""
        stored = state_dict.get("class_names")
        if stored is not None and list(stored) != list(self.class_names):
            raise ValueError(
                f"the checkpoint was trained on {len(stored)} classes {shown(list(stored), 120)}, the data has "
                f"{self.num_classes} classes {shown(list(self.class_names), 120)}: resume with the same data"
            )

    # ----------------------------------------------------------------------------------------------
    # Lightning hooks

    def prepare_data(self) -> None:
        """Download (once per node) and fill the cache, so every rank's ``setup`` reads the cache."""
        if self.download:
            for split in ("train", "test"):
                load_dataset(self.dataset, self.root, split, download=True, image_size=self._size_setting)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's uint8 images (N, H, W, C) and int64 labels (N,), read once and kept."""
        if split not in self._arrays:
            images, labels, names = load_dataset(
                self.dataset, self.root, split, download=self.download, image_size=self._size_setting, **self._source
            )
            if split == "train":
                self._class_names = names
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_indices is None:
            _, labels = self.arrays("train")
            self.train_indices, self.val_indices = self._split(labels)
        if stage in (None, "test", "predict") and self.has_test:
            self.arrays("test")

    def _split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, val indices) into the official train split; repeats in train when bootstrapping."""
        with field_prefix("data"):
            if self.num_folds:
                train_idx, val_idx = stratified_kfold(labels, self.num_folds, self.fold, self.seed)
            else:
                train_idx, val_idx = stratified_split(labels, self.val_size, self.seed)
            if self.train_subset is not None:
                subset = stratified_subset(labels[train_idx], self.train_subset, self.seed, field="train_subset")
                train_idx = train_idx[subset]
        if self.bootstrap:
            train_idx = train_idx[bootstrap_indices(len(train_idx), self.seed)]
        return train_idx, val_idx

    def teardown(self, stage: str | None = None) -> None:
        self._on_device.clear()

    # ----------------------------------------------------------------------------------------------
    # Loaders

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @property
    def resolved_loader(self) -> str:
        """'device' or 'workers': ``auto`` picks the device-resident path when the trainer runs on CUDA."""
        if self.loader != "auto":
            return self.loader
        return "device" if self._device().type == "cuda" else "workers"

    def _device_images(self, split: str) -> torch.Tensor:
        """The split's uint8 images moved to the device once, as (N, C, H, W)."""
        if split not in self._on_device:
            images, _ = self._arrays[split]
            self._on_device[split] = torch.from_numpy(images).to(self._device()).permute(0, 3, 1, 2).contiguous()
        return self._on_device[split]

    def _batches_trained_this_epoch(self) -> int:
        """Batches of the epoch being started that were already trained: 0, except right after Lightning
        restored a mid-epoch checkpoint (its epoch loop then continues at that batch)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _device_loader(self, split: str, indices: np.ndarray | None, train: bool) -> DeviceBatchLoader:
        images = self._device_images(split)
        labels = torch.from_numpy(self._arrays[split][1]).to(images.device)
        rank, world = self._rank_world()
        n = len(labels) if indices is None else len(indices)
        batch_size = self.batch_size if train else self.eval_batch_size
        with field_prefix("data"):  # the loader names its own arguments (padding, batch_size)
            return DeviceBatchLoader(
                images,
                labels,
                batch_size,
                self.mean,
                self.std,
                train=train,
                padding=self.padding,
                flip=self.flip,
                drop_last=train and -(-n // world) >= batch_size,
                seed=self.seed,
                rank=rank,
                world_size=world,
                channels_last=self.channels_last,
                indices=None if indices is None else torch.from_numpy(indices),
                layout="nchw",
                resume_offset=self._batches_trained_this_epoch if train else None,
                policy=self._policy if train else None,
            )

    def _workers_loader(self, split: str, indices: np.ndarray | None, train: bool) -> torch.utils.data.DataLoader:
        images, labels = self._arrays[split]
        rank, world = self._rank_world()
        if train:
            seed = int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0])
            with field_prefix("data"):  # e.g. data.policy.magnitude_std (torchvision's RandAugment has none)
                transform = train_transform(
                    self.mean, self.std, self.padding, self.flip, self.cutout_holes, self.cutout_size,
                    image_size=tuple(images.shape[1:3]), seed=seed, policy=self._policy,
                )
        else:
            transform = eval_transform(self.mean, self.std)
        dataset = ArrayDataset(images, labels, transform, indices)
        batch_size = self.batch_size if train else self.eval_batch_size
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and -(-len(dataset) // world) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self._device().type == "cuda",
            persistent_workers=self.num_workers > 0,
            worker_init_fn=WorkerSeeder(rank),
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _make(self, split: str, indices: np.ndarray | None, train: bool) -> Any:
        if self.resolved_loader == "device":
            if train and self.cutout_holes:
                warnings.warn(
                    "data.cutout_holes applies to the workers loader only; on the device loader use model.cutout",
                    stacklevel=3,
                )
            return self._device_loader(split, indices, train)
        return self._workers_loader(split, indices, train)

    def train_dataloader(self) -> Any:
        if self.train_indices is None:
            self.setup("fit")
        return self._make("train", self.train_indices, train=True)

    def val_dataloader(self) -> Any:
        """The held-out part of train; ``[]`` when there is no validation split (``has_val`` is False)."""
        if self.train_indices is None:
            self.setup("validate")
        if not self.has_val:
            return []
        return self._make("train", self.val_indices, train=False)

    def test_dataloader(self) -> Any:
        """The official test split; ``[]`` for csv data (``has_test`` is False)."""
        if not self.has_test:
            return []
        if "test" not in self._arrays:
            self.setup("test")
        return self._make("test", None, train=False)

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()
