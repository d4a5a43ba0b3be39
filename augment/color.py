"""Per-sample colour ops on image batches: brightness, saturation, contrast, sharpness, posterize, solarize,
autocontrast, equalize, invert.

Every op takes ``x: (B, C, H, W)``, uint8 (0..255) or floating point (0..1), with C = 1 or 3, plus one
parameter per sample (a ``(B,)`` tensor, or a number shared by all), and returns a tensor of ``x``'s shape,
dtype and memory format. Results equal ``torchvision.transforms.v2.functional`` applied image by image
with the same parameter: bit for bit for brightness, posterize, solarize, autocontrast, equalize and invert
on every CPU; for the blends, bit for bit against torchvision's vectorized CPU kernels (AVX2, AVX512),
within 1 uint8 level / a few float32 ulps where torch's kernels do not fuse the multiply-add
(``ATEN_CPU_CAPABILITY=default``):

- blends (saturation, contrast, sharpness) compute ``a * r + b * (1 - r)`` as torchvision's kernel does, one
  float32 product then a fused multiply-add; the fused step is done in float64 and rounded once to
  float32, which is exactly a float32 FMA, so uint8 results truncate to the same integer (a plain float32
  sum would land on the other side of an integer for many pixels);
- uint8 results are clamped to [0, 255] and truncated (not rounded), as torchvision does;
- equalize follows Pillow's lookup table (``ImageOps.equalize``) with one histogram per sample and channel,
  all of them counted by a single scatter into ``(B * C, 256)`` bins.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._batch import check_image, memory_format, per_sample_values
from .checks import check_int, require

__all__ = [
    "adjust_brightness",
    "adjust_saturation",
    "adjust_contrast",
    "adjust_sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
    "invert",
    "rgb_to_gray",
    "KERNELS",
]

Param = torch.Tensor | float


def _bound(x: torch.Tensor) -> float:
    """The value of white: 255 for uint8, 1 for floating point."""
    return 1.0 if x.is_floating_point() else 255.0


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """The float dtype the ops compute in: float32 for uint8 and half types, else ``x``'s own."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _per_sample(value: Param, x: torch.Tensor, name: str, low: float | None = None) -> torch.Tensor:
    """``value`` per sample as float64 ``(B, 1, 1, 1)`` on ``x``'s device (see ``per_sample_values``)."""
    return per_sample_values(value, x.shape[0], x.device, name, low).view(-1, 1, 1, 1)


