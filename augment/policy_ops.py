"""The op set of the policy augmentations and one call that applies a different op to every sample.

An op choice per sample is an index into :data:`OPS` plus a signed magnitude in the units of
``torchvision.transforms.v2``'s auto-augment ops (degrees for Rotate, ``tan`` of the shear angle for
ShearX/Y, pixels for TranslateX/Y, ``factor - 1`` for Brightness/Color/Contrast/Sharpness, bits for
Posterize, the threshold as a fraction of white for Solarize, ignored otherwise). :func:`apply_ops`
groups the samples by op (a loop over the 15 op kinds, never over samples), warps all geometric samples
with one batched affine call and runs each colour op once on its group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import color
from .checks import require
from .crop import _check_batch, _memory_format
from .geometric import inverse_affine, quarter_turns, warp_affine
from .mixing import to_device

__all__ = ["OPS", "SIGNED", "GEOMETRIC", "op_index", "magnitude_table", "apply_ops"]

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
"""Op kinds in index order (the names of Cubuk et al. 2019)."""

SIGNED = frozenset(OPS[1:10])
"""Ops whose magnitude gets a random sign."""

GEOMETRIC = OPS[1:6]
"""Ops done by the affine warp (contiguous indices 1..5)."""

_INDEX = {name: i for i, name in enumerate(OPS)}


def op_index(name: str) -> int:
    """The index of op ``name`` in :data:`OPS`."""
    return _INDEX[name]


def magnitude_table(space: str, num_bins: int, height: int, width: int) -> torch.Tensor:
    """Magnitude of every op at every bin, float32 ``(len(OPS), num_bins)``; 0 for ops without one.

    ``space``: ``"wide"`` (TrivialAugmentWide's ranges) or ``"standard"`` (RandAugment's and AutoAugment's).
    Values are torchvision's ``torch.linspace`` tables; Posterize holds its bits before rounding.
    """
    wide = space == "wide"
    table = torch.zeros(len(OPS), num_bins)
    ramp = {"ShearX": 0.99 if wide else 0.3, "ShearY": 0.99 if wide else 0.3, "Rotate": 135.0 if wide else 30.0}
    ramp["TranslateX"] = 32.0 if wide else 150.0 / 331.0 * width
    ramp["TranslateY"] = 32.0 if wide else 150.0 / 331.0 * height
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        ramp[name] = 0.99 if wide else 0.9
    for name, high in ramp.items():
        table[_INDEX[name]] = torch.linspace(0.0, high, num_bins)
    table[_INDEX["Posterize"]] = 8 - (torch.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4)))
    table[_INDEX["Solarize"]] = torch.linspace(1.0, 0.0, num_bins)
    return table


def _warp_group(
    x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor, interpolation: str, fill: float | Sequence[float]
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
    out = warp_affine(x, matrix, interpolation, fill)
    return quarter_turns(x, out, torch.where(ops == _INDEX["Rotate"], turn, torch.nan), interpolation, fill)


def _color_ops(white: float) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Colour op name -> ``fn(group, magnitudes)``."""
    return {
        "Brightness": lambda g, m: color.adjust_brightness(g, 1.0 + m.double()),
        "Color": lambda g, m: color.adjust_saturation(g, 1.0 + m.double()),
        "Contrast": lambda g, m: color.adjust_contrast(g, 1.0 + m.double()),
        "Sharpness": lambda g, m: color.adjust_sharpness(g, 1.0 + m.double()),
        "Posterize": lambda g, m: color.posterize(g, m.long()),
        "Solarize": lambda g, m: color.solarize(g, white * m.double()),
        "AutoContrast": lambda g, m: color.autocontrast(g),
        "Equalize": lambda g, m: color.equalize(g),
        "Invert": lambda g, m: color.invert(g),
    }


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
    _check_batch(x)
    color._check_image(x)
    b = x.shape[0]
    require(ops.shape == (b,), "ops", f"of shape ({b},)", tuple(ops.shape))
    require(magnitudes.shape == (b,), "magnitudes", f"of shape ({b},)", tuple(magnitudes.shape))
    require(not ops.is_floating_point() and not ops.is_complex(), "ops", "an int tensor", ops.dtype)
    if b and ops.device.type == "cpu":
        lo, hi = int(ops.min()), int(ops.max())
        require(lo >= 0 and hi < len(OPS), "ops", f"in [0, {len(OPS) - 1}] for every sample", (lo, hi))
    ops = ops.long()
    # Sort the samples by op: each op kind is then one contiguous slice, done in one call.
    order = torch.argsort(ops, stable=True)
    counts = torch.bincount(ops, minlength=len(OPS)).tolist()
    dev = x.device
    # Host draws move over without a stream sync (to_device); the counts above stay on the host.
    order_dev, ops_sorted, mags_sorted = (to_device(t, dev) for t in (order, ops[order], magnitudes[order]))
    xs = x.index_select(0, order_dev)
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    kinds = _color_ops(1.0 if x.is_floating_point() else 255.0)
    # Groups: identity, all geometric ops together, then each colour op.
    groups = [("Identity", 0, 1), ("Geometric", 1, 1 + len(GEOMETRIC))]
    groups += [(name, _INDEX[name], _INDEX[name] + 1) for name in OPS[1 + len(GEOMETRIC) :]]
    parts = []
    for name, first, stop in groups:
        lo, hi = starts[first], starts[stop]
        if lo == hi:
            continue
        group = xs[lo:hi]
        if name == "Geometric":
            group = _warp_group(group, ops_sorted[lo:hi], mags_sorted[lo:hi], interpolation, fill)
        elif name != "Identity":
            group = kinds[name](group, mags_sorted[lo:hi])
        parts.append(group.contiguous())
    out = torch.cat(parts) if parts else xs
    inverse = torch.empty_like(order_dev).scatter_(0, order_dev, torch.arange(b, device=dev))
    return out.index_select(0, inverse).contiguous(memory_format=_memory_format(x))
