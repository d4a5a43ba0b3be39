"""Class targets: one-hot encoding, label smoothing and label checks.

Label smoothing follows Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision": with smoothing ``s`` over ``K`` classes the off value is ``s / K`` and the on value is
``1 - s + s / K``, so every row still sums to 1.

Label range checks need the labels' min and max as Python numbers, which is a device sync on an
accelerator. ``to_soft(..., validate=True)`` and ``check_labels`` do that check; the batch ops call
them with ``validate=None`` by default, which checks only labels that live on the CPU (free there)
and skips the check on accelerators so the training hot path never syncs. Pass ``validate=True`` to
an op to force the check on every call (debugging), ``False`` to skip it everywhere. While
``torch.compile`` traces a call the range check is skipped (shapes are still checked), so compiled ops
keep one graph.
"""

from __future__ import annotations

import torch

from .checks import check_int, check_probability, check_real, is_real, require

__all__ = ["one_hot", "smooth", "to_soft", "soft_targets", "check_labels", "check_smoothing", "check_probability"]


def check_smoothing(value: float, num_classes: int | None = None, field: str = "label_smoothing") -> float:
    """The one rule for label smoothing: in [0, (K - 1) / K) for K classes (at (K - 1) / K the target is
    uniform, above it the label gets less weight than the other classes); in [0, 1) while K is unknown."""
    if num_classes is None:
        return check_real(field, value, 0.0, 1.0, high_open=True)
    k = check_int("num_classes", num_classes, low=1)
    top = (k - 1) / k
    ok = is_real(value) and (value == 0 or 0 <= value < top)
    rule = f">= 0 and < {top:g} for {k} classes (at {top:g} every target is uniform)" if k > 1 else "0 for 1 class"
    require(ok, field, rule, value)
    return float(value)


def _require_num_classes(y: torch.Tensor, num_classes: int | None) -> int:
    if num_classes is None:
        raise ValueError(
            f"num_classes must be given for integer labels, got num_classes=None for labels of dtype {y.dtype}"
        )
    return check_int("num_classes", num_classes, low=1)


def check_labels(y: torch.Tensor, num_classes: int | None) -> None:
    """Raise ValueError if int labels ``y: (B,)`` lack ``num_classes`` or fall outside [0, num_classes).

    Soft targets ``(B, K)`` are checked for ``K == num_classes`` when ``num_classes`` is given.
    The range check reads min/max with ``.item()``: a device sync on accelerators.
    """
    if y.is_floating_point():
        if y.ndim != 2:
            raise ValueError(f"soft targets must have shape (B, K), got shape {tuple(y.shape)}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(f"num_classes must match soft targets' K={y.shape[1]}, got {num_classes}")
        return
    if y.ndim != 1:
        raise ValueError(f"integer labels must have shape (B,), got shape {tuple(y.shape)}")
    k = _require_num_classes(y, num_classes)
    if y.numel() == 0 or torch.compiler.is_compiling():  # a value read would break the compiled graph
        return
    low, high = int(y.min().item()), int(y.max().item())
    bad = low if low < 0 else high if high >= k else None
    if bad is not None:
        raise ValueError(f"labels must be in [0, num_classes={k}), got label {bad}")


def one_hot(
    y: torch.Tensor,
    num_classes: int,
    on_value: float = 1.0,
    off_value: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Int labels ``y: (B,)`` -> ``(B, num_classes)`` with ``on_value`` at the label, ``off_value`` elsewhere."""
    k = _require_num_classes(y, num_classes)
    out = torch.full((y.shape[0], k), off_value, dtype=dtype, device=y.device)
    return out.scatter_(1, y.long().view(-1, 1), on_value)


def smooth(y: torch.Tensor, num_classes: int | None, smoothing: float) -> torch.Tensor:
    """Label-smoothed targets ``(B, K)``: off = smoothing / K, on = 1 - smoothing + off.

    ``y`` is int labels ``(B,)`` or soft targets ``(B, K)`` (then ``y * (1 - smoothing) + smoothing / K``);
    ``smoothing`` follows :func:`check_smoothing`.
    """
    return _smooth(y, num_classes, check_smoothing(smoothing, _classes(y, num_classes)))


def to_soft(
    y: torch.Tensor, num_classes: int | None, smoothing: float = 0.0, validate: bool | None = True
) -> torch.Tensor:
    """Targets as ``(B, K)`` float: int labels -> smoothed one-hot; soft targets smoothed the same way
    (``y * (1 - smoothing) + smoothing / K``; returned as is when ``smoothing`` is 0).

    ``validate``: True checks the label range (device sync on accelerators), False skips it,
    None checks only when ``y`` is on the CPU. A missing ``num_classes`` for int labels always raises.
    """
    return soft_targets(y, num_classes, check_smoothing(smoothing, _classes(y, num_classes)), validate)


def soft_targets(y: torch.Tensor, num_classes: int | None, smoothing: float, validate: bool | None) -> torch.Tensor:
    """:func:`to_soft` for a ``smoothing`` already checked where it entered (an op's constructor)."""
    if y.is_floating_point():
        return _smooth(y, num_classes, smoothing)
    _require_num_classes(y, num_classes)
    if validate or (validate is None and y.device.type == "cpu"):
        check_labels(y, num_classes)
    elif y.ndim != 1:
        raise ValueError(f"integer labels must have shape (B,), got shape {tuple(y.shape)}")
    return _smooth(y, num_classes, smoothing)


def _classes(y: torch.Tensor, num_classes: int | None) -> int | None:
    """K for the smoothing rule: soft targets' width, else ``num_classes``."""
    return y.shape[1] if y.is_floating_point() and y.ndim == 2 else num_classes


def _smooth(y: torch.Tensor, num_classes: int | None, s: float) -> torch.Tensor:
    if y.is_floating_point():
        check_labels(y, num_classes)
        k = y.shape[1]
        return y * (1.0 - s) + s / k if s > 0 else y
    k = _require_num_classes(y, num_classes)
    off = s / k
    return one_hot(y, k, on_value=1.0 - s + off, off_value=off)
