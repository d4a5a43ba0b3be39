"""Additive Gaussian input noise on whole batches.

Training with input noise is equivalent to Tikhonov regularization: Bishop 1995, "Training with
Noise is Equivalent to Tikhonov Regularization" (Neural Computation 7(1)). Targets are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._batch import check_float_batch, draw_device, to_device
from .checks import check_probability, check_real, is_real, require

__all__ = ["GaussianNoise", "device_generator", "check_clamp"]


def device_generator(
    generator: torch.Generator | None, device: torch.device, cache: dict[torch.device, torch.Generator] | None = None
) -> torch.Generator | None:
    """A generator that can sample on ``device``, derived from ``generator``'s state.

    The same generator when it already lives on ``device``; otherwise a ``device`` generator seeded
    by one draw from ``generator`` (so full-size noise never crosses devices and one state still
    gives one output). ``cache`` reuses the derived generator object between calls.
    """
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    derived = cache.get(device) if cache is not None else None
    if derived is None:
        derived = torch.Generator(device=device)
        if cache is not None:
            cache[device] = derived
    return derived.manual_seed(seed)


def check_clamp(field: str, clamp: Sequence[float] | None) -> tuple[float, float] | None:
    """None, or (low, high) finite numbers with low < high."""
    if clamp is None:
        return None
    ok = isinstance(clamp, Sequence) and len(clamp) == 2 and all(is_real(v) and math.isfinite(v) for v in clamp)
    require(ok and clamp[0] < clamp[1], field, "null or [low, high] with low < high", clamp)
    return float(clamp[0]), float(clamp[1])


class GaussianNoise:
    """``x + std * N(0, 1)`` on a random subset of images; ``(x, y) -> (x_noisy, y)``, x: (B, C, H, W).

    Args:
        std: noise standard deviation in ``x``'s units (0 = no-op).
        p: probability that an image gets noise (per sample).
        clamp: optional (low, high) applied to the whole output.
        generator: source of the per-sample draws and of the noise.
    """

    mixes = False

    def __init__(
        self,
        std: float,
        p: float = 1.0,
        clamp: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.std = check_real("std", std, low=0)
        self.p = check_probability("p", p)
        self.clamp = check_clamp("clamp", clamp)
        self.generator = generator
        self._derived: dict[torch.device, torch.Generator] = {}

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, p={self.p}, clamp={self.clamp})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_float_batch(x)
        if self.std == 0 or self.p == 0 or x.shape[0] == 0:
            return x, y
        gen = self.generator
        selected = torch.rand(x.shape[0], generator=gen, device=draw_device(gen, x.device)) < self.p
        scale = to_device(selected.to(x.dtype) * self.std, x.device).view(-1, 1, 1, 1)
        noise = torch.empty_like(x).normal_(generator=device_generator(gen, x.device, self._derived))
        out = torch.addcmul(x, noise, scale, out=noise)  # in place: no second full-size buffer
        if self.clamp is not None:
            out.clamp_(*self.clamp)
        return out, y
