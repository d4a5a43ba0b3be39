"""Adapt timm models built for 224x224 ImageNet inputs to the data's image size (32x32 CIFAR and up).

An ImageNet network shrinks its input 32x (final 7x7 map at 224), which leaves a 1x1 map at 32x32 and
costs many accuracy points on CIFAR. ``cifar_stem`` chooses how to undo that; ``auto`` chooses from the
image size S (the smaller side) so that the final map stays between 4x4 and 8x8 from 32 to 256 px:

- CNNs: total stride ``auto_stride(S)`` = 2 ** floor(log2(S / 4)), capped at 32: 8 for S in [32, 64),
  16 for [64, 128), 32 (the model as timm builds it) from 128; final map S / stride (4x4 at 32, 64 and
  128, 6x6 at 96, 7x7 at 224).
- patch models: built for the image size with patch side ``auto_patch(S)`` = round(S / 8) (4 at 32, 8 at
  64, 12 at 96, 16 at 128, 28 at 224): a token grid of about 8x8.

The stems:

- ``stem3x3`` (hand-tuned, ResNet family and DenseNet): the stem conv (7x7/2, or a deep 3-conv stem)
  becomes one freshly initialized 3x3 stride-1 conv with the same output channels, the stem
  max-pool becomes Identity. Total stride 32 -> 8.
- ``stride8`` / ``stride4`` / ``stride16`` (any CNN): total stride S (32) -> N. A probe forward
  measures, for every conv / pool / blur-pool with stride > 1, the network's reduction at its input;
  every one whose input reduction is below S / N loses its stride: a conv keeps its weights with
  stride 1 and a padding that keeps H, W (an even kernel, e.g. ConvNeXt's 4x4 patchify stem, pads
  one pixel more after than before); a parameter-free pool becomes Identity. Parallel branches of one stage
  (a block's strided conv and its strided shortcut) see the same input reduction, so they change
  together. ``feature_info`` reductions are updated. The result is checked by a forward at the image size;
  downsampling that is not a stride (space-to-depth, patch merging, a fixed input size) is refused.
- ``patch2`` / ``patch4`` / ``patch8`` (models timm builds for a fixed input size: ViT, DeiT,
  MLP-Mixer, ...): built with ``img_size=(h, w), patch_size=N`` through timm's own kwargs (timm resamples
  pretrained patch and position embeddings). Models that merge tokens after the patch embedding
  (Swin, PiT, ...) are refused.
- ``auto``: for fixed-input-size models ``patch<auto_patch(S)>``; for CNNs at total stride 8 (S in [32, 64))
  ``stem3x3`` for timm ``ResNet`` and ``DenseNet`` models and ``stride8`` for the others, else
  ``stride<auto_stride(S)>`` (``stride32`` changes nothing). ``none``: the model as timm builds it.
  ``True`` / ``False`` mean ``auto`` / ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from augment.checks import check_choice

__all__ = [
    "CIFAR_STEMS",
    "INPUT_SIZE",
    "CifarAdaptation",
    "auto_stride",
    "auto_patch",
    "as_image_size",
    "resolve_cifar_stem",
    "plan_cifar_stem",
    "adapt_to_cifar",
]

INPUT_SIZE = 32
STRIDE_STEMS = {"stride4": 4, "stride8": 8, "stride16": 16}
PATCH_STEMS = {"patch2": 2, "patch4": 4, "patch8": 8}
CIFAR_STEMS = ("auto", "none", "stem3x3", *STRIDE_STEMS, *PATCH_STEMS)
_PROBE_SIZE = 64  # probe resolution for input reductions: exact powers of two up to 32 at stride 32


def as_image_size(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """(h, w) of an int, a pair or None (32x32)."""
    if size is None:
        return (INPUT_SIZE, INPUT_SIZE)
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def auto_stride(side: int) -> int:
    """Total CNN stride for images whose smaller side is ``side``: 2 ** floor(log2(side / 4)) in [1, 32]."""
    return int(min(32, max(1, 2 ** math.floor(math.log2(max(side, 4) / 4)))))


def auto_patch(side: int) -> int:
    """Patch side for images whose smaller side is ``side``: round(side / 8), at least 1 (about 8x8 tokens)."""
    return max(1, round(side / 8))


@dataclass(frozen=True)
class CifarAdaptation:
    """What ``adapt_to_cifar`` did: resolved ``stem``, total stride (patch size) before and after, changed modules."""

    stem: str
    stride_before: int | None = None
    stride_after: int | None = None
    changed: tuple[str, ...] = ()
    final_size: str = ""

    def __str__(self) -> str:
        if self.stem == "none":
            return "none (the model as timm builds it)"
        if self.stem.startswith("patch"):
            return f"{self.stem}: {', '.join(self.changed)} ({self.final_size})"
        what = ", ".join(self.changed) if self.changed else "nothing to change"
        strides = f"total stride {self.stride_before} -> {self.stride_after}"
        return f"{self.stem}: {strides} ({what}; final map {self.final_size})"


class _Unadaptable(ValueError):
    pass


def resolve_cifar_stem(value: Any) -> str:
    """``value`` checked against ``CIFAR_STEMS``; ``True`` / ``False`` become ``auto`` / ``none``."""
    if isinstance(value, bool):
        return "auto" if value else "none"
    return check_choice("model.cifar_stem", value, CIFAR_STEMS)


def _fixed_input_size(name: str) -> bool:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _patch_of(stem: str) -> int:
    return PATCH_STEMS.get(stem) or int(stem[len("patch"):])


def plan_cifar_stem(
    name: str, cifar_stem: Any, image_size: int | tuple[int, int] | None = None
) -> tuple[str, dict[str, Any]]:
    """(stem, timm build kwargs) for timm model ``name`` at ``image_size`` (h, w; default 32x32): ``auto``
    picks ``patch<auto_patch(S)>`` for fixed-input-size models.

    The stem stays ``auto`` for CNNs (resolved by ``adapt_to_cifar`` from the built model's class).
    """
    stem = resolve_cifar_stem(cifar_stem)
    size = as_image_size(image_size)
    fixed = _fixed_input_size(name)
    if stem == "auto" and fixed:
        stem = f"patch{auto_patch(min(size))}"
    if stem.startswith("patch"):
        return stem, {"img_size": size, "patch_size": _patch_of(stem)}
    if fixed and stem != "none":
        raise ValueError(
            f"model.cifar_stem={stem} cannot adapt {name!r}: timm builds it for a fixed input size "
            "(a patch model); use model.cifar_stem: auto or patch4"
        )
    return stem, {}


# ----- hand-tuned stems -------------------------------------------------------------------------


def _new_stem_conv(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """3x3 stride-1 conv with ``old``'s output channels, bias flag, device and dtype (Kaiming init)."""
    conv = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
    conv.to(device=old.weight.device, dtype=old.weight.dtype)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _resnet_stem(model: nn.Module) -> tuple[str, ...]:
    convs = _convs(model.conv1)
    model.conv1 = _new_stem_conv(convs[-1], convs[0].in_channels)
    model.maxpool = nn.Identity()
    return ("conv1 -> 3x3/1", "maxpool -> Identity")


def _densenet_stem(model: nn.Module) -> tuple[str, ...]:
    conv0 = model.features.conv0
    if conv0.kernel_size == (3, 3):
        conv0.stride = (1, 1)
    else:
        model.features.conv0 = _new_stem_conv(conv0, conv0.in_channels)
    model.features.pool0 = nn.Identity()
    return ("features.conv0 -> 3x3/1", "features.pool0 -> Identity")


def _hand_tuned_stem(model: nn.Module) -> tuple[str, ...] | None:
    """Apply the ResNet / DenseNet CIFAR stem if ``model`` is one; None otherwise."""
    from timm.models.densenet import DenseNet
    from timm.models.resnet import ResNet

    if isinstance(model, ResNet):
        return _resnet_stem(model)
    if isinstance(model, DenseNet):
        return _densenet_stem(model)
    return None


# ----- the general stride rule ------------------------------------------------------------------


def _stride(module: nn.Module) -> int | None:
    """Spatial stride of a conv / pool / blur-pool (the larger of H, W), None for other modules."""
    from timm.layers import BlurPool2d

    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, BlurPool2d)):
        return None
    stride = module.stride
    return int(max(stride)) if isinstance(stride, (tuple, list)) else int(stride)


