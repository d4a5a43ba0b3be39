"""The op set of the policy augmentations, as one table, and one call that applies a different op to every sample.

:data:`TABLE` holds a row per op: its name (Cubuk et al. 2019), kind (identity, geometric or colour),
whether its magnitude gets a random sign, whether TrivialAugment and RandAugment draw it, its magnitude
at every bin, and the ``torchvision.transforms.v2.functional`` function it equals. Everything else here
(:data:`OPS`, :data:`SIGNED`, :data:`GEOMETRIC`, the magnitude tables, the op groups) is derived from it.

An op choice per sample is an index into :data:`OPS` plus a signed magnitude in the units of
``torchvision.transforms.v2``'s auto-augment ops (degrees for Rotate, ``tan`` of the shear angle for
ShearX/Y, pixels for TranslateX/Y, ``factor - 1`` for Brightness/Color/Contrast/Sharpness, bits for
Posterize, the threshold as a fraction of white for Solarize, ignored otherwise). :func:`apply_ops`
groups the samples by op (a loop over the op kinds, never over samples), warps all geometric samples
with one batched affine call and runs each colour op once on its group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import inf
from typing import NamedTuple

import torch

from . import color
from ._batch import check_image, memory_format, to_device
from .checks import check_choice, require
from .geometric import INTERPOLATIONS, check_fill, fill_values, inverse_affine, quarter_turns, resample

__all__ = ["Op", "TABLE", "OPS", "SIGNED", "GEOMETRIC", "SPACE", "op_index", "magnitude_table", "apply_ops"]

Magnitudes = Callable[[int, bool, int, int], torch.Tensor]
"""``(num_bins, wide, height, width) -> (num_bins,)`` magnitudes; ``wide``: TrivialAugmentWide's ranges."""


class Op(NamedTuple):
    """One row of :data:`TABLE`."""

    name: str
    kind: str  # "identity", "geometric" (the affine warp) or "colour"
    signed: bool  # the magnitude gets a random sign
    in_space: bool  # drawn by TrivialAugmentWide and RandAugment (AutoAugment names its ops)
    magnitudes: Magnitudes | None  # None: the op has no magnitude
    function: str  # the torchvision.transforms.v2.functional function (affine / rotate for the warps)
    param: Callable[[torch.Tensor, float], torch.Tensor] | None = None  # colour: magnitude, white -> kernel param
    limits: tuple[float, float] | None = None  # colour: the kernel param's valid range (checked in apply_ops)


def _ramp(wide: float, standard: float) -> Magnitudes:
    return lambda bins, is_wide, height, width: torch.linspace(0.0, wide if is_wide else standard, bins)


def _translate(side: int) -> Magnitudes:  # 0: height (TranslateY), 1: width (TranslateX)
    return lambda bins, is_wide, h, w: torch.linspace(0.0, 32.0 if is_wide else 150.0 / 331.0 * (h, w)[side], bins)


def _posterize(bins: int, is_wide: bool, height: int, width: int) -> torch.Tensor:
    return 8 - (torch.arange(bins) / ((bins - 1) / (6 if is_wide else 4)))  # bits before rounding


def _factor(m: torch.Tensor, white: float) -> torch.Tensor:
    return 1.0 + m.double()


