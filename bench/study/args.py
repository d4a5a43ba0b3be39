"""One run of a study: its merged overrides, its `models.run.cli.run` argument list, log directory and CSV key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from augment.checks import is_int, require
from bench.study.spec import Study, Variant

__all__ = ["LOGGER_CLASS", "cli_value", "merged_overrides", "run_dir", "build_args", "run_key"]

LOGGER_CLASS = "pytorch_lightning.loggers.TensorBoardLogger"


def cli_value(value: Any) -> str:
    """A CLI string jsonargparse reads back as `value` (floats always carry a '.' so YAML sees floats)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(value)


def merged_overrides(
    study: Study, variant: Variant, scale: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Dotted-key overrides of one run in precedence order (the later update wins)."""
    study.check_scale(scale)
    merged: dict[str, Any] = {}
    for part in (study.overrides, study.scales[scale], variant.overrides, variant.scales.get(scale, {})):
        merged.update({k: v for k, v in part.items() if k != "configs"})
    if study.linear_lr is not None:
        base_lr, base_batch = study.linear_lr
        batch = merged.get("data.batch_size")
        rule = f"set in the overrides of variant {variant.name} for linear_lr"
        require(is_int(batch), "data.batch_size", rule, batch)
        merged["model.optimizer.lr"] = base_lr * batch / base_batch
    merged.update(extra or {})
    return merged


def run_dir(out_dir: Path, study: Study, variant: Variant, scale: str, seed: int, tag: str = "") -> Path:
    """Logger directory of one run: `<out>/<study>/<variant>/<scale>[_tag]_seed<k>`."""
    return Path(out_dir) / study.name / variant.name / f"{scale}{'_' + tag if tag else ''}_seed{seed}"


def build_args(
    study: Study, variant: Variant, scale: str, seed: int, log_dir: Path, extra: Mapping[str, Any] | None = None
) -> list[str]:
    """The `models.run.cli.run` argument list of one run, logging into `log_dir`."""
    overrides = {**merged_overrides(study, variant, scale, extra), **{k: seed for k in variant.seed_keys}}
    args: list[str] = []
    scale_configs = (*study.scales[scale].get("configs", ()), *variant.scales.get(scale, {}).get("configs", ()))
    for cfg in (*study.base, *variant.configs, *scale_configs):
        args += ["--config", str(cfg)]
    for key, value in overrides.items():
        args += [f"--{key}", cli_value(value)]
    logger = {
        "class_path": LOGGER_CLASS,
        "init_args": {
            "save_dir": str(log_dir.parent.parent),
            "name": log_dir.parent.name,
            "version": log_dir.name,
            "default_hp_metric": False,
        },
    }
    args += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(log_dir)]
    args += ["--trainer.logger", json.dumps(logger)]
    args += ["--overwrite", "true"]  # a run the ledger does not hold as ok (failed, interrupted) is redone whole
    return args


def run_key(variant: str, seed: int | str, scale: str, lr: float | str | None = None) -> tuple[str, ...]:
    """Identity of a run in the CSVs (resume skips keys already recorded with status ok)."""
    key = (str(variant), str(int(seed)), str(scale))
    return key if lr is None else (*key, cli_value(float(lr)))
