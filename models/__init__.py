"""timm backbones for CIFAR, norm swapping, regularizers and the LightningModule."""

from models.backbones import create_model
from models.classifier import CifarClassifier
from models.norms import swap_norm
from models.optim import OptimizerConfig, SchedulerConfig, param_groups
from models.regularizers import WeightNoise

__all__ = [
    "create_model",
    "swap_norm",
    "WeightNoise",
    "CifarClassifier",
    "OptimizerConfig",
    "SchedulerConfig",
    "param_groups",
]
