"""Policy augmentations with a different op and magnitude for every sample of a batch.

Papers:
- TrivialAugment: Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
  Augmentation" (arXiv:2103.10158): one op per image, uniform over 14 ops, magnitude bin uniform
  (the "wide" ranges).
- RandAugment: Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a reduced
  search space" (arXiv:1909.13719): ``num_ops`` ops in a row, each uniform over 14 ops, at one magnitude.
- AutoAugment: Cubuk et al. 2019, "AutoAugment: Learning Augmentation Policies from Data"
  (arXiv:1805.09501): one of 25 learned sub-policies of two (op, probability, magnitude) steps; the
  CIFAR-10 policy.

Op sets, magnitude tables and sign rules are those of ``torchvision.transforms.v2``'s
``TrivialAugmentWide``, ``RandAugment`` and ``AutoAugment`` (signed ops are negated with probability
1/2), so a sample gets the same distribution of (op, magnitude) as torchvision gives an image, and
the same output for the same draw. Drawing (``sample``) is kept apart from applying (``apply``); draws
come from the policy's ``torch.Generator`` on the generator's device, and a loop runs over op kinds only.

``x: (B, C, H, W)`` uint8 (0..255) or float (0..1), 1 or 3 channels, any device; call as ``policy(x)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ._batch import check_image, draw_device
from .checks import CheckError, check_choice, check_int, check_real, field_prefix, require
from .geometric import INTERPOLATIONS, check_fill, fill_values
from .policy_ops import OPS, SIGNED, SPACE, magnitude_table, op_index, run_ops

__all__ = [
    "Draw",
    "Policy",
    "TrivialAugmentWide",
    "RandAugment",
    "AutoAugment",
    "CIFAR10_POLICY",
    "POLICIES",
    "POLICY_NAMES",
    "policy_parameters",
    "build_policy",
]

Draw = tuple[torch.Tensor, torch.Tensor]
"""One step for every sample: (op indices into ``OPS`` int64 (B,), signed magnitudes float32 (B,))."""

CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
"""AutoAugment's CIFAR-10 sub-policies: two (op, probability, magnitude bin of 10) steps each."""

_POSTERIZE = op_index("Posterize")
_SIGNED = torch.tensor([name in SIGNED for name in OPS])
_SPACE = torch.tensor(SPACE)  # the ops TrivialAugment and RandAugment draw from (all but Invert)

POLICIES: dict[str, type[Policy]] = {}
"""Registered policies by config name, in registration order (filled by each class's definition)."""


