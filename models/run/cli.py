"""The command line: LightningCLI over `CifarClassifier` and `CIFARDataModule`, fit then test in one call.

`python train.py --config configs/cifar10_resnet18.yaml [--model.mixup.alpha 0.2 ...]` fits with
checkpoint selection and early stopping on the held-out validation split, then tests the best
checkpoint once on the test split. `run(args)` does the same from Python and returns the final metrics
(the study runner uses it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jsonargparse import Namespace
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from augment.checks import CheckError
from augment.data import CIFARDataModule
from augment.pipeline import SECTIONS
from models.callbacks import (
    AugmentedImageGrid,
    ConfusionMatrixLogger,
    FitProgress,
    HparamsWithFinalMetrics,
    LearningRateLogger,
    NonFiniteLossGuard,
    StepAxis,
    TrainingSpeedMonitor,
    TrainValLayout,
)
from models.callbacks.checkpoints import LastCheckpoint, RunCheckpoint
from models.callbacks.interrupt import CtrlCAtBatchEnd
from models.callbacks.oof import HeldOutPredictions
from models.callbacks.sharpness import Sharpness
from models.callbacks.weight_noise import WeightNoise
from models.classifier import CifarClassifier
from models.run.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from models.run.folder import RunFolder, check_run_dir_location, claim_version_folder, set_status
from models.run.log_dir import logs_under_root_dir
from models.run.preflight import (
    check_batch_statistics,
    check_config_files,
    check_forward,
    check_meaningful,
    check_settings,
)
from models.run.resume import check_resumable, continue_checkpoint_dir, local_path, read_checkpoint
from models.run.summary import print_run_summary
from models.run.trainer import CifarTrainer

__all__ = ["CifarCLI", "LastCheckpoint", "RunCheckpoint", "main", "one_line", "run"]

# Lightning raises MisconfigurationException for bad Trainer flags (`max_epochs` -5, `devices` 0, ...);
# jsonargparse raises argparse.ArgumentError for parse errors (exit_on_error is off, see CifarCLI).
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    ImportError,
    FloatingPointError,
    CheckpointWriteError,
    MisconfigurationException,
    argparse.ArgumentError,
)


MODEL_SECTIONS = (*SECTIONS, "optimizer", "scheduler")  # config dataclasses under `model:`


def _trainer_defaults() -> dict[str, Any]:
    return {
        "default_root_dir": "runs",
        "logger": {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "", "name": "cifar", "default_hp_metric": False},  # "": default_root_dir
        },
        "callbacks": [
            LearningRateLogger(logging_interval="step"),  # every log_every_n_steps; one curve for shared rates
            StepAxis(),
            TrainValLayout(),
            TrainingSpeedMonitor(),
            FitProgress(),
            AugmentedImageGrid(),
            ConfusionMatrixLogger(),
            NonFiniteLossGuard(check_every_n_steps=50),  # one host sync per 50 steps, exact step still named
            HparamsWithFinalMetrics(),
            HeldOutPredictions(),  # k-fold runs: oof.csv of the held-out fold
            LastCheckpoint(),
        ],
        "max_epochs": 30,
        "log_every_n_steps": 50,
    }


@contextmanager
def _program_name_only() -> Iterator[None]:
    """``sys.argv`` reduced to the program name while the CLI parses its own ``args``."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


