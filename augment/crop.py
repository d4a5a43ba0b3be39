"""Device-side per-sample augmentation of image batches: pad-and-crop, horizontal flip, normalize.

Every op works on a whole batch on the tensor's own device (CPU or GPU), draws one random value per
sample with an optional ``torch.Generator``, and never loops over samples in Python.

The crop is a single flat ``gather``: for each output pixel we compute the index of its source pixel
in the *unpadded* image (reflection / edge replication folded into the index arithmetic), so no
padded copy is ever materialized. A horizontal flip only reverses the column indices, so crop and
flip together cost one gather. On 2 shared CPU cores, for 512x3x32x32 float, this was the fastest of
the variants measured (pad + unfold + advanced indexing 1.2 ms, pad + flat gather 1.1 ms, two
``gather`` calls 2.1 ms, 4-D advanced indexing 3-5 ms, flat gather without padding 0.76 ms).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._batch import as_nchw, bernoulli, check_batch, memory_format, randint
from .checks import check_choice, check_int, check_probability, require

__all__ = [
    "CROP_MODES",
    "check_crop_args",
    "shift_crop",
    "random_crop",
    "random_flip",
    "random_crop_flip",
    "normalize",
    "to_float_nchw",
    "to_normalized_float",
]

CROP_MODES = ("reflect", "replicate", "constant")


def check_crop_args(padding: int, mode: str, height: int, width: int) -> None:
    """padding an int >= 0 (below the image size for reflect), mode one of CROP_MODES."""
    check_int("padding", padding, low=0)
    check_choice("mode", mode, CROP_MODES)
    if mode == "reflect":
        require(
            padding < min(height, width), "padding", f"< the image size {min(height, width)} for reflect mode", padding
        )


def _source_index(pos: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map positions in the padded frame (already shifted by -padding) to source indices in [0, size).

    Returns (index, valid) where ``valid`` is a bool mask for ``constant`` mode (None otherwise).
    """
    if mode == "reflect":  # ... c b | a b c ... (edge pixel not repeated, like torch.nn.functional.pad)
        pos = pos.abs()
        return torch.where(pos >= size, 2 * (size - 1) - pos, pos), None
    clamped = pos.clamp(0, size - 1)
    if mode == "replicate":
        return clamped, None
    return clamped, (pos >= 0) & (pos < size)


def shift_crop(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor | None = None,
    padding: int = 4,
    mode: str = "reflect",
    fill: float = 0.0,
) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, H, W) at its own offset in the padded frame, optionally flipped.

    ``top``/``left``: int (B,) in [0, 2 * padding], the window's corner in the image padded by
    ``padding`` on every side (``padding`` is the identity offset). ``flip``: bool (B,), mirror
    left-right after cropping. Any dtype; output has the input's shape, dtype and memory format.
    """
    check_batch(x)
    check_crop_args(padding, mode, x.shape[2], x.shape[3])
    return _shift_crop(x, top, left, flip, padding, mode, fill)


def _shift_crop(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor | None,
    padding: int,
    mode: str,
    fill: float,
) -> torch.Tensor:
    """:func:`shift_crop` on checked arguments."""
    b, c, h, w = x.shape
    fmt = memory_format(x)
    dev = x.device
    rows = torch.arange(h, device=dev) + (top.to(dev).view(b, 1) - padding)  # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)  # (B, W)
    if flip is not None:
        cols = torch.where(flip.to(dev).view(b, 1), (w - 1) - cols, cols)
    cols = cols + (left.to(dev).view(b, 1) - padding)
    rows, row_ok = _source_index(rows, h, mode)
    cols, col_ok = _source_index(cols, w, mode)
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = x.contiguous().view(b, c, h * w).gather(2, flat).view(b, c, h, w)
    if row_ok is not None and col_ok is not None:
        inside = (row_ok[:, :, None] & col_ok[:, None, :]).view(b, 1, h, w)
        out = out.masked_fill(~inside, fill)
    return out.contiguous(memory_format=fmt)


def _random_offsets(
    x: torch.Tensor, padding: int, mode: str, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked arguments, then per-sample crop offsets (top, left) in [0, 2 * padding], drawn in that order."""
    check_batch(x)
    check_crop_args(padding, mode, x.shape[2], x.shape[3])
    n = 2 * padding + 1
    return randint(n, x.shape[0], generator, x.device), randint(n, x.shape[0], generator, x.device)