def _param_like(model: nn.Module) -> dict[str, Any]:
    ref = next(model.parameters(), None)
    return {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}


def _run_features(
    model: nn.Module, size: int | tuple[int, int], record: bool = False
) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
    """Features of one zero image of ``size`` (int or (h, w); eval, no grad; training mode restored).

    record: also return, per module on its first call with 4D input and output, (input H, output H), in
    the order the modules start.
    """
    starts: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in starts and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
                starts[name] = args[0].shape[-2]
        return hook

    def post_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if name in starts and name not in sizes and isinstance(out, torch.Tensor) and out.dim() == 4:
                sizes[name] = (starts[name], out.shape[-2])
        return hook

    handles = []
    for name, module in model.named_modules() if record else ():
        if name:
            handles += [module.register_forward_pre_hook(pre_hook(name)), module.register_forward_hook(post_hook(name))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, *as_image_size(size), **_param_like(model))
            forward = getattr(model, "forward_features", None)
            output = forward(x) if callable(forward) else model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if isinstance(output, (list, tuple)):
        output = output[-1]
    return output, {name: sizes[name] for name in starts if name in sizes}


def _spatial(output: torch.Tensor, model: nn.Module) -> tuple[int, int] | None:
    """(H, W) of a 4D feature map (NCHW, or NHWC where the timm model says so); None otherwise."""
    if output.dim() != 4:
        return None
    if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC"):
        return output.shape[1], output.shape[2]
    return output.shape[2], output.shape[3]