class CifarCLI(LightningCLI):
    """LightningCLI with the project's callbacks as top-level config sections and `ckpt_path` to resume."""

    def __init__(self, args: list[str] | dict | Namespace | None = None, **kwargs: Any) -> None:
        """``args`` None: the command line (``sys.argv[1:]``); otherwise only ``args`` is read."""
        if args is None:
            args = sys.argv[1:]
        with _program_name_only():  # Lightning would otherwise also look at the caller's sys.argv
            super().__init__(
                CifarClassifier,
                CIFARDataModule,
                trainer_class=CifarTrainer,
                run=False,
                args=args,
                auto_configure_optimizers=False,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                trainer_defaults=_trainer_defaults(),
                **{"parser_kwargs": {"exit_on_error": False}, **kwargs},  # parse errors raise: main() prints one line
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then reject values Lightning would report without naming the field (before seeding)."""
        super().parse_arguments(parser, args)
        _expand_paths(self.config)
        _check_seed(self.config.get("seed_everything"))
        _check_accelerator(self.config.get("trainer.accelerator"))
        check_settings(self.config)
        logs_under_root_dir(self.config)
        _name_best_by_monitor(self.config)

    def instantiate_classes(self) -> None:
        """Instantiate; a model config section's error gets its YAML path (`model.mixup.alpha`)."""
        try:
            super().instantiate_classes()
        except CheckError as err:
            if err.field.split(".")[0] in MODEL_SECTIONS:
                raise err.with_field(f"model.{err.field}") from None
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with crash-safe checkpoint writes unless a custom CheckpointIO plugin is configured."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.input_size", apply_on="instantiate")
        parser.link_arguments("model.channels_last", "data.channels_last")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # LastCheckpoint writes last.ckpt every epoch (see there)
                "checkpoint.filename": best_filename("val/acc"),
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/acc",
                "early_stopping.mode": "max",
                "early_stopping.patience": 20,
                # The monitor is checked before fit (preflight); a fit that ends (max_steps) before its first
                # validation has no value to compare yet, which is no reason to crash at its end.
                "early_stopping.strict": False,
            }
        )
        parser.add_lightning_class_args(WeightNoise, "weight_noise")
        parser.set_defaults({"weight_noise.std": 0.0})
        parser.add_lightning_class_args(Sharpness, "sharpness")  # off unless sharpness.enable: true
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="Checkpoint to resume fit from.")
        parser.add_argument("--run_test", type=bool, default=True, help="Test the selected checkpoint after fit.")
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace an earlier run in the same run folder."
        )


# Settings that name files or folders: `~` and `file://` mean what they mean in the user's shell.
PATH_KEYS = (
    "ckpt_path", "data.root", "data.train_csv", "trainer.default_root_dir", "trainer.logger.init_args.save_dir",
    "checkpoint.dirpath",
)


def best_filename(monitor: str) -> str:
    """The selected checkpoint's file name template: ``best-epoch{epoch:03d}-val_acc{val/acc:.4f}`` for val/acc."""
    return f"best-epoch{{epoch:03d}}-{monitor.replace('/', '_')}{{{monitor}:.4f}}"


def _name_best_by_monitor(config: Any) -> None:
    """The default file name carries the value of the checkpoint's own monitor (``val_bal_acc0.4331``)."""
    monitor = config.get("checkpoint.monitor")
    if isinstance(monitor, str) and monitor and config.get("checkpoint.filename") == best_filename("val/acc"):
        config["checkpoint.filename"] = best_filename(monitor)


def _expand_paths(config: Any) -> None:
    for key in PATH_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value.startswith(("~", "file://")):
            config[key] = local_path(value)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything must be true, false or an int in [0, 2**32), got {seed}")


def _check_accelerator(accelerator: Any) -> None:
    """Lightning says only 'No supported gpu backend found!' when a GPU is requested on a CPU-only machine."""
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if (accelerator == "cuda" and not cuda) or (accelerator == "mps" and not mps) or not (cuda or mps):
        rule = f"cpu or auto on a machine without a {accelerator} device"
        raise CheckError("trainer.accelerator", rule, accelerator)


def _without_validation(trainer: Any) -> None:
    """No validation split (`datamodule.has_val` False, warned there): no early stopping, checkpoints
    keep only the last epoch."""
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, EarlyStopping)]
    for cb in trainer.checkpoint_callbacks:
        cb.monitor = None
        cb.save_top_k = 1
        cb.mode = "min"
        if "val/" in (cb.filename or ""):  # no val metrics to put in the name (they would read 0.0000)
            cb.filename = "epoch{epoch:03d}-step{step}"
    trainer.limit_val_batches = 0


