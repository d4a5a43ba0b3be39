"""Sweeps: a variant's search space (`search:` in the study YAML) searched by Optuna's TPE through Ray Tune's
OptunaSearch, ASHA stopping weak trials on the per-epoch validation accuracy; the best finished config is
written as a YAML overlay that `train.py --config` takes as is.

    python -m bench.study configs/studies/optimizers.yaml --scale sweep --sweep [--num-samples 16]

Outputs in `<out>/<study>/`: sweep.csv (one row per trial: its sampled values, status ok / stopped / error,
val_acc, epochs), sweep.md, and `sweep/<variant>_<scale>_best.yaml` (the overlay). The test split is never
run. Resumable: trials already in sweep.csv are given to Optuna as evaluated points, and only the rest of
`num_samples` run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from augment.checks import CheckError
from bench.study.args import build_args, cli_value
from bench.study.engine import EngineOptions, run_trials, with_storage
from bench.study.records import append_row, read_rows
from bench.study.spec import Study, Variant
from bench.study.trial import RunFn, study_trial

__all__ = ["SWEEP_TRIAL_COLUMNS", "tune_space", "overlay", "sweep", "best_overlay_path", "swept_values"]

SWEEP_TRIAL_COLUMNS = (
    "study", "scale", "variant", "trial", "seed", "status", "val_acc", "epochs", "fit_time_s", "params", "message",
    "log_dir",
)  # fmt: skip


def tune_space(space: Mapping[str, tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """{dotted key: Ray Tune domain} from a parsed `search` mapping {key: (kind, values)}."""
    from ray import tune

    kinds = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "int": lambda v: tune.randint(v[0], v[1] + 1),  # both ends included
        "choice": lambda v: tune.choice(list(v)),
    }
    return {key: kinds[kind](values) for key, (kind, values) in space.items()}


def overlay(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config mapping from dotted keys: {"model.optimizer.lr": 0.1} -> {"model": {"optimizer": {"lr": 0.1}}}."""
    tree: dict[str, Any] = {}
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def best_overlay_path(study_dir: Path, variant: str, scale: str) -> Path:
    return Path(study_dir) / "sweep" / f"{variant}_{scale}_best.yaml"


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep trial needs to build its run: the study, variant, scale, seed and the fixed overrides."""

    study: Study
    variant: Variant
    scale: str
    seed: int
    out: Path
    extra: Mapping[str, Any] = field(default_factory=dict)

    def log_dir(self, trial_id: str) -> Path:
        return self.out / self.study.name / "sweep" / self.variant.name / f"{self.scale}_{trial_id}"


def sweep_trial(config: Mapping[str, Any], base: Mapping[str, Any], run_fn: RunFn | None = None) -> None:
    """Ray Tune trainable of a sweep: the sampled values (`config`) on top of the plan's run, then `study_trial`."""
    from ray import tune

    plan: SweepPlan = base["plan"]
    spec = {k: v for k, v in base.items() if k != "plan"}
    trial_id = tune.get_context().get_trial_id()
    log_dir = plan.log_dir(trial_id)
    params = {k: _plain(v) for k, v in config.items()}
    extra = {**plan.extra, **params, "run_test": False}
    args = build_args(plan.study, plan.variant, plan.scale, plan.seed, log_dir, extra)
    spec = {**spec, "args": args, "log_dir": str(log_dir), "record": _identity(plan, trial_id, params)}
    study_trial({"run": spec}, run_fn=run_fn)


def check_search_keys(plan: SweepPlan) -> None:
    """Each `search` key must be a config key train.py takes: parse the run's arguments with each key set."""
    from models.run.cli import CifarCLI

    args = build_args(plan.study, plan.variant, plan.scale, plan.seed, plan.log_dir("check"), plan.extra)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), _quiet_lightning():
        parser = CifarCLI(args).parser
    for key, (_kind, values) in plan.variant.search.items():
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args([*args, f"--{key}", cli_value(values[0])])
        except (Exception, SystemExit):  # noqa: BLE001 - jsonargparse: unknown key or a value of the wrong type
            raise CheckError(f"variant {plan.variant.name} search key", "a config key train.py takes", key) from None


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (seed, accelerator) off while the parser is built."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric",
                                                     "lightning_fabric")]  # fmt: skip
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _plain(value: Any) -> Any:
    """numpy scalars (from the samplers) as Python values, so YAML and the CLI read them back."""
    return value.item() if hasattr(value, "item") else value


def _label(variant: str, i: int) -> str:
    return f"trial {i + 1}"


def _describe(plan: SweepPlan, trial: Any) -> tuple[dict[str, Any], Path]:
    params = {k: _plain(v) for k, v in trial.config.items()}
    return _identity(plan, trial.trial_id, params), plan.log_dir(trial.trial_id)


def _identity(plan: SweepPlan, trial_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"study": plan.study.name, "scale": plan.scale, "variant": plan.variant.name, "trial": trial_id,
            "seed": plan.seed, "params": json.dumps(params, sort_keys=True)}  # fmt: skip


def _previous(rows: Iterable[Mapping[str, str]], variant: str, scale: str) -> list[tuple[dict[str, Any], float]]:
    """(params, val_acc) of the trials of `variant` at `scale` that reported a validation accuracy."""
    return [
        (json.loads(r["params"]), float(r["val_acc"]))
        for r in rows
        if r["variant"] == variant and r["scale"] == scale and r["status"] in ("ok", "stopped") and r["val_acc"]
    ]


