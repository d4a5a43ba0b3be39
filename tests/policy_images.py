"""uint8 (N, 3, 32, 32) test images for the policy tests: real CIFAR-10 when CIFAR10_ROOT is set, else synthetic.

Real: the first N images of `cifar-10-batches-py/test_batch` under CIFAR10_ROOT (torchvision's files).
Synthetic (so the tests never skip): the class-coloured striped images of conftest plus edge cases the
colour ops treat specially: a constant image (flat channels), a two-level image, a full-range ramp and an
image that already spans 0..255.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from helpers import synthetic_images


def _edge_cases() -> np.ndarray:
    ramp = np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 255 // (32 * 32 - 1)
    constant = np.full((32, 32, 3), 97)
    two_level = np.where((np.arange(32)[:, None] + np.arange(32)) % 2 == 0, 40, 200)[..., None].repeat(3, 2)
    full = np.stack([ramp, ramp.T, 255 - ramp], axis=-1)
    one_off = constant.copy()
    one_off[3, 5] = (10, 250, 0)  # one pixel apart: equalize's "step == 0" case for every channel
    return np.stack([constant, two_level, full, one_off]).astype(np.uint8)


def load_images(n: int = 128) -> tuple[torch.Tensor, str]:
    """(uint8 images (n, 3, 32, 32), "real" or "synthetic")."""
    root = os.environ.get("CIFAR10_ROOT")
    if root:
        path = Path(root) / "cifar-10-batches-py" / "test_batch"
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"][:n], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return torch.from_numpy(data.copy()), "real"
    edge = _edge_cases()
    images, _ = synthetic_images(6, -(-(n - len(edge)) // 6), seed=13)
    hwc = np.concatenate([edge, images])[:n]
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))), "synthetic"
