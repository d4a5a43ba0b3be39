"""Compose batch regularizers from a plain config: Cutout -> Mixup/CutMix -> input noise.

Papers: Cutout (DeVries & Taylor 2017), mixup (Zhang et al. 2018), CutMix (Yun et al. 2019),
input noise (Bishop 1995); see the op modules. The config mirrors the YAML keys in
docs/architecture.md: ``{"mixup": {...}, "cutmix": {...}, "mixing": {...}, "cutout": {...},
"input_noise": {...}}``; each value is a dict, the matching dataclass, or None (defaults, i.e. off).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .erasing import Cutout
from .mixing import MixupCutMix
from .noise import GaussianNoise

__all__ = [
    "Compose",
    "MixupConfig",
    "CutMixConfig",
    "MixingConfig",
    "CutoutConfig",
    "NoiseConfig",
    "build_batch_augment",
]

BatchOp = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, field: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{field} must be {rule}, got {value!r}")


def _check_unit(field: str, value: Any) -> None:
    _require(_is_number(value) and 0.0 <= value <= 1.0, field, "in [0, 1]", value)


@dataclass
class MixupConfig:
    """Mixup Beta(alpha, alpha); alpha 0 = off."""

    alpha: float = 0.0

    def __post_init__(self) -> None:
        _require(_is_number(self.alpha) and self.alpha >= 0, "mixup.alpha", ">= 0", self.alpha)


@dataclass
class CutMixConfig:
    """CutMix Beta(alpha, alpha); alpha 0 = off; correct_lam: target = exact kept-pixel fraction."""

    alpha: float = 0.0
    correct_lam: bool = True

    def __post_init__(self) -> None:
        _require(_is_number(self.alpha) and self.alpha >= 0, "cutmix.alpha", ">= 0", self.alpha)
        _require(isinstance(self.correct_lam, bool), "cutmix.correct_lam", "a bool", self.correct_lam)


@dataclass
class MixingConfig:
    """How Mixup/CutMix apply: prob of mixing, prob of CutMix, per sample or per batch, last epoch."""

    prob: float = 1.0
    switch_prob: float = 0.5
    per_sample: bool = False
    stop_epoch: int | None = None

    def __post_init__(self) -> None:
        _check_unit("mixing.prob", self.prob)
        _check_unit("mixing.switch_prob", self.switch_prob)
        _require(isinstance(self.per_sample, bool), "mixing.per_sample", "a bool", self.per_sample)
        ok = self.stop_epoch is None or (_is_int(self.stop_epoch) and self.stop_epoch >= 0)
        _require(ok, "mixing.stop_epoch", "None or an int >= 0", self.stop_epoch)


@dataclass
class CutoutConfig:
    """Cutout holes; n_holes 0 = off; size: int pixels or float fraction of min(H, W) in (0, 1]."""

    n_holes: int = 0
    size: int | float = 16
    fill: float = 0.0
    p: float = 1.0

    def __post_init__(self) -> None:
        ok = _is_int(self.n_holes) and self.n_holes >= 0
        _require(ok, "cutout.n_holes", "an int >= 0", self.n_holes)
        fraction_or_whole = not isinstance(self.size, float) or self.size <= 1 or self.size.is_integer()
        ok = _is_number(self.size) and self.size >= 0 and fraction_or_whole
        _require(ok, "cutout.size", ">= 0 (int pixels or float fraction in (0, 1])", self.size)
        _require(_is_number(self.fill) and math.isfinite(self.fill), "cutout.fill", "a finite number", self.fill)
        _check_unit("cutout.p", self.p)


@dataclass
class NoiseConfig:
    """Additive Gaussian input noise; std 0 = off; clamp (low, high) or None."""

    std: float = 0.0
    p: float = 1.0
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        ok = _is_number(self.std) and self.std >= 0 and math.isfinite(self.std)
        _require(ok, "input_noise.std", "a finite number >= 0", self.std)
        _check_unit("input_noise.p", self.p)
        if self.clamp is not None:
            ok = isinstance(self.clamp, Sequence) and len(self.clamp) == 2 and all(map(_is_number, self.clamp))
            ok = ok and self.clamp[0] < self.clamp[1]
            _require(ok, "input_noise.clamp", "null or [low, high] with low < high", self.clamp)
            self.clamp = (float(self.clamp[0]), float(self.clamp[1]))


SECTIONS: dict[str, type] = {
    "mixup": MixupConfig,
    "cutmix": CutMixConfig,
    "mixing": MixingConfig,
    "cutout": CutoutConfig,
    "input_noise": NoiseConfig,
}


class Compose:
    """Apply batch ops in order: ``(x, y) -> (x, y)``.

    ``mixes``: whether the pipeline holds a mixing op (targets become soft (B, K)).
    ``stop_epoch``: mixing ops are skipped from this epoch on (call ``set_epoch`` each epoch); targets
    then stay as given (int labels), see ``mixing_active``.
    """

    def __init__(self, ops: Sequence[BatchOp], stop_epoch: int | None = None) -> None:
        self.ops = list(ops)
        self.stop_epoch = stop_epoch
        self.epoch = 0

    @property
    def mixes(self) -> bool:
        """True when some op turns targets into soft (B, K) targets."""
        return any(getattr(op, "mixes", False) for op in self.ops)

    @property
    def mixing_active(self) -> bool:
        """True when mixing runs in the current epoch (``mixes`` and before ``stop_epoch``)."""
        return self.mixes and (self.stop_epoch is None or self.epoch < self.stop_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Tell the pipeline the current (0-based) epoch, for ``stop_epoch``."""
        self.epoch = int(epoch)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        active = self.mixing_active
        for op in self.ops:
            if getattr(op, "mixes", False) and not active:
                continue
            x, y = op(x, y)
        return x, y

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.ops))
        return f"Compose([{inner}], stop_epoch={self.stop_epoch})"


