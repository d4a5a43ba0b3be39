"""Losses for the targets the batch ops return: int labels ``(B,)`` or soft targets ``(B, K)``.

``soft_target_cross_entropy`` is the loss for Mixup / CutMix / label-smoothed targets. The binary
cross-entropy pair follows timm's ``--bce-loss`` / ``--bce-target-thresh`` semantics: the (mixed,
smoothed) targets are used per class as independent Bernoulli targets, optionally binarized by a
threshold first (Wightman et al. 2021, "ResNet strikes back").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_real
from .targets import check_smoothing, soft_targets

__all__ = ["soft_target_cross_entropy", "bce_targets", "binary_cross_entropy"]


def soft_target_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of ``logits: (B, K)`` against int labels ``(B,)`` or soft targets ``(B, K)``.

    ``label_smoothing`` is applied to either kind (to soft targets as ``augment.smooth`` does); pass 0
    when the targets come from a pipeline that already smoothed them. Computed in float32.
    """
    label_smoothing = check_smoothing(label_smoothing, logits.shape[1])
    if not targets.is_floating_point():
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    soft = soft_targets(targets, logits.shape[1], label_smoothing, validate=False) if label_smoothing > 0 else targets
    return -(soft.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def bce_targets(
    targets: torch.Tensor, num_classes: int, threshold: float | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-class Bernoulli targets ``(B, K)`` in float32: soft (smoothed) targets, binarized to
    ``targets > threshold`` when ``threshold`` is given (a mixed pair then counts as two positives)."""
    soft = soft_targets(targets, num_classes, check_smoothing(label_smoothing, num_classes), validate=None).float()
    if threshold is None:
        return soft
    t = check_real("threshold", threshold, 0.0, 1.0, high_open=True)
    return soft.gt(t).to(soft.dtype)


def binary_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    threshold: float | None = None,
    label_smoothing: float = 0.0,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over ``(B, K)``, targets as in :func:`bce_targets`."""
    bce = bce_targets(targets, logits.shape[1], threshold, label_smoothing)
    return F.binary_cross_entropy_with_logits(logits.float(), bce, pos_weight=pos_weight)
