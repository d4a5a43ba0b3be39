"""Cutout: square holes filled with a constant, per sample, on whole batches.

Paper: DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with Cutout"
(arXiv:1708.04552). As in the paper, each hole's center is uniform over the image, so a hole may be
clipped by the border (and then covers fewer pixels). Targets are unchanged.
"""

from __future__ import annotations

import math

import torch

from ._batch import box_indicators, centered_boxes, check_float_batch, draw_device, to_device
from .checks import check_int, check_probability, check_real, is_real, require

__all__ = ["Cutout", "hole_side", "holes_mask", "check_hole_size"]


def hole_side(size: int | float, height: int, width: int) -> int:
    """Hole side in pixels: an int is pixels, a float in (0, 1] a fraction of min(H, W) (rounded)."""
    if isinstance(size, float) and 0.0 < size <= 1.0:
        return int(round(size * min(height, width)))
    return int(size)


def check_hole_size(field: str, size: int | float) -> int | float:
    """Int pixels >= 0 or a float fraction in (0, 1]; a whole float > 1 (16.0 from YAML) means pixels."""
    fraction_or_whole = not isinstance(size, float) or size <= 1.0 or size.is_integer()
    ok = is_real(size) and size >= 0 and math.isfinite(size) and fraction_or_whole
    require(ok, field, ">= 0 (int pixels or float fraction in (0, 1])", size)
    return int(size) if isinstance(size, float) and size > 1.0 else size


class Cutout:
    """Cutout (DeVries & Taylor 2017): ``(x, y) -> (x with holes, y)``, x: (B, C, H, W).

    Args:
        n_holes: holes per image (0 = no-op); holes of one image may overlap.
        size: hole side: int pixels, or float in (0, 1] = fraction of min(H, W).
        fill: value written into the holes (in ``x``'s units, e.g. 0 = the mean after normalizing).
        p: probability that an image gets its holes (per sample).
        generator: source of the hole centers and the per-sample draws.
    """

    mixes = False

    def __init__(
        self,
        n_holes: int = 1,
        size: int | float = 16,
        fill: float = 0.0,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n_holes = check_int("n_holes", n_holes, low=0)
        self.size = check_hole_size("size", size)
        self.fill = check_real("fill", fill)
        self.p = check_probability("p", p)
        self.generator = generator

    def __repr__(self) -> str:
        return f"Cutout(n_holes={self.n_holes}, size={self.size}, fill={self.fill}, p={self.p})"

    def sample_boxes(self, batch: int, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        """Clipped holes ``(B, n_holes, 4)`` long (y0, y1, x0, x1) on ``device``; empty for unselected images."""
        gen, where = self.generator, draw_device(self.generator, device)
        selected = torch.rand(batch, 1, generator=gen, device=where) < self.p
        cy = torch.randint(0, height, (batch, self.n_holes), generator=gen, device=where)
        cx = torch.randint(0, width, (batch, self.n_holes), generator=gen, device=where)
        side = hole_side(self.size, height, width) * selected.long()
        return to_device(centered_boxes(cy, cx, side, side, height, width), device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_float_batch(x)
        height, width = x.shape[-2:]
        if self.n_holes == 0 or hole_side(self.size, height, width) == 0 or self.p == 0 or x.shape[0] == 0:
            return x, y
        boxes = self.sample_boxes(x.shape[0], height, width, x.device)
        hole = holes_mask(boxes, height, width, x.dtype)
        fill = torch.full((), self.fill, dtype=x.dtype, device=x.device)  # a fill kernel, no host copy
        return torch.lerp(x, fill, hole), y  # exactly x outside, exactly fill inside; one pass


def holes_mask(boxes: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, H, W)`` float: 1 inside any of the holes ``boxes (B, n, 4)``, 0 elsewhere."""
    in_rows, in_cols = box_indicators(boxes, height, width, dtype)  # (B, n, H, 1), (B, n, 1, W)
    keep = torch.mul(in_rows[:, :1], in_cols[:, :1].neg()).add_(1)
    for hole in range(1, boxes.shape[1]):  # loop over holes (a small constant), never over samples
        keep.mul_(torch.mul(in_rows[:, hole : hole + 1], in_cols[:, hole : hole + 1].neg()).add_(1))
    return keep.neg_().add_(1)