def _section(config: Mapping[str, Any], key: str) -> Any:
    cls = SECTIONS[key]
    value = config.get(key)
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping or {cls.__name__}, got {value!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{key} keys must be among {allowed}, got unknown key {key}.{unknown[0]}")
    return cls(**value)


def build_batch_augment(
    config: Mapping[str, Any] | None,
    num_classes: int,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> Compose | None:
    """Build Cutout -> Mixup/CutMix -> noise from ``config``; None when every op is off.

    ``label_smoothing`` goes into the mixed targets (only when mixing is on; otherwise the model's
    loss applies it to the int labels).
    """
    _check_unit("label_smoothing", label_smoothing)
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise ValueError(f"batch augment config must be a mapping, got {config!r}")
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ValueError(f"batch augment keys must be among {list(SECTIONS)}, got unknown key {unknown[0]!r}")
    mixup, cutmix, mixing, cutout, noise = (_section(config, key) for key in SECTIONS)

    ops: list[BatchOp] = []
    if cutout.n_holes > 0 and cutout.size > 0 and cutout.p > 0:
        ops.append(Cutout(cutout.n_holes, cutout.size, cutout.fill, cutout.p, generator=generator))
    if (mixup.alpha > 0 or cutmix.alpha > 0) and mixing.prob > 0:
        ops.append(
            MixupCutMix(
                mixup_alpha=mixup.alpha,
                cutmix_alpha=cutmix.alpha,
                switch_prob=mixing.switch_prob,
                prob=mixing.prob,
                per_sample=mixing.per_sample,
                correct_lam=cutmix.correct_lam,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
                generator=generator,
            )
        )
    if noise.std > 0 and noise.p > 0:
        ops.append(GaussianNoise(noise.std, noise.p, noise.clamp, generator=generator))
    if not ops:
        return None
    return Compose(ops, stop_epoch=mixing.stop_epoch)