def _space_ops(batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One op per sample, uniform over :data:`~augment.policy_ops.SPACE`."""
    drawn = torch.randint(0, len(SPACE), (batch,), generator=generator, device=device)
    return _SPACE.to(device)[drawn]


def _signed_draw(ops: torch.Tensor, table: torch.Tensor, bins: torch.Tensor, generator: torch.Generator | None) -> Draw:
    """Look up each sample's magnitude (fractional bins interpolate), round Posterize bits, draw the sign."""
    low = bins.floor().long().clamp_(0, table.shape[1] - 1)
    high = (low + 1).clamp_(max=table.shape[1] - 1)
    lo_val, hi_val = table[ops, low], table[ops, high]
    mags = lo_val + (hi_val - lo_val) * (bins - low).to(table.dtype)
    mags = torch.where(ops == _POSTERIZE, mags.round(), mags)
    negate = torch.rand(ops.shape, generator=generator, device=ops.device) <= 0.5
    negate &= _SIGNED.to(ops.device)[ops]
    return ops, torch.where(negate, -mags, mags)


class Policy:
    """The base of the policies: magnitude tables per image size, draw device, ``apply`` and ``__call__``;
    a subclass gives ``sample``.

    A subclass registers itself under a config name: ``class MyPolicy(Policy, name="mypolicy",
    torchvision="TrivialAugmentWide")``; its constructor's parameters (all but ``generator``) are the
    config keys :func:`build_policy` accepts, and ``torchvision`` names the ``transforms.v2`` class the
    workers loader runs instead (its parameters are matched by name), or None for none.
    """

    space = "standard"
    name: ClassVar[str]
    torchvision: ClassVar[str | None]

    def __init_subclass__(cls, name: str | None = None, torchvision: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            require(name != "none" and name not in POLICIES, "policy name", "a new name", name)
            cls.name, cls.torchvision = name, torchvision
            POLICIES[name] = cls

    def __init__(
        self,
        num_magnitude_bins: int,
        interpolation: str,
        fill: float | Sequence[float],
        generator: torch.Generator | None,
    ) -> None:
        self.num_magnitude_bins = check_int("num_magnitude_bins", num_magnitude_bins, low=2)
        self.interpolation = check_choice("interpolation", interpolation, INTERPOLATIONS)
        self.fill = check_fill("fill", fill)
        self._fills = fill_values(self.fill)
        self.generator = generator
        self._tables: dict[tuple[int, int, str], torch.Tensor] = {}

    def table(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """float32 ``(len(OPS), num_magnitude_bins)`` magnitudes for images of this size (cached)."""
        key = (height, width, str(device))
        if key not in self._tables:
            self._tables[key] = magnitude_table(self.space, self.num_magnitude_bins, height, width).to(device)
        return self._tables[key]

    def _draw_setup(
        self, generator: torch.Generator | None, device: torch.device | str | None
    ) -> tuple[torch.Generator | None, torch.device]:
        gen = self.generator if generator is None else generator
        return gen, draw_device(gen, device or "cpu")

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> list[Draw]:
        """The draws for a batch, one :data:`Draw` per step, on the generator's device (else ``device``)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, draws: Sequence[Draw]) -> torch.Tensor:
        """Apply the steps ``draws`` (from :meth:`sample`) to ``x`` in order; always a new tensor."""
        self._check(x)
        b = x.shape[0]
        for ops, mags in draws:
            require(ops.shape == (b,) and mags.shape == (b,), "draws", f"(ops, magnitudes) of shape ({b},)", ops.shape)
        return self._apply(x, draws)

    def _apply(self, x: torch.Tensor, draws: Sequence[Draw]) -> torch.Tensor:
        if not draws:
            return x.clone()
        for ops, mags in draws:
            x = run_ops(x, ops, mags, self.interpolation, self._fills)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A new random draw for ``x`` (B, C, H, W), applied; the output has ``x``'s shape, dtype and layout."""
        self._check(x)
        b, _, h, w = x.shape
        return self._apply(x, self.sample(b, h, w, device=x.device))

    def _check(self, x: torch.Tensor) -> None:
        """The one check of a call's images (the ops inside run unchecked)."""
        check_image(x)
        rule = f"a number or {x.shape[1]} numbers (one per channel)"
        require(len(self._fills) in (1, x.shape[1]), "fill", rule, self.fill)


class TrivialAugmentWide(Policy, name="trivialaugment", torchvision="TrivialAugmentWide"):
    """TrivialAugment (wide ranges): each sample gets one op uniform over 14 and a magnitude bin uniform
    over ``num_magnitude_bins``.

    Args:
        num_magnitude_bins: magnitude levels, >= 2 (31 in the paper).
        interpolation: ``nearest`` (torchvision's default) or ``bilinear`` for the geometric ops.
        fill: value outside the image after a geometric op (a number or one per channel, ``x``'s units).
        generator: source of all draws (its device is where they are drawn).
    """

    space = "wide"

    def __init__(
        self,
        num_magnitude_bins: int = 31,
        interpolation: str = "nearest",
        fill: float | Sequence[float] = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_magnitude_bins, interpolation, fill, generator)

    def __repr__(self) -> str:
        return f"TrivialAugmentWide(num_magnitude_bins={self.num_magnitude_bins}, interpolation={self.interpolation!r})"

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> list[Draw]:
        """One step: (op, magnitude) per sample."""
        gen, dev = self._draw_setup(generator, device)
        ops = _space_ops(batch, gen, dev)
        bins = torch.randint(0, self.num_magnitude_bins, (batch,), generator=gen, device=dev).float()
        return [_signed_draw(ops, self.table(height, width, dev), bins, gen)]


class RandAugment(Policy, name="randaugment", torchvision="RandAugment"):
    """RandAugment: ``num_ops`` steps; in each, every sample gets an op uniform over 14 at bin ``magnitude``.

    Args:
        num_ops: steps applied one after the other, >= 0.
        magnitude: the bin, in [0, num_magnitude_bins - 1].
        num_magnitude_bins: magnitude levels, >= 2.
        magnitude_std: 0 = torchvision's fixed magnitude; > 0 draws each sample's bin per step from
            N(magnitude, magnitude_std) clipped to [0, num_magnitude_bins - 1] (as timm's ``mstd``),
            interpolating between bins.
        interpolation, fill, generator: as in :class:`TrivialAugmentWide`.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        magnitude_std: float = 0.0,
        interpolation: str = "nearest",
        fill: float | Sequence[float] = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_magnitude_bins, interpolation, fill, generator)
        self.num_ops = check_int("num_ops", num_ops, low=0)
        self.magnitude = check_int("magnitude", magnitude, 0, self.num_magnitude_bins - 1)
        self.magnitude_std = check_real("magnitude_std", magnitude_std, low=0.0)

    def __repr__(self) -> str:
        return (
            f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins="
            f"{self.num_magnitude_bins}, magnitude_std={self.magnitude_std}, interpolation={self.interpolation!r})"
        )

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> list[Draw]:
        """``num_ops`` steps: (op, magnitude) per sample each."""
        gen, dev = self._draw_setup(generator, device)
        table = self.table(height, width, dev)
        draws = []
        for _ in range(self.num_ops):
            ops = _space_ops(batch, gen, dev)
            bins = torch.full((batch,), float(self.magnitude), device=dev)
            if self.magnitude_std > 0:
                noise = torch.randn(batch, generator=gen, device=dev)
                bins = bins.add_(noise, alpha=self.magnitude_std).clamp_(0, self.num_magnitude_bins - 1)
            draws.append(_signed_draw(ops, table, bins, gen))
        return draws


class AutoAugment(Policy, name="autoaugment", torchvision="AutoAugment"):
    """AutoAugment's learned CIFAR-10 policy: each sample gets one of the 25 sub-policies uniformly; each of
    its two steps runs with the step's probability, at the step's bin of 10 (else the sample is unchanged).

    Args:
        policy: ``cifar10`` (the policy learned on CIFAR-10).
        interpolation, fill, generator: as in :class:`TrivialAugmentWide`.
    """

    def __init__(
        self,
        policy: str = "cifar10",
        interpolation: str = "nearest",
        fill: float | Sequence[float] = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(10, interpolation, fill, generator)
        self.policy = check_choice("policy", policy, ("cifar10",))
        steps = [step for pair in CIFAR10_POLICY for step in pair]
        self._ops = torch.tensor([op_index(name) for name, _, _ in steps]).view(-1, 2)
        self._probs = torch.tensor([p for _, p, _ in steps], dtype=torch.float32).view(-1, 2)
        self._bins = torch.tensor([0 if b is None else b for _, _, b in steps]).view(-1, 2)

    def __repr__(self) -> str:
        return f"AutoAugment(policy={self.policy!r}, interpolation={self.interpolation!r})"

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> list[Draw]:
        """Two steps: the sub-policy's op per sample, or Identity where the step does not run."""
        gen, dev = self._draw_setup(generator, device)
        table = self.table(height, width, dev)
        chosen = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=gen, device=dev)
        draws = []
        for step in range(2):
            ops, probs, bins = (t[:, step].to(dev)[chosen] for t in (self._ops, self._probs, self._bins))
            run = torch.rand(batch, generator=gen, device=dev) <= probs
            draws.append(_signed_draw(torch.where(run, ops, 0), table, bins.float(), gen))
        return draws


POLICY_NAMES = ("none", *POLICIES)
"""The config names of the policies defined here (``none`` = off); :data:`POLICIES` also holds later ones."""


def policy_parameters(cls: type[Policy]) -> dict[str, inspect.Parameter]:
    """The config parameters of a policy class: its constructor's, without ``generator``."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "generator") and p.kind is p.POSITIONAL_OR_KEYWORD}


def build_policy(
    spec: str | Mapping[str, Any] | None, field: str = "policy", generator: torch.Generator | None = None
) -> Policy | None:
    """A policy from a config value: None / ``"none"`` (off), a name, or ``{"name": ..., <parameters>}``;
    a policy object is returned as it is.

    Errors name ``field`` (``policy.magnitude must be in [0, 30], got 31``); a config layer adds its prefix
    with :func:`augment.checks.field_prefix`.
    """
    if isinstance(spec, Policy):
        return spec
    names = ("none", *POLICIES)
    if spec is None or isinstance(spec, str):
        name, params = check_choice(field, "none" if spec is None else spec, names), {}
    else:
        require(isinstance(spec, Mapping), field, f"a name ({', '.join(names)}) or a mapping with a name", spec)
        params = dict(spec)
        name = check_choice(f"{field}.name", params.pop("name", "none"), names)
    if name == "none":
        if params:
            key = next(iter(params))
            raise CheckError(f"{field}.{key}", "unset when the policy is none", params[key])
        return None
    allowed = tuple(policy_parameters(POLICIES[name]))
    for key, value in params.items():
        require(key in allowed, f"{field}.{key}", f"a {name} parameter ({', '.join(allowed)})", value)
    with field_prefix(field):
        return POLICIES[name](**params, generator=generator)