def random_crop(
    x: torch.Tensor,
    padding: int = 4,
    mode: str = "reflect",
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """Pad each image of ``x`` (B, C, H, W) by ``padding`` and crop back to (H, W) at a random offset per sample."""
    top, left = _random_offsets(x, padding, mode, generator)
    return _shift_crop(x, top, left, None, padding, mode, fill)


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of ``x`` (B, C, H, W) left-right with probability ``p``, independently per sample."""
    check_batch(x)
    check_probability("p", p)
    mask = bernoulli(p, x.shape[0], generator, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x).contiguous(memory_format=memory_format(x))


def random_crop_flip(
    x: torch.Tensor,
    padding: int = 4,
    flip_p: float = 0.5,
    mode: str = "reflect",
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """Random pad-crop and random left-right flip of ``x`` (B, C, H, W) fused into one gather."""
    check_probability("flip_p", flip_p)
    top, left = _random_offsets(x, padding, mode, generator)
    flip = bernoulli(flip_p, x.shape[0], generator, x.device)
    return _shift_crop(x, top, left, flip, padding, mode, fill)


def _channel_vector(
    values: Sequence[float] | torch.Tensor, like: torch.Tensor, name: str, positive: bool = False
) -> torch.Tensor:
    """Per-channel values as float32 (1, C, 1, 1) on ``like``'s device (checked on the host only: no sync)."""
    on_host = not isinstance(values, torch.Tensor) or values.device.type == "cpu"
    v = torch.as_tensor(values, dtype=torch.float32).flatten() if on_host else values.float().flatten()
    if v.numel() not in (1, like.shape[1]):
        raise ValueError(f"{name} must have 1 or {like.shape[1]} values (one per channel), got {v.numel()}")
    if positive and on_host and bool((v <= 0).any()):
        raise ValueError(f"{name} must be > 0 for every channel, got {v.tolist()}")
    return v.to(like.device).view(1, -1, 1, 1)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(x - mean) / std per channel for float ``x`` (B, C, H, W); same dtype and memory format."""
    check_batch(x)
    m = _channel_vector(mean, x, "mean")
    s = _channel_vector(std, x, "std", positive=True)
    return x.sub(m.to(x.dtype)).div_(s.to(x.dtype)).contiguous(memory_format=memory_format(x))


def to_float_nchw(
    x: torch.Tensor, channels_last: bool = False, dtype: torch.dtype = torch.float32, layout: str = "auto"
) -> torch.Tensor:
    """uint8 images (B, H, W, C) or (B, C, H, W) -> float (B, C, H, W) in [0, 1] of ``dtype``."""
    nchw = as_nchw(x, layout)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return nchw.to(dtype=torch.float32, memory_format=fmt).div_(255.0).to(dtype)


def to_normalized_float(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
    layout: str = "auto",
) -> torch.Tensor:
    """uint8 images (B, H, W, C) or (B, C, H, W) -> normalized float (B, C, H, W): (x / 255 - mean) / std.

    ``mean``/``std`` are in [0, 1] units. One conversion pass (layout included), then an in-place
    scale and shift in float32 (no further allocations), then the cast to ``dtype``.
    """
    nchw = as_nchw(x, layout)
    m = _channel_vector(mean, nchw, "mean")
    s = _channel_vector(std, nchw, "std", positive=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = nchw.to(dtype=torch.float32, memory_format=fmt)
    return out.mul_(1.0 / (255.0 * s)).sub_(m / s).to(dtype)
