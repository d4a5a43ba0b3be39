"""Per-sample geometric ops on image batches: one batched affine warp (rotate, shear, translate), random
rotation and random vertical flip.

``x: (B, C, H, W)`` uint8 or floating point, any C. Every sample gets its own matrix; the whole batch is
resampled by a single ``grid_sample`` call with a ``(B, H, W, 2)`` grid (for nearest, on a one-channel image
of pixel numbers, whose result then gathers the pixels of ``x`` in its own dtype). Coordinates follow
``torchvision.transforms.v2.functional.affine`` (pixel units, origin at the image center, the inverse map
from output to input pixels), as do interpolation (nearest or bilinear), the fill outside the image and
rounding back to uint8, so each sample equals torchvision's result for its own parameters: bit for bit
for nearest; for bilinear within 1 uint8 level on a tiny share of values / a few float32 ulps, as
``grid_sample``'s rounding differs between CPU vector widths.

Vertical flips and large rotations change what some images mean (a 6 flipped or turned upside down reads
as a 9); use them where the classes allow it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._batch import bernoulli, check_batch, memory_format, per_sample_values, to_device, uniform
from .checks import check_choice, check_probability, check_real, is_real, require

__all__ = [
    "INTERPOLATIONS",
    "inverse_affine",
    "warp_affine",
    "resample",
    "rotate",
    "shear_x",
    "shear_y",
    "translate",
    "random_rotation",
    "quarter_turns",
    "vflip",
    "random_vflip",
    "check_fill",
    "fill_values",
]

INTERPOLATIONS = ("nearest", "bilinear")

Param = torch.Tensor | float


def check_fill(field: str, fill: float | Sequence[float]) -> float | tuple[float, ...]:
    """A finite number, or one finite number per channel."""
    if isinstance(fill, Sequence) and not isinstance(fill, str):
        ok = len(fill) > 0 and all(is_real(v) and math.isfinite(v) for v in fill)
        require(ok, field, "a number or a list of numbers (one per channel)", fill)
        return tuple(float(v) for v in fill)
    return check_real(field, fill)


def inverse_affine(
    angle: torch.Tensor,
    translate_x: torch.Tensor,
    translate_y: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    center_x: torch.Tensor,
    center_y: torch.Tensor,
) -> torch.Tensor:
    """Per-sample inverse affine maps ``(B, 2, 3)`` float64 (output pixel -> input pixel, origin at the center).

    All arguments float64 ``(B,)``: ``angle``, ``shear_x``, ``shear_y`` in degrees (torchvision's ``affine``
    convention: the forward map is ``T(translate) C R(angle) Sh_y Sh_x C^-1`` with ``C`` the move to
    ``center``), translation and center in pixels, the center relative to the image center.
    """
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    tan_sx, cos_sy = torch.tan(sx), torch.cos(sy)
    # Forward rotation-shear block [[a, b], [c, d]] (determinant 1, so its inverse is [[d, -b], [-c, a]]).
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    moved_x, moved_y = center_x + translate_x, center_y + translate_y
    row0 = torch.stack([d, -b, center_x - d * moved_x + b * moved_y], dim=1)
    row1 = torch.stack([-c, a, center_y + c * moved_x - a * moved_y], dim=1)
    return torch.stack([row0, row1], dim=1)


def _sampling_grid(matrix: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``grid_sample`` grid ``(B, H, W, 2)`` in [-1, 1] units for inverse maps ``matrix (B, 2, 3)``.

    ``x * t0 + y * t1 + t2`` with each step rounded in ``dtype``: bit for bit the product of torchvision's
    base grid with its matrix, built from a row term and a column term instead of a matrix product. The two
    coordinates are computed as planes ``(B, 2, H, W)`` (long inner broadcasts, fast) and returned as a
    permuted view, which ``grid_sample`` reads through its strides (no interleaving copy).
    """
    dev, b = matrix.device, matrix.shape[0]
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=dev, dtype=dtype)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=dev, dtype=dtype)
    theta = matrix.to(dtype, copy=True)  # (B, 2, 3): rows grid x, grid y; columns x, y, 1
    theta[:, 0].div_(0.5 * width)
    theta[:, 1].div_(0.5 * height)
    cols = xs.view(1, 1, 1, width) * theta[:, :, 0].reshape(b, 2, 1, 1)
    rows = ys.view(1, 1, height, 1) * theta[:, :, 1].reshape(b, 2, 1, 1)
    planes = cols.add(rows).add_(theta[:, :, 2].reshape(b, 2, 1, 1))
    return planes.permute(0, 2, 3, 1)


