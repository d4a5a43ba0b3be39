"""Swap the BatchNorm layers of any CNN for group, layer or instance normalization.

The swap replaces modules after the model is built, so it works on every timm architecture,
including timm's fused norm + activation layers (``BatchNormAct2d``: their ``act`` and ``drop``
submodules are moved into the replacement). All three kinds are ``nn.GroupNorm`` with a
different group count, each normalizing per sample with a per-channel affine:

- ``group``: ``groups`` groups of channels (Wu & He, 2018, "Group Normalization").
- ``layer``: 1 group, i.e. statistics over (C, H, W) of each sample (Ba et al., 2016).
- ``instance``: C groups, i.e. statistics over (H, W) of each sample and channel
  (Ulyanov et al., 2016). Not ``nn.InstanceNorm2d``: that one has no affine and may track
  running statistics by default, and a GroupNorm keeps one module type (state-dict keys
  ``weight``/``bias`` like the BatchNorm it replaces) for all three kinds.

Channels not divisible by ``groups`` (kind ``group`` only): the largest divisor of C that is
``<= groups`` is used (24 channels with groups=32 -> 24 groups, 40 with 32 -> 20), or a
``ValueError`` is raised with ``strict=True``. Affine weight/bias are copied from the BatchNorm,
so pretrained scales survive; running statistics are dropped (GroupNorm has none).
Only BatchNorm layers (``nn.modules.batchnorm._BatchNorm`` and subclasses) are replaced; other
norms a model already has (LayerNorm, GroupNorm, frozen BN) are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NORM_KINDS", "GroupNormAct", "swap_norm", "num_norm_groups"]

NORM_KINDS = ("batch", "group", "layer", "instance")


class GroupNormAct(nn.GroupNorm):
    """GroupNorm followed by the dropout/drop-path and activation of a fused timm norm-act layer.

    x: (B, C, *) -> (B, C, *). Submodule names ``drop`` and ``act`` match timm's BatchNormAct2d.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        act: nn.Module | None = None,
        drop: nn.Module | None = None,
    ) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self.act(self.drop(x))


def _largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest d with d | n and d <= limit (>= 1)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def num_norm_groups(kind: str, channels: int, groups: int = 32, strict: bool = False, where: str = "") -> int:
    """Number of GroupNorm groups that ``kind`` uses for ``channels`` channels."""
    if kind == "layer":
        return 1
    if kind == "instance":
        return channels
    if channels % groups == 0:
        return groups
    if strict:
        raise ValueError(
            f"model.norm_groups={groups} does not divide channels={channels} in {where or '<model>'}; "
            "pick a divisor of every norm layer's channels or use strict=False"
        )
    return _largest_divisor_at_most(channels, groups)


def _check_kind(kind: str, groups: int) -> None:
    if kind not in NORM_KINDS:
        raise ValueError(f"model.norm must be one of {', '.join(NORM_KINDS)}, got {kind!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"model.norm_groups must be an int >= 1, got {groups!r}")


def _replacement(
    bn: nn.modules.batchnorm._BatchNorm, kind: str, groups: int, strict: bool, where: str
) -> GroupNormAct | nn.GroupNorm:
    """GroupNorm (or GroupNormAct for fused layers) with the BN's channels, eps, affine, device, dtype."""
    channels = bn.num_features
    n_groups = num_norm_groups(kind, channels, groups, strict, where)
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    fused = isinstance(act, nn.Module) or isinstance(drop, nn.Module)
    if fused:
        new = GroupNormAct(n_groups, channels, eps=bn.eps, affine=bn.affine, act=act, drop=drop)
    else:
        new = nn.GroupNorm(n_groups, channels, eps=bn.eps, affine=bn.affine)
    ref = bn.weight if bn.affine else bn.running_mean
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    if bn.affine:
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
        new.weight.requires_grad_(bn.weight.requires_grad)
        new.bias.requires_grad_(bn.bias.requires_grad)
    new.train(bn.training)
    return new


def swap_norm(model: nn.Module, kind: str, groups: int = 32, strict: bool = False) -> nn.Module:
    """Replace every BatchNorm in ``model`` (in place) by group / layer / instance norm; return the model.

    kind: "batch" (no-op), "group" (``groups`` groups), "layer" (1 group), "instance" (C groups).
    strict: raise ValueError when ``groups`` does not divide a layer's channels (kind "group").
    A BatchNorm shared by several parents is replaced by one shared module. If ``model`` is itself
    a BatchNorm, the replacement is returned.
    """
    _check_kind(kind, groups)
    if kind == "batch":
        return model
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        return _replacement(model, kind, groups, strict, "<root>")
    done: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm):
                continue
            where = f"{name}.{child_name}" if name else child_name
            if id(child) not in done:
                done[id(child)] = _replacement(child, kind, groups, strict, where)
            setattr(module, child_name, done[id(child)])
    return model