def _scalar_metrics(trainer: Any) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _final_metrics(
    trainer: Any, fit_metrics: dict[str, float], test_results: list[dict], fit_time_s: float
) -> dict[str, Any]:
    """Last train/val epoch metrics (kept from before `trainer.test`, which resets them), the best value of the
    checkpoint's monitor as ``<monitor>_best`` (``val/acc_best`` by default) and ``monitor``, test."""
    metrics: dict[str, Any] = dict(fit_metrics)
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.monitor and ckpt.best_model_score is not None:
        metrics["monitor"] = ckpt.monitor
        metrics[f"{ckpt.monitor}_best"] = float(ckpt.best_model_score)
    for result in test_results:
        metrics.update({k: float(v) for k, v in result.items()})
    metrics["epochs"] = trainer.current_epoch
    metrics["global_step"] = trainer.global_step
    metrics["fit_time_s"] = fit_time_s
    metrics["log_dir"] = trainer.log_dir
    return metrics


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM before it finished.

    ``checkpoint``: the last finished epoch's ``last.ckpt`` (None if none yet); ``phase``: fit or test;
    ``signal_name``: SIGINT or SIGTERM.
    """

    def __init__(self, checkpoint: str | None, phase: str = "fit", signal_name: str = "SIGINT") -> None:
        super().__init__(checkpoint)
        self.checkpoint, self.phase, self.signal_name = checkpoint, phase, signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended (130 / 143)."""
        return 128 + int(signal.SIGTERM if self.signal_name == "SIGTERM" else signal.SIGINT)


def _last_checkpoint(trainer: Any) -> str | None:
    saved = [c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)]
    return next((path for path in saved if path and os.path.isfile(path)), None)


@contextmanager
def _stopped_by_sigterm(trainer: Any, phase: str, checkpoint: str | None = None) -> Iterator[None]:
    """SIGTERM (a scheduler's stop) during ``phase`` becomes :class:`RunInterrupted`, never a silent exit 0.

    Lightning turns it into ``SIGTERMException`` (a ``SystemExit`` with code 0), or only sets
    ``received_sigterm`` when it arrives in a phase's last batch. ``checkpoint``: where to resume from
    (default: the run's ``last.ckpt`` as the checkpoint callback knows it now).
    """
    try:
        yield
    except SIGTERMException:
        raise RunInterrupted(checkpoint or _last_checkpoint(trainer), phase, "SIGTERM") from None
    if trainer.received_sigterm:
        raise RunInterrupted(checkpoint or _last_checkpoint(trainer), phase, "SIGTERM")


def _fit(trainer: Any, model: Any, datamodule: Any, ckpt_path: Any) -> None:
    """``trainer.fit``; Ctrl-C (Lightning turns it into SystemExit and ignores SIGINT afterwards) becomes
    :class:`RunInterrupted`, with the SIGINT handler from before fit back."""
    ctrl_c = CtrlCAtBatchEnd()
    trainer.callbacks.append(ctrl_c)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGINT, ctrl_c.request)
    try:
        with _stopped_by_sigterm(trainer, "fit"):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if not trainer.interrupted:
            raise
        raise RunInterrupted(_last_checkpoint(trainer)) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        trainer.callbacks.remove(ctrl_c)


def _claim_run_folder(trainer: Any, config: Any, continuing: bool, ckpt_step: int | None) -> RunFolder:
    """Take this run's folders (see `models.run.folder`): refuse or, with --overwrite, replace an earlier run.

    The logger's run folder must lie strictly inside its save_dir; an automatic logger version folder is
    created exclusively, so two runs started together never share one.
    """
    checkpoint_dirs = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    logger = trainer.logger if trainer.loggers else None
    if logger is not None and getattr(logger, "save_dir", None) is not None:
        version_key = "trainer.logger.init_args.version"
        version = config.get(version_key)
        check_run_dir_location(logger.log_dir, logger.save_dir, version_key, version)
        if version is None and not continuing:
            claim_version_folder(logger)
    if checkpoint_dirs:
        checkpoint_dir, key = checkpoint_dirs[0], "checkpoint.dirpath"
    elif trainer.loggers:
        checkpoint_dir, key = os.path.join(trainer.log_dir, "checkpoints"), "trainer.logger.init_args.version"
    elif trainer.checkpoint_callbacks:
        checkpoint_dir, key = os.path.join(trainer.default_root_dir, "checkpoints"), "trainer.default_root_dir"
    else:
        checkpoint_dir, key = None, "trainer.default_root_dir"
    value = config.get(key) if key != "trainer.logger.init_args.version" else getattr(trainer.logger, "version", None)
    folder = RunFolder(trainer.log_dir if trainer.loggers else None, checkpoint_dir)
    folder.claim(config.get("ckpt_path"), ckpt_step, bool(config.get("overwrite")), key, value)
    return folder


