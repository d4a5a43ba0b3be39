"""Helpers shared by the batch ops (private): image-batch checks, memory format and layout, draws on the
generator's device, moving small parameter tensors, per-sample values and boxes.

Every op module (crop, color, geometric, mixing, erasing, noise) imports these and no other op module.
"""

from __future__ import annotations

import torch

from .checks import CheckError, check_real, require

__all__ = [
    "Box",
    "check_batch",
    "check_image",
    "check_float_batch",
    "memory_format",
    "as_nchw",
    "draw_device",
    "randint",
    "bernoulli",
    "uniform",
    "to_device",
    "per_sample_values",
    "centered_boxes",
    "box_area",
    "box_indicators",
]

Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1): rows y0:y1 and columns x0:x1 (half-open), timm's order."""


def check_batch(x: torch.Tensor, name: str = "x") -> None:
    """``x`` is a 4-D batch (B, C, H, W)."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}")


def check_image(x: torch.Tensor, name: str = "x", color: bool = True) -> None:
    """4-D uint8 or float batch; colour ops also need 1 or 3 channels."""
    check_batch(x, name)
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point, got {x.dtype}")
    if color and x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]}")


def check_float_batch(x: torch.Tensor) -> None:
    """The batch ops' input: a float (B, C, H, W) tensor."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (B, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` (4-D) is stored that way and is not trivially both, else contiguous."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def as_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    """View a 4-D image batch as (B, C, H, W); ``layout`` is 'nhwc', 'nchw' or 'auto' (channels 1, 3 or 4)."""
    check_batch(x)
    if layout == "auto":
        nhwc = x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
        layout = "nhwc" if nhwc else "nchw"
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    if layout == "nchw":
        return x
    raise CheckError("layout", "one of auto, nhwc, nchw", layout)


def draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    """Where random parameters are drawn: the generator's device, else ``device`` (one state, one output)."""
    return generator.device if generator is not None else torch.device(device)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move a small parameter tensor to ``device``: host->device without a stream sync, to CPU blocking."""
    device = torch.device(device)
    return t.to(device, non_blocking=device.type != "cpu")


def randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform ints in [0, high) of shape (size,) on ``device``; drawn on the generator's device."""
    return torch.randint(0, high, (size,), generator=generator, device=draw_device(generator, device)).to(device)


def bernoulli(p: float, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Bool (size,) with P(True) = p on ``device``; drawn on the generator's device."""
    return (torch.rand((size,), generator=generator, device=draw_device(generator, device)) < p).to(device)


def uniform(
    low: float, high: float, size: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Float64 ``(size,)`` uniform in [low, high) on ``device``; drawn on the generator's device."""
    u = torch.rand(size, generator=generator, device=draw_device(generator, device), dtype=torch.float64)
    return u.mul_(high - low).add_(low).to(device)


def per_sample_values(
    value: torch.Tensor | float, batch: int, device: torch.device, name: str, low: float | None = None
) -> torch.Tensor:
    """``value`` (a number, or a tensor of 1 or ``batch`` values) as float64 ``(batch,)`` on ``device``.

    Numbers and host tensors are checked against ``low``; device tensors are not (that would sync).
    """
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), check_real(name, value, low=low), dtype=torch.float64, device=device)
    rule = f"a number or a tensor of {batch} values (one per sample)"
    require(value.numel() in (1, batch), name, rule, tuple(value.shape))
    if low is not None and value.device.type == "cpu" and value.numel():
        smallest = float(value.min())
        require(smallest >= low, name, f">= {low} for every sample", smallest)
    return value.to(device=device, dtype=torch.float64).reshape(-1).expand(batch)


def centered_boxes(
    cy: torch.Tensor, cx: torch.Tensor, cut_h: torch.Tensor, cut_w: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Boxes of side ``cut_h x cut_w`` around centers ``(cy, cx)``, clipped to the image: (..., 4) long."""
    y0 = cy - cut_h // 2
    x0 = cx - cut_w // 2
    bounds = (y0.clamp(0, height), (y0 + cut_h).clamp(0, height), x0.clamp(0, width), (x0 + cut_w).clamp(0, width))
    return torch.stack(bounds, dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area in pixels of clipped boxes ``(..., 4)`` -> ``(...)``."""
    return (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])


def box_indicators(
    boxes: torch.Tensor, height: int, width: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column membership of ``boxes (..., 4)`` as 0/1 floats: ``(..., H, 1)`` and ``(..., 1, W)``.

    Their product is the box mask; float products broadcast far faster on CPU than bool ``&``.
    """
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype).view(height, 1)
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype).view(1, width)
    b = boxes[..., None, None]  # (..., 4, 1, 1)
    in_rows = ((rows >= b[..., 0, :, :]) & (rows < b[..., 1, :, :])).to(dtype)
    in_cols = ((cols >= b[..., 2, :, :]) & (cols < b[..., 3, :, :])).to(dtype)
    return in_rows, in_cols
