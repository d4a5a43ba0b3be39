"""Compose batch regularizers from a plain config: Cutout -> Mixup/CutMix -> input noise.

Papers: Cutout (DeVries & Taylor 2017), mixup (Zhang et al. 2018), CutMix (Yun et al. 2019),
input noise (Bishop 1995); see the op modules. The config mirrors the YAML keys in
docs/architecture.md: ``{"mixup": {...}, "cutmix": {...}, "mixing": {...}, "cutout": {...},
"input_noise": {...}}``; each value is a dict, the matching dataclass, or None (defaults, i.e. off).

Each batch op is registered once (:func:`register_batch_op`: its config sections, its builder, its
place in the order); :data:`SECTIONS` and :func:`build_batch_augment` iterate the registrations.

Target contract: a pipeline that knows ``num_classes`` returns soft targets ``(B, K)`` in every case
(mixing on or off, after ``stop_epoch``, Cutout or noise only, no op at all), with label smoothing
applied once, to int labels and to soft input targets alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .checks import check_bool, check_int, check_probability, check_real, field_prefix, is_int, require
from .erasing import Cutout, check_hole_size
from .mixing import MixupCutMix
from .noise import GaussianNoise, check_clamp
from .targets import check_smoothing, soft_targets

__all__ = [
    "Compose",
    "MixupConfig",
    "CutMixConfig",
    "MixingConfig",
    "CutoutConfig",
    "NoiseConfig",
    "build_batch_augment",
    "as_config",
    "BatchOpEntry",
    "BATCH_OPS",
    "SECTIONS",
    "register_batch_op",
]

BatchOp = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MixupConfig:
    """Mixup Beta(alpha, alpha); alpha 0 = off."""

    alpha: float = 0.0

    def __post_init__(self) -> None:
        with field_prefix("mixup"):
            self.alpha = check_real("alpha", self.alpha, low=0)


@dataclass
class CutMixConfig:
    """CutMix Beta(alpha, alpha); alpha 0 = off; correct_lam: target = exact kept-pixel fraction."""

    alpha: float = 0.0
    correct_lam: bool = True

    def __post_init__(self) -> None:
        with field_prefix("cutmix"):
            self.alpha = check_real("alpha", self.alpha, low=0)
            check_bool("correct_lam", self.correct_lam)


@dataclass
class MixingConfig:
    """How Mixup/CutMix apply: prob of mixing, prob of CutMix, per sample or per batch, last epoch."""

    prob: float = 1.0
    switch_prob: float = 0.5
    per_sample: bool = False
    stop_epoch: int | None = None

    def __post_init__(self) -> None:
        with field_prefix("mixing"):
            check_probability("prob", self.prob)
            check_probability("switch_prob", self.switch_prob)
            check_bool("per_sample", self.per_sample)
            ok = self.stop_epoch is None or (is_int(self.stop_epoch) and self.stop_epoch >= 0)
            require(ok, "stop_epoch", "null or an int >= 0", self.stop_epoch)


@dataclass
class CutoutConfig:
    """Cutout holes; n_holes 0 = off; size: int pixels or float fraction of min(H, W) in (0, 1]."""

    n_holes: int = 0
    size: int | float = 16
    fill: float = 0.0
    p: float = 1.0

    def __post_init__(self) -> None:
        with field_prefix("cutout"):
            check_int("n_holes", self.n_holes, low=0)
            check_hole_size("size", self.size)
            check_real("fill", self.fill)
            check_probability("p", self.p)


@dataclass
class NoiseConfig:
    """Additive Gaussian input noise; std 0 = off; clamp (low, high) or None."""

    std: float = 0.0
    p: float = 1.0
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        with field_prefix("input_noise"):
            check_real("std", self.std, low=0)
            check_probability("p", self.p)
            self.clamp = check_clamp("clamp", self.clamp)


ConfigT = TypeVar("ConfigT")


def as_config(cls: type[ConfigT], value: Any, field: str) -> ConfigT:
    """A config dataclass from an instance, a mapping of its fields or None (defaults).

    ``field`` is the section's path (``model.mixup``); the dataclass names its own section
    (``mixup.alpha``), and errors come out under ``field`` (``model.mixup.alpha``).
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    require(isinstance(value, Mapping), field, f"a mapping of {cls.__name__} fields", value)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{field} keys must be among {allowed}, got unknown key {field}.{unknown[0]}")
    outer = field.rpartition(".")[0]
    if not outer:
        return cls(**value)
    with field_prefix(outer):
        return cls(**value)


