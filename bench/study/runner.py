"""The one run loop of studies and the LR sweep: planned runs in order, resumable, one CSV record per run.

A study plans variants x seeds at one scale; the LR sweep plans, per variant with an `lr_grid`, one run per
(learning rate, seed) with the test split off. Both go through `run_planned`: a run already recorded with
status ok is skipped, a stale log directory is removed before a fit, a failure is recorded with its one-line
message and the loop goes on, and every record is flushed to disk before the next run starts.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import statistics
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.checks import CheckError
from bench.study.args import build_args, merged_overrides, run_dir
from bench.study.records import Ledger, metric_fields
from bench.study.report import write_report, write_sweep_report
from bench.study.spec import Study, Variant, format_value

__all__ = ["RunFn", "PlannedRun", "run_planned", "run_study", "lr_sweep", "chosen_lrs", "error_line"]

RunFn = Callable[[list[str]], Mapping[str, Any]]


@dataclass(frozen=True)
class PlannedRun:
    """One fit: a variant at a seed, logging into `log_dir`; `extra` are its last overrides (`--set`, its LR)."""

    variant: Variant
    seed: int
    log_dir: Path
    extra: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""  # how the progress lines name the run


def error_line(err: BaseException, stderr_tail: str = "") -> str:
    """`<Type>: <message>` in one line; a SystemExit (jsonargparse printed the parse error) reads stderr's last line."""
    from models.cli import _one_line

    if isinstance(err, SystemExit):
        lines = [ln.strip() for ln in stderr_tail.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else f"exit code {err.code}"
    else:
        text = _one_line(err) if str(err).strip() else ""
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


def _default_run_fn() -> RunFn:
    from models.cli import run

    return run


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _call(run_fn: RunFn, args: list[str]) -> tuple[Mapping[str, Any] | None, str]:
    """Run one config; return (metrics, '') or (None, one-line error). KeyboardInterrupt propagates."""
    tee = Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(tee):
            metrics = run_fn(args)
        return metrics, ""
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a study records every failure and goes on
        traceback.print_exc()
        return None, error_line(err, tee.tail)
    finally:
        _release_memory()


def _after_run(study: Study, log_dir: Path) -> dict[str, Any]:
    """Extra evaluation of the selected checkpoint: test probs (ensemble), clean train accuracy (gap)."""
    extra: dict[str, Any] = {}
    if not (study.ensemble or study.gap):
        return extra
    from bench import ensemble

    try:
        if study.ensemble:
            ensemble.save_split_probs(log_dir, "test")
        if study.gap:
            probs, labels = ensemble.save_split_probs(log_dir, "train")
            extra["train_acc_clean"] = ensemble.accuracy(probs, labels)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the fit itself succeeded; say what failed
        traceback.print_exc()
        extra["message"] = f"evaluation failed: {error_line(err)}"
    return extra


def run_planned(
    study: Study,
    scale: str,
    runs: Sequence[PlannedRun],
    ledger: Ledger,
    run_fn: RunFn | None = None,
    title: str = "study",
    evaluate: bool = True,
) -> None:
    """Fit the planned runs not yet in `ledger` with status ok, appending one record per run.

    `evaluate` adds the study's after-fit evaluation (ensemble probs, clean train accuracy); the LR sweep
    leaves it off, so it never touches the test split.
    """
    done = ledger.done()
    records = [(run, _record(study, scale, run)) for run in runs]
    todo = [(run, row) for run, row in records if ledger.key(row) not in done]
    tag = f"[{title} {study.name}]"
    print(f"{tag} scale {scale}: {len(runs)} runs, {len(todo)} to do", flush=True)
    run_fn = run_fn or _default_run_fn()
    for i, (run, row) in enumerate(todo, 1):
        try:
            args = build_args(study, run.variant, scale, run.seed, run.log_dir, run.extra)
        except ValueError as err:
            metrics, message = None, error_line(err)
        else:
            row["lr"] = merged_overrides(study, run.variant, scale, run.extra).get("model.optimizer.lr")
            print(f"{tag} ({i}/{len(todo)}) {run.label}: {' '.join(args)}", flush=True)
            _fresh_dir(run.log_dir)
            metrics, message = _call(run_fn, args)
        if metrics is None:
            row.update(status="error", message=message, log_dir=str(run.log_dir))
        else:
            row.update(metric_fields(metrics), status="ok", log_dir=str(metrics.get("log_dir") or run.log_dir))
            if evaluate:
                row.update(_after_run(study, Path(row["log_dir"])))
        ledger.append(row)
        print(f"{tag} {run.label}: {row['status']} {message}", flush=True)


def _record(study: Study, scale: str, run: PlannedRun) -> dict[str, Any]:
    """The record's identity fields (the LR is the planned one until the run's args are built)."""
    return {
        "study": study.name, "scale": scale, "variant": run.variant.name, "group": run.variant.group,
        "seed": run.seed, "lr": run.extra.get("model.optimizer.lr"),
    }  # fmt: skip


def _fresh_dir(log_dir: Path) -> None:
    """Remove what an interrupted or failed earlier attempt left (stale checkpoints would be picked up)."""
    import shutil

    if log_dir.exists():
        shutil.rmtree(log_dir)


def run_study(
    study: Study,
    scale: str,
    out_dir: str | Path = "runs/studies",
    seeds: Sequence[int] | None = None,
    only: Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    swept_lrs: Mapping[str, float] | None = None,
    run_fn: RunFn | None = None,
) -> list[dict[str, str]]:
    """Run the study's variants x seeds at `scale`, append to results.csv, write the report; return all rows."""
    study.check_scale(scale)
    out_dir = Path(out_dir)
    runs = []
    for variant, seed in itertools.product(study.select(only), tuple(seeds) if seeds else study.seeds):
        run_extra = dict(extra or {})
        if swept_lrs and variant.name in swept_lrs:
            run_extra["model.optimizer.lr"] = swept_lrs[variant.name]
        log_dir = run_dir(out_dir, study, variant, scale, seed)
        runs.append(PlannedRun(variant, seed, log_dir, run_extra, f"{variant.name} seed {seed}"))
    ledger = Ledger.results(out_dir / study.name)
    run_planned(study, scale, runs, ledger, run_fn)
    rows = ledger.rows()
    write_report(study, rows, out_dir / study.name)
    return rows


def lr_sweep(
    study: Study,
    scale: str,
    out_dir: str | Path = "runs/studies",
    seeds: Sequence[int] | None = None,
    only: Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    run_fn: RunFn | None = None,
) -> dict[str, float]:
    """Fit each variant's `lr_grid` at `scale` (no test run) and pick the LR of best mean val accuracy.

    Appends to `<out>/<study>/lr_sweep.csv`, writes lr_sweep.md, returns {variant: chosen lr}.
    """
    study.check_scale(scale)
    out_dir = Path(out_dir)
    variants = [v for v in study.select(only) if v.lr_grid]
    if not variants:
        raise ValueError(f"lr_grid must be set on at least one selected variant of study {study.name}, got none")
    runs = [
        PlannedRun(
            variant,
            seed,
            run_dir(out_dir / study.name / "lr_sweep", study, variant, scale, seed, f"lr{format_value(lr)}"),
            {**(extra or {}), "model.optimizer.lr": lr, "run_test": False},
            f"{variant.name} lr {lr:g} seed {seed}",
        )
        for variant in variants
        for lr, seed in itertools.product(variant.lr_grid, tuple(seeds) if seeds else study.seeds[:1])
    ]
    ledger = Ledger.sweep(out_dir / study.name)
    run_planned(study, scale, runs, ledger, run_fn, title="lr sweep", evaluate=False)
    rows = ledger.rows()
    chosen = chosen_lrs(rows, scale)
    write_sweep_report(study, rows, scale, chosen, out_dir / study.name)
    return chosen


def chosen_lrs(rows: Iterable[Mapping[str, str]], scale: str) -> dict[str, float]:
    """{variant: lr with the highest mean validation accuracy} over ok sweep rows of `scale` (ties: smaller lr)."""
    scores: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if r["scale"] == scale and r["status"] == "ok" and r.get("val_acc"):
            scores.setdefault(r["variant"], {}).setdefault(float(r["lr"]), []).append(float(r["val_acc"]))
    return {
        v: max(sorted(by_lr), key=lambda lr: statistics.fmean(by_lr[lr])) for v, by_lr in scores.items()
    }
