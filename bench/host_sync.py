"""Host-sync profiler: tensor-to-host reads by call site, an epoch window for Lightning, and the profile tables.

On an accelerator every `.item()`, `.cpu()`, `bool(t)`, ... waits for the device; `HostSyncAudit` counts
them by the file:line that made them, so a training loop's per-step syncs can be found and compared with
a hand-written anchor loop (`bench.train_speed --profile`, see docs/performance.md).
"""

from __future__ import annotations

import collections
import re
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostSyncAudit", "epoch_window", "profile_tables"]

_REPO = Path(__file__).resolve().parents[1]
# Calls that copy a tensor's value to the host: on an accelerator each one waits for the device.
_SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero")


class HostSyncAudit(TorchFunctionMode):
    """Count tensor-to-host reads (`.item()`, `.cpu()`, `bool(t)`, ...) by call site (file:line outside torch).

    Explicit reads are counted on any device (on a GPU each one waits for the device); `.to("cpu")` only
    when the tensor is off the host (on a CPU run `.to(device)` cannot be told apart from a host copy).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if args and isinstance(args[0], torch.Tensor):
            off_host = args[0].device.type != "cpu"
            to_host = name == "to" and off_host and any(_is_cpu(a) for a in (*args[1:], *kwargs.values()))
            if name in _SYNC_METHODS or to_host:
                self.sites[(_call_site(), name)] += 1
        return func(*args, **kwargs)


def _is_cpu(value: Any) -> bool:
    return (isinstance(value, torch.device) and value.type == "cpu") or value == "cpu"


def _call_site() -> str:
    """file:line of the innermost frame outside torch itself, relative to the repo or site-packages."""
    for frame in reversed(traceback.extract_stack()[:-2]):  # drop _call_site and __torch_function__
        path = frame.filename.replace("\\", "/")
        if re.search(r"/(site|dist)-packages/torch/", path):
            continue
        if path.startswith(f"{_REPO}/"):
            return f"{path[len(str(_REPO)) + 1:]}:{frame.lineno}"
        return f"{re.split(r'/(?:site|dist)-packages/', path)[-1]}:{frame.lineno}"
    return "?"


def epoch_window(enter: Callable[[], Any], exit_: Callable[[], Any]) -> Any:
    """A Lightning callback that calls `enter()` at the start of epoch 1 and `exit_()` when epoch 1 ends.

    Its `steps` counts the training steps inside the window.
    """
    import pytorch_lightning as pl

    class EpochWindow(pl.Callback):
        def __init__(self) -> None:
            self.open = False
            self.steps = 0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                enter()
                self.open = True
            elif self.open:
                self.close()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            self.steps += int(self.open)

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if self.open:
                self.close()

        def close(self) -> None:
            self.open = False
            exit_()

    return EpochWindow()


def profile_tables(
    plain_ops: Mapping[str, int],
    light_ops: Mapping[str, int],
    steps: int,
    light_steps: int,
    audits: Mapping[str, HostSyncAudit],
) -> str:
    """Markdown: the ops per step Lightning runs beyond the plain loop (largest excess first, top 20, then
    all ops), and each loop's tensor-to-host call sites in the epoch (top 20)."""
    keys = sorted(set(plain_ops) | set(light_ops), key=lambda k: plain_ops.get(k, 0) - light_ops.get(k, 0))
    lines = [f"### torch ops in one epoch ({steps} steps; Lightning: {light_steps} steps), largest excess first", "",
             "| op | plain / step | lightning / step | extra / step |", "| --- | --- | --- | --- |"]
    for key in [k for k in keys if light_ops.get(k, 0) > plain_ops.get(k, 0)][:20]:
        a, b = plain_ops.get(key, 0) / steps, light_ops.get(key, 0) / max(light_steps, 1)
        lines.append(f"| {key} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    a, b = sum(plain_ops.values()) / steps, sum(light_ops.values()) / max(light_steps, 1)
    lines.append(f"| (all ops) | {a:.0f} | {b:.0f} | {b - a:+.0f} |")
    lines += ["", "### tensor-to-host calls in one epoch (each one a device sync on a GPU)", "",
              "| loop | call site | call | per epoch |", "| --- | --- | --- | --- |"]
    for loop_name, audit in audits.items():
        for (site, name), count in audit.sites.most_common(20):
            lines.append(f"| {loop_name} | {site} | {name} | {count} |")
        if not audit.sites:
            lines.append(f"| {loop_name} | (none) | | 0 |")
    return "\n".join(lines)
