"""Where a run writes: a logger whose `save_dir` is "" (the CLI's default) or null writes under
`trainer.default_root_dir`.

The configs leave the logger's `save_dir` unset, so `--trainer.default_root_dir DIR` moves the whole
run (TensorBoard events, `config.yaml`, checkpoints) under `DIR/<logger name>/version_<n>/`; an
explicit `--trainer.logger.init_args.save_dir` still wins.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

__all__ = ["logs_under_root_dir", "tensorboard_command"]


def _loggers(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] if value is not None and not isinstance(value, bool) else []


def logs_under_root_dir(config: Any) -> None:
    """Set `save_dir` of every configured logger that has it "" or null to `trainer.default_root_dir` (or ".").

    `config`: the parsed LightningCLI config (jsonargparse Namespace) before instantiation; changed in place.
    """
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if trainer is None:
        return
    root = trainer.get("default_root_dir") or "."
    for logger in _loggers(trainer.get("logger")):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") in (None, ""):
            init_args["save_dir"] = str(root)


def tensorboard_command(log_dir: str | Path) -> str:
    """The shell command that shows `log_dir` in TensorBoard."""
    return f"tensorboard --logdir {shlex.quote(str(log_dir))}"
