"""Mixup, CutMix and a switch between them, on whole batches with no per-sample Python loop.

Papers:
- mixup: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization" (arXiv:1710.09412).
- CutMix: Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features" (arXiv:1905.04899).

Each image ``x[i]`` is mixed with a partner ``x[perm[i]]``; the target becomes
``lam * y[i] + (1 - lam) * y[perm[i]]`` where ``lam`` is the share of ``x[i]`` in the output.
The pairing is ``"roll"`` (partner i - 1, default; the loader already shuffles), ``"flip"``
(partner B - 1 - i, as timm) or ``"random"`` (a permutation from the generator); every pairing works
for odd B and B = 1 (a sample paired with itself is left unchanged).

Randomness: lambdas, boxes, switches and permutations are drawn from ``generator`` on the
generator's device (per-batch mode without a generator: the CPU default generator; per-sample mode
without one: ``x``'s device) and then moved to ``x``'s device, so one generator state gives one
output. Per-batch mode reads its lambda and box as Python numbers: free with a CPU generator, a
device sync with a CUDA one.

Per-sample mode does the whole batch in one fused pass: a pixel weight ``w: (B, 1, H, W)`` holds
lambda on Mixup rows and 0 inside / 1 outside the box on CutMix rows, and the output is
``lerp(x[perm], x, w)``; with the roll pairing ``x[perm]`` is read in place as the shifted rows (no copy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ._batch import Box, box_area, box_indicators, centered_boxes, check_float_batch, draw_device, to_device
from .checks import check_bool, check_choice, check_int, check_probability, check_real, is_real, require
from .targets import check_smoothing, soft_targets

__all__ = [
    "Box",
    "BatchDraw",
    "SampleDraw",
    "sample_beta",
    "centered_boxes",
    "cutmix_box",
    "box_area",
    "check_minmax",
    "minmax_boxes",
    "box_indicators",
    "box_weight",
    "gather_rows",
    "lerp_partners",
    "mix_targets",
    "pair_permutation",
    "to_device",
    "mixup_batch",
    "cutmix_batch",
    "MixupCutMix",
    "Mixup",
    "CutMix",
]

PAIRINGS = ("roll", "flip", "random")


def sample_beta(
    alpha: float | torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``size`` draws of Beta(alpha, alpha) as float64, via two Gamma(alpha) draws from ``generator``.

    ``alpha``: a float, or a ``(size,)`` tensor of per-draw alphas (one gamma call for mixed alphas).
    """
    if isinstance(alpha, torch.Tensor):
        concentration = alpha.to(torch.float64).expand(2, size)
    else:
        concentration = torch.full((2, size), float(alpha), dtype=torch.float64, device=device)
    # torch.distributions.Beta takes no generator; _standard_gamma does.
    gammas = torch._standard_gamma(concentration, generator=generator)
    total = gammas.sum(0)
    # Both gammas underflow to 0 only for tiny alpha; then 0 / tiny = 0 is still a valid lambda.
    return gammas[0] / total.clamp_min(torch.finfo(torch.float64).tiny)