def _describe(output: torch.Tensor, model: nn.Module) -> str:
    """The final feature map as "HxW" or "N tokens" (without prefix / class tokens)."""
    hw = _spatial(output, model)
    if hw is not None:
        return f"{hw[0]}x{hw[1]}"
    if output.dim() == 3:
        return f"{output.shape[1] - int(getattr(model, 'num_prefix_tokens', 0) or 0)} tokens"
    return f"shape {tuple(output.shape[1:])}"


def _reduction(size: int, height: int) -> int:
    """size / height as the nearest power of two."""
    return 2 ** round(math.log2(size / max(height, 1)))


def _total_stride(output: torch.Tensor, model: nn.Module, size: int | tuple[int, int]) -> int:
    hw = _spatial(output, model)
    if hw is None:
        raise _Unadaptable(f"its features are not a (B, C, H, W) map (shape {tuple(output.shape)})")
    return _reduction(as_image_size(size)[0], hw[0])


def _scale_feature_info(model: nn.Module, factor: int) -> None:
    info = getattr(model, "feature_info", None)
    for entry in info if isinstance(info, list) else ():
        if isinstance(entry, dict) and "reduction" in entry:
            entry["reduction"] = max(1, entry["reduction"] // factor)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _stride_one_conv(model: nn.Module, name: str, conv: nn.Conv2d) -> str:
    """Stride 1 with a padding that keeps H, W; the weights (the same Parameters) are kept."""
    from timm.layers import Conv2dSame

    conv.stride = (1, 1)
    if isinstance(conv, Conv2dSame) or getattr(conv, "same_pad", False):
        return f"{name} stride 1"  # pads itself from its stride
    pads = tuple(d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation))
    if all(p % 2 == 0 for p in pads):
        conv.padding = tuple(p // 2 for p in pads)
        conv._reversed_padding_repeated_twice = [p // 2 for p in reversed(pads) for _ in range(2)]
        return f"{name} stride 1"
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros":  # even kernel: one more pixel at the end
        same = Conv2dSame(
            conv.in_channels, conv.out_channels, conv.kernel_size, 1, 0, conv.dilation, conv.groups,
            conv.bias is not None, device="meta",
        )
        same.weight, same.bias = conv.weight, conv.bias
        _replace(model, name, same)
        return f"{name} stride 1 (same padding)"
    if conv.padding_mode == "zeros":
        conv.padding = "same"
        return f"{name} stride 1 (same padding)"
    raise _Unadaptable(f"{name} is a {type(conv).__name__} with an even kernel and {conv.padding_mode} padding")


def _set_stride(model: nn.Module, name: str, module: nn.Module, stride: int) -> str:
    """Set ``module``'s stride; a pool left at stride 1 becomes Identity. Returns a description."""
    if isinstance(module, nn.Conv2d):
        if stride == 1:
            return _stride_one_conv(model, name, module)
        k, old = module.kernel_size[0], module.stride[0]
        patchify = module.dilation == (1, 1) and module.padding == ((k - old) // 2,) * 2 and (k - old) % 2 == 0
        module.stride = (stride, stride)
        if patchify and type(module) is nn.Conv2d and k >= stride and (k - stride) % 2 == 0:  # out = in / stride
            pad = (k - stride) // 2
            module.padding = (pad, pad)
            module._reversed_padding_repeated_twice = [pad] * 4
            return f"{name} stride {stride} padding {pad}"
    elif stride == 1:
        _replace(model, name, nn.Identity())
        return f"{name} -> Identity"
    else:
        module.stride = stride
    return f"{name} stride {stride}"


def _stride_rule(model: nn.Module, target: int) -> tuple[int, tuple[str, ...]]:
    """Reduce ``model``'s total stride to ``target`` in place; return (total stride before, changes)."""
    output, sizes = _run_features(model, _PROBE_SIZE, record=True)
    before = _total_stride(output, model, _PROBE_SIZE)
    factor = before // target
    if factor <= 1:
        return before, ()
    modules = dict(model.named_modules())
    plan = []
    for name, (h_in, h_out) in sizes.items():
        stride = _stride(modules[name])
        r_in = _reduction(_PROBE_SIZE, h_in)
        if stride is not None and stride > 1 and h_out < h_in and r_in < factor:
            plan.append((name, max(1, r_in * stride // factor)))
    changes = tuple(_set_stride(model, name, modules[name], stride) for name, stride in plan)
    _scale_feature_info(model, factor)
    return before, changes


def _not_a_stride(model: nn.Module) -> str:
    """The first modules that shrink H, W without a conv / pool stride inside them (for the error)."""
    _, sizes = _run_features(model, _PROBE_SIZE, record=True)
    modules = dict(model.named_modules())
    found = [
        f"{name} ({type(modules[name]).__name__})"
        for name, (h_in, h_out) in sizes.items()
        if h_out < h_in and not any((_stride(m) or 1) > 1 for m in modules[name].modules())
    ]
    return ", ".join(found[:2]) or "an operation inside forward"


def _adapt_patch(model: nn.Module, stem: str, size: tuple[int, int]) -> CifarAdaptation:
    patch = _patch_of(stem)
    output, _ = _run_features(model, size)
    grid = (size[0] // patch) * (size[1] // patch)
    hw = _spatial(output, model)
    tokens = hw[0] * hw[1] if hw else output.shape[1] - int(getattr(model, "num_prefix_tokens", 0) or 0)
    if output.dim() not in (3, 4) or tokens != grid:
        raise _Unadaptable(f"it merges tokens after the patch embedding ({grid} patches -> {_describe(output, model)})")
    shown = size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"
    return CifarAdaptation(stem, None, patch, (f"img_size={shown}", f"patch_size={patch}"), _describe(output, model))


def _adapt(model: nn.Module, stem: str, size: tuple[int, int]) -> CifarAdaptation:
    if stem.startswith("patch"):
        return _adapt_patch(model, stem, size)
    if stem == "auto" and auto_stride(min(size)) != 8:
        stem = f"stride{auto_stride(min(size))}"
    if stem in ("auto", "stem3x3"):
        info = getattr(model, "feature_info", None)
        changes = _hand_tuned_stem(model)
        if changes is not None:
            before = info[-1]["reduction"] if isinstance(info, list) and info else 32
            _scale_feature_info(model, 4)
            output, _ = _run_features(model, size)
            after = _total_stride(output, model, size)
            return CifarAdaptation("stem3x3", before, after, changes, _describe(output, model))
        if stem == "stem3x3":
            raise _Unadaptable("stem3x3 is for timm ResNet and DenseNet models; use stride8")
        stem = "stride8"
    target = int(stem[len("stride"):])
    before, changes = _stride_rule(model, target)
    output, _ = _run_features(model, size)
    after = _total_stride(output, model, size)
    if after != min(before, target):
        raise _Unadaptable(f"total stride stays {after} (not {target}): it downsamples in {_not_a_stride(model)}")
    return CifarAdaptation(stem, before, after, changes, _describe(output, model))


def adapt_to_cifar(
    model: nn.Module, name: str, stem: str, size: int | tuple[int, int] = INPUT_SIZE, label: str | None = None
) -> CifarAdaptation:
    """Adapt ``model`` (timm model ``name``) in place for ``size`` (int or (h, w)) inputs by ``stem``; see module doc.

    stem: a value of ``CIFAR_STEMS``; patch stems need the model built with ``plan_cifar_stem``'s kwargs.
    label: how errors name the requested value (default ``stem``). Raises a one-line ValueError naming
    the model and the reason when the rule cannot adapt it.
    """
    if stem == "none":
        return CifarAdaptation("none")
    where = f"model.cifar_stem={label or stem} cannot adapt {name!r} ({type(model).__name__})"
    size = as_image_size(size)
    try:
        return _adapt(model, stem, size)
    except _Unadaptable as err:
        raise ValueError(f"{where}: {err}") from None
    except (RuntimeError, AssertionError) as err:  # a probe forward failed
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        sizes = f"{_PROBE_SIZE}x{_PROBE_SIZE} or {size[0]}x{size[1]}"
        raise ValueError(f"{where}: its forward fails at {sizes}: {first}") from None
