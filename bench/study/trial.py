"""One study run as a Ray Tune trial: the function a Ray worker runs, its per-epoch report and its record file.

`study_trial(config)` fits one planned run (`config["run"]`, a spec dict the runner builds) with
`models.run.cli.run`, reporting `val_acc` after every validation epoch through `ray.tune.report`
(`bench.study.tune_report.ReportEpoch`, passed as a `trainer.callbacks` entry of the run's own arguments),
and ends with one report holding the run's record.
The record is also written to `<log_dir>/record.json` (atomically) before that report, so a record
survives a driver that dies right after the fit. A run folder whose `<log_dir>.trial.json` holds the same
arguments, with a `checkpoints/last.ckpt` and no record, is continued from that checkpoint (`--ckpt_path`:
a retried trial or a restarted study resumes exactly); any other leftover in the folder is removed first.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from augment.checks import CheckError
from bench.study.records import metric_fields

__all__ = ["RECORD_FILE", "REPORT_CALLBACK", "RunFn", "study_trial", "read_record", "error_line",
           "Tee"]  # fmt: skip

RunFn = Callable[[list[str]], Mapping[str, Any]]
RECORD_FILE = "record.json"
REPORT_CALLBACK = "bench.study.tune_report.ReportEpoch"


def error_line(err: BaseException, stderr_tail: str = "") -> str:
    """`<Type>: <message>` in one line; a SystemExit (jsonargparse printed the parse error) reads stderr's last line."""
    from models.run.cli import one_line

    if isinstance(err, SystemExit):
        lines = [ln.strip() for ln in stderr_tail.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else f"exit code {err.code}"
    else:
        text = one_line(err) if str(err).strip() else ""
    kind = "ValueError" if isinstance(err, CheckError) else type(err).__name__  # a CheckError is a ValueError
    return f"{kind}: {text}"[:500].replace("\n", " ")


class Tee(io.TextIOBase):
    """Writes to a stream and keeps the last `keep` characters (to read a parse error back)."""

    def __init__(self, stream: Any, keep: int = 4000) -> None:
        self.stream, self.keep, self.tail = stream, keep, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.tail = (self.tail + text)[-self.keep :]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _call(run_fn: RunFn, args: list[str]) -> tuple[Mapping[str, Any] | None, str]:
    """Run one config; return (metrics, '') or (None, one-line error)."""
    tee = Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(tee):
            metrics = run_fn(args)
        return metrics, ""
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001 - a study records every failure
        if isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and err.code == 0):
            raise  # Ctrl-C, or Tune stopping the trial (ASHA): not a result
        traceback.print_exc()
        return None, error_line(err, tee.tail)
    finally:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _after_run(evaluate: Mapping[str, bool], log_dir: Path) -> dict[str, Any]:
    """Extra evaluation of the selected checkpoint: test probs (ensemble), clean train accuracy (gap)."""
    extra: dict[str, Any] = {}
    if not (evaluate.get("ensemble") or evaluate.get("gap")):
        return extra
    from bench import ensemble

    try:
        if evaluate.get("ensemble"):
            ensemble.save_split_probs(log_dir, "test")
        if evaluate.get("gap"):
            probs, labels = ensemble.save_split_probs(log_dir, "train")
            extra["train_acc_clean"] = ensemble.accuracy(probs, labels)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the fit itself succeeded; say what failed
        traceback.print_exc()
        extra["message"] = f"evaluation failed: {error_line(err)}"
    return extra


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_record(log_dir: Path) -> dict[str, Any] | None:
    """The record a finished trial left in its run folder, or None."""
    path = Path(log_dir) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def trial_file(log_dir: Path) -> Path:
    """`<log_dir>.trial.json`: the arguments a trial started the run folder with (beside it: the run folder
    itself holds only what train.py writes until the record)."""
    return log_dir.with_name(log_dir.name + ".trial.json")


def _prepare_folder(log_dir: Path, args: list[str]) -> str | None:
    """The last.ckpt to continue from when the folder holds this very run, unfinished; else empty the folder."""
    last = log_dir / "checkpoints" / "last.ckpt"
    try:
        same = json.loads(trial_file(log_dir).read_text()).get("args") == args
    except (OSError, ValueError):
        same = False
    if same and last.is_file() and not (log_dir / RECORD_FILE).exists():
        return str(last)
    if log_dir.exists():
        shutil.rmtree(log_dir)
    write_json(trial_file(log_dir), {"args": args})
    return None


def _default_run_fn() -> RunFn:
    from models.run.cli import run

    return run


def study_trial(config: Mapping[str, Any], run_fn: RunFn | None = None) -> None:
    """Ray Tune function trainable: fit `config["run"]`, write its record, report it (see the module doc)."""
    from ray import tune

    spec = config["run"]
    if spec.get("cwd") and os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])  # relative paths of the configs (data.root) mean what they meant to the driver
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.set_float32_matmul_precision("high")
    log_dir = Path(spec["log_dir"])
    row = dict(spec["record"])
    args = [*spec["args"], "--trainer.callbacks", json.dumps([{"class_path": REPORT_CALLBACK}])]
    run_fn = run_fn or _default_run_fn()
    resume = _prepare_folder(log_dir, args)
    metrics, message = _call(run_fn, args + (["--ckpt_path", resume] if resume else []))
    if metrics is None:
        row.update(status="error", message=message, log_dir=str(log_dir))
    else:
        row.update(metric_fields(metrics), status="ok", log_dir=str(metrics.get("log_dir") or log_dir))
        row["message"] = f"resumed from {resume}" if resume else ""
        row.update(_after_run(spec.get("evaluate", {}), Path(row["log_dir"])))
    write_json(log_dir / RECORD_FILE, row)
    final = {"record": json.dumps(row)}
    if row.get("val_acc") is not None:
        final["val_acc"] = row["val_acc"]
    tune.report(final)
