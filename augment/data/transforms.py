"""Per-sample albumentations pipelines for DataLoader workers (the CPU loader path).

albumentations is an optional dependency, imported only when a pipeline is built.

Reproducibility: an albumentations 2.x ``Compose`` owns its RNG (``seed`` argument), independent of
numpy/torch global seeds. Copied into DataLoader workers, every worker would start from the same
state, and non-persistent workers would restart from it every epoch: the same "random" crops in every
worker and every epoch. ``WorkerSeeder`` (the loader's ``worker_init_fn``) reseeds the copy in each
worker from ``torch.utils.data.get_worker_info().seed``, which torch draws from the loader's generator
per worker and per epoch, so augmentations differ across workers and epochs and still replay exactly
from the same global seed.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from augment.checks import check_int, require
from augment.crop import check_crop_args
from augment.policies import build_policy, policy_parameters

__all__ = ["train_transform", "eval_transform", "WorkerSeeder", "reseed_transform", "torchvision_policy", "PerImage"]

_MISSING = "albumentations is required for the CPU loader path: pip install albumentations"


def _albumentations() -> tuple[Any, Any, Any]:
    """(albumentations, ToTensorV2, cv2), imported lazily."""
    try:
        import albumentations as A
        import cv2
        from albumentations.pytorch import ToTensorV2
    except ImportError:
        raise ImportError(_MISSING) from None
    return A, ToTensorV2, cv2


def _as_pixels(values: Sequence[float], name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(f"std must be > 0 for every channel, got {values}")
    return values


def train_transform(
    mean: Sequence[float],
    std: Sequence[float],
    padding: int = 4,
    flip: bool = True,
    cutout_holes: int = 0,
    cutout_size: int = 16,
    image_size: int | tuple[int, int] = 32,
    seed: int | None = None,
    policy: str | Mapping[str, Any] | None = None,
) -> Any:
    """Training pipeline: reflect-pad + random crop, flip, [policy], normalize, Cutout; HWC uint8 -> CHW float tensor.

    ``mean``/``std`` in [0, 1] units. ``policy``: a ``data.policy`` value (see
    :func:`augment.policies.build_policy`), run on the uint8 image by torchvision's own per-image class
    (:func:`torchvision_policy`). Cutout (``CoarseDropout``, ``cutout_holes`` squares of
    ``cutout_size`` px filled with 0) runs after normalization, so holes hold the mean colour.
    Returns an ``albumentations.Compose``; call it as ``t(image=hwc_uint8)["image"]``.
    """
    A, ToTensorV2, cv2 = _albumentations()
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    check_crop_args(padding, "reflect", height, width)  # the device loader's rule for the same reflect padding
    check_int("cutout_holes", cutout_holes, low=0)
    if cutout_holes:
        check_int("cutout_size", cutout_size, low=1)
    ops: list[Any] = []
    if padding:
        # BORDER_REFLECT_101 (gfedcb|abcdefgh) matches torch's "reflect" padding used on the GPU path.
        ops += [
            A.PadIfNeeded(
                min_height=height + 2 * padding,
                min_width=width + 2 * padding,
                border_mode=cv2.BORDER_REFLECT_101,
                position="center",
            ),
            A.RandomCrop(height=height, width=width),
        ]
    if flip:
        ops.append(A.HorizontalFlip(p=0.5))
    per_image = torchvision_policy(policy)
    if per_image is not None:
        ops.append(A.Lambda(image=PerImage(per_image), name="policy"))
    ops.append(A.Normalize(mean=_as_pixels(mean, "mean"), std=_as_pixels(std, "std"), max_pixel_value=255.0))
    if cutout_holes:
        ops.append(
            A.CoarseDropout(
                num_holes_range=(cutout_holes, cutout_holes),
                hole_height_range=(cutout_size, cutout_size),
                hole_width_range=(cutout_size, cutout_size),
                fill=0,
                p=1.0,
            )
        )
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=seed)


def torchvision_policy(spec: str | Mapping[str, Any] | Any | None, field: str = "policy") -> Any | None:
    """torchvision's own per-image class (``transforms.v2``) for a ``data.policy`` value or a device policy
    object; None for none.

    The class is the one the policy registered (``torchvision=...``); its parameters are passed by name
    (a fill of 0 is torchvision's default, no fill). A parameter torchvision's class lacks (RandAugment's
    ``magnitude_std``) must keep its default here. The draws come from torch's global RNG, which DataLoader
    seeds in each worker from the loader's generator.
    """
    policy = build_policy(spec, field)
    if policy is None:
        return None
    from torchvision.transforms import v2

    rule = "a policy with a torchvision class on the workers loader"
    require(policy.torchvision is not None, field, rule, policy.name)
    cls = getattr(v2, policy.torchvision)
    theirs = inspect.signature(cls).parameters
    fills = policy.fill if isinstance(policy.fill, tuple) else (policy.fill,)
    convert = {
        "interpolation": v2.InterpolationMode,
        "fill": lambda _: None if all(v == 0 for v in fills) else (list(fills) if len(fills) > 1 else fills[0]),
        "policy": v2.AutoAugmentPolicy,
    }
    kwargs = {}
    for name, param in policy_parameters(type(policy)).items():
        value = getattr(policy, name)
        if name in theirs:
            kwargs[name] = convert.get(name, lambda v: v)(value)
        else:
            what = name.replace("_", " ")
            rule = f"{param.default:g} on the workers loader (torchvision's {policy.torchvision} has no {what})"
            require(value == param.default, f"{field}.{name}", rule, value)
    return cls(**kwargs)


class PerImage:
    """An albumentations ``Lambda`` image function: a torch transform of a (C, H, W) uint8 tensor applied to
    one HWC uint8 array (picklable, for spawned workers)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray, **kwargs: Any) -> np.ndarray:
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return np.ascontiguousarray(self.transform(chw).permute(1, 2, 0).numpy())


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> Any:
    """Evaluation pipeline: normalize, HWC uint8 -> CHW float tensor (deterministic)."""
    A, ToTensorV2, _ = _albumentations()
    return A.Compose(
        [A.Normalize(mean=_as_pixels(mean, "mean"), std=_as_pixels(std, "std"), max_pixel_value=255.0), ToTensorV2()]
    )


def reseed_transform(transform: Any, seed: int) -> bool:
    """Reseed an albumentations ``Compose`` (or anything with ``set_random_seed``); False when it has no RNG."""
    set_seed = getattr(transform, "set_random_seed", None)
    if not callable(set_seed):
        return False
    set_seed(int(seed) % 2**32)
    return True


class WorkerSeeder:
    """DataLoader ``worker_init_fn``: seed numpy, ``random`` and the dataset's transform per worker, epoch and rank.

    ``rank`` is folded in because torch gives every DDP rank the same base seed (broadcast from rank 0).
    """

    def __init__(self, rank: int = 0) -> None:
        self.rank = int(rank)

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:  # called outside a worker: nothing to do
            return
        seed = int(np.random.SeedSequence([info.seed % 2**63, self.rank]).generate_state(1)[0])
        np.random.seed(seed)
        random.seed(seed)
        reseed_transform(getattr(info.dataset, "transform", None), seed)
