"""timm backbones for 32x32 images: CIFAR stem, norm swap, dropout and stochastic depth.

ImageNet stems shrink the input 4x before the first block (stride-2 conv + stride-2 pool), which
leaves 8x8 maps on CIFAR and costs several accuracy points. ``to_cifar_stem`` removes that
downsampling per family, chosen by the timm model class:

- ``ResNet`` (resnet*, resnet-d/t deep stems, wide_resnet*, resnext*, seresnet*, ecaresnet*, ...):
  stem conv (7x7/2, or the 3-conv deep stem) -> one 3x3 stride-1 conv with the same output
  channels (so ``bn1``/``act1`` still fit), ``maxpool`` -> Identity. Total stride 32 -> 8.
- ``DenseNet``: ``features.conv0`` -> 3x3 stride-1 conv (deep stems: same conv, stride 1),
  ``features.pool0`` -> Identity. Total stride 32 -> 8.
- ``EfficientNet`` (efficientnet*, mobilenetv2*, mnasnet*, mixnet*, ...) and ``MobileNetV3``:
  ``conv_stem`` stride 2 -> 1 (weights kept). Total stride 32 -> 16.
- ``RegNet``: stem conv stride 2 -> 1 (weights kept). Total stride 32 -> 16.

Other families raise ``ValueError``; use ``cifar_stem=False`` for them. A replaced stem conv is
freshly initialized (pretrained weights of a 7x7 stem do not fit a 3x3 conv); a stride change
keeps the pretrained weights. ``feature_info`` reductions are updated to the new strides.

Weights are never downloaded: ``pretrained=True`` only works with weights timm finds locally
(Hugging Face cache, torch hub cache, or ``pretrained_cfg_overlay=dict(file=path)``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import timm
import torch.hub
from torch import nn

from models.norms import NORM_KINDS, swap_norm

__all__ = ["CIFAR_STEM_FAMILIES", "create_model", "to_cifar_stem"]

CIFAR_STEM_FAMILIES = (
    "ResNet (resnet*, resnet*d/t, wide_resnet*, resnext*, seresnet*)",
    "DenseNet (densenet*)",
    "EfficientNet (efficientnet*, mobilenetv2*, mnasnet*, mixnet*)",
    "MobileNetV3 (mobilenetv3*)",
    "RegNet (regnet*)",
)


class _DownloadBlocked(RuntimeError):
    """Raised instead of any network download while a model is created."""


def _refuse_download(url: str, *args: Any, **kwargs: Any) -> None:
    raise _DownloadBlocked(f"download of {url} refused (downloads are disabled)")


@contextlib.contextmanager
def _downloads_blocked() -> Iterator[tuple[type[BaseException], ...]]:
    """Put huggingface_hub in offline mode and make torch.hub downloads raise; yield the error types."""
    import timm.models._hub as timm_hub

    errors: tuple[type[BaseException], ...] = (_DownloadBlocked,)
    patches: list[tuple[Any, str, Any]] = [
        (torch.hub, "download_url_to_file", _refuse_download),
        (timm_hub, "download_url_to_file", _refuse_download),
    ]
    try:
        import huggingface_hub.constants as hf_constants
        from huggingface_hub import errors as hf_errors

        patches.append((hf_constants, "HF_HUB_OFFLINE", True))
        errors += (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)
    except ImportError:  # timm without huggingface_hub: only torch.hub URLs exist
        pass
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    for obj, attr, value in patches:
        setattr(obj, attr, value)
    try:
        yield errors
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def _check_rate(field: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{field} must be in [0, 1), got {value!r}")


def _check_args(num_classes: int, norm: str, norm_groups: int, drop_rate: float, drop_path_rate: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes must be an int >= 1, got {num_classes!r}")
    if norm not in NORM_KINDS:
        raise ValueError(f"model.norm must be one of {', '.join(NORM_KINDS)}, got {norm!r}")
    if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
        raise ValueError(f"model.norm_groups must be an int >= 1, got {norm_groups!r}")
    _check_rate("model.drop_rate", drop_rate)
    _check_rate("model.drop_path_rate", drop_path_rate)


def _new_stem_conv(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """3x3 stride-1 conv with ``old``'s output channels, bias flag, device and dtype (Kaiming init)."""
    conv = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
    conv.to(device=old.weight.device, dtype=old.weight.dtype)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _first_conv(stem: nn.Module) -> nn.Conv2d:
    return next(m for m in stem.modules() if isinstance(m, nn.Conv2d))


def _last_conv(stem: nn.Module) -> nn.Conv2d:
    return [m for m in stem.modules() if isinstance(m, nn.Conv2d)][-1]


