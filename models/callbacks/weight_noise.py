"""Weight noise: gradients taken at randomly perturbed weights, updates applied to the clean ones.

Each optimizer step: on ``on_train_batch_start`` the selected weights are saved and Gaussian noise is
added; forward and backward run at the noisy point; on ``on_before_optimizer_step`` the saved
clean weights are copied back (bit-exact, not ``w + n - n``), so the optimizer updates the clean
weights with the noisy-point gradient (Graves, 2011, "Practical Variational Inference for Neural
Networks"; An, 1996, "The effects of adding noise during backpropagation training").

With gradient accumulation one noise sample serves all micro-batches of a step (noise is only
added when the weights are clean), like one large batch. The clean weights are also restored on
validation start, epoch end, train end, exception, and in saved checkpoints, so validation, test,
prediction and checkpoints never see noise.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

__all__ = ["PARAM_FILTERS", "WeightNoise", "noise_params"]

PARAM_FILTERS = ("conv_linear", "all")


def noise_params(module: nn.Module, param_filter: str = "conv_linear") -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that get noise: trainable conv/linear weights, or all trainable parameters.

    "conv_linear": the ``weight`` of every nn.Conv1d/2d/3d (incl. transposed) and nn.Linear module;
    no biases, no norm parameters. "all": every parameter with requires_grad.
    """
    if param_filter not in PARAM_FILTERS:
        raise ValueError(f"weight_noise.param_filter must be one of {', '.join(PARAM_FILTERS)}, got {param_filter!r}")
    if param_filter == "all":
        return [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    selected = []
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            weight = sub.weight
            if isinstance(weight, nn.Parameter) and weight.requires_grad:
                selected.append((f"{name}.weight" if name else "weight", weight))
    return selected


class WeightNoise(pl.Callback):
    """Add N(0, std^2) noise to weights for each training forward/backward; step on the clean weights.

    std: noise standard deviation (absolute), or, with ``relative=True``, a factor on each tensor's
    RMS (noise std = std * sqrt(mean(w^2))). param_filter: "conv_linear" or "all" (see
    ``noise_params``). seed: seeds a torch.Generator per device; None uses the global RNG.
    """

    def __init__(
        self, std: float, relative: bool = False, param_filter: str = "conv_linear", seed: int | None = None
    ) -> None:
        super().__init__()
        if not (isinstance(std, (int, float)) and not isinstance(std, bool) and 0.0 <= std < float("inf")):
            raise ValueError(f"weight_noise.std must be a finite number >= 0, got {std!r}")
        if param_filter not in PARAM_FILTERS:
            raise ValueError(
                f"weight_noise.param_filter must be one of {', '.join(PARAM_FILTERS)}, got {param_filter!r}"
            )
        self.std = float(std)
        self.relative = relative
        self.param_filter = param_filter
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._params: list[tuple[str, nn.Parameter]] = []
        self._clean: list[torch.Tensor] = []
        self._noisy = False

    @property
    def is_noisy(self) -> bool:
        """True between adding noise and restoring the clean weights."""
        return self._noisy

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _noise_like(self, weight: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(
            weight.shape, generator=self._generator(weight.device), device=weight.device, dtype=weight.dtype
        )
        scale = self.std * weight.float().square().mean().sqrt().to(weight.dtype) if self.relative else self.std
        return noise.mul_(scale)

    @torch.no_grad()
    def add_noise(self, module: nn.Module) -> None:
        """Save the clean weights of ``module`` and add noise; no-op when already noisy or std == 0."""
        if self._noisy or self.std == 0.0:
            return
        self._params = noise_params(module, self.param_filter)
        if len(self._clean) != len(self._params) or any(c.shape != p.shape or c.device != p.device or c.dtype != p.dtype
                                                         for c, (_, p) in zip(self._clean, self._params)):
            self._clean = [torch.empty_like(p, memory_format=torch.preserve_format) for _, p in self._params]
        for clean, (_, p) in zip(self._clean, self._params):
            clean.copy_(p)
            p.add_(self._noise_like(p))
        self._noisy = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved clean weights back (bit-exact); no-op when not noisy."""
        if not self._noisy:
            return
        for clean, (_, p) in zip(self._clean, self._params):
            p.copy_(clean)
        self._noisy = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.add_noise(pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.restore()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Write clean weights into a checkpoint taken while noisy (e.g. mid gradient accumulation)."""
        if not self._noisy:
            return
        state = checkpoint.get("state_dict", {})
        for clean, (name, _) in zip(self._clean, self._params):
            if name in state:
                state[name] = clean.clone()