def _finish(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clamp a float result to the valid range, truncate to uint8 (as torchvision does) or cast back."""
    out = out.clamp_(0.0, _bound(x)).to(x.dtype)
    return out.contiguous(memory_format=memory_format(x))


def _fused_blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``fma(b, 1 - ratio, a * ratio)`` in float32: the product rounds to float32, the sum rounds once.

    ``a``/``b`` float32 (or float64), ``ratio`` float64 ``(B, 1, 1, 1)``. The float64 sum of a float32
    number and an exact float64 product rounds to float32 exactly as a fused multiply-add does.
    """
    dtype = a.dtype
    keep, other = ratio.to(dtype), (1.0 - ratio).to(dtype)
    return (a * keep).double().addcmul_(b.double(), other.double()).to(dtype)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` of ``x`` (B, 3, H, W) as a float (B, 1, H, W); floored for uint8."""
    check_image(x)
    return _gray(x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    gray = torch.mul(r.to(_work_dtype(x)), 0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)
    return gray if x.is_floating_point() else gray.floor_()


def adjust_brightness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Scale every pixel of sample i by ``factor[i] >= 0`` (0 = black, 1 = unchanged)."""
    check_image(x)
    return _brightness(x, _per_sample(factor, x, "factor", low=0))


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _finish(x * f.to(_work_dtype(x)), x)  # uint8 * float32 computes in float32, one pass


def adjust_saturation(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend sample i with its grayscale by ``factor[i] >= 0`` (0 = gray, 1 = unchanged); 1 channel: unchanged."""
    check_image(x)
    return _saturation(x, _per_sample(factor, x, "factor", low=0))


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.clone()
    return _finish(_fused_blend(x.to(_work_dtype(x)), _gray(x), f), x)


def adjust_contrast(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend sample i with the mean of its grayscale by ``factor[i] >= 0`` (0 = flat gray, 1 = unchanged)."""
    check_image(x)
    return _contrast(x, _per_sample(factor, x, "factor", low=0))


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    dtype = _work_dtype(x)
    gray = _gray(x) if x.shape[1] == 3 else x.to(dtype)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    # The blend with a per-sample constant: its exact float64 product is formed once per sample.
    keep, other = f.to(dtype), (1.0 - f).to(dtype).double()
    return _finish((x * keep).double().add_(mean.double() * other).to(dtype), x)


def adjust_sharpness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend sample i with a smoothed copy by ``factor[i] >= 0`` (0 = smooth, 1 = unchanged, 2 = sharper).

    The smoothed copy is the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (rounded for uint8) on the
    interior pixels; the one-pixel border is kept as is. Images of side <= 2 are returned unchanged.
    """
    check_image(x)
    return _sharpness(x, _per_sample(factor, x, "factor", low=0))


def _sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if x.numel() == 0 or h <= 2 or w <= 2:
        return x.clone()
    dtype = _work_dtype(x)
    out = x.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
    if x.is_floating_point():  # torchvision's float32 convolution, for the same rounding
        kernel = torch.ones(3, 3, dtype=dtype, device=x.device)
        kernel[1, 1] = 5.0
        smooth = F.conv2d(out, kernel.div_(13.0).expand(c, 1, 3, 3), groups=c)
    else:  # integers: (3x3 sum + 4 * center) / 13 is never within 1/26 of a tie, so any rounding path agrees
        smooth = _box3(x.to(torch.int16)).add_(x[..., 1:-1, 1:-1].to(torch.int16), alpha=4).to(dtype)
        smooth = smooth.mul_(1.0 / 13.0).round_()
    inner = out[..., 1:-1, 1:-1]
    # inner + (1 - f) * (smooth - inner): the same fused step as a blend with ratio f.
    keep = (1.0 - f).to(dtype).double()
    inner.copy_(inner.double().addcmul_(smooth.sub_(inner).double(), keep).to(dtype))
    return _finish(out, x)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """Sum of each interior pixel's 3x3 neighbourhood, (B, C, H - 2, W - 2), in ``x``'s dtype."""
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    return rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]


_MASKS: dict[torch.device, torch.Tensor] = {}


def _posterize_masks(device: torch.device) -> torch.Tensor:
    """uint8 (9,): the mask keeping the k high bits, for k = 0..8 (made once per device)."""
    if device not in _MASKS:
        _MASKS[device] = torch.tensor([(0xFF << (8 - k)) & 0xFF for k in range(9)], dtype=torch.uint8).to(device)
    return _MASKS[device]


def posterize(x: torch.Tensor, bits: torch.Tensor | int) -> torch.Tensor:
    """Keep the ``bits[i]`` (0..8) high bits of every value of sample i; float: quantize to 2**bits levels."""
    check_image(x, color=False)
    b = x.shape[0]
    if isinstance(bits, torch.Tensor):
        require(bits.numel() in (1, b), "bits", f"an int or a tensor of {b} values (one per sample)", tuple(bits.shape))
        if bits.device.type == "cpu" and bits.numel():
            lo, hi = int(bits.min()), int(bits.max())
            require(0 <= lo and hi <= 8, "bits", "in [0, 8] for every sample", (lo, hi))
        bits_t = bits.to(device=x.device, dtype=torch.int64).reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
    else:
        bits_t = torch.full((b, 1, 1, 1), check_int("bits", bits, 0, 8), dtype=torch.int64, device=x.device)
    return _posterize(x, bits_t)


def _posterize(x: torch.Tensor, bits_t: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        levels = torch.pow(2.0, bits_t.to(x.dtype))
        out = x.mul(levels).floor_()
        return torch.minimum(out.clamp_(min=0.0), levels - 1).mul_(1.0 / levels)
    return x.bitwise_and(_posterize_masks(x.device)[bits_t])


def invert(x: torch.Tensor) -> torch.Tensor:
    """``255 - x`` for uint8, ``1 - x`` for floating point."""
    check_image(x, color=False)
    return _invert(x)


def _invert(x: torch.Tensor, unused: torch.Tensor | None = None) -> torch.Tensor:
    return x.bitwise_not() if x.dtype == torch.uint8 else 1.0 - x


def solarize(x: torch.Tensor, threshold: Param) -> torch.Tensor:
    """Invert the values ``>= threshold[i]`` of sample i (threshold in ``x``'s units: 0..255 or 0..1)."""
    check_image(x, color=False)
    t = _per_sample(threshold, x, "threshold")
    if not isinstance(threshold, torch.Tensor):
        require(float(threshold) <= _bound(x), "threshold", f"<= {_bound(x):g} for {x.dtype}", threshold)
    return _solarize(x, t)


def _solarize(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    hit = x >= t.to(_work_dtype(x))  # the dtype torch compares a uint8 with a number in
    if x.is_floating_point():
        return torch.where(hit, 1.0 - x, x)
    return x.bitwise_xor(hit.to(torch.uint8).mul_(255))  # 255 - v == v ^ 255 (faster than a uint8 where)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch every channel of every sample linearly so that its min becomes 0 and its max white."""
    check_image(x)
    return _autocontrast(x)


def _autocontrast(x: torch.Tensor, unused: torch.Tensor | None = None) -> torch.Tensor:
    if x.numel() == 0:
        return x.clone()
    bound = _bound(x)
    dtype = _work_dtype(x)
    xf = x.to(dtype)
    low = x.amin(dim=(-2, -1), keepdim=True).to(dtype)  # extremes are exact in any dtype: take them on x
    high = x.amax(dim=(-2, -1), keepdim=True).to(dtype)
    flat = high == low
    scale = high.sub_(low).mul_(1.0 / bound)
    low = low.masked_fill_(flat, 0.0)
    scale = scale.masked_fill_(flat, 1.0)
    return _finish(xf.sub(low).div_(scale), x)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] to uint8 as torchvision's ``to_dtype(scale=True)`` does: ``x * (256 - 1e-3)``, truncated."""
    return x.mul(255.0 + 1.0 - 1e-3).to(torch.uint8)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram-equalize every channel of every sample (Pillow's ``ImageOps.equalize`` table).

    Float input goes through uint8 (``x * (256 - 1e-3)`` truncated) and back (``/ 255``), as in torchvision.
    A channel whose pixels all but one value share a single level (Pillow's ``step == 0``) is unchanged.
    """
    check_image(x, color=False)
    return _equalize(x)


def _equalize(x: torch.Tensor, unused: torch.Tensor | None = None) -> torch.Tensor:
    if x.numel() == 0:
        return x.clone()
    img = _to_uint8(x) if x.is_floating_point() else x
    b, c, h, w = img.shape
    planes = b * c
    # Every pixel's bin in one (planes * 256) histogram, plane * 256 + value; int32 halves the traffic of int64.
    index_dtype = torch.int32 if planes * 256 < 2**31 else torch.int64
    offsets = torch.arange(0, planes * 256, 256, dtype=index_dtype, device=x.device).unsqueeze(1)
    bins = img.reshape(planes, h * w).to(index_dtype).add_(offsets).view(-1)
    if bins.device.type == "cpu" and not torch.compiler.is_compiling():
        hist = torch.bincount(bins, minlength=planes * 256)  # reads the max, free on the host
    else:  # a scatter into a fixed size: bincount would read the max of device data (a sync)
        ones = torch.ones(1, dtype=torch.int64, device=x.device).expand(bins.numel())
        hist = torch.zeros(planes * 256, dtype=torch.int64, device=x.device).scatter_add_(0, bins.long(), ones)
    hist = hist.view(planes, 256)
    # Pillow's step: the pixels outside the brightest occupied level (the plane's max), // 255.
    brightest = img.reshape(planes, h * w).amax(1, keepdim=True).long()
    step = (h * w - hist.gather(1, brightest)).div(255, rounding_mode="floor")  # (planes, 1)
    # lut[k] = (pixels below level k + step // 2) // step, clamped to 255; the identity where step == 0.
    # The floor of a float64 quotient of integers below 2**53 is their integer quotient (and vectorizes).
    below = hist.cumsum(1).sub_(hist).add_(step.div(2, rounding_mode="floor"))
    lut = below.double().div_(step.clamp(min=1).double()).floor_().clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device, dtype=lut.dtype)).to(torch.uint8)
    out = lut.view(-1).index_select(0, bins).view(b, c, h, w)  # a pixel's histogram bin indexes its table entry
    if x.is_floating_point():
        out = out.to(x.dtype).mul_(1.0 / 255.0)
    return out.contiguous(memory_format=memory_format(x))


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "adjust_brightness": _brightness,
    "adjust_saturation": _saturation,
    "adjust_contrast": _contrast,
    "adjust_sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": _solarize,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "invert": _invert,
}
"""The ops without argument checks, by their ``torchvision.transforms.v2.functional`` name:
``kernel(x, param)`` with ``x`` a checked batch and ``param`` ``(B, 1, 1, 1)`` on ``x``'s device, valid for
every sample (float64 factor or threshold, int64 bits; ignored by the ops without one)."""