def _set_stride_one(conv: nn.Conv2d) -> None:
    """Stride 1 in place; keeps weights. Symmetric padding k//2 keeps H, W (timm 'same' convs pad dynamically)."""
    conv.stride = (1, 1)


def _resnet_stem(model: nn.Module) -> int:
    stem = model.conv1
    model.conv1 = _new_stem_conv(_last_conv(stem), _first_conv(stem).in_channels)
    model.maxpool = nn.Identity()
    return 4


def _densenet_stem(model: nn.Module) -> int:
    conv0 = model.features.conv0
    if conv0.kernel_size == (3, 3):
        _set_stride_one(conv0)
    else:
        model.features.conv0 = _new_stem_conv(conv0, conv0.in_channels)
    model.features.pool0 = nn.Identity()
    return 4


def _efficientnet_stem(model: nn.Module) -> int:
    _set_stride_one(model.conv_stem)
    return 2


def _regnet_stem(model: nn.Module) -> int:
    _set_stride_one(model.stem if isinstance(model.stem, nn.Conv2d) else model.stem.conv)
    return 2


def _stem_rules() -> list[tuple[type, Callable[[nn.Module], int]]]:
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.regnet import RegNet
    from timm.models.resnet import ResNet

    return [
        (ResNet, _resnet_stem),
        (DenseNet, _densenet_stem),
        (EfficientNet, _efficientnet_stem),
        (MobileNetV3, _efficientnet_stem),
        (RegNet, _regnet_stem),
    ]


def _scale_feature_info(model: nn.Module, factor: int) -> None:
    info = getattr(model, "feature_info", None)
    if isinstance(info, list):
        for entry in info:
            if isinstance(entry, dict) and "reduction" in entry:
                entry["reduction"] = max(1, entry["reduction"] // factor)


def to_cifar_stem(model: nn.Module, name: str = "") -> nn.Module:
    """Remove the stem downsampling of a timm model in place (see module docstring); return it."""
    for cls, rule in _stem_rules():
        if isinstance(model, cls):
            _scale_feature_info(model, rule(model))
            return model
    raise ValueError(
        f"model.cifar_stem=true is only supported for {'; '.join(CIFAR_STEM_FAMILIES)}, "
        f"got {name or type(model).__name__} ({type(model).__name__}); set model.cifar_stem: false"
    )


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model with downloads blocked; timm's errors turned into one-line ValueErrors."""
    with _downloads_blocked() as download_errors:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except download_errors as err:
            raise ValueError(
                f"model.pretrained=true needs local weights for {name!r}, none found and downloads are "
                f"disabled ({type(err).__name__}); put them in the Hugging Face / torch hub cache or pass "
                f"pretrained_cfg_overlay={{'file': path}}"
            ) from err
        except RuntimeError as err:
            if str(err).startswith("Unknown model"):
                raise ValueError(f"model.backbone must be a timm model name, got {name!r}") from err
            raise
        except TypeError as err:
            if "drop_path_rate" in str(err):
                raise ValueError(
                    f"model.drop_path_rate must be 0 for {name!r} (timm has no stochastic depth for it), "
                    f"got {kwargs['drop_path_rate']}"
                ) from err
            raise


def create_model(
    name: str,
    num_classes: int,
    cifar_stem: bool = True,
    norm: str = "batch",
    norm_groups: int = 32,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    norm_strict: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` with a ``num_classes`` head for (B, 3, H, W) -> (B, num_classes) logits.

    cifar_stem: remove the stem's 4x downsampling (see ``to_cifar_stem``).
    norm / norm_groups / norm_strict: BatchNorm swap, see ``models.norms.swap_norm`` (norm_strict: raise
    when norm_groups does not divide a layer's channels instead of using the largest divisor).
    drop_rate: dropout before the classifier; drop_path_rate: stochastic depth of the last block
    (timm spreads it linearly over depth). Both must be in [0, 1).
    pretrained: load weights timm finds locally; never downloads.
    timm_kwargs: passed to ``timm.create_model`` (e.g. ``in_chans``, ``pretrained_cfg_overlay``).
    """
    _check_args(num_classes, norm, norm_groups, drop_rate, drop_path_rate)
    kwargs = dict(timm_kwargs, num_classes=num_classes, drop_rate=float(drop_rate))
    if drop_path_rate > 0:  # not every timm model takes the argument (DenseNet does not)
        kwargs["drop_path_rate"] = float(drop_path_rate)
    model = _create_timm(name, pretrained, kwargs)
    if cifar_stem:
        to_cifar_stem(model, name)
    return swap_norm(model, norm, norm_groups, strict=norm_strict)