class Compose:
    """Apply batch ops in order: ``(x, y) -> (x, targets)``.

    Args:
        ops: callables ``(x, y) -> (x, y)``; an op with ``mixes = True`` makes soft targets.
        stop_epoch: mixing ops are skipped from this epoch on (call ``set_epoch`` each epoch).
        num_classes: when given, targets always come back soft ``(B, num_classes)``: int labels become
            one-hot before the first op, soft input targets are kept; without it targets pass through
            as the ops return them (int labels stay int while no mixing op runs).
        label_smoothing: applied once to the targets before the first op (needs ``num_classes``).
    """

    def __init__(
        self,
        ops: Sequence[BatchOp],
        stop_epoch: int | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        self.ops = list(ops)
        self.stop_epoch = stop_epoch
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, low=1)
        self.label_smoothing = check_smoothing(label_smoothing, self.num_classes)
        require(num_classes is not None or self.label_smoothing == 0, "num_classes", "given for label smoothing", None)
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

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw every op's randomness from ``generator`` from now on (e.g. one on the model's device)."""
        for op in self.ops:
            if hasattr(op, "generator"):
                op.generator = generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_classes is not None:
            y = soft_targets(y, self.num_classes, self.label_smoothing, validate=None)
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
        return (
            f"Compose([{inner}], stop_epoch={self.stop_epoch}, num_classes={self.num_classes}, "
            f"label_smoothing={self.label_smoothing})"
        )


@dataclass(frozen=True)
class BatchOpEntry:
    """One registered batch op: its config sections (name -> dataclass), builder and place in the order."""

    name: str
    order: int
    sections: Mapping[str, type]
    build: Callable[..., BatchOp | None]


BATCH_OPS: list[BatchOpEntry] = []
"""The registered batch ops, in pipeline order."""

SECTIONS: dict[str, type] = {}
"""Config section name -> its dataclass, over every registered op (in registration order)."""


def register_batch_op(order: int, **sections: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``build(<one config per section>, num_classes=..., generator=...) -> op or None`` (None:
    off for this config) under config ``sections`` (``name=ConfigDataclass``); ops run by ``order``."""

    def register(build: Callable[..., BatchOp | None]) -> Callable[..., BatchOp | None]:
        taken = set(sections) & set(SECTIONS)
        require(not taken, "sections", "names no other batch op uses", sorted(taken))
        BATCH_OPS.append(BatchOpEntry(build.__name__, order, dict(sections), build))
        BATCH_OPS.sort(key=lambda entry: entry.order)
        SECTIONS.update(sections)
        return build

    return register


@register_batch_op(20, mixup=MixupConfig, cutmix=CutMixConfig, mixing=MixingConfig)
def build_mixing(
    mixup: MixupConfig,
    cutmix: CutMixConfig,
    mixing: MixingConfig,
    num_classes: int,
    generator: torch.Generator | None,
) -> BatchOp | None:
    """Mixup / CutMix / the switch when an alpha is > 0 and mixing.prob > 0."""
    if (mixup.alpha > 0 or cutmix.alpha > 0) and mixing.prob > 0:
        return MixupCutMix(
            mixup_alpha=mixup.alpha,
            cutmix_alpha=cutmix.alpha,
            switch_prob=mixing.switch_prob,
            prob=mixing.prob,
            per_sample=mixing.per_sample,
            correct_lam=cutmix.correct_lam,
            num_classes=num_classes,
            generator=generator,
        )
    return None


@register_batch_op(10, cutout=CutoutConfig)
def build_cutout(cutout: CutoutConfig, num_classes: int, generator: torch.Generator | None) -> BatchOp | None:
    """Cutout when it has holes of some size and p > 0."""
    if cutout.n_holes > 0 and cutout.size > 0 and cutout.p > 0:
        return Cutout(cutout.n_holes, cutout.size, cutout.fill, cutout.p, generator=generator)
    return None


@register_batch_op(30, input_noise=NoiseConfig)
def build_noise(input_noise: NoiseConfig, num_classes: int, generator: torch.Generator | None) -> BatchOp | None:
    """Gaussian input noise when std > 0 and p > 0."""
    if input_noise.std > 0 and input_noise.p > 0:
        return GaussianNoise(input_noise.std, input_noise.p, input_noise.clamp, generator=generator)
    return None


def build_batch_augment(
    config: Mapping[str, Any] | None,
    num_classes: int,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> Compose:
    """Build the registered batch ops (Cutout -> Mixup/CutMix -> noise) from ``config`` (None: every op off).

    The result returns soft targets ``(B, num_classes)`` with ``label_smoothing`` applied, also when
    it holds no op (``len(pipeline) == 0``); ``mixing.stop_epoch`` is the pipeline's.
    """
    config = {} if config is None else config
    require(isinstance(config, Mapping), "config", "a mapping of " + ", ".join(SECTIONS), config)
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ValueError(f"config keys must be among {list(SECTIONS)}, got unknown key {unknown[0]!r}")
    sections = {key: as_config(cls, config.get(key), key) for key, cls in SECTIONS.items()}
    ops: list[BatchOp] = []
    for entry in BATCH_OPS:
        op = entry.build(*(sections[key] for key in entry.sections), num_classes=num_classes, generator=generator)
        if op is not None:
            ops.append(op)
    stop_epoch = sections["mixing"].stop_epoch if "mixing" in sections else None
    return Compose(ops, stop_epoch=stop_epoch, num_classes=num_classes, label_smoothing=label_smoothing)
