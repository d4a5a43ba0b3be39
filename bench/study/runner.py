"""The one run loop of studies and the LR sweep: planned runs as Ray Tune trials, resumable, one CSV record per run.

A study plans variants x seeds at one scale; the LR sweep plans, per variant with an `lr_grid`, one run per
(learning rate, seed) with the test split off. Both go through `run_planned`: a run already recorded with
status ok is skipped (a record its trial left in its run folder but the ledger lacks, from a driver that
died, is taken as is); the others run as Ray Tune trials (`bench.study.engine`, `bench.study.trial`), in
parallel where the resources allow. A failure is recorded with its one-line message and the study goes
on; records are appended in plan order, each as soon as the runs before it have theirs.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.study.args import build_args, merged_overrides, run_dir
from bench.study.engine import EngineOptions, run_trials, with_storage
from bench.study.records import Ledger
from bench.study.report import write_report, write_sweep_report
from bench.study.spec import Study, Variant, format_value
from bench.study.trial import RunFn, Tee, error_line, read_record

__all__ = ["RunFn", "PlannedRun", "run_planned", "run_study", "lr_sweep", "chosen_lrs", "write_kfold_oof", "error_line",
           "Tee"]  # fmt: skip


@dataclass(frozen=True)
class PlannedRun:
    """One fit: a variant at a seed, logging into `log_dir`; `extra` are its last overrides (`--set`, its LR)."""

    variant: Variant
    seed: int
    log_dir: Path
    extra: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""  # how the progress lines name the run


class _InPlanOrder:
    """Appends records to a ledger in plan order: record i as soon as records 0..i-1 are in."""

    def __init__(self, ledger: Ledger, total: int) -> None:
        self.ledger, self.total, self.next, self.waiting = ledger, total, 0, {}

    def put(self, index: int, row: Mapping[str, Any]) -> None:
        self.waiting[index] = row
        while self.next in self.waiting:
            self.ledger.append(self.waiting.pop(self.next))
            self.next += 1

    def flush(self) -> int:
        """Append what is still waiting (a run before it never finished); return how many runs have no record."""
        missing = self.total - self.next - len(self.waiting)
        for index in sorted(self.waiting):
            self.ledger.append(self.waiting.pop(index))
        return missing


def run_planned(
    study: Study,
    scale: str,
    runs: Sequence[PlannedRun],
    ledger: Ledger,
    run_fn: RunFn | None = None,
    title: str = "study",
    evaluate: bool = True,
    options: EngineOptions | None = None,
) -> None:
    """Run the planned runs not yet in `ledger` with status ok as Ray Tune trials, one record per run.

    `evaluate` adds the study's after-fit evaluation (ensemble probs, clean train accuracy); the LR sweep
    leaves it off, so it never touches the test split. Raises KeyboardInterrupt when the trials were
    stopped (Ctrl-C) before every run had its record.
    """
    done = ledger.done()
    records = [(run, _record(study, scale, run)) for run in runs]
    todo = [(run, row) for run, row in records if ledger.key(row) not in done]
    tag = f"[{title} {study.name}]"
    print(f"{tag} scale {scale}: {len(runs)} runs, {len(todo)} to do", flush=True)
    writer = _InPlanOrder(ledger, len(todo))
    specs: list[dict[str, Any]] = []
    plan_index: list[int] = []
    for i, (run, row) in enumerate(todo):
        try:
            args = build_args(study, run.variant, scale, run.seed, run.log_dir, run.extra)
        except ValueError as err:
            row.update(status="error", message=error_line(err), log_dir=str(run.log_dir))
            print(f"{tag} {run.label}: error {row['message']}", flush=True)
            writer.put(i, row)
            continue
        row["lr"] = merged_overrides(study, run.variant, scale, run.extra).get("model.optimizer.lr")
        left = read_record(run.log_dir)
        if left and left.get("status") == "ok" and ledger.key(left) == ledger.key(row):
            print(f"{tag} {run.label}: ok (finished earlier, recorded now)", flush=True)
            writer.put(i, left)
            continue
        evaluation = {"ensemble": study.ensemble, "gap": study.gap} if evaluate else {}
        record = {k: v for k, v in row.items()}
        spec = {"index": len(specs), "label": run.label, "args": args, "log_dir": str(run.log_dir),
                "record": record, "evaluate": evaluation}  # fmt: skip
        specs.append(spec)
        plan_index.append(i)
    try:
        if specs:
            options = with_storage(options or EngineOptions(), ledger.path.parent / "ray")
            name = f"{title.replace(' ', '_')}_{scale}"
            run_trials(specs, options, lambda j, rec: writer.put(plan_index[j], rec), tag, name, run_fn)
    finally:
        missing = writer.flush()
    if missing:
        raise KeyboardInterrupt(f"{missing} runs did not finish")


def _record(study: Study, scale: str, run: PlannedRun) -> dict[str, Any]:
    """The record's identity fields (the LR is the planned one until the run's args are built)."""
    return {
        "study": study.name, "scale": scale, "variant": run.variant.name, "group": run.variant.group,
        "seed": run.seed, "lr": run.extra.get("model.optimizer.lr"),
    }  # fmt: skip


def run_study(
    study: Study,
    scale: str,
    out_dir: str | Path = "runs/studies",
    seeds: Sequence[int] | None = None,
    only: Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    swept_lrs: Mapping[str, float] | None = None,
    run_fn: RunFn | None = None,
    options: EngineOptions | None = None,
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
    try:
        run_planned(study, scale, runs, ledger, run_fn, options=options)
    finally:
        rows = ledger.rows()
        write_report(study, rows, out_dir / study.name)
    write_kfold_oof(study, rows, scale, out_dir / study.name)
    return _plan_order(rows, study)


def write_kfold_oof(study: Study, rows: Iterable[Mapping[str, str]], scale: str, study_dir: Path) -> list[Path]:
    """Out-of-fold predictions and CV summary of each k-fold group (variants with `data.num_folds` > 1) through
    `bench.study.oof.write_study_oof`, once its runs at `scale` are all ok; a group holding one such set writes
    into the study folder, several into `<study>/<group>/`. Skipped when `bench.study.oof` is absent."""
    import importlib.util

    if importlib.util.find_spec("bench.study.oof") is None:  # the module is optional
        return []
    from bench.study.oof import write_study_oof

    folds = {v.name: v.group for v in study.variants if (v.overrides.get("data.num_folds") or 0) > 1}
    groups: dict[str, dict[str, Path]] = {}
    for r in rows:  # the latest ok run of each fold variant, first seed only (a fold must appear once)
        if r["scale"] == scale and r["status"] == "ok" and r["variant"] in folds and int(r["seed"]) == study.seeds[0]:
            groups.setdefault(folds[r["variant"]], {})[r["variant"]] = Path(r["log_dir"])
    written = []
    for group, runs in groups.items():
        target = study_dir if len(groups) == 1 else study_dir / group
        target.mkdir(parents=True, exist_ok=True)
        try:
            write_study_oof(target, [runs[name] for name in sorted(runs)])
        except (ValueError, OSError) as err:
            print(f"[study {study.name}] {group}: no out-of-fold summary ({error_line(err)})", flush=True)
            continue
        written.append(target)
    return written


def lr_sweep(
    study: Study,
    scale: str,
    out_dir: str | Path = "runs/studies",
    seeds: Sequence[int] | None = None,
    only: Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    run_fn: RunFn | None = None,
    options: EngineOptions | None = None,
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
    run_planned(study, scale, runs, ledger, run_fn, title="lr sweep", evaluate=False, options=options)
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


def _plan_order(rows: list[dict[str, str]], study: Study) -> list[dict[str, str]]:
    """Rows sorted by the study's variant order, then seed (stable: a run's earlier attempts come first)."""
    order = {v.name: i for i, v in enumerate(study.variants)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), int(r["seed"])))
