"""Sharpness-Aware Minimization as a wrapper around any torch optimizer.

SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization")
minimizes the loss at the worst point of a ball of radius `rho` around the weights. One step:

1. `closure()` at w gives the gradient g (and the step's reported loss);
2. ascend to w + e(w), with e = rho * g / ||g||;
3. `closure()` again at w + e(w) gives the gradient the update uses;
4. restore w (a bit-exact copy, not w + e - e) and let the base optimizer step with that gradient.

ASAM (`adaptive=True`; Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks") measures the ball in weight-relative units:
T = |w| + eta element-wise, e = rho * T^2 g / ||T g||; the paper suggests a larger rho (e.g. 0.5).

The gradient norm is taken over all parameters with a gradient (one global norm). The wrapper
shares `param_groups` and `state` with the base optimizer, so learning-rate schedulers and weight
decay act on the base's groups; `state_dict()` is the base's plus a `"sam"` entry recording the
settings, and SAM keeps no state between steps. `second_pass` (a context-manager factory) wraps
the second closure call; `preserve_bn_stats(model)` there keeps BatchNorm running statistics
those of the first pass (the perturbed point must not leak into them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from augment.checks import check_bool, check_real, require

__all__ = ["SAM", "preserve_bn_stats", "sam_perturbation"]

_NORM_EPS = 1e-12  # keeps e finite when the gradient is exactly zero


@contextmanager
def preserve_bn_stats(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running mean, var and batch count on exit (bit-exact copies)."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
            for buffer in (sub.running_mean, sub.running_var, sub.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@torch.no_grad()
def sam_perturbation(
    params: list[torch.Tensor], grads: list[torch.Tensor], rho: float, adaptive: bool = False, eta: float = 0.01
) -> list[torch.Tensor]:
    """e(w) per tensor: rho * g / ||g|| (SAM) or rho * T^2 g / ||T g|| with T = |w| + eta (ASAM).

    ||.|| is one L2 norm over all tensors, computed in float32 or wider.
    """
    if not params:
        return []
    if adaptive:
        scales = torch._foreach_add(torch._foreach_abs(params), eta)
        scaled = torch._foreach_mul(grads, scales)  # T g
    else:
        scales, scaled = None, list(grads)
    norms = torch._foreach_norm(scaled)
    dtype = torch.promote_types(norms[0].dtype, torch.float32)
    norm = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]))
    factor = rho / (norm + _NORM_EPS)
    direction = torch._foreach_mul(scaled, scales) if scales is not None else [g.clone() for g in scaled]
    return [d.mul_(factor.to(d.dtype)) for d in direction]


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around `base`; `step(closure)` runs the closure twice (see module docstring).

    rho: radius of the neighbourhood (> 0). adaptive: ASAM's weight-relative radius. eta: ASAM's
    offset in T = |w| + eta (>= 0; keeps zero weights perturbable). second_pass: optional factory of a
    context manager entered around the second closure call (e.g. `lambda: preserve_bn_stats(model)`).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        second_pass: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        require(isinstance(base, torch.optim.Optimizer) and not isinstance(base, SAM), "base",
                "a torch.optim.Optimizer (not a SAM)", base)
        self.rho = check_real("rho", rho, 0.0, low_open=True)
        self.adaptive = check_bool("adaptive", adaptive)
        self.eta = check_real("eta", eta, 0.0)
        self.base_optimizer = base
        self.second_pass = second_pass
        super().__init__(base.param_groups, {})
        self._share_base()

    def _share_base(self) -> None:
        """Point groups, state and defaults at the base's objects (again after the base loads a state)."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step; returns the loss of the first closure call (at the unperturbed weights)."""
        require(callable(closure), "closure", "a callable that recomputes the loss and gradients (SAM runs it "
                "twice per step; 16-mixed precision's gradient scaler steps without one: use bf16-mixed)", closure)
        with torch.enable_grad():
            loss = closure()
        params = self._params_with_grad()
        grads = [p.grad for p in params]
        perturbation = sam_perturbation(params, grads, self.rho, self.adaptive, self.eta)
        clean = [p.clone() for p in params]
        if params:
            torch._foreach_add_(params, perturbation)
        del perturbation, grads
        try:
            with torch.enable_grad(), (self.second_pass() if self.second_pass is not None else nullcontext()):
                closure()
        finally:
            for p, w in zip(params, clean):
                p.copy_(w)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus `"sam": {rho, adaptive, eta}` (the settings, for the record)."""
        state = self.base_optimizer.state_dict()
        state["sam"] = {"rho": self.rho, "adaptive": self.adaptive, "eta": self.eta}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state; the `"sam"` entry is informational (this wrapper's settings stay)."""
        state = {k: v for k, v in state_dict.items() if k != "sam"}
        self.base_optimizer.load_state_dict(state)
        self._share_base()

    def __repr__(self) -> str:
        return f"SAM(rho={self.rho}, adaptive={self.adaptive}, eta={self.eta}, base={self.base_optimizer!r})"