TABLE: tuple[Op, ...] = (
    Op("Identity", "identity", False, True, None, "identity"),
    Op("ShearX", "geometric", True, True, _ramp(0.99, 0.3), "affine"),
    Op("ShearY", "geometric", True, True, _ramp(0.99, 0.3), "affine"),
    Op("TranslateX", "geometric", True, True, _translate(1), "affine"),
    Op("TranslateY", "geometric", True, True, _translate(0), "affine"),
    Op("Rotate", "geometric", True, True, _ramp(135.0, 30.0), "rotate"),
    Op("Brightness", "colour", True, True, _ramp(0.99, 0.9), "adjust_brightness", _factor, (0.0, inf)),
    Op("Color", "colour", True, True, _ramp(0.99, 0.9), "adjust_saturation", _factor, (0.0, inf)),
    Op("Contrast", "colour", True, True, _ramp(0.99, 0.9), "adjust_contrast", _factor, (0.0, inf)),
    Op("Sharpness", "colour", True, True, _ramp(0.99, 0.9), "adjust_sharpness", _factor, (0.0, inf)),
    Op("Posterize", "colour", False, True, _posterize, "posterize", lambda m, white: m.long(), (0, 8)),
    Op(
        "Solarize",
        "colour",
        False,
        True,
        lambda b, w_, h, w: torch.linspace(1.0, 0.0, b),
        "solarize",
        lambda m, white: white * m.double(),
    ),  # fmt: skip
    Op("AutoContrast", "colour", False, True, None, "autocontrast", lambda m, white: m),
    Op("Equalize", "colour", False, True, None, "equalize", lambda m, white: m),
    Op("Invert", "colour", False, False, None, "invert", lambda m, white: m),
)
"""The policy ops in index order: :data:`OPS` ``[i]`` is ``TABLE[i].name``."""

OPS = tuple(op.name for op in TABLE)
"""Op kinds in index order (the names of Cubuk et al. 2019)."""

SIGNED = frozenset(op.name for op in TABLE if op.signed)
"""Ops whose magnitude gets a random sign."""

GEOMETRIC = tuple(op.name for op in TABLE if op.kind == "geometric")
"""Ops done by the affine warp."""

SPACE = tuple(i for i, op in enumerate(TABLE) if op.in_space)
"""Indices of the ops TrivialAugmentWide and RandAugment draw from (uniformly)."""

_INDEX = {name: i for i, name in enumerate(OPS)}

# Groups apply_ops runs one call each for: identity, all geometric ops together, then each colour op.
_GROUP_NAMES = ("Identity", "Geometric", *(op.name for op in TABLE if op.kind == "colour"))
_GROUP_OF = torch.tensor([_GROUP_NAMES.index({"identity": "Identity", "geometric": "Geometric"}.get(op.kind, op.name))
                          for op in TABLE])  # fmt: skip


def op_index(name: str) -> int:
    """The index of op ``name`` in :data:`OPS`."""
    return _INDEX[name]


def magnitude_table(space: str, num_bins: int, height: int, width: int) -> torch.Tensor:
    """Magnitude of every op at every bin, float32 ``(len(OPS), num_bins)``; 0 for ops without one.

    ``space``: ``"wide"`` (TrivialAugmentWide's ranges) or ``"standard"`` (RandAugment's and AutoAugment's).
    Values are torchvision's ``torch.linspace`` tables; Posterize holds its bits before rounding.
    """
    table = torch.zeros(len(OPS), num_bins)
    for i, op in enumerate(TABLE):
        if op.magnitudes is not None:
            table[i] = op.magnitudes(num_bins, space == "wide", height, width)
    return table


def _warp_group(
    x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor, interpolation: str, fills: tuple[float, ...]
) -> torch.Tensor:
    """The geometric samples: one inverse affine map each, one ``grid_sample`` for all."""
    _, _, h, w = x.shape
    m = mags.to(torch.float64)
    zero = torch.zeros_like(m)

    def where(name: str, value: torch.Tensor | float) -> torch.Tensor:
        return torch.where(ops == _INDEX[name], value, zero)

    shear = torch.rad2deg(torch.atan(m))
    sheared = (ops == _INDEX["ShearX"]) | (ops == _INDEX["ShearY"])  # sheared about the top-left corner
    turn = torch.remainder(m, 360.0)  # torchvision's rotate: angle % 360, then the matrix of its negative
    matrix = inverse_affine(
        angle=where("Rotate", -turn),
        translate_x=where("TranslateX", torch.trunc(m)),  # torchvision passes int(magnitude)
        translate_y=where("TranslateY", torch.trunc(m)),
        shear_x=where("ShearX", shear),
        shear_y=where("ShearY", shear),
        center_x=torch.where(sheared, -0.5 * w, zero),
        center_y=torch.where(sheared, -0.5 * h, zero),
    )
    out = resample(x, matrix, interpolation, fills)
    return quarter_turns(x, out, torch.where(ops == _INDEX["Rotate"], turn, torch.nan), interpolation, fills)