def warp_affine(
    x: torch.Tensor,
    matrix: torch.Tensor,
    interpolation: str = "nearest",
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Resample sample i of ``x`` (B, C, H, W) through its inverse map ``matrix[i]`` (see :func:`inverse_affine`).

    Pixels that map outside the image get ``fill`` (a number or one per channel, in ``x``'s units);
    uint8 results are rounded. Output: ``x``'s shape, dtype and memory format.
    """
    check_batch(x)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    fills = fill_values(check_fill("fill", fill), x.shape[1])
    b = x.shape[0]
    require(matrix.shape == (b, 2, 3), "matrix", f"of shape ({b}, 2, 3)", tuple(matrix.shape))
    return resample(x, matrix, interpolation, fills)


def resample(x: torch.Tensor, matrix: torch.Tensor, interpolation: str, values: tuple[float, ...]) -> torch.Tensor:
    """:func:`warp_affine` on checked arguments: fill ``values`` 1 or C numbers, ``matrix`` ``(B, 2, 3)``."""
    b, c, h, w = x.shape
    if b == 0:
        return x.clone()
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    grid = _sampling_grid(matrix.to(x.device), h, w, dtype)
    if interpolation == "nearest" and h * w < _EXACT_INDICES:
        return _nearest_gather(x, grid, values)
    fills = to_device(torch.tensor(values, dtype=dtype), x.device)
    img = x.to(dtype)
    filled = any(v != 0 for v in values)  # read on the host: no device sync
    if filled:  # a ones channel measures how much of each output pixel came from inside the image
        img = torch.cat([img, torch.ones_like(img[:, :1])], dim=1)
    out = F.grid_sample(img, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if filled:
        out, inside = out[:, :c], out[:, c:]
        fills = fills.view(1, -1, 1, 1)
        if interpolation == "nearest":
            out = torch.where(inside < 0.5, fills, out)
        else:
            out = out.sub_(fills).mul_(inside).add_(fills)
    # Nearest copies input values (integers for uint8) or the fill: rounding is a no-op unless a fill is fractional.
    integral = interpolation == "nearest" and all(float(v).is_integer() for v in values)
    if not x.is_floating_point() and not integral:
        out = out.round_()
    return out.to(x.dtype).contiguous(memory_format=memory_format(x))


_EXACT_INDICES = 2**24  # float32 holds every pixel index below this exactly
_INDEX_IMAGES: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}


def _index_image(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(1, 1, H, W)`` of pixel numbers 1..H*W in ``dtype`` (0 is left for "outside"), made once per size."""
    key = (h, w, device, dtype)
    if key not in _INDEX_IMAGES:
        _INDEX_IMAGES[key] = torch.arange(1, h * w + 1, dtype=dtype, device=device).view(1, 1, h, w)
    return _INDEX_IMAGES[key]


def _nearest_gather(x: torch.Tensor, grid: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """Nearest resampling as a gather: ``grid_sample`` picks a source pixel number per output pixel (from a
    one-channel index image, by the very rounding it applies to images; 0 outside) and the pixels are
    copied from ``x`` in its own dtype, the fill standing at number 0. No float copy of the batch is made."""
    b, c, h, w = x.shape
    source = F.grid_sample(
        _index_image(h, w, x.device, grid.dtype).expand(b, 1, h, w),
        grid,
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )
    index = source.view(b, 1, h * w).to(torch.int64).expand(b, c, h * w)
    # The fill as the float path gives it: uint8 rounds a fractional fill, then casts.
    fill = to_device(torch.tensor(values, dtype=grid.dtype), x.device)
    fill = (fill if x.is_floating_point() else fill.round()).to(x.dtype)
    pixels = torch.cat([fill.view(1, -1, 1).expand(b, c, 1), x.reshape(b, c, h * w)], dim=2)
    return pixels.gather(2, index).view(b, c, h, w).contiguous(memory_format=memory_format(x))


def _warp(x: torch.Tensor, interpolation: str, fill: float | Sequence[float], **params: Param) -> torch.Tensor:
    """Build one inverse map per sample from named per-sample parameters (zeros elsewhere) and warp a
    batch the caller checked."""
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    fills = fill_values(check_fill("fill", fill), x.shape[1])
    b = x.shape[0]
    zeros = torch.zeros(b, dtype=torch.float64, device=x.device)
    cols = {k: zeros for k in ("angle", "translate_x", "translate_y", "shear_x", "shear_y", "center_x", "center_y")}
    cols.update({k: per_sample_values(v, b, x.device, k) for k, v in params.items()})
    return resample(x, inverse_affine(**cols), interpolation, fills)


def quarter_turns(
    x: torch.Tensor, out: torch.Tensor, turn: torch.Tensor, interpolation: str, fill: float | Sequence[float]
) -> torch.Tensor:
    """Exact copies for samples turned by a multiple of 90 degrees (``turn``: degrees in [0, 360), NaN = none).

    torchvision rotates by 0, 90, 180, 270 degrees with ``rot90``. The warp gives the same pixels, except
    that a float bilinear warp with a fill re-blends every pixel with the fill by a coverage of exactly 1,
    which can move the last bit; only that case needs the copies.
    """
    if not (x.is_floating_point() and interpolation == "bilinear" and any(v != 0 for v in fill_values(fill))):
        return out
    square = x.shape[2] == x.shape[3]
    for k in range(4):
        if k % 2 == 0 or square:
            mask = (turn == 90.0 * k).view(-1, 1, 1, 1).to(x.device)
            out = torch.where(mask, torch.rot90(x, k, dims=(2, 3)), out)
    return out.contiguous(memory_format=memory_format(x))


def fill_values(fill: float | Sequence[float], channels: int | None = None) -> tuple[float, ...]:
    """A checked fill as a tuple; with ``channels``, also checked to hold 1 or that many numbers."""
    values = tuple(fill) if isinstance(fill, Sequence) and not isinstance(fill, str) else (fill,)
    if channels is not None:
        rule = f"a number or {channels} numbers (one per channel)"
        require(len(values) in (1, channels), "fill", rule, fill)
    return values


def rotate(
    x: torch.Tensor, angle: Param, interpolation: str = "nearest", fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """Rotate sample i counter-clockwise by ``angle[i]`` degrees about the image center (size kept)."""
    check_batch(x)
    # torchvision first reduces the angle to [0, 360) and builds the matrix of its negative.
    turn = torch.remainder(per_sample_values(angle, x.shape[0], x.device, "angle"), 360.0)
    return quarter_turns(x, _warp(x, interpolation, fill, angle=-turn), turn, interpolation, fill)


def shear_x(
    x: torch.Tensor, factor: Param, interpolation: str = "nearest", fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """Shear sample i horizontally: output (u, v) reads input (u + factor[i] * v, v), (0, 0) the top-left corner."""
    check_batch(x)
    shear = torch.rad2deg(torch.atan(per_sample_values(factor, x.shape[0], x.device, "factor")))
    return _warp(x, interpolation, fill, shear_x=shear, center_x=-0.5 * x.shape[3], center_y=-0.5 * x.shape[2])


def shear_y(
    x: torch.Tensor, factor: Param, interpolation: str = "nearest", fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """Shear sample i vertically: output (u, v) reads input (u, v + factor[i] * u), (0, 0) the top-left corner."""
    check_batch(x)
    shear = torch.rad2deg(torch.atan(per_sample_values(factor, x.shape[0], x.device, "factor")))
    return _warp(x, interpolation, fill, shear_y=shear, center_x=-0.5 * x.shape[3], center_y=-0.5 * x.shape[2])


def translate(
    x: torch.Tensor,
    dx: Param = 0.0,
    dy: Param = 0.0,
    interpolation: str = "nearest",
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Move the content of sample i right by ``dx[i]`` and down by ``dy[i]`` pixels."""
    check_batch(x)
    return _warp(x, interpolation, fill, translate_x=dx, translate_y=dy)


def random_rotation(
    x: torch.Tensor,
    degrees: float | Sequence[float],
    interpolation: str = "nearest",
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate each sample by its own angle, uniform in [-degrees, degrees] (or in [low, high] for a pair)."""
    check_batch(x)
    if isinstance(degrees, Sequence) and not isinstance(degrees, str):
        ok = len(degrees) == 2 and all(is_real(v) and math.isfinite(v) for v in degrees) and degrees[0] <= degrees[1]
        require(ok, "degrees", "a number >= 0 or a pair (low, high) with low <= high", degrees)
        low, high = float(degrees[0]), float(degrees[1])
    else:
        high = check_real("degrees", degrees, low=0)
        low = -high
    return rotate(x, uniform(low, high, x.shape[0], generator, x.device), interpolation, fill)


def vflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the samples with ``flip[i]`` (bool (B,)) top-bottom."""
    check_batch(x)
    flipped = x.flip(2)
    if x.is_floating_point():  # lerp is exactly x at weight 0 and exactly the flip at weight 1
        out = torch.lerp(x, flipped, flip.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1))
    else:  # x + (flip - x) * m in wrap-around integer arithmetic: exact for m in {0, 1}
        out = flipped.sub_(x).mul_(flip.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)).add_(x)
    return out.contiguous(memory_format=memory_format(x))


def random_vflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample of ``x`` (B, C, H, W) top-bottom with probability ``p``, independently per sample."""
    check_batch(x)
    p = check_probability("p", p)
    return vflip(x, bernoulli(p, x.shape[0], generator, x.device))