def _destroy_process_group() -> None:
    """Tear the process group down before the interpreter exits (gloo's threads abort the process otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run(args: list[str] | dict | None = None, print_summary: bool = False) -> dict[str, Any]:
    """Parse config, fit (resuming from `ckpt_path` if given), test the selected checkpoint; return metrics.

    `print_summary`: end with `models.run.summary.run_summary` on stdout (train.py does).
    """
    cli = CifarCLI(args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    config = cli.config
    if not datamodule.has_val or trainer.limit_val_batches == 0:  # no validation: nothing to select or stop on
        _without_validation(trainer)
    if not trainer.loggers:  # trainer.logger false: LearningRateMonitor would refuse to start
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
    ckpt_path = config.get("ckpt_path")
    checkpoint = read_checkpoint(ckpt_path)  # the one read of the resume checkpoint before Lightning's own
    check_resumable(ckpt_path, checkpoint, model, datamodule)
    if not datamodule.download:  # data and splits are read now: their errors come before any folder is written
        datamodule.setup("fit")
        check_meaningful(config, model.hparams, datamodule.image_size, datamodule.num_classes)
        check_forward(model.backbone, datamodule.image_size)
        check_batch_statistics(model.backbone, datamodule.batch_size, len(datamodule.train_indices), trainer.world_size)
        if config.get("run_test", True) and getattr(datamodule, "has_test", True):
            datamodule.setup("test")  # a missing or broken test split fails now, not after the whole fit
    continuing = continue_checkpoint_dir(trainer, ckpt_path, checkpoint)
    ckpt_step = int(checkpoint.get("global_step", -1)) if checkpoint is not None else None
    folder = _claim_run_folder(trainer, config, continuing, ckpt_step)
    del checkpoint
    try:
        run_test = bool(config.get("run_test", True)) and getattr(datamodule, "has_test", True)  # csv: no test split
        metrics = _fit_and_test(trainer, model, datamodule, ckpt_path, run_test)
    except RunInterrupted as err:
        set_status(folder.folders, "interrupted", err.phase)
        raise
    finally:
        _destroy_process_group()
    set_status(folder.folders, "finished")
    if print_summary:
        print_run_summary(trainer, metrics)
    return metrics


def _fit_and_test(trainer: Any, model: Any, datamodule: Any, ckpt_path: Any, run_test: bool) -> dict[str, Any]:
    start = time.perf_counter()
    _fit(trainer, model, datamodule, ckpt_path)
    fit_time_s = time.perf_counter() - start
    fit_metrics = _scalar_metrics(trainer)
    test_results: list[dict] = []
    if run_test:
        ckpt = trainer.checkpoint_callback
        use_best = datamodule.has_val and ckpt is not None and bool(ckpt.best_model_path)
        best = ckpt.best_model_path if use_best else None  # a path: "best" warns with two ModelCheckpoints
        last = _last_checkpoint(trainer)  # before the test restores the callbacks' state from `best`
        with _stopped_by_sigterm(trainer, "test", last):
            test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    return _final_metrics(trainer, fit_metrics, test_results, fit_time_s)


def one_line(err: BaseException) -> str:
    """The error as one line: parse errors keep all their lines (field, then rule) joined; others the first."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if isinstance(err, argparse.ArgumentError):
        return " ".join(lines)
    return lines[0]


_one_line = one_line  # the name bench.study and models.run.commands import today


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The train.py command line that continues a run from ``checkpoint`` (any earlier --ckpt_path dropped)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--ckpt_path", checkpoint])


def _interrupted_message(err: RunInterrupted, argv: list[str]) -> str:
    how = "" if err.signal_name == "SIGINT" else f" ({err.signal_name})"  # Ctrl-C: the plain word
    if err.checkpoint is None:
        return f"interrupted{how} before the first epoch finished: no checkpoint to resume from"
    resume = resume_command(argv, err.checkpoint)
    if err.phase == "test":
        return (f"interrupted{how} during test: the fit finished and is saved, no test was reported; "
                f"test it with: {resume}")
    return f"interrupted{how}: the last finished epoch is saved; resume with: {resume}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of train.py: one-line errors and exit code 2 for user errors, 130 for Ctrl-C; no traceback."""
    torch.set_float32_matmul_precision("high")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("predict", "export"):  # the other commands: plain argparse (models.run.commands)
        from models.run.commands import main as command_main

        return command_main(argv)
    try:
        run(check_config_files(argv), print_summary=True)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(_interrupted_message(err, argv), file=sys.stderr)
        return err.exit_code
    return 0
