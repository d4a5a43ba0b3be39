"""The CIFAR / ImageFolder data pipeline of this application: datasets with a uint8 cache, held-out
splits, device-resident and worker loaders, albumentations worker transforms, the LightningDataModule.

Unlike :mod:`augment` itself this subpackage needs numpy, Pillow, Lightning and (for the worker path)
albumentations.
"""

from augment.data import _requirements  # noqa: F401  (first: one ImportError line when the train extra is missing)
from augment.data.datamodule import CIFARDataModule
from augment.data.datasets import DATASETS, channel_stats, dataset_classes, dataset_stats, load_dataset
from augment.data.loaders import ArrayDataset, DeviceBatchLoader
from augment.data.splits import bootstrap_indices, stratified_kfold, stratified_split, stratified_subset

__all__ = [
    "CIFARDataModule",
    "DATASETS",
    "load_dataset",
    "dataset_classes",
    "dataset_stats",
    "channel_stats",
    "DeviceBatchLoader",
    "ArrayDataset",
    "stratified_split",
    "stratified_subset",
    "stratified_kfold",
    "bootstrap_indices",
]
