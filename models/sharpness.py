"""Sharpness of the training loss at trained weights: the largest Hessian eigenvalue and Keskar's
epsilon-sharpness.

Both measure f(w) = mean loss over a fixed set of images (the callback draws a seeded,
class-stratified subset of the un-augmented training split), with the model in eval mode (BatchNorm
uses its running statistics, dropout is off, so f is a deterministic function of the weights), without
autocast (in the weights' dtype) and with math attention (the fused kernels have no double backward),
over all floating-point parameters of the model, frozen ones included. The default loss is plain
cross-entropy against the int labels (no label smoothing).

- `hessian_max_eigenvalue`: power iteration on exact Hessian-vector products (double backward),
  started from a seeded Gaussian vector; returns the Rayleigh quotient v^T H v of the last unit
  vector. Power iteration finds the eigenvalue of largest magnitude, at a trained minimum the
  largest positive one (as in Yao et al. 2020, "PyHessian").
- `epsilon_sharpness`: Keskar et al. 2017 ("On Large-Batch Training for Deep Learning:
  Generalization Gap and Sharp Minima", eq. 4 with A = I):
  100 * (max_{y in C} f(w + y) - f(w)) / (1 + f(w)), C the box |y_i| <= eps * (|w_i| + 1). The max is
  approximated by projected sign-gradient ascent (PGD as in Madry et al. 2018, step 2.5 r / steps per
  coordinate, r the box radius) from a seeded uniform point of the half-size box, keeping the largest
  loss seen; a local search, so a lower bound of the max. The weights are restored bit-exactly.
The Lightning callback that measures both after fit is `models.callbacks.sharpness.Sharpness`
(re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from augment.checks import check_int, check_real

__all__ = [
    "LossFn",
    "SharpnessResult",
    "dataset_loss",
    "hessian_max_eigenvalue",
    "epsilon_sharpness",
    "measure_sharpness",
    "training_subset",
    "METRIC_NAMES",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, targets) -> mean loss
WEIGHTS = ("best", "last")
METRIC_NAMES = (
    "sharpness/hessian_max_eig",
    "sharpness/eps_sharpness",
    "sharpness/loss",
    "sharpness/hessian_iterations",
)
HPARAM_METRICS = ("sharpness/hessian_max_eig", "sharpness/eps_sharpness")  # the run's own tags


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


# ------------------------------------------------------------------------------------------------ plumbing


@contextmanager
def _measuring(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Eval mode, gradients on for every floating parameter, no autocast, math attention; all restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    device_type = params[0].device.type if params else "cpu"
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), torch.autocast(device_type, enabled=False), sdpa_kernel([SDPBackend.MATH]):
            yield params
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _batches(images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    check_int("batch_size", batch_size, low=1)
    if images.shape[0] != targets.shape[0] or images.shape[0] == 0:
        raise ValueError(f"images and targets must hold the same number (>= 1) of samples, got "
                         f"{images.shape[0]} and {targets.shape[0]}")
    return list(zip(images.split(batch_size), targets.split(batch_size)))


def _loss_and_grads(
    model: nn.Module, params: list[nn.Parameter], batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn, need_grads: bool = True,
) -> tuple[float, list[torch.Tensor]]:
    """f(w) over all batches (size-weighted mean) and, when `need_grads`, its gradient."""
    total = sum(x.shape[0] for x, _ in batches)
    loss_sum = 0.0
    grads = [torch.zeros_like(p) for p in params] if need_grads else []
    for x, t in batches:
        weight = x.shape[0] / total
        if need_grads:
            loss = loss_fn(model(x), t)
            parts = torch.autograd.grad(loss * weight, params, allow_unused=True)
            for g, part in zip(grads, parts):
                if part is not None:
                    g.add_(part)
        else:
            with torch.no_grad():
                loss = loss_fn(model(x), t)
        loss_sum += float(loss.detach()) * weight
    return loss_sum, grads


def _hvp(
    model: nn.Module, params: list[nn.Parameter], batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn, vector: list[torch.Tensor],
) -> list[torch.Tensor]:
    """H v of f over all batches, H the Hessian w.r.t. `params` (double backward, batch by batch)."""
    total = sum(x.shape[0] for x, _ in batches)
    out = [torch.zeros_like(p) for p in params]
    for x, t in batches:
        loss = loss_fn(model(x), t) * (x.shape[0] / total)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [(g, v) for g, v in zip(grads, vector) if g is not None]
        if not used:
            continue
        dot = sum((g * v).sum() for g, v in used)
        parts = torch.autograd.grad(dot, params, allow_unused=True)
        for h, part in zip(out, parts):
            if part is not None:
                h.add_(part.detach())
    return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------ measures


def dataset_loss(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 256,
    loss_fn: LossFn = _cross_entropy,
) -> float:
    """f(w): mean `loss_fn` of `model` in eval mode over (images, targets), in batches of `batch_size`."""
    batches = _batches(images, targets, batch_size)
    with _measuring(model) as params:
        return _loss_and_grads(model, params, batches, loss_fn, need_grads=False)[0]


def hessian_max_eigenvalue(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    iterations: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    loss_fn: LossFn = _cross_entropy,
) -> tuple[float, int]:
    """(dominant eigenvalue of the Hessian of f, power iterations used).

    Stops after `iterations`, or earlier once the estimate changes by at most `tol` times its size.
    The start vector is drawn on the CPU from `seed` (the same on every device).
    """
    check_int("iterations", iterations, low=1)
    check_real("tol", tol, 0.0)
    check_int("seed", seed, low=0)
    batches = _batches(images, targets, batch_size)
    generator = torch.Generator().manual_seed(seed)
    with _measuring(model) as params:
        vector = [torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) for p in params]
        norm = _dot(vector, vector).sqrt()
        vector = [v / norm.to(v.dtype) for v in vector]
        estimate = math.nan
        for step in range(1, iterations + 1):
            hv = _hvp(model, params, batches, loss_fn, vector)
            new = float(_dot(vector, hv))
            norm = _dot(hv, hv).sqrt()
            if not float(norm) > 0.0:
                return 0.0 if float(norm) == 0.0 else math.nan, step
            vector = [h / norm.to(h.dtype) for h in hv]
            if abs(new - estimate) <= tol * abs(new):
                return new, step
            estimate = new
    return estimate, iterations


def epsilon_sharpness(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 1e-3,
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    loss_fn: LossFn = _cross_entropy,
) -> tuple[float, float, float]:
    """(Keskar's epsilon-sharpness in %, f(w), largest f(w + y) found in the box); weights left unchanged.

    `steps` gradient evaluations of projected sign ascent (step 2.5 r / steps, r the box radius per
    coordinate) from a seeded uniform start in the half-size box, plus f at the last point.
    """
    check_real("eps", eps, 0.0, low_open=True)
    check_int("steps", steps, low=1)
    check_int("seed", seed, low=0)
    batches = _batches(images, targets, batch_size)
    generator = torch.Generator().manual_seed(seed)
    with _measuring(model) as params:
        clean = [p.detach().clone() for p in params]
        radius = [w.abs().add_(1.0).mul_(eps) for w in clean]
        offset = [(torch.rand(w.shape, generator=generator, dtype=torch.float32).to(w) - 0.5) * r
                  for w, r in zip(clean, radius)]  # uniform in the half-size box
        try:
            base = _loss_and_grads(model, params, batches, loss_fn, need_grads=False)[0]
            best = base
            for _ in range(steps):
                with torch.no_grad():
                    for p, w, y in zip(params, clean, offset):
                        p.copy_(w + y)
                loss, grads = _loss_and_grads(model, params, batches, loss_fn)
                best = max(best, loss)
                for y, g, r in zip(offset, grads, radius):
                    y.add_(g.sign() * r * (2.5 / steps))
                    torch.minimum(y, r, out=y)
                    torch.maximum(y, -r, out=y)
            with torch.no_grad():
                for p, w, y in zip(params, clean, offset):
                    p.copy_(w + y)
            best = max(best, _loss_and_grads(model, params, batches, loss_fn, need_grads=False)[0])
        finally:
            with torch.no_grad():
                for p, w in zip(params, clean):
                    p.copy_(w)
    return 100.0 * (best - base) / (1.0 + base), base, best


@dataclass
class SharpnessResult:
    """Both measures with the loss they start from and the settings that produced them."""

    hessian_max_eig: float
    hessian_iterations: int
    eps_sharpness: float
    loss: float
    max_loss: float
    settings: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """`sharpness/*` scalars (the names in METRIC_NAMES)."""
        return {
            "sharpness/hessian_max_eig": self.hessian_max_eig,
            "sharpness/eps_sharpness": self.eps_sharpness,
            "sharpness/loss": self.loss,
            "sharpness/hessian_iterations": float(self.hessian_iterations),
        }


def measure_sharpness(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    hessian_iterations: int = 20,
    hessian_tol: float = 1e-3,
    eps: float = 1e-3,
    eps_steps: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    loss_fn: LossFn = _cross_entropy,
) -> SharpnessResult:
    """Both measures of `model` on (images, targets); `settings` records every argument but the data."""
    data = (model, images, targets)
    eig, used = hessian_max_eigenvalue(*data, hessian_iterations, hessian_tol, seed, batch_size, loss_fn)
    sharp, base, top = epsilon_sharpness(*data, eps, eps_steps, seed, batch_size, loss_fn)
    settings = {
        "num_images": int(images.shape[0]), "batch_size": batch_size, "hessian_iterations": hessian_iterations,
        "hessian_tol": hessian_tol, "eps": eps, "eps_steps": eps_steps, "seed": seed,
        "loss": getattr(loss_fn, "__name__", type(loss_fn).__name__).lstrip("_"),
    }
    return SharpnessResult(eig, used, sharp, base, top, settings)


# ------------------------------------------------------------------------------------------------ data


def training_subset(datamodule: Any, num_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-stratified, seeded subset of a CIFARDataModule's training part, un-augmented.

    Returns normalized float images (N, C, H, W) on the CPU and int64 labels (N,); N = min(num_images,
    distinct training images). Validation images are never included (bootstrap repeats count once).
    """
    from augment.crop import to_normalized_float
    from augment.data import stratified_subset

    check_int("num_images", num_images, low=1)
    if getattr(datamodule, "train_indices", None) is None:
        datamodule.setup("fit")
    images, labels = datamodule.arrays("train")  # the arrays the fit trained on, not a second read
    pool = np.unique(np.asarray(datamodule.train_indices))
    pick = pool[stratified_subset(labels[pool], min(num_images, len(pool)), seed, field="sharpness.num_images")]
    x = to_normalized_float(torch.from_numpy(images[pick]), datamodule.mean, datamodule.std, layout="nhwc")
    return x, torch.from_numpy(labels[pick]).long()
