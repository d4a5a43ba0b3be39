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


# Exactness against torchvision. Integer arithmetic, nearest resampling and single IEEE operations
# (brightness is one multiply) give the same bits on every CPU: compared exactly. Bilinear resampling and
# the colour blends (saturation, contrast, sharpness: a multiply-add) do not: torch's kernels round them
# differently per CPU vector width (AVX512, AVX2, ATEN_CPU_CAPABILITY=default), on torchvision's side as
# on ours. For those, uint8 values may differ by 1 level (a rounding step lands on the other side of an
# integer) on a small share of the values, and float values (in [0, 1]) by a few float32 ulps.
BLENDS = ("Color", "Contrast", "Sharpness")
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
UINT8_LEVELS = 1
BILINEAR_SHARE = 1e-3
"""uint8 bilinear: at most 0.1% of the values 1 level apart (seen: 2 of 196,608 on AVX512)."""
BLEND_SHARE = 1e-2
"""uint8 blends: at most 1% of the values 1 level apart (seen: up to 0.42% with ATEN_CPU_CAPABILITY=default,
where torchvision's multiply-add is not fused; none on AVX2 and AVX512)."""
FLOAT_ATOL = 1e-5
"""float: a few float32 ulps of a sampling coordinate (3.8e-6 at 32 px, the largest gap seen) or of a value."""


def op_share(name: str, interpolation: str = "nearest") -> float:
    """The share of uint8 values that may differ by 1 level for op ``name``; 0 = exact on every CPU."""
    if name in BLENDS:
        return BLEND_SHARE
    return BILINEAR_SHARE if name in GEOMETRIC_OPS and interpolation == "bilinear" else 0.0


def assert_matches(
    out: torch.Tensor, expected: torch.Tensor, share: float | torch.Tensor = 0.0, what: str = ""
) -> None:
    """``out`` equals ``expected`` bit for bit where ``share`` is 0, else within the tolerance above.

    ``share`` (see :func:`op_share`): one value for the whole batch, or a ``(B,)`` tensor, one per sample
    (a batch of mixed ops); uint8 shares are counted over the samples with that share.
    """
    assert out.shape == expected.shape and out.dtype == expected.dtype, (what, out.shape, expected.shape, out.dtype)
    shares = torch.as_tensor(share, dtype=torch.float64).expand(out.shape[0])
    for bound in shares.unique().tolist():
        rows = shares == bound
        ours, theirs = out[rows], expected[rows]
        if bound == 0.0:
            assert torch.equal(ours, theirs), f"{what}: {(ours != theirs).sum().item()} values differ (exact ops)"
        elif out.dtype == torch.uint8:
            diff = (ours.int() - theirs.int()).abs()
            differ = diff.ne(0).double().mean().item()
            assert diff.max().item() <= UINT8_LEVELS, f"{what}: values {diff.max().item()} levels apart"
            assert differ <= bound, f"{what}: {differ:.3%} of the values differ (at most {bound:.1%})"
        else:
            gap = (ours.double() - theirs.double()).abs().max().item()
            assert gap <= FLOAT_ATOL, f"{what}: values {gap:.2e} apart (at most {FLOAT_ATOL:.0e})"
