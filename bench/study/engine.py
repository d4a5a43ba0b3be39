"""Ray Tune as the study's trial engine: Ray on one machine (embedded) or a cluster, trial resources, progress.

`ray_session(options)` starts Ray on demand (`ray.init` local, no dashboard, quiet unless `ray_logs`) or
joins the cluster at `options.address` (`auto`, `host:port`, `ray://host:port`; an address that does not
answer is a one-line error within `CONNECT_TIMEOUT_S`); a Ray already started in this process is reused
and left running. `run_trials(specs, options, on_record)` runs the specs as one Tune experiment
(`study_trial`, one trial per spec, `max_concurrent` at a time, `cpus_per_trial` / `gpus_per_trial` each,
`max_failures` retries), and calls `on_record(index, record)` in the driver as each trial finishes.
Workers import the project from `REPO_ROOT` (PYTHONPATH in the job's runtime_env).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from augment.checks import CheckError, is_int, require
from bench.study.spec import REPO_ROOT
from bench.study.trial import RunFn, error_line, study_trial

__all__ = ["TUNE_EXTRA", "CONNECT_TIMEOUT_S", "EngineOptions", "ray_session", "trial_resources", "run_trials",
           "import_ray"]  # fmt: skip

TUNE_EXTRA = 'pip install "cifar-aug[tune]"'
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class EngineOptions:
    """How trials run: cluster address (None: embedded Ray), concurrency, resources per trial, retries, logs."""

    address: str | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    threads: int | None = None  # torch threads in a trial (default: its CPUs)
    max_failures: int = 2
    ray_logs: bool = False
    storage_path: Path | None = None  # Tune's experiment folder (default: the study folder)

    def __post_init__(self) -> None:
        if self.max_concurrent is not None:
            require(is_int(self.max_concurrent) and self.max_concurrent >= 1, "--max-concurrent", "an int >= 1",
                    self.max_concurrent)  # fmt: skip
        for name, value in (("--cpus-per-trial", self.cpus_per_trial), ("--gpus-per-trial", self.gpus_per_trial)):
            require(value is None or value >= 0, name, ">= 0", value)
        require(self.threads is None or self.threads >= 1, "--threads", "an int >= 1", self.threads)


def import_ray() -> Any:
    """`ray` with `ray.tune`, else a one-line ImportError naming the extra to install."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old output engine is silent at verbose 0
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # error records carry no val_acc
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError as err:
        raise ImportError(f"studies run on Ray Tune, which is not installed ({err}): {TUNE_EXTRA}") from None
    return ray


def _check_address(address: str) -> None:
    """A `host:port` / `ray://host:port` must accept a TCP connection within CONNECT_TIMEOUT_S."""
    rule = "auto, host:port or ray://host:port of a running Ray cluster"
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    require(bool(sep and host and port.isdigit()), "--address", rule, address)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        raise CheckError("--address", f"{rule} (no answer within {CONNECT_TIMEOUT_S:g} s)", address) from None


