"""timm backbones for CIFAR, norm swapping, regularizers and the LightningModule."""

from models.backbones import create_model
from models.callbacks import Sharpness, WeightNoise
from models.classifier import CifarClassifier
from models.norms import swap_norm
from models.optim import OptimizerConfig, SchedulerConfig, param_groups
from models.sam import SAM
from models.sharpness import epsilon_sharpness, hessian_max_eigenvalue, measure_sharpness

__all__ = [
    "create_model",
    "swap_norm",
    "WeightNoise",
    "CifarClassifier",
    "OptimizerConfig",
    "SchedulerConfig",
    "param_groups",
    "SAM",
    "Sharpness",
    "measure_sharpness",
    "hessian_max_eigenvalue",
    "epsilon_sharpness",
]
