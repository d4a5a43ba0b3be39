"""`HparamsWithFinalMetrics`: the settings that apply to a run, with its final metrics, for TensorBoard's HPARAMS tab.

The record holds `model.*` and `data.*` hyperparameters without the ones the chosen settings never
read (`applicable_hparams`: e.g. `model.optimizer.betas` under SGD, `model.scheduler.milestones`
under one-cycle, Cutout's size with no holes), plus `seed`, `trainer.max_epochs`,
`trainer.precision` and `trainer.world_size`. Booleans read "true" / "false", an unset option (None)
reads "off".

The record is written when the fit (or a test-only run) starts, so a running or crashed run is in the
table too; its metrics are the run's own scalar tags (`test/acc`, `val_best/acc`, ...), filled in as
TensorBoard reads them, and the session's end (status) is written when the fit ends or fails.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summary

from models.callbacks._tensorboard import tensorboard_logger
from models.callbacks.speed import SPEED_GROUP

__all__ = [
    "HparamsWithFinalMetrics",
    "applicable_hparams",
    "flatten_hparams",
    "readable_hparams",
    "METRICS",
    "PRIMARY_HPARAMS",
    "OPTIMIZER_FIELDS_FOR",
    "SCHEDULER_FIELDS_FOR",
]

_SIMPLE = (bool, int, float, str)
OFF = "off"  # how an unset option (None: no SAM, no policy, no clamp) reads in the table

# The HPARAMS metrics: scalar tags of the run itself (no copies under another name). TensorBoard
# shows the first five as columns.
METRICS = ("val_best/acc", "test/acc", "test/acc5", "test/loss", f"{SPEED_GROUP}/fit_time_s", "val_best/epoch")
# The settings the table shows first, as its five ticked columns (TensorBoard ticks at most five:
# the ones marked `differs` in the experiment record, in name order); the others follow by name.
PRIMARY_HPARAMS = ("data.batch_size", "model.backbone", "model.optimizer.lr", "model.optimizer.name",
                   "model.scheduler.name")

# OptimizerConfig fields read only by some optimizers (models.optim.build_optimizer); the others
# (lr, weight_decay, exclude_norm_and_bias, sam) apply to every optimizer.
OPTIMIZER_FIELDS_FOR: dict[str, tuple[str, ...]] = {
    "momentum": ("momentum", "nesterov", "rmsprop"),
    "betas": ("adam", "adamw"),
    "eps": ("adagrad", "adadelta", "rmsprop", "adam", "adamw"),
    "alpha": ("rmsprop",),
    "rho": ("adadelta",),
}
# SchedulerConfig fields read only by some schedules (models.optim.lr_multiplier); warmup_epochs applies to all.
SCHEDULER_FIELDS_FOR: dict[str, tuple[str, ...]] = {
    "min_lr_ratio": ("cosine", "onecycle", "step", "multistep"),
    "step_size": ("step",),
    "milestones": ("multistep",),
    "gamma": ("step", "multistep"),
    "pct_start": ("onecycle",),
    "start_ratio": ("onecycle",),
    "anneal": ("onecycle",),
}
# Where the data come from, not what the run is: never in the record.
_NOT_HYPERPARAMETERS = ("data.root", "data.download", "data.channels_last")


def flatten_hparams(tree: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Flatten nested hyperparameters to `{"a.b.c": simple}` for TensorBoard's HPARAMS tab.

    Mappings, Namespaces and dataclass instances nest with "."; keys starting with "_" are skipped;
    None (an option left unset) becomes "off"; lists/tuples of simple values become their str; anything else (tensors,
    modules, callables) is dropped.
    """
    if isinstance(tree, Namespace):
        tree = vars(tree)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        tree = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    if isinstance(tree, Mapping):
        flat: dict[str, bool | int | float | str] = {}
        for key, value in tree.items():
            if str(key).startswith("_"):
                continue  # LightningCLI's `_instantiator`, `_class_path`: bookkeeping, not hyperparameters
            flat.update(flatten_hparams(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if tree is None:
        return {prefix: OFF}
    if isinstance(tree, _SIMPLE):
        return {prefix: tree}
    if isinstance(tree, (list, tuple)) and all(isinstance(v, _SIMPLE) or v is None for v in tree):
        return {prefix: str(list(tree))}
    return {}


def _positive(flat: Mapping[str, Any], key: str) -> bool:
    value = flat.get(key)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _rules() -> list[tuple[str, Callable[[Mapping[str, Any]], bool]]]:
    """(key or key prefix ending in ".", applies(flat)) pairs; keys matching no rule always apply."""
    rules: list[tuple[str, Callable[[Mapping[str, Any]], bool]]] = []
    for field, names in OPTIMIZER_FIELDS_FOR.items():
        rules.append((f"model.optimizer.{field}", lambda f, names=names: f.get("model.optimizer.name") in names))
    for field, names in SCHEDULER_FIELDS_FOR.items():
        rules.append((f"model.scheduler.{field}", lambda f, names=names: f.get("model.scheduler.name") in names))
    def mixes(f: Mapping[str, Any]) -> bool:
        return _positive(f, "model.mixup.alpha") or _positive(f, "model.cutmix.alpha")

    def both_mix(f: Mapping[str, Any]) -> bool:
        return _positive(f, "model.mixup.alpha") and _positive(f, "model.cutmix.alpha")

    rules += [
        ("model.optimizer.sam.eta", lambda f: f.get("model.optimizer.sam.adaptive") is True),
        ("model.cutmix.correct_lam", lambda f: _positive(f, "model.cutmix.alpha")),
        ("model.mixing.switch_prob", both_mix),
        ("model.mixing.", mixes),
        ("model.cutout.", lambda f: _positive(f, "model.cutout.n_holes")),
        ("model.input_noise.", lambda f: _positive(f, "model.input_noise.std")),
        ("model.ema_warmup", lambda f: _positive(f, "model.ema_decay")),
        ("model.norm_groups", lambda f: f.get("model.norm") == "group"),
        ("data.fold", lambda f: _positive(f, "data.num_folds")),
        ("data.val_size", lambda f: not _positive(f, "data.num_folds")),
        ("data.cutout_size", lambda f: _positive(f, "data.cutout_holes")),
    ]
    return rules


_RULES = _rules()
_SWITCHES = ("model.cutout.n_holes", "model.input_noise.std")  # the field that turns a section on stays


def applicable_hparams(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`flat` without the settings the run never reads (see module docstring); order kept.

    The first rule matching a key decides; a key matching no rule is kept. Keys of other modules
    (no `model.optimizer.name`, ...) pass through unchanged.
    """
    kept = {}
    for key, value in flat.items():
        if key in _NOT_HYPERPARAMETERS:
            continue
        for pattern, applies in _RULES:
            matches = key.startswith(pattern) if pattern.endswith(".") else key == pattern
            if matches and key not in _SWITCHES:
                if not applies(flat):
                    break
                kept[key] = value
                break
        else:
            kept[key] = value
    return kept


def readable_hparams(flat: Mapping[str, Any]) -> dict[str, int | float | str]:
    """Booleans as "true" / "false" (TensorBoard shows raw bools as 1 / 0 or drops them)."""
    return {key: ("true" if value else "false") if isinstance(value, bool) else value for key, value in flat.items()}


def _plugin_data(summary: Summary) -> plugin_data_pb2.HParamsPluginData:
    return plugin_data_pb2.HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content)


def _with_plugin_data(summary: Summary, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    summary.value[0].metadata.plugin_data.content = data.SerializeToString()
    return summary


def trial_name(logger: Any, start: float) -> str:
    """The HPARAMS "Trial ID": version first (the column is narrow), then the run name and start time.

    `version_3 cpu_smoke 12-02 19:54:07`; the start time keeps runs of the same name and version in
    different folders apart (TensorBoard merges sessions that share this name into one row).
    """
    version = logger.version
    version = f"version_{version}" if isinstance(version, int) else str(version)
    return f"{version} {logger.name} {time.strftime('%m-%d %H:%M:%S', time.localtime(start))}"


class HparamsWithFinalMetrics(pl.Callback):
    """Write the applicable hyperparameters and the run's final metrics to TensorBoard's HPARAMS tab.

    Hyperparameters: `pl_module.hparams` under `model.` and `trainer.datamodule.hparams` under
    `data.`, flattened by `flatten_hparams`, filtered by `applicable_hparams`, plus run settings
    (`seed` from `seed_everything`, `trainer.max_epochs`, `trainer.precision`, `trainer.world_size`).
    The record's column list (TensorBoard takes it from one run) names every setting, so runs with
    other optimizers keep their columns; a run's values are its applicable settings only (blank cells
    elsewhere). `primary` settings come first and are the ticked columns (see `PRIMARY_HPARAMS`).

    The record (columns, this run's values, the metric list `METRICS`) is written at fit start (or at
    test start of a test-only run), the session end when the fit ends (status success) or fails
    (failure; unknown when stopped by Ctrl-C). Metrics are scalar tags the HPARAMS table reads their latest value from:
      `val_best/acc`           max of `val/acc` so far, written after every validation (sanity check excluded)
      `val_best/epoch`         the (0-based) epoch that first reached it, as in checkpoint names
      `test/acc`, `test/acc5`, `test/loss`  the test metrics Lightning writes
      `train/speed/fit_time_s` wall time of `trainer.fit` in this process, at fit end

    TensorBoard keeps only the first hparams record of a run, so Lightning's automatic
    `hp_metric` placeholder record (TensorBoardLogger's `default_hp_metric=True`) would hide this
    one: `setup` turns `default_hp_metric` off on the logger before Lightning writes it.
    Pass `TensorBoardLogger(..., default_hp_metric=False)` to make that explicit.
    """

    METRICS = METRICS

    def __init__(self, primary: Sequence[str] = PRIMARY_HPARAMS) -> None:
        super().__init__()
        self.primary = tuple(primary)
        self.best_val_acc = math.nan
        self.best_val_epoch = -1
        self.fit_time_s = math.nan
        self._fit_start = 0.0
        self._started_dirs: set[str] = set()
        self._ended_dirs: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best_val_acc, "best_val_epoch": self.best_val_epoch}  # a resumed fit keeps them

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_acc = float(state_dict["best_val_acc"])
        self.best_val_epoch = int(state_dict.get("best_val_epoch", -1))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and getattr(logger, "_default_hp_metric", False):
            logger._default_hp_metric = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._start_session(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_session(trainer, pl_module)  # a test-only run; after a fit the record is there

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/acc")
        if value is None:
            return
        value = float(value)
        if math.isnan(self.best_val_acc) or value > self.best_val_acc:
            self.best_val_acc = value
            self.best_val_epoch = trainer.current_epoch
        self._log(trainer, {"val_best/acc": self.best_val_acc, "val_best/epoch": float(self.best_val_epoch)})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_time_s = time.perf_counter() - self._fit_start
        self._log(trainer, {f"{SPEED_GROUP}/fit_time_s": self.fit_time_s})
        self._end_session(trainer, api_pb2.STATUS_SUCCESS)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_session(trainer, api_pb2.STATUS_SUCCESS)  # a test-only run

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)  # TensorBoard has no "aborted": unknown, not failed
        self._end_session(trainer, api_pb2.STATUS_UNKNOWN if interrupted else api_pb2.STATUS_FAILURE)

    def hyperparameters(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, applicable_only: bool = True
    ) -> dict[str, Any]:
        """The readable `model.*`, `data.*` and run settings of this run (only the applicable ones by default)."""
        params = flatten_hparams(dict(pl_module.hparams), "model")
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "hparams"):
            params.update(flatten_hparams(dict(datamodule.hparams), "data"))
        if applicable_only:
            params = applicable_hparams(params)
        else:
            params = {key: value for key, value in params.items() if key not in _NOT_HYPERPARAMETERS}
        seed = os.environ.get("PL_GLOBAL_SEED", OFF)
        params["seed"] = int(seed) if seed.isdigit() else seed
        params["trainer.max_epochs"] = trainer.max_epochs if trainer.max_epochs is not None else OFF
        params["trainer.precision"] = str(trainer.precision)
        params["trainer.world_size"] = trainer.world_size
        return readable_hparams(params)

    def _logger(self, trainer: pl.Trainer) -> Any:
        logger = tensorboard_logger(trainer)
        return logger if logger is not None and trainer.is_global_zero else None

    def _log(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        logger = self._logger(trainer)
        values = {name: value for name, value in values.items() if not math.isnan(value)}
        if logger is not None and values:
            logger.log_metrics(values, step=trainer.global_step)

    def _start_session(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is None or logger.log_dir in self._started_dirs:
            return
        # The table's columns come from one run's experiment record: list every setting there, so runs
        # with other optimizers or schedules keep their columns; this run's values only where they apply.
        metrics = {name: math.nan for name in self.METRICS}
        experiment, _, _ = hparams_summary(self.hyperparameters(trainer, pl_module, applicable_only=False), metrics)
        _, start, _ = hparams_summary(self.hyperparameters(trainer, pl_module), metrics)
        data = _plugin_data(experiment)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in self.primary  # TensorBoard lists these first and ticks five
        _with_plugin_data(experiment, data)
        now = time.time()
        data = _plugin_data(start)
        data.session_start_info.group_name = trial_name(logger, now)
        data.session_start_info.start_time_secs = now
        _with_plugin_data(start, data)
        file_writer = logger.experiment._get_file_writer()
        for summary in (experiment, start):
            file_writer.add_summary(summary)
        logger.experiment.flush()
        self._started_dirs.add(logger.log_dir)

    def _end_session(self, trainer: pl.Trainer, status: int) -> None:
        logger = self._logger(trainer)
        if logger is None or logger.log_dir not in self._started_dirs or logger.log_dir in self._ended_dirs:
            return
        _, _, end = hparams_summary({"_": 0}, {})
        data = _plugin_data(end)
        data.session_end_info.status = status
        data.session_end_info.end_time_secs = time.time()
        logger.experiment._get_file_writer().add_summary(_with_plugin_data(end, data))
        logger.experiment.flush()
        self._ended_dirs.add(logger.log_dir)
