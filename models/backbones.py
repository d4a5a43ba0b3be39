"""timm backbones for the data's image size: CIFAR adaptation, norm swap, dropout and stochastic depth.

``create_model`` builds any timm model offline and adapts it to ``image_size`` inputs (default 32x32) by
``cifar_stem`` (``models.cifar_adapt``): ``auto`` keeps the final map between 4x4 and 8x8: at 32 px it
gives the ResNet family and DenseNet a 3x3 stride-1 stem without max-pool and takes every other CNN from
total stride 32 to 8 by removing its earliest strides (stride 16 from 64 px, unchanged from 128 px), and
builds patch models (ViT, DeiT, ...) for the image size with about 8x8 patches; ``none`` keeps the
ImageNet model. A
replaced stem conv is freshly initialized; a stride change keeps pretrained weights; timm resamples a
pretrained patch embedding. Models the rule cannot adapt raise a one-line ``ValueError``.

Weights are never downloaded: ``pretrained=True`` only works with weights timm finds locally
(Hugging Face cache, torch hub cache, or ``pretrained_cfg_overlay=dict(file=path)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import timm
import torch.hub
from torch import nn

from augment.checks import check_choice, check_int, check_real
from models.cifar_adapt import (
    CIFAR_STEMS,
    CifarAdaptation,
    adapt_to_cifar,
    as_image_size,
    plan_cifar_stem,
    resolve_cifar_stem,
)
from models.norms import NORM_KINDS, swap_norm

__all__ = ["CIFAR_STEMS", "CifarAdaptation", "create_model", "to_cifar_stem", "has_batch_norm"]


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


def _check_args(num_classes: int, norm: str, norm_groups: int, drop_rate: float, drop_path_rate: float) -> None:
    check_int("model.num_classes", num_classes, low=1)
    check_choice("model.norm", norm, NORM_KINDS)
    check_int("model.norm_groups", norm_groups, low=1)
    check_real("model.drop_rate", drop_rate, 0, 1, high_open=True)
    check_real("model.drop_path_rate", drop_path_rate, 0, 1, high_open=True)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (what ``norm`` other than "batch" swaps)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def to_cifar_stem(model: nn.Module, name: str = "", stem: str = "auto") -> nn.Module:
    """Adapt a built timm CNN in place by ``stem`` (see ``models.cifar_adapt``); return it.

    The result is recorded as ``model.cifar_adaptation`` (a ``CifarAdaptation``).
    """
    model.cifar_adaptation = adapt_to_cifar(model, name or type(model).__name__, stem)
    return model


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


def _build(name: str, pretrained: bool, kwargs: dict[str, Any], label: str, build: dict[str, Any]) -> nn.Module:
    """The timm model with the kwargs ``stem`` needs at build time; a patch build timm refuses is a ValueError."""
    if not build:
        return _create_timm(name, pretrained, kwargs)
    try:
        return _create_timm(name, pretrained, {**kwargs, **build})
    except (TypeError, AssertionError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        h, w = build["img_size"]
        raise ValueError(
            f"model.cifar_stem={label} cannot build {name!r} for {h}x{w} inputs "
            f"with {build['patch_size']}x{build['patch_size']} patches: {first}"
        ) from None


def create_model(
    name: str,
    num_classes: int,
    cifar_stem: bool | str = "auto",
    norm: str = "batch",
    norm_groups: int = 32,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    norm_strict: bool = False,
    image_size: int | tuple[int, int] | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` with a ``num_classes`` head for (B, 3, H, W) -> (B, num_classes) logits.

    image_size: (H, W) or an int the model is adapted to (default 32x32).

    cifar_stem: one of ``CIFAR_STEMS`` (``auto``, ``none``, ``stem3x3``, ``stride4/8/16``, ``patch2/4/8``;
    ``True`` / ``False`` mean ``auto`` / ``none``), see ``models.cifar_adapt``. What was done is
    recorded as ``model.cifar_adaptation`` (a ``CifarAdaptation``; ``str()`` describes it).
    norm / norm_groups / norm_strict: BatchNorm swap, see ``models.norms.swap_norm`` (norm_strict: raise
    when norm_groups does not divide a layer's channels instead of using the largest divisor); a norm
    other than "batch" on a model without BatchNorm (ViT, ConvNeXt) is a ValueError.
    drop_rate: dropout before the classifier; drop_path_rate: stochastic depth of the last block
    (timm spreads it linearly over depth). Both must be in [0, 1).
    pretrained: load weights timm finds locally; never downloads.
    timm_kwargs: passed to ``timm.create_model`` (e.g. ``in_chans``, ``pretrained_cfg_overlay``).
    """
    _check_args(num_classes, norm, norm_groups, drop_rate, drop_path_rate)
    size = as_image_size(image_size)
    stem, build = plan_cifar_stem(name, cifar_stem, size)
    requested = resolve_cifar_stem(cifar_stem)
    label = requested if requested == stem else f"{requested} ({stem})"
    kwargs = dict(timm_kwargs, num_classes=num_classes, drop_rate=float(drop_rate))
    if drop_path_rate > 0:  # not every timm model takes the argument (DenseNet does not)
        kwargs["drop_path_rate"] = float(drop_path_rate)
    model = _build(name, pretrained, kwargs, label, build)
    adaptation = adapt_to_cifar(model, name, stem, size=size, label=label)
    if norm != "batch" and not has_batch_norm(model):
        raise ValueError(
            f"model.norm={norm} needs BatchNorm layers to swap, {name!r} ({type(model).__name__}) has none; "
            "use model.norm: batch (the model keeps its own norms)"
        )
    model = swap_norm(model, norm, norm_groups, strict=norm_strict)
    model.cifar_adaptation = adaptation
    return model