def sweep(
    study: Study,
    scale: str,
    out_dir: str | Path = "runs/studies",
    only: Iterable[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    options: EngineOptions | None = None,
    num_samples: int | None = None,
    run_fn: RunFn | None = None,
) -> dict[str, Path]:
    """Search each selected variant's `search` space at `scale`; return {variant: best overlay path}."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    study.check_scale(scale)
    out_dir = Path(out_dir).resolve()
    study_dir = out_dir / study.name
    variants = [v for v in study.select(only) if v.search]
    if not variants:
        raise ValueError(f"search must be set on at least one selected variant of study {study.name}, got none")
    settings = study.sweep
    total = int(num_samples or settings["num_samples"])
    ledger = study_dir / "sweep.csv"
    chosen: dict[str, Path] = {}
    for variant in variants:
        plan = SweepPlan(study, variant, scale, study.seeds[0], out_dir, dict(extra or {}))
        check_search_keys(plan)  # an unknown key fails now, in one line, before Ray starts
        previous = _previous(read_rows(ledger), variant.name, scale)
        todo = total - len(previous)
        tag = f"[sweep {study.name}] {variant.name}"
        print(f"{tag} scale {scale}: {total} trials, {len(previous)} done, {max(todo, 0)} to do", flush=True)
        if todo > 0:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            searcher = OptunaSearch(
                metric="val_acc", mode="max", sampler=optuna.samplers.TPESampler(seed=settings["seed"]),
                points_to_evaluate=[p for p, _ in previous] or None,
                evaluated_rewards=[r for _, r in previous] or None,
            )  # fmt: skip
            scheduler = ASHAScheduler(
                time_attr="epoch", metric="val_acc", mode="max", max_t=settings["max_t"],
                grace_period=settings["grace_period"], reduction_factor=settings["reduction_factor"],
            )  # fmt: skip
            search = {
                "param_space": tune_space(variant.search), "search_alg": searcher, "scheduler": scheduler,
                "num_samples": todo, "trainable": sweep_trial, "label": functools.partial(_label, variant.name),
                "describe": functools.partial(_describe, plan),
            }  # fmt: skip
            base = {"plan": plan, "label": variant.name, "log_dir": str(plan.log_dir("x")), "record": {},
                    "evaluate": {}}  # fmt: skip
            engine = with_storage(options or EngineOptions(), study_dir / "ray")
            run_trials([base], engine, lambda i, row: _append(ledger, row), tag,
                       f"sweep_{variant.name}_{scale}", run_fn, search)  # fmt: skip
        rows = read_rows(ledger)
        chosen[variant.name] = _write_best(study_dir, variant.name, scale, rows)
        print(f"{tag}: best config in {chosen[variant.name]}", flush=True)
    _write_sweep_md(study, study_dir, rows, scale)
    return chosen


def _append(ledger: Path, row: Mapping[str, Any]) -> None:
    row = dict(row)
    if "params" in row and not isinstance(row["params"], str):
        row["params"] = json.dumps(row["params"], sort_keys=True)
    append_row(ledger, SWEEP_TRIAL_COLUMNS, row)


def _write_best(study_dir: Path, variant: str, scale: str, rows: list[dict[str, str]]) -> Path:
    """The overlay of the finished trial (status ok: the whole budget) with the best validation accuracy."""
    done = [r for r in rows if r["variant"] == variant and r["scale"] == scale and r["status"] == "ok" and r["val_acc"]]
    if not done:
        raise ValueError(f"sweep of {variant} at scale {scale} must finish at least one trial, got none")
    best = max(done, key=lambda r: float(r["val_acc"]))
    path = best_overlay_path(study_dir, variant, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Best of {len(done)} finished sweep trials of {variant} at scale {scale}: val acc "
              f"{float(best['val_acc']) * 100:.2f}% (trial {best['trial']}); train.py --config takes it.\n")
    path.write_text(header + yaml.safe_dump(overlay(json.loads(best["params"])), sort_keys=False))
    return path


def swept_values(study_dir: Path, variants: Iterable[str], scale: str) -> dict[str, dict[str, Any]]:
    """{variant: {dotted key: value}} of the best-config overlays the sweep wrote at `scale`."""
    found = {}
    for name in variants:
        path = best_overlay_path(study_dir, name, scale)
        if path.is_file():
            found[name] = _flatten(yaml.safe_load(path.read_text()) or {})
    return found


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_sweep_md(study: Study, study_dir: Path, rows: list[dict[str, str]], scale: str) -> None:
    lines = [f"# Sweep: {study.name} (scale {scale})", "",
             "Optuna TPE through Ray Tune, ASHA on the per-epoch validation accuracy; the test split is never run.",
             "", "| variant | trial | status | val acc (%) | epochs | params |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["scale"] != scale:
            continue
        acc = f"{float(r['val_acc']) * 100:.2f}" if r["val_acc"] else "-"
        params = ", ".join(f"{k} {cli_value(v)}" for k, v in json.loads(r["params"] or "{}").items())
        lines.append(f"| {r['variant']} | {r['trial']} | {r['status']} | {acc} | {r['epochs']} | {params} |")
    (study_dir / "sweep.md").write_text("\n".join(lines) + "\n")