def cutmix_box(lam: float, cy: int, cx: int, height: int, width: int) -> Box:
    """CutMix box of side ``floor(sqrt(1 - lam) * (H, W))`` centered at ``(cy, cx)``, clipped (Python ints)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return clip(y0, height), clip(y0 + cut_h, height), clip(x0, width), clip(x0 + cut_w, width)


def check_minmax(field: str, value: Sequence[float] | None) -> tuple[float, float] | None:
    """None, or ``(low, high)`` fractions of the image side with 0 <= low < high <= 1."""
    if value is None:
        return None
    ok = isinstance(value, Sequence) and len(value) == 2 and all(is_real(v) for v in value)
    require(ok and 0.0 <= value[0] < value[1] <= 1.0, field, "null or (low, high) with 0 <= low < high <= 1", value)
    return float(value[0]), float(value[1])


def minmax_boxes(u: torch.Tensor, minmax: tuple[float, float], height: int, width: int) -> torch.Tensor:
    """Boxes ``(..., 4)`` inside the image from uniform draws ``u: (4, ...)`` in [0, 1) (timm's
    ``rand_bbox_minmax``): sides uniform ints in ``[int(low * side), int(high * side))`` (at least the low
    one), then a position uniform over the places where the box fits."""
    low, high = minmax
    lo_h, lo_w = int(height * low), int(width * low)
    cut_h = lo_h + (u[0] * max(int(height * high) - lo_h, 1)).long()
    cut_w = lo_w + (u[1] * max(int(width * high) - lo_w, 1)).long()
    y0 = (u[2] * (height - cut_h + 1)).long()
    x0 = (u[3] * (width - cut_w + 1)).long()
    return torch.stack([y0, y0 + cut_h, x0, x0 + cut_w], dim=-1)


def mix_targets(y_soft: torch.Tensor, lam: float | torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``lam * y_soft + (1 - lam) * y_soft[perm]``; ``lam`` is a float or ``(B,)``; rows keep summing to 1."""
    partner = y_soft.index_select(0, perm)
    if isinstance(lam, torch.Tensor):
        lam = to_device(lam, y_soft.device).to(y_soft.dtype).view(-1, 1)
    return torch.lerp(partner, y_soft, lam)


