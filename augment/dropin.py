"""Drop-in names for timm's and torchvision's mixing classes, run by this package's vectorized ops.

- :class:`Mixup`: the keyword arguments and defaults of ``timm.data.Mixup``, and its call: ``x`` is
  mixed in place and ``(x, targets)`` comes back, targets ``(B, num_classes)`` smoothed then mixed.
- :class:`MixUp`, :class:`CutMix`: shaped like ``torchvision.transforms.v2.MixUp`` / ``CutMix``
  (keyword-only ``alpha``, ``num_classes``, ``labels_getter``; called as ``(images, labels)`` or with one
  ``(images, labels)`` pair) and returning new tensors as torchvision does.

For the same lambda and box the outputs equal timm's and torchvision's (``tests/test_dropin.py``). What
differs: any batch size works (timm asserts an even one; an odd batch's middle sample pairs with itself
and stays as it is); the draws come from an optional ``generator`` (a ``torch.Generator``, on its
device), not numpy's or torch's global state; timm's ``elem`` and ``pair`` modes run vectorized over
the batch (one fused pass), not a loop over samples; everything stays on ``x``'s device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .checks import check_bool, check_choice, check_int, require
from .mixing import CutMix as _CutMix
from .mixing import Mixup as _Mixup
from .mixing import MixupCutMix, SampleDraw
from .targets import check_smoothing, soft_targets

__all__ = ["Mixup", "MixUp", "CutMix", "TIMM_MODES"]

TIMM_MODES = ("batch", "pair", "elem")


class Mixup(MixupCutMix):
    """``timm.data.Mixup`` on this package's ops: the same arguments, defaults and call.

    Args (timm's):
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha); an op is on when its alpha is > 0.
        cutmix_minmax: None, or ``(low, high)`` box sides as fractions of the image; turns CutMix on
            (timm then sets ``cutmix_alpha = 1``) and makes the target weight the exact kept fraction.
        prob: probability of mixing, per batch or per element; switch_prob: probability of CutMix.
        mode: ``batch`` (one lambda and box), ``elem`` (one per sample) or ``pair`` (one per pair
            ``i, B - 1 - i``, the two partners swapping the same box) - all pair ``x[i]`` with ``x[B - 1 - i]``.
        correct_lam: CutMix target weight = the kept fraction after clipping the box.
        label_smoothing: smoothing of the one-hot targets before mixing (timm's default 0.1).
        num_classes: classes of the int labels (timm's default 1000).
        multi_label: targets are dense ``(B, num_classes)`` multi-label rows, smoothed towards 0.5.
        generator: (not in timm) source of all draws.

    ``mixup_enabled = False`` turns mixing off (targets are still smoothed), as timm's training loop does.
    """

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: Sequence[float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        multi_label: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mode = check_choice("mode", mode, TIMM_MODES)
        self.multi_label = check_bool("multi_label", multi_label)
        super().__init__(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=1.0 if cutmix_minmax is not None else cutmix_alpha,  # as timm: minmax means CutMix
            switch_prob=switch_prob,
            prob=prob,
            per_sample=mode != "batch",
            correct_lam=correct_lam,
            label_smoothing=0.0 if multi_label else label_smoothing,  # multi-label: smoothed in __call__
            num_classes=check_int("num_classes", num_classes, low=1),
            pairing="flip",
            generator=generator,
            cutmix_minmax=cutmix_minmax,
        )
        # Multi-label rows are smoothed towards 0.5 (timm), which needs no K: the rule for unknown K.
        self.smoothing = check_smoothing(label_smoothing) if multi_label else self.label_smoothing
        self.mixup_enabled = True

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, mode={self.mode!r})"

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x: (B, C, H, W)`` in place; return ``(x, targets (B, num_classes))`` as timm does."""
        if self.multi_label:
            shape = (x.shape[0], self.num_classes)
            require(tuple(target.shape) == shape, "target", f"dense multi-label targets of shape {shape}", target.shape)
            target = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
        if not self.mixup_enabled:
            return x, soft_targets(target, self.num_classes, self.label_smoothing, self.validate)
        out, targets = super().__call__(x, target)
        if out is not x:
            x.copy_(out)
        return x, targets

    def sample(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Any:
        """As :meth:`MixupCutMix.sample`; in ``pair`` mode sample ``B - 1 - i`` takes sample i's draw."""
        draw = super().sample(batch, height, width, device, dtype)
        if self.mode != "pair":
            return draw
        index = torch.arange(batch, device=draw.boxes.device)
        first = torch.minimum(index, batch - 1 - index)  # the pair's first sample gives its draw
        boxes, pixel_lam, target_lam = (t.index_select(0, first) for t in draw[:3])
        return SampleDraw(boxes, pixel_lam, target_lam, draw.perm, draw.rolled)


def _images_and_labels(inputs: tuple[Any, ...], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a call with two arguments or with one pair."""
    pair = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) else inputs
    ok = len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)
    got = ", ".join(type(t).__name__ for t in pair) or "nothing"
    require(ok, f"{name} inputs", "(images, labels) tensors, as two arguments or one pair", got)
    return pair[0], pair[1]


def _check_labels_getter(labels_getter: Any) -> None:
    rule = "'default' here (the call takes (images, labels))"
    require(isinstance(labels_getter, str) and labels_getter == "default", "labels_getter", rule, labels_getter)


class _TorchvisionShaped:
    """torchvision v2's constructor keywords and ``(images, labels)`` call, over one of this package's ops."""

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        num_classes: int | None = None,
        labels_getter: Any = "default",
        generator: torch.Generator | None = None,
    ) -> None:
        _check_labels_getter(labels_getter)
        super().__init__(alpha=alpha, num_classes=num_classes, pairing="roll", generator=generator)  # type: ignore[call-arg]
        self.alpha = alpha

    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__call__(*_images_and_labels(inputs, type(self).__name__))  # type: ignore[misc]


class MixUp(_TorchvisionShaped, _Mixup):
    """``torchvision.transforms.v2.MixUp`` on this package's ops: one lambda ~ Beta(alpha, alpha) per batch,
    image i mixed with image i - 1; labels ``(B,)`` become mixed one-hot ``(B, num_classes)`` float.

    ``labels_getter`` must be ``"default"`` (the call takes ``(images, labels)``); ``generator`` (not in
    torchvision) is the source of the draws; ``images`` are float ``(B, C, H, W)``.
    """


class CutMix(_TorchvisionShaped, _CutMix):
    """``torchvision.transforms.v2.CutMix`` on this package's ops: one box per batch pasted from image i - 1,
    of half-sides ``int(0.5 * sqrt(1 - lam) * (W, H))`` around a uniform center, clipped; the label weight
    is the kept fraction.

    ``labels_getter`` must be ``"default"``; ``generator`` (not in torchvision) is the source of the draws.
    """

    def boxes(self, lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """torchvision's box: half-sides ``int(0.5 * sqrt(1 - lam) * side)`` around ``(cy, cx)``, clipped."""
        r = 0.5 * torch.sqrt(1.0 - lam)
        half_h, half_w = torch.floor(r * height).long(), torch.floor(r * width).long()
        bounds = ((cy - half_h).clamp(min=0), (cy + half_h).clamp(max=height))
        return torch.stack([*bounds, (cx - half_w).clamp(min=0), (cx + half_w).clamp(max=width)], dim=-1)
