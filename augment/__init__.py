"""Fast batch augmentation and regularization for image classification (torch only).

Batch ops take ``x: (B, C, H, W)`` on any device and dtype plus int labels ``(B,)`` or soft targets
``(B, K)`` and return ``(x, targets)``. A pipeline (``Compose`` / ``build_batch_augment``) that knows
``num_classes`` always returns soft targets ``(B, K)``; ``soft_target_cross_entropy`` takes either kind.
Image ops (the policies ``TrivialAugmentWide`` / ``RandAugment`` / ``AutoAugment``, colour and geometric
ops) take uint8 or float images ``(B, C, H, W)`` and return images, each sample with its own parameters.
This package needs torch alone; the CIFAR data pipeline of the training app lives in ``augment.data``
(numpy, Pillow, Lightning, albumentations), which this module does not import.
"""

from augment.checks import CheckError
from augment.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    autocontrast,
    equalize,
    invert,
    posterize,
    solarize,
)
from augment.crop import normalize, random_crop, random_crop_flip, random_flip, to_float_nchw
from augment.erasing import Cutout
from augment.geometric import random_rotation, random_vflip, rotate, shear_x, shear_y, translate, vflip, warp_affine
from augment.losses import bce_targets, binary_cross_entropy, soft_target_cross_entropy
from augment.mixing import CutMix, Mixup, MixupCutMix, cutmix_batch, mixup_batch
from augment.noise import GaussianNoise
from augment.pipeline import (
    Compose,
    CutMixConfig,
    CutoutConfig,
    MixingConfig,
    MixupConfig,
    NoiseConfig,
    build_batch_augment,
)
from augment.policies import AutoAugment, RandAugment, TrivialAugmentWide, build_policy
from augment.policy_ops import OPS as POLICY_OPS
from augment.policy_ops import apply_ops
from augment.targets import check_labels, one_hot, smooth, to_soft

__all__ = [
    "Mixup",
    "CutMix",
    "MixupCutMix",
    "mixup_batch",
    "cutmix_batch",
    "Cutout",
    "GaussianNoise",
    "one_hot",
    "smooth",
    "to_soft",
    "check_labels",
    "Compose",
    "MixupConfig",
    "CutMixConfig",
    "MixingConfig",
    "CutoutConfig",
    "NoiseConfig",
    "build_batch_augment",
    "soft_target_cross_entropy",
    "binary_cross_entropy",
    "bce_targets",
    "CheckError",
    "random_crop",
    "random_flip",
    "random_crop_flip",
    "normalize",
    "to_float_nchw",
    "TrivialAugmentWide",
    "RandAugment",
    "AutoAugment",
    "build_policy",
    "apply_ops",
    "POLICY_OPS",
    "random_rotation",
    "random_vflip",
    "rotate",
    "shear_x",
    "shear_y",
    "translate",
    "vflip",
    "warp_affine",
    "adjust_brightness",
    "adjust_saturation",
    "adjust_contrast",
    "adjust_sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
    "invert",
]