def _runtime_env(ray_logs: bool) -> dict[str, Any]:
    paths = [str(REPO_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    if not ray_logs:
        env["PYTHONWARNINGS"] = "ignore"
    return {"env_vars": env}


@contextlib.contextmanager
def ray_session(options: EngineOptions) -> Iterator[Any]:
    """Ray for the study: reused if running in this process, else joined (`address`) or started embedded."""
    ray = import_ray()
    if options.address and options.address != "auto":
        _check_address(options.address)
    if ray.is_initialized():
        yield ray
        return
    import logging

    quiet = dict(log_to_driver=options.ray_logs, logging_level=logging.INFO if options.ray_logs else logging.ERROR)
    temp_dir = None
    if options.address:
        try:
            ray.init(address=options.address, runtime_env=_runtime_env(options.ray_logs), **quiet)
        except ConnectionError as err:
            raise CheckError("--address", "auto, host:port or ray://host:port of a running Ray cluster",
                             f"{options.address} ({str(err).splitlines()[0]})") from None  # fmt: skip
    else:
        # A short root: Ray's socket paths must stay under the 107-character limit of unix sockets.
        temp_dir = tempfile.mkdtemp(prefix="cifar-aug-ray-")
        ray.init(include_dashboard=False, _temp_dir=temp_dir, runtime_env=_runtime_env(options.ray_logs), **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp_dir and not options.ray_logs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        elif temp_dir:
            print(f"[ray] logs kept in {temp_dir}", flush=True)


def trial_resources(options: EngineOptions, cluster: Mapping[str, float]) -> tuple[dict[str, float], int]:
    """({"cpu": c, "gpu": g} per trial, torch threads): one GPU per trial where there are GPUs; on CPUs a split
    of the cores that does not oversubscribe them (max(1, cores // max_concurrent), 1 when unbounded)."""
    cores = max(1, int(cluster.get("CPU", 1)))
    gpus = cluster.get("GPU", 0)
    gpu = options.gpus_per_trial if options.gpus_per_trial is not None else (1.0 if gpus >= 1 else 0.0)
    if options.cpus_per_trial is not None:
        cpu = options.cpus_per_trial
    elif gpu:
        per_gpu_cores = cores // max(1, int(gpus // gpu)) if gpus else 1
        cpu = max(1, min(per_gpu_cores, cores // (options.max_concurrent or 1)))
    else:
        cpu = max(1, cores // options.max_concurrent) if options.max_concurrent else 1
    require(cpu <= cores, "--cpus-per-trial", f"<= the {cores} CPUs Ray has", cpu)
    require(gpu <= gpus or gpu == 0, "--gpus-per-trial", f"<= the {gpus:g} GPUs Ray has", gpu)
    threads = options.threads or max(1, int(cpu))
    return {"cpu": float(cpu), "gpu": float(gpu)}, threads


class _Progress:
    """Driver-side Tune callback: records from finished trials, one summary line per trial, a study line."""

    def __init__(self, tag: str, total: int, labels: Sequence[str], on_record: Callable[[int, dict], None]) -> None:
        self.tag, self.total, self.labels, self.on_record = tag, total, labels, on_record
        self.start = time.perf_counter()
        self.done: set[int] = set()
        self.running: set[int] = set()

    def trial_start(self, index: int) -> None:
        self.running.add(index)

    def trial_record(self, index: int, record: dict, seconds: float | None = None) -> None:
        if index in self.done:
            return
        self.done.add(index)
        self.running.discard(index)
        self.on_record(index, record)
        acc = " ".join(f"{k} {float(record[k]) * 100:.2f}" for k in ("val_acc", "test_acc")
                       if record.get(k) not in (None, ""))  # fmt: skip
        extra = f" {record['message']}" if record.get("message") else ""
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        print(f"{self.tag} {self.labels[index]}: {record['status']}{took} {acc}{extra}".rstrip(), flush=True)
        self.line()

    def line(self) -> None:
        elapsed = time.perf_counter() - self.start
        done, running = len(self.done), len(self.running)
        pending = self.total - done - running
        eta = f"{elapsed / done * (self.total - done):.0f} s" if done else "?"  # at the throughput so far
        print(f"{self.tag} {done}/{self.total} done, {running} running, {pending} pending; "
              f"{elapsed:.0f} s elapsed, ETA {eta}", flush=True)  # fmt: skip


def _tune_callback(progress: _Progress, describe: Callable[[Any], tuple[dict, Any]] | None = None) -> Any:
    """The driver's Tune callback; `describe(trial)` -> (identity record, log dir) for sweep trials."""
    from ray import tune

    class StudyCallback(tune.Callback):
        def __init__(self) -> None:
            self.started: dict[str, float] = {}
            self.order: dict[str, int] = {}

        def _trial(self, trial: Any) -> tuple[int, dict, str]:
            if "run" in trial.config:
                spec = trial.config["run"]
                return spec["index"], spec["record"], spec["log_dir"]
            index = self.order.setdefault(trial.trial_id, len(self.order))
            record, log_dir = describe(trial) if describe else ({}, "")
            return index, record, str(log_dir)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started[trial.trial_id] = time.perf_counter()
            progress.trial_start(self._trial(trial)[0])

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "record" in result:
                seconds = time.perf_counter() - self.started.get(trial.trial_id, progress.start)
                progress.trial_record(self._trial(trial)[0], json.loads(result["record"]), seconds)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            index, identity, log_dir = self._trial(trial)
            if index not in progress.done:  # stopped by the scheduler before its final report
                last = trial.last_result or {}
                record = {**identity, "status": "stopped", "log_dir": log_dir, "val_acc": last.get("val_acc"),
                          "epochs": last.get("epoch"), "message": "stopped early by ASHA"}  # fmt: skip
                progress.trial_record(index, record)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            index, identity, log_dir = self._trial(trial)
            message = _trial_error(trial)
            progress.trial_record(index, {**identity, "status": "error", "log_dir": log_dir, "message": message[:500]})

    return StudyCallback()


def run_trials(
    specs: Sequence[dict[str, Any]],
    options: EngineOptions,
    on_record: Callable[[int, dict], None],
    tag: str,
    name: str,
    run_fn: RunFn | None = None,
    search: Mapping[str, Any] | None = None,
) -> None:
    """Run each spec (a `study_trial` config) as one Ray Tune trial; `on_record(i, record)` as each finishes.

    `search` (sweeps): {"param_space", "search_alg", "scheduler", "num_samples"} replace the one-trial-per-spec
    grid; each sampled config is merged into `specs[0]` by the search's trainable wrapper.
    """
    with ray_session(options) as ray:
        from ray import tune

        resources, threads = trial_resources(options, ray.cluster_resources())
        specs = [{**s, "threads": threads, "cwd": os.getcwd()} for s in specs]
        labels = [s["label"] for s in specs]
        storage = Path(options.storage_path or Path(specs[0]["log_dir"]).parent).resolve()
        concurrency = options.max_concurrent
        describe = search.get("describe") if search else None
        if search is None:
            total = len(specs)
            param_space: dict[str, Any] = {"run": tune.grid_search(specs)}
            tune_config = tune.TuneConfig(
                max_concurrent_trials=concurrency, reuse_actors=True, trial_dirname_creator=_trial_dirname
            )
            trainable = tune.with_parameters(study_trial, run_fn=run_fn) if run_fn else study_trial
        else:
            total = int(search["num_samples"])
            labels = [search["label"](i) for i in range(total)]
            param_space = search["param_space"]
            tune_config = tune.TuneConfig(
                search_alg=search["search_alg"], scheduler=search["scheduler"], num_samples=total,
                max_concurrent_trials=concurrency, reuse_actors=True, trial_dirname_creator=_trial_dirname,
            )  # fmt: skip
            trainable = tune.with_parameters(search["trainable"], base=specs[0], run_fn=run_fn)
        progress = _Progress(tag, total, labels, on_record)
        print(f"{tag} {total} trials on Ray ({'cluster ' + options.address if options.address else 'this machine'}): "
              f"{resources['cpu']:g} CPU + {resources['gpu']:g} GPU per trial, "
              f"{concurrency or 'as many as fit'} at a time", flush=True)  # fmt: skip
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                verbose=0,
                callbacks=[_tune_callback(progress, describe)],
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                log_to_file=True,
            ),
        )
        try:
            tuner.fit()
        except Exception as err:  # noqa: BLE001 - Tune's own failure (not a trial's): one line
            print(f"{tag} Ray Tune failed: {error_line(err)}", file=sys.stderr, flush=True)
            raise


def _trial_error(trial: Any) -> str:
    """The last line of a failed trial's error (its exception, or the worker's death)."""
    try:
        err = str(trial.get_error() or "").strip()
    except Exception:  # noqa: BLE001 - the error file may be gone; say what is known
        err = ""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return f"the trial's worker failed: {lines[-1]}" if lines else "the trial's worker failed"


def _trial_dirname(trial: Any) -> str:
    run = trial.config.get("run", {})
    label = str(run.get("label", "trial")).replace(" ", "_").replace("/", "_")
    return f"{label}_{trial.trial_id}"[:120]


def with_storage(options: EngineOptions, path: Path) -> EngineOptions:
    """`options` with Tune's experiment folder at `path` unless one was given."""
    return options if options.storage_path else replace(options, storage_path=path)
