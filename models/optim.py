"""Optimizers, weight-decay parameter groups and per-iteration learning-rate schedules.

Every schedule is one `LambdaLR` driven by a pure function of the optimizer step (`lr_multiplier`),
stepped once per iteration: an optional linear warmup (in epochs, converted to steps), then the
shape (constant, cosine, one-cycle, step, multistep). Weight decay skips biases, normalization
parameters and other 1-d tensors by default (they only rescale activations, decaying them just
fights the norm layers; Goyal et al. 2017, "Accurate, Large Minibatch SGD").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from augment.checks import CheckError, check_bool, check_real, field_prefix, is_real, require
from models.sam import SAM

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "SAMConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "norm_module_types",
    "param_groups",
    "build_optimizer",
    "optimizer_class",
    "lr_multiplier",
    "build_scheduler",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw")
SCHEDULERS = ("cosine", "onecycle", "step", "multistep", "none")
ANNEALS = ("linear", "cosine")


@dataclass
class SAMConfig:
    """SAM / ASAM around the optimizer (YAML: `model.optimizer.sam`, null = off; see `models.sam`).

    rho: neighbourhood radius (> 0). adaptive: ASAM, radius relative to |w| + eta (eta >= 0).
    Checked by OptimizerConfig (a failing check inside an optional dataclass would reach the
    command line as an anonymous union error).
    """

    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01


def _sam_config(value: Any) -> SAMConfig | None:
    """None, a SAMConfig or a mapping of its fields (YAML, checkpoint hparams) -> a checked SAMConfig | None."""
    if value is None:
        return None
    if not isinstance(value, SAMConfig):
        require(isinstance(value, Mapping), "optimizer.sam", "null or a mapping of rho, adaptive, eta", value)
        unknown = sorted(set(value) - {f.name for f in fields(SAMConfig)})
        require(not unknown, "optimizer.sam", "a mapping of rho, adaptive, eta", dict(value))
        value = SAMConfig(**value)
    with field_prefix("optimizer.sam"):
        return SAMConfig(
            rho=check_real("rho", value.rho, 0.0, low_open=True),
            adaptive=check_bool("adaptive", value.adaptive),
            eta=check_real("eta", value.eta, 0.0),
        )


@dataclass
class OptimizerConfig:
    """Optimizer choice and hyperparameters (YAML: `model.optimizer.*`).

    name: sgd (plain SGD, momentum 0), momentum (SGD with momentum), nesterov (SGD, Nesterov momentum),
    adagrad, adadelta, rmsprop (uses `momentum` and `alpha`), adam (L2 weight decay),
    adamw (decoupled weight decay). `exclude_norm_and_bias`: no weight decay on biases, norm
    parameters and 1-d tensors. `sam`: wrap the optimizer in SAM / ASAM (`SAMConfig`); None = off.
    """

    name: str = "nesterov"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    exclude_norm_and_bias: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    alpha: float = 0.99
    rho: float = 0.9
    sam: SAMConfig | None = None

    def __post_init__(self) -> None:
        self.sam = _sam_config(self.sam)
        if self.name not in OPTIMIZERS:
            raise CheckError("optimizer.name", "one of " + ", ".join(OPTIMIZERS), self.name)
        check_real("optimizer.lr", self.lr, low=0.0, low_open=True)
        check_real("optimizer.weight_decay", self.weight_decay, low=0.0)
        check_real("optimizer.momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.name == "nesterov" and self.momentum == 0:
            raise CheckError("optimizer.momentum", "> 0 for nesterov", self.momentum)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise CheckError("optimizer.betas", "two numbers in [0, 1)", self.betas)
        for i, beta in enumerate(self.betas):
            check_real(f"optimizer.betas[{i}]", beta, 0.0, 1.0, high_open=True)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_real("optimizer.eps", self.eps, low=0.0, low_open=True)
        check_real("optimizer.alpha", self.alpha, 0.0, 1.0, high_open=True)
        check_real("optimizer.rho", self.rho, 0.0, 1.0)
        if not isinstance(self.exclude_norm_and_bias, bool):
            raise CheckError("optimizer.exclude_norm_and_bias", "true or false", self.exclude_norm_and_bias)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped every iteration (YAML: `model.scheduler.*`).

    The lr is `optimizer.lr * lr_multiplier(step)`. `warmup_epochs`: linear rise from 0 to 1 over
    that many epochs (converted to steps), then the shape over the remaining steps:
    none (1), cosine (1 -> min_lr_ratio), onecycle (linear `start_ratio` -> 1 at `pct_start` of the
    post-warmup steps, then `anneal` linear or cosine down to min_lr_ratio; airbench style),
    step (x gamma every `step_size` epochs), multistep (x gamma at each epoch in `milestones`).
    step / multistep count epochs from the start of training and never go below min_lr_ratio.
    """

    name: str = "onecycle"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    step_size: int = 30
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    pct_start: float = 0.25
    start_ratio: float = 0.0
    anneal: str = "linear"

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise CheckError("scheduler.name", "one of " + ", ".join(SCHEDULERS), self.name)
        check_real("scheduler.warmup_epochs", self.warmup_epochs, low=0.0)
        check_real("scheduler.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        if isinstance(self.step_size, bool) or not isinstance(self.step_size, int) or self.step_size < 1:
            raise CheckError("scheduler.step_size", "an int >= 1", self.step_size)
        milestones = list(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in milestones) or milestones != sorted(
            set(milestones)
        ):
            raise CheckError("scheduler.milestones", "increasing ints >= 0", self.milestones)
        self.milestones = milestones
        check_real("scheduler.gamma", self.gamma, 0.0, 1.0, low_open=True)
        check_real("scheduler.pct_start", self.pct_start, 0.0, 1.0, low_open=True, high_open=True)
        check_real("scheduler.start_ratio", self.start_ratio, 0.0, 1.0)
        if self.anneal not in ANNEALS:
            raise CheckError("scheduler.anneal", "one of " + ", ".join(ANNEALS), self.anneal)


def norm_module_types() -> tuple[type, ...]:
    """Module classes whose parameters count as normalization parameters (torch and timm)."""
    types: list[type] = [nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm]
    if hasattr(nn, "RMSNorm"):
        types.append(nn.RMSNorm)
    try:
        from timm.layers import norm as timm_norm
        from timm.layers import norm_act as timm_norm_act
    except ImportError:  # timm is a dependency; keep the torch types if its layout changes
        return tuple(types)
    for module in (timm_norm, timm_norm_act):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, nn.Module) and "Norm" in name:
                types.append(obj)
    return tuple(types)


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names the model itself asks to exclude from weight decay (timm's `no_weight_decay()` convention)."""
    hook = getattr(model, "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def param_groups(
    model: nn.Module, weight_decay: float, exclude_norm_and_bias: bool = True
) -> list[dict[str, Any]]:
    """Split trainable parameters into `{"name": "decay" | "no_decay", "params", "weight_decay"}` groups.

    no_decay: biases, every parameter of a normalization module, 1-d tensors and names listed by
    `model.no_weight_decay()`; decay: the rest (conv / linear weights). With `exclude_norm_and_bias`
    False one "decay" group holds everything. Frozen parameters are left out; empty groups dropped.
    """
    check_real("optimizer.weight_decay", weight_decay, low=0.0)
    norm_types = norm_module_types()
    skip_names = _no_weight_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        in_norm = isinstance(module, norm_types)
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            excluded = in_norm or param.ndim <= 1 or param_name.endswith("bias") or full_name in skip_names
            (no_decay if exclude_norm_and_bias and excluded else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    params_or_groups: Iterable[nn.Parameter] | Iterable[dict[str, Any]], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name`, wrapped in `SAM` when `cfg.sam` is set; groups keep their own
    `weight_decay`, bare params get cfg's."""
    base = _base_optimizer(list(params_or_groups), cfg)
    if cfg.sam is None:
        return base
    return SAM(base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, eta=cfg.sam.eta)


OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch optimizer class behind an `optimizer.name` (sgd, momentum and nesterov share SGD)."""
    return OPTIMIZER_CLASSES[name]


def _base_optimizer(params: list[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("optimizer got no trainable parameters")
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    name = cfg.name
    if name in ("sgd", "momentum", "nesterov"):
        momentum = 0.0 if name == "sgd" else cfg.momentum
        return torch.optim.SGD(params, momentum=momentum, nesterov=name == "nesterov", **common)
    if name == "adagrad":
        return torch.optim.Adagrad(params, eps=cfg.eps, **common)
    if name == "adadelta":
        return torch.optim.Adadelta(params, rho=cfg.rho, eps=cfg.eps, **common)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, **common)
    if name == "adam":
        return torch.optim.Adam(params, betas=cfg.betas, eps=cfg.eps, **common)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=cfg.betas, eps=cfg.eps, **common)
    raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def _warmup_steps(cfg: SchedulerConfig, steps_per_epoch: float) -> int:
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def _anneal(progress: float, low: float, kind: str) -> float:
    """1 -> low as progress goes 0 -> 1, linearly or along a half cosine."""
    if kind == "cosine":
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - low) * progress


def lr_multiplier(step: int, cfg: SchedulerConfig, total_steps: int, steps_per_epoch: float) -> float:
    """Factor on the base lr for 0-based optimizer step `step` (a pure function; see SchedulerConfig)."""
    warmup = _warmup_steps(cfg, steps_per_epoch)
    if step < warmup:
        return step / warmup
    low = cfg.min_lr_ratio
    if cfg.name == "none":
        return 1.0
    if cfg.name == "step":
        epoch = math.floor(step / steps_per_epoch)
        return max(cfg.gamma ** (epoch // cfg.step_size), low)
    if cfg.name == "multistep":
        epoch = math.floor(step / steps_per_epoch)
        return max(cfg.gamma ** sum(epoch >= m for m in cfg.milestones), low)
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    if cfg.name == "cosine":
        return _anneal(progress, low, "cosine")
    # onecycle
    if progress < cfg.pct_start:
        return cfg.start_ratio + (1.0 - cfg.start_ratio) * progress / cfg.pct_start
    return _anneal((progress - cfg.pct_start) / (1.0 - cfg.pct_start), low, cfg.anneal)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int | float, steps_per_epoch: float
) -> LambdaLR:
    """One per-iteration LambdaLR over `lr_multiplier`; cosine / onecycle need a finite `total_steps`."""
    if not (is_real(steps_per_epoch) and math.isfinite(steps_per_epoch) and steps_per_epoch > 0):
        raise ValueError(f"steps_per_epoch must be a finite number > 0, got {steps_per_epoch!r}")
    if cfg.name in ("cosine", "onecycle"):
        if not (is_real(total_steps) and math.isfinite(total_steps) and total_steps >= 1):
            raise ValueError(
                f"scheduler.name={cfg.name} needs a finite number of steps (set trainer.max_epochs or "
                f"trainer.max_steps), got total_steps={total_steps!r}"
            )
        total_steps = int(total_steps)

    def multiplier(step: int) -> float:  # a plain function: LambdaLR leaves it out of its state_dict
        return lr_multiplier(step, cfg, total_steps, steps_per_epoch)

    return LambdaLR(optimizer, multiplier)