def apply_ops(
    x: torch.Tensor,
    ops: torch.Tensor,
    magnitudes: torch.Tensor,
    interpolation: str = "nearest",
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Apply op ``OPS[ops[i]]`` with magnitude ``magnitudes[i]`` to sample i of ``x`` (B, C, H, W).

    ``ops``: int (B,); ``magnitudes``: float (B,) (see the module docstring for units). ``x``: uint8 or
    float in [0, 1], 1 or 3 channels. Returns a new tensor of ``x``'s shape, dtype and memory format. The
    op counts are read on the host: free when ``ops`` lives on the CPU, one sync otherwise.
    """
    check_image(x)
    b = x.shape[0]
    require(ops.shape == (b,), "ops", f"of shape ({b},)", tuple(ops.shape))
    require(magnitudes.shape == (b,), "magnitudes", f"of shape ({b},)", tuple(magnitudes.shape))
    require(not ops.is_floating_point() and not ops.is_complex(), "ops", "an int tensor", ops.dtype)
    if b and ops.device.type == "cpu":
        lo, hi = int(ops.min()), int(ops.max())
        require(lo >= 0 and hi < len(OPS), "ops", f"in [0, {len(OPS) - 1}] for every sample", (lo, hi))
        for i, op in enumerate(TABLE):  # host tensors only: reading values of device ones would sync
            picked = ops == i
            if op.limits is not None and magnitudes.device.type == "cpu" and bool(picked.any()):
                values = op.param(magnitudes[picked], 1.0)
                low, high = float(values.min()), float(values.max())
                rule = f"{op.name}'s {op.function} parameter in [{op.limits[0]:g}, {op.limits[1]:g}]"
                require(op.limits[0] <= low and high <= op.limits[1], "magnitudes", f"giving {rule}", (low, high))
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    return run_ops(x, ops, magnitudes, interpolation, fill_values(check_fill("fill", fill), x.shape[1]))


def run_ops(
    x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor, interpolation: str, fills: tuple[float, ...]
) -> torch.Tensor:
    """:func:`apply_ops` on checked arguments (``fills``: 1 or C numbers): a policy's inner loop."""
    b = x.shape[0]
    ops = ops.long()
    # Sort the samples by op group: each group is then one contiguous slice, done in one call.
    group = _GROUP_OF.to(ops.device)[ops]
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=len(_GROUP_NAMES)).tolist()
    dev = x.device
    # Host draws move over without a stream sync (to_device); the counts above stay on the host.
    order_dev, ops_sorted, mags_sorted = (to_device(t, dev) for t in (order, ops[order], magnitudes[order]))
    xs = x.index_select(0, order_dev)
    white = 1.0 if x.is_floating_point() else 255.0
    parts, start = [], 0
    for name, count in zip(_GROUP_NAMES, counts):
        lo, start = start, start + count
        if count == 0:
            continue
        part = xs[lo:start]
        if name == "Geometric":
            part = _warp_group(part, ops_sorted[lo:start], mags_sorted[lo:start], interpolation, fills)
        elif name != "Identity":
            op = TABLE[_INDEX[name]]
            param = op.param(mags_sorted[lo:start], white).reshape(-1, 1, 1, 1)
            part = color.KERNELS[op.function](part, param)
        parts.append(part.contiguous())
    out = torch.cat(parts) if parts else xs
    inverse = torch.empty_like(order_dev).scatter_(0, order_dev, torch.arange(b, device=dev))
    return out.index_select(0, inverse).contiguous(memory_format=memory_format(x))