def pair_permutation(
    batch_size: int, pairing: str, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Partner index ``(B,)`` long: roll (i - 1), flip (B - 1 - i) or random (randperm from ``generator``)."""
    if pairing == "roll":
        return torch.arange(-1, batch_size - 1, device=device) % batch_size
    if pairing == "flip":
        return torch.arange(batch_size - 1, -1, -1, device=device)
    if pairing == "random":
        perm = torch.randperm(batch_size, generator=generator, device=draw_device(generator, device or "cpu"))
        return perm if device is None else to_device(perm, device)
    raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def mixup_batch(
    x: torch.Tensor, y_soft: torch.Tensor, lam: float | torch.Tensor, perm: torch.Tensor, rolled: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup ``x: (B, C, H, W)`` with ``x[perm]``: ``lam * x + (1 - lam) * x[perm]``, and the targets.

    ``lam``: a float (whole batch) or ``(B,)`` (per sample). The pixel weight is rounded to ``x``'s
    dtype and the targets use that rounded weight, so targets match the pixels exactly. ``rolled``:
    ``perm`` is the roll pairing (see :func:`lerp_partners`).
    """
    if isinstance(lam, torch.Tensor):
        weight = to_device(lam, x.device).to(x.dtype)
        out = lerp_partners(x, perm, weight.view(-1, 1, 1, 1), rolled)
        target_lam: float | torch.Tensor = weight.to(torch.float64)
    else:
        target_lam = torch.tensor(lam, dtype=x.dtype).item()
        out = lerp_partners(x, perm, target_lam, rolled)
    return out, mix_targets(y_soft, target_lam, perm)


def cutmix_batch(
    x: torch.Tensor,
    y_soft: torch.Tensor,
    box: Box | torch.Tensor,
    perm: torch.Tensor,
    lam: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix ``x: (B, C, H, W)``: pixels inside ``box`` come from ``x[perm]``; returns (x_out, targets).

    ``box``: one ``(y0, y1, x0, x1)`` for the batch, or ``(B, 4)`` per sample. ``lam=None`` sets the
    target weight to the exact kept-pixel fraction ``1 - area / (H * W)``; a given ``lam`` is used as is.
    """
    height, width = x.shape[-2:]
    if isinstance(box, torch.Tensor):
        boxes = to_device(box, x.device)
        if lam is None:
            lam = 1.0 - box_area(boxes).to(torch.float64) / (height * width)
        return _blend(x, y_soft, boxes, torch.ones(x.shape[0], device=x.device), lam, perm, False)
    y0, y1, x0, x1 = (int(v) for v in box)
    out = x.clone()  # keeps the memory format; only the box is copied from the partners
    out[:, :, y0:y1, x0:x1] = x[:, :, y0:y1, x0:x1].index_select(0, perm)
    if lam is None:
        lam = 1.0 - max(y1 - y0, 0) * max(x1 - x0, 0) / (height * width)
    return out, mix_targets(y_soft, lam, perm)


class BatchDraw(NamedTuple):
    """One draw for a whole batch: ``mixed`` False leaves the batch as it is; ``box`` None means Mixup.

    ``lam``: Beta draw (Mixup's image weight; CutMix's target weight when ``correct_lam`` is off);
    ``perm``: partner index ``(B,)`` on ``x``'s device; ``rolled``: ``perm`` is the roll pairing (i - 1),
    so partners are read as shifted slices instead of gathered.
    """

    mixed: bool
    lam: float
    box: Box | None
    perm: torch.Tensor
    rolled: bool = False


class SampleDraw(NamedTuple):
    """One draw per sample: ``boxes (B, 4)`` long pasted from the partner (empty on Mixup and unmixed rows),
    ``pixel_lam (B,)`` the weight of ``x`` outside the box, ``target_lam (B,)`` the weight of ``y``, ``perm (B,)``;
    ``rolled``: ``perm`` is the roll pairing (i - 1).
    """

    boxes: torch.Tensor
    pixel_lam: torch.Tensor
    target_lam: torch.Tensor
    perm: torch.Tensor
    rolled: bool = False


class MixupCutMix:
    """Mixup or CutMix chosen per batch or per sample; callable ``(x, y) -> (x_mixed, soft targets (B, K))``.

    Args:
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 turns that op off (at least one > 0).
        switch_prob: probability of CutMix when both are on (as timm).
        prob: probability of mixing at all, per batch or per sample (an unmixed sample keeps lambda 1).
        per_sample: one lambda / op / box per sample instead of one per batch.
        correct_lam: CutMix target weight = exact kept-pixel fraction after clipping the box.
        label_smoothing: smoothing of the targets before mixing (int labels and soft targets alike).
        num_classes: needed for int labels ``y: (B,)``.
        pairing: "roll", "flip" or "random" partner choice (see module docstring).
        validate: label range check: True always, False never, None only for CPU labels (no sync);
            skipped while ``torch.compile`` traces the call.
        generator: source of all randomness.
        cutmix_minmax: None, or ``(low, high)`` fractions of the image side: CutMix boxes then get sides
            uniform in ``[int(low * H), int(high * H))`` (and W) and lie inside the image, lambda ignored for
            the box and the target weight always the exact kept-pixel fraction (timm's ``cutmix_minmax``).

    Drawing is apart from applying: ``sample(batch, height, width, device)`` gives a :class:`BatchDraw` or
    :class:`SampleDraw`, ``apply(x, y_soft, draw)`` mixes. Per-batch mode returns ``x`` itself (not a copy)
    when the batch is not mixed; otherwise a new tensor. Under ``torch.compile`` per-batch mode draws the
    same numbers as tensors (no Python number is read, so the graph does not break) and mixes them
    through the per-sample blend, with the same result; dynamo cannot trace a ``torch.Generator``, so
    compiled ops take ``generator=None`` (torch's global generator, ``torch.manual_seed``).
    """

    mixes = True

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        per_sample: bool = False,
        correct_lam: bool = True,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        pairing: str = "roll",
        validate: bool | None = None,
        generator: torch.Generator | None = None,
        cutmix_minmax: Sequence[float] | None = None,
    ) -> None:
        self.mixup_alpha = check_real("mixup_alpha", mixup_alpha, low=0)
        self.cutmix_alpha = check_real("cutmix_alpha", cutmix_alpha, low=0)
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError(f"mixup_alpha or cutmix_alpha must be > 0, got {mixup_alpha} and {cutmix_alpha}")
        self.switch_prob = check_probability("switch_prob", switch_prob)
        self.prob = check_probability("prob", prob)
        if num_classes is not None:
            check_int("num_classes", num_classes, low=1)
        self.label_smoothing = check_smoothing(label_smoothing, num_classes)
        check_choice("pairing", pairing, PAIRINGS)
        self.per_sample = check_bool("per_sample", per_sample)
        self.correct_lam = check_bool("correct_lam", correct_lam)
        self.cutmix_minmax = check_minmax("cutmix_minmax", cutmix_minmax)
        self.num_classes = num_classes
        self.pairing = pairing
        self.validate = validate
        self.generator = generator

    def __repr__(self) -> str:
        minmax = "" if self.cutmix_minmax is None else f", cutmix_minmax={self.cutmix_minmax}"
        return (
            f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"switch_prob={self.switch_prob}, prob={self.prob}, per_sample={self.per_sample}, "
            f"correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
            f"num_classes={self.num_classes}, pairing={self.pairing!r}{minmax})"
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_float_batch(x)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have batch size {x.shape[0]}, got shape {tuple(y.shape)}")
        y_soft = soft_targets(y, self.num_classes, self.label_smoothing, self.validate)
        if x.shape[0] == 0:
            return x, y_soft
        return self.apply(x, y_soft, self.sample(x.shape[0], x.shape[2], x.shape[3], x.device, x.dtype))

    def sample(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> BatchDraw | SampleDraw:
        """The draws for ``batch`` images of ``height x width`` that live on ``device`` with ``dtype``
        (per-sample Mixup weights are rounded to ``dtype``, so the targets match the pixels)."""
        if self.per_sample:
            return self._sample_per_sample(batch, height, width, device, dtype)
        if torch.compiler.is_compiling():
            return self._sample_per_batch_as_tensors(batch, height, width, device, dtype)
        return self._sample_per_batch(batch, height, width, device)

    def apply(
        self, x: torch.Tensor, y_soft: torch.Tensor, draw: BatchDraw | SampleDraw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x: (B, C, H, W)`` and soft targets ``y_soft: (B, K)`` by ``draw`` (from :meth:`sample`)."""
        if isinstance(draw, SampleDraw):
            # One small copy to x's device for all per-sample parameters.
            params = torch.cat([draw.boxes.to(torch.float64), draw.pixel_lam[:, None], draw.target_lam[:, None]], 1)
            params = to_device(params.float(), x.device)
            return _blend(x, y_soft, params[:, :4], params[:, 4], params[:, 5], draw.perm, draw.rolled)
        if not draw.mixed:
            return x, y_soft
        if draw.box is None:
            return mixup_batch(x, y_soft, draw.lam, draw.perm, draw.rolled)
        exact = self.correct_lam or self.cutmix_minmax is not None
        return cutmix_batch(x, y_soft, draw.box, draw.perm, None if exact else draw.lam)

    def _uses_cutmix(self, switch_draw: torch.Tensor) -> torch.Tensor:
        if self.mixup_alpha == 0:
            return torch.ones_like(switch_draw, dtype=torch.bool)
        if self.cutmix_alpha == 0:
            return torch.zeros_like(switch_draw, dtype=torch.bool)
        return switch_draw < self.switch_prob

    def boxes(self, lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """CutMix boxes ``(N, 4)`` for lambdas and centers ``(N,)``: sides ``floor(sqrt(1 - lam) * (H, W))``
        around the center, clipped (timm's ``rand_bbox``). A subclass may use another rule."""
        ratio = torch.sqrt(1.0 - lam)
        cut_h, cut_w = torch.floor(height * ratio).long(), torch.floor(width * ratio).long()
        return centered_boxes(cy, cx, cut_h, cut_w, height, width)

    def _draw_boxes(self, lam: torch.Tensor, size: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``size`` CutMix boxes ``(size, 4)`` for lambdas ``lam (size,)``: a center each, or minmax sides."""
        gen = self.generator
        if self.cutmix_minmax is None:
            center = torch.randint(0, height * width, (size,), generator=gen, device=device)
            return self.boxes(lam, center // width, center % width, height, width)
        u = torch.rand(4, size, generator=gen, device=device, dtype=torch.float64)
        return minmax_boxes(u, self.cutmix_minmax, height, width)

    def _sample_per_batch(self, batch: int, height: int, width: int, device: torch.device) -> BatchDraw:
        gen, where = self.generator, draw_device(self.generator, "cpu")
        apply_draw, switch_draw = torch.rand(2, generator=gen, device=where).tolist()
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or switch_draw < self.switch_prob)
        lam_t = sample_beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, 1, gen, where)
        box = self._draw_boxes(lam_t, 1, height, width, where)[0].tolist()
        perm = pair_permutation(batch, self.pairing, gen, device)
        lam = float(lam_t)
        mixed = apply_draw < self.prob and lam != 1.0
        return BatchDraw(mixed, lam, tuple(box) if use_cutmix else None, perm, self.pairing == "roll")

    def _sample_per_batch_as_tensors(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> SampleDraw:
        """The per-batch draws of :meth:`_sample_per_batch`, in the same order, kept as tensors (for compile)."""
        gen, where = self.generator, draw_device(self.generator, "cpu")
        apply_draw, switch_draw = torch.rand(2, generator=gen, device=where)
        use_cutmix = self._uses_cutmix(switch_draw.view(1))
        f64 = dict(dtype=torch.float64, device=where)
        alpha = torch.where(use_cutmix, torch.tensor(self.cutmix_alpha, **f64), torch.tensor(self.mixup_alpha, **f64))
        lam = sample_beta(alpha, 1, gen)
        boxes = self._draw_boxes(lam, 1, height, width, where)
        perm = pair_permutation(batch, self.pairing, gen, device)
        mixed = ((apply_draw < self.prob) & (lam != 1.0)).expand(batch)
        shared = (use_cutmix.expand(batch), lam.expand(batch), boxes.expand(batch, 4))
        return self._per_sample_draw(mixed, *shared, perm, height, width, dtype)

    def _sample_per_sample(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> SampleDraw:
        gen, where = self.generator, draw_device(self.generator, device)
        apply_draw, switch_draw = torch.rand(2, batch, generator=gen, device=where, dtype=torch.float64)
        apply = apply_draw < self.prob
        cut_rows = self._uses_cutmix(switch_draw)
        # One Beta draw per sample with that sample's alpha (an off op's alpha 0 is never used).
        alphas = torch.where(cut_rows, self.cutmix_alpha or 1.0, self.mixup_alpha or 1.0)
        lam = sample_beta(alphas, batch, gen)
        boxes = self._draw_boxes(lam, batch, height, width, where)
        perm = pair_permutation(batch, self.pairing, gen, device)
        return self._per_sample_draw(apply, cut_rows, lam, boxes, perm, height, width, dtype)

    def _per_sample_draw(
        self,
        apply: torch.Tensor,
        cut_rows: torch.Tensor,
        lam: torch.Tensor,
        boxes: torch.Tensor,
        perm: torch.Tensor,
        height: int,
        width: int,
        dtype: torch.dtype,
    ) -> SampleDraw:
        """Per-sample weights from the raw draws (all ``(B,)``, boxes ``(B, 4)``)."""
        cut_rows = cut_rows & apply
        mix_rows = apply & ~cut_rows
        boxes = torch.where(cut_rows[:, None], boxes, 0)
        # Pixel weight outside the box: lambda on Mixup rows (rounded to x's dtype), 1 on CutMix and unmixed rows.
        pixel_lam = torch.where(mix_rows, lam, 1.0).to(dtype).to(torch.float64)
        kept = 1.0 - box_area(boxes).to(torch.float64) / (height * width)
        exact = self.correct_lam or self.cutmix_minmax is not None
        target_lam = torch.where(cut_rows, kept if exact else lam, pixel_lam)
        return SampleDraw(boxes, pixel_lam, target_lam, perm, self.pairing == "roll")


def gather_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x[perm]`` along dim 0 as a new tensor in ``x``'s memory format (index_select, fast)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).index_select(0, perm).permute(0, 3, 1, 2)
    return x.index_select(0, perm)


def lerp_partners(
    x: torch.Tensor, perm: torch.Tensor, weight: float | torch.Tensor, rolled: bool = False
) -> torch.Tensor:
    """``lerp(x[perm], x, weight)`` as a new tensor in ``x``'s memory format (``weight`` broadcasts to ``x``).

    ``rolled``: ``perm`` is the roll pairing (partner i - 1); then the partners are the shifted slices
    ``x[:-1]`` and ``x[-1:]``, and one pass over the batch writes the output (no gathered copy).
    Otherwise the partners are gathered into the output, which is then blended in place.
    """
    if not rolled or x.shape[0] < 2:
        out = gather_rows(x, perm)
        return out.lerp_(x, weight)
    out = torch.empty_like(x)
    per_row = isinstance(weight, torch.Tensor) and weight.dim() == 4 and weight.shape[0] > 1
    head, tail = (weight[:1], weight[1:]) if per_row else (weight, weight)
    torch.lerp(x[:-1], x[1:], tail, out=out[1:])
    torch.lerp(x[-1:], x[:1], head, out=out[:1])
    return out


def _blend(
    x: torch.Tensor,
    y_soft: torch.Tensor,
    boxes: torch.Tensor,
    pixel_lam: torch.Tensor,
    target_lam: float | torch.Tensor,
    perm: torch.Tensor,
    rolled: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass ``lerp(x[perm], x, w)`` with ``w = 0`` inside ``boxes (B, 4)`` and ``pixel_lam (B,)`` outside.

    Memory traffic is what costs here: one full-size allocation (the output) and one ``(B, 1, H, W)``
    weight built by a single broadcast op (see :func:`lerp_partners`).
    """
    weight = box_weight(boxes, pixel_lam, x.shape[-2], x.shape[-1], x.dtype)  # before the output: fewer page faults
    return lerp_partners(x, perm, weight, rolled), mix_targets(y_soft, target_lam, perm)


def box_weight(boxes: torch.Tensor, outside: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, H, W)`` weight: exactly 0 inside ``boxes (B, 4)``, ``outside (B,)`` elsewhere."""
    lam = outside.to(dtype).view(-1, 1, 1, 1)
    in_rows, in_cols = box_indicators(boxes, height, width, dtype)
    weight = torch.mul(in_rows[:, None] * lam, in_cols[:, None].neg())  # -lam inside, 0 outside
    return weight.add_(lam)


class Mixup(MixupCutMix):
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta(alpha, alpha), alpha > 0."""

    def __init__(
        self,
        alpha: float = 1.0,
        prob: float = 1.0,
        per_sample: bool = False,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        pairing: str = "roll",
        validate: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_real("alpha", alpha, low=0, low_open=True)  # alone, 0 would mean the op is off
        super().__init__(
            mixup_alpha=alpha,
            cutmix_alpha=0.0,
            switch_prob=0.0,
            prob=prob,
            per_sample=per_sample,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            pairing=pairing,
            validate=validate,
            generator=generator,
        )


class CutMix(MixupCutMix):
    """CutMix (Yun et al. 2019): a box of side sqrt(1 - lam) * (H, W) pasted from ``x[perm]``, alpha > 0."""

    def __init__(
        self,
        alpha: float = 1.0,
        prob: float = 1.0,
        per_sample: bool = False,
        correct_lam: bool = True,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        pairing: str = "roll",
        validate: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_real("alpha", alpha, low=0, low_open=True)  # alone, 0 would mean the op is off
        super().__init__(
            mixup_alpha=0.0,
            cutmix_alpha=alpha,
            switch_prob=1.0,
            prob=prob,
            per_sample=per_sample,
            correct_lam=correct_lam,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            pairing=pairing,
            validate=validate,
            generator=generator,
        )
