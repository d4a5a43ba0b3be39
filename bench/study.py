"""Study runner: variants x seeds of `models.cli.run`, one CSV row per run, tables and a plot.

    python -m bench.study configs/studies/regularizers.yaml --scale short
    python -m bench.study configs/studies/norms.yaml --scale cpu --set data.root=/work/data/cifar10
    python -m bench.study configs/studies/optimizers.yaml --scale sweep --lr-sweep
    python -m bench.study configs/studies/optimizers.yaml --scale short --use-swept-lr sweep

A study YAML names the base recipes, the budgets (`scales`: CLI overrides per budget), the seeds and
the variants (overlay configs + overrides). The args of one run are, in order (later wins):
base configs, variant configs, study `overrides`, `scales[scale]`, variant `overrides`, variant
`scales[scale]`, linear LR scaling, `--set`, the variant's `seed_keys` (set to the run seed), then the
runner's seed and logger. A scale's `configs` list is passed after the variant's configs. Every run fits and
tests in this process (GPU-resident data and the dataset cache stay warm) and logs under
`<out>/<study>/<variant>/<scale>_seed<k>`. Outputs in `<out>/<study>/`: results.csv (appended and
flushed after every run, so an interrupted study loses nothing; a run already there with status ok
is skipped), results.md (mean +- std per variant group), results.png, and for the LR sweep
lr_sweep.csv / lr_sweep.md (chosen on validation accuracy; the sweep never runs the test split).
A failing run is recorded with status error and its one-line message, and the study goes on.

Study YAML keys: name, description, base (list of config files), seeds, scales {name: {key: value}},
overrides, linear_lr {base_lr, base_batch}, report {primary: test_acc | val_acc, gap: bool,
ensemble: bool}, variants [{name, group, configs, overrides, scales, grid {key: [values]},
lr_grid [floats], seed_keys [keys]}]. Relative paths are relative to the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "REPO_ROOT",
    "RESULT_COLUMNS",
    "SWEEP_COLUMNS",
    "Variant",
    "Study",
    "load_study",
    "merged_overrides",
    "run_dir",
    "build_args",
    "run_key",
    "run_study",
    "lr_sweep",
    "chosen_lrs",
    "check_study",
    "read_rows",
    "summarize",
    "write_report",
    "plot_results",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_COLUMNS = (
    "study", "scale", "variant", "group", "seed", "status", "test_acc", "val_acc", "train_acc",
    "train_acc_clean", "train_loss", "test_loss", "epochs", "global_step", "fit_time_s", "lr", "message",
    "log_dir",
)  # fmt: skip
SWEEP_COLUMNS = ("study", "scale", "variant", "lr", "seed", "status", "val_acc", "epochs", "fit_time_s", "message", "log_dir")
STUDY_KEYS = {"name", "description", "base", "seeds", "scales", "overrides", "linear_lr", "report", "variants"}
VARIANT_KEYS = {"name", "group", "configs", "overrides", "scales", "grid", "lr_grid", "seed_keys", "note"}
REPORT_KEYS = {"primary", "gap", "ensemble"}
PRIMARY_METRICS = ("test_acc", "val_acc")
LOGGER_CLASS = "pytorch_lightning.loggers.TensorBoardLogger"
RunFn = Callable[[list[str]], Mapping[str, Any]]


@dataclass(frozen=True)
class Variant:
    """One arm of a study: overlay configs and dotted-key overrides, optionally per scale."""

    name: str
    group: str
    configs: tuple[Path, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = ()
    seed_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    """A parsed study YAML (see the module docstring for the keys)."""

    name: str
    path: Path
    base: tuple[Path, ...]
    seeds: tuple[int, ...]
    scales: dict[str, dict[str, Any]]
    variants: tuple[Variant, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    linear_lr: tuple[float, int] | None = None
    primary: str = "test_acc"
    gap: bool = False
    ensemble: bool = False
    description: str = ""

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"variant must be one of {', '.join(v.name for v in self.variants)}, got {name!r}")

    def check_scale(self, scale: str) -> str:
        """`scale` if the study defines it, else ValueError listing the scales."""
        if scale not in self.scales:
            raise ValueError(f"--scale must be one of {', '.join(self.scales)} for study {self.name}, got {scale!r}")
        return scale

    def select(self, only: Iterable[str] | None) -> list[Variant]:
        """Variants whose name or group is in `only` (all when None); unknown names raise ValueError."""
        if not only:
            return list(self.variants)
        wanted = list(only)
        known = {v.name for v in self.variants} | {v.group for v in self.variants}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(f"--only must name variants or groups of {self.name} ({', '.join(sorted(known))}), got {unknown}")
        return [v for v in self.variants if v.name in wanted or v.group in wanted]


# ----------------------------------------------------------------------------------------------- loading


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _paths(field_name: str, value: Any) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, Path)) for v in value):
        raise ValueError(f"{field_name} must be a list of config paths, got {value!r}")
    paths = tuple(_resolve(v) for v in value)
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{field_name} must name existing files, got {str(p)!r}")
    return paths


def _overrides(field_name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"{field_name} must be a mapping of dotted config keys to values, got {value!r}")
    return dict(value)


def _scale_map(field_name: str, value: Any) -> dict[str, dict[str, Any]]:
    """{scale: overrides}; an override key `configs` (list of files) stays a tuple of resolved paths."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field_name} must be a mapping of scale name to overrides, got {value!r}")
    scales = {}
    for k, v in value.items():
        _safe_name(f"{field_name} name", str(k))
        overrides = _overrides(f"{field_name}.{k}", v)
        if "configs" in overrides:
            overrides["configs"] = _paths(f"{field_name}.{k}.configs", overrides["configs"])
        scales[str(k)] = overrides
    return scales


def _check_keys(field_name: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ValueError(f"{field_name} keys must be among {', '.join(sorted(allowed))}, got {', '.join(extra)}")


def _safe_name(field_name: str, name: Any) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ ,") or name.startswith("."):
        raise ValueError(f"{field_name} must be a non-empty name without '/', ',' or spaces, got {name!r}")
    return name


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}".replace("+", "")
    return str(value)


def _expand_grid(raw: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """One raw variant per combination of `grid` values, named `<name>_<last key part><value>...`."""
    grid = raw.get("grid")
    if grid is None:
        return [dict(raw)]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{where}.grid must map dotted keys to non-empty lists, got {grid!r}")
    keys = list(grid)
    expanded = []
    for values in itertools.product(*(grid[k] for k in keys)):
        suffix = "_".join(f"{k.split('.')[-1]}{_format_value(v)}" for k, v in zip(keys, values))
        item = {k: v for k, v in raw.items() if k != "grid"}
        item["name"] = f"{raw['name']}_{suffix}"
        item.setdefault("group", raw["name"])
        item["overrides"] = {**_overrides(f"{where}.overrides", raw.get("overrides")), **dict(zip(keys, values))}
        expanded.append(item)
    return expanded


def _variant(raw: Mapping[str, Any], where: str) -> Variant:
    name = _safe_name(f"{where}.name", raw.get("name"))
    lr_grid = raw.get("lr_grid") or []
    if not isinstance(lr_grid, list) or not all(isinstance(x, (int, float)) and x > 0 for x in lr_grid):
        raise ValueError(f"{where}.lr_grid must be a list of positive learning rates, got {lr_grid!r}")
    seed_keys = raw.get("seed_keys") or []
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) and k for k in seed_keys):
        raise ValueError(f"{where}.seed_keys must be a list of dotted config keys, got {seed_keys!r}")
    return Variant(
        name=name,
        seed_keys=tuple(seed_keys),
        group=_safe_name(f"{where}.group", raw.get("group", name)),
        configs=_paths(f"{where}.configs", raw.get("configs")),
        overrides=_overrides(f"{where}.overrides", raw.get("overrides")),
        scales=_scale_map(f"{where}.scales", raw.get("scales")),
        lr_grid=tuple(float(x) for x in lr_grid),
    )


def load_study(path: str | Path) -> Study:
    """Parse and validate a study YAML; raise ValueError naming the bad field."""
    path = _resolve(path)
    if not path.is_file():
        raise ValueError(f"study must be an existing YAML file, got {str(path)!r}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"study must be a YAML mapping, got {type(raw).__name__}")
    _check_keys("study", raw, STUDY_KEYS)
    name = _safe_name("study.name", raw.get("name"))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"study.seeds must be a non-empty list of ints, got {seeds!r}")
    scales = _scale_map("study.scales", raw.get("scales"))
    if not scales:
        raise ValueError("study.scales must define at least one scale, got none")
    report = raw.get("report") or {}
    if not isinstance(report, dict):
        raise ValueError(f"study.report must be a mapping, got {report!r}")
    _check_keys("study.report", report, REPORT_KEYS)
    primary = report.get("primary", "test_acc")
    if primary not in PRIMARY_METRICS:
        raise ValueError(f"study.report.primary must be one of {', '.join(PRIMARY_METRICS)}, got {primary!r}")
    linear_lr = raw.get("linear_lr")
    if linear_lr is not None:
        if not isinstance(linear_lr, dict) or set(linear_lr) != {"base_lr", "base_batch"}:
            raise ValueError(f"study.linear_lr must be {{base_lr: float, base_batch: int}}, got {linear_lr!r}")
        if not linear_lr["base_lr"] > 0 or not (isinstance(linear_lr["base_batch"], int) and linear_lr["base_batch"] > 0):
            raise ValueError(f"study.linear_lr must have base_lr > 0 and base_batch an int > 0, got {linear_lr!r}")
        linear_lr = (float(linear_lr["base_lr"]), int(linear_lr["base_batch"]))
    raw_variants = raw.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ValueError(f"study.variants must be a non-empty list, got {raw_variants!r}")
    variants: list[Variant] = []
    for i, rv in enumerate(raw_variants):
        where = f"study.variants[{i}]"
        if not isinstance(rv, dict):
            raise ValueError(f"{where} must be a mapping, got {rv!r}")
        _check_keys(where, rv, VARIANT_KEYS)
        _safe_name(f"{where}.name", rv.get("name"))
        variants.extend(_variant(item, where) for item in _expand_grid(rv, where))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"study.variants names must be unique, got duplicates {dupes}")
    for v in variants:
        unknown = sorted(set(v.scales) - set(scales))
        if unknown:
            raise ValueError(f"variant {v.name}.scales must use scales of study.scales ({', '.join(scales)}), got {unknown}")
    return Study(
        name=name,
        path=path,
        base=_paths("study.base", raw.get("base")),
        seeds=tuple(seeds),
        scales=scales,
        variants=tuple(variants),
        overrides=_overrides("study.overrides", raw.get("overrides")),
        linear_lr=linear_lr,
        primary=primary,
        gap=bool(report.get("gap", False)),
        ensemble=bool(report.get("ensemble", False)),
        description=str(raw.get("description", "")).strip(),
    )


# ----------------------------------------------------------------------------------------------- args


def _cli_value(value: Any) -> str:
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


def merged_overrides(study: Study, variant: Variant, scale: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Dotted-key overrides of one run in precedence order (the later update wins)."""
    study.check_scale(scale)
    merged: dict[str, Any] = {}
    for part in (study.overrides, study.scales[scale], variant.overrides, variant.scales.get(scale, {})):
        merged.update({k: v for k, v in part.items() if k != "configs"})
    if study.linear_lr is not None:
        base_lr, base_batch = study.linear_lr
        batch = merged.get("data.batch_size")
        if not isinstance(batch, int):
            raise ValueError(f"data.batch_size must be set in the overrides of variant {variant.name} for linear_lr, got {batch!r}")
        merged["model.optimizer.lr"] = base_lr * batch / base_batch
    merged.update(extra or {})
    return merged


def run_dir(out_dir: Path, study: Study, variant: Variant, scale: str, seed: int, tag: str = "") -> Path:
    """Logger directory of one run: `<out>/<study>/<variant>/<scale>[_tag]_seed<k>`."""
    return Path(out_dir) / study.name / variant.name / f"{scale}{'_' + tag if tag else ''}_seed{seed}"


def build_args(
    study: Study, variant: Variant, scale: str, seed: int, log_dir: Path, extra: Mapping[str, Any] | None = None
) -> list[str]:
    """The `models.cli.run` argument list of one run, logging into `log_dir`."""
    overrides = {**merged_overrides(study, variant, scale, extra), **{k: seed for k in variant.seed_keys}}
    args: list[str] = []
    scale_configs = (*study.scales[scale].get("configs", ()), *variant.scales.get(scale, {}).get("configs", ()))
    for cfg in (*study.base, *variant.configs, *scale_configs):
        args += ["--config", str(cfg)]
    for key, value in overrides.items():
        args += [f"--{key}", _cli_value(value)]
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
    return args


def run_key(variant: str, seed: int | str, scale: str, lr: float | str | None = None) -> tuple[str, ...]:
    """Identity of a run in the CSVs (resume skips keys already recorded with status ok)."""
    key = (str(variant), str(int(seed)), str(scale))
    return key if lr is None else (*key, _cli_value(float(lr)))


# ----------------------------------------------------------------------------------------------- csv


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _append_row(path: Path, columns: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append one row and fsync, writing the header first for a new file; refuse a foreign header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != tuple(columns):
            raise ValueError(f"results file must have columns {','.join(columns)}, got {','.join(header)} in {path}")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({c: _csv_value(row.get(c)) for c in columns})
        f.flush()
        os.fsync(f.fileno())


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _metric(metrics: Mapping[str, Any], *names: str) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None:
            return float(value)
    return None


def _one_line(err: BaseException, stderr_tail: str = "") -> str:
    text = str(err).strip()
    if isinstance(err, SystemExit):  # jsonargparse prints the parse error and exits
        lines = [ln.strip() for ln in stderr_tail.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else f"exit code {err.code}"
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}"[:500].replace("\n", " ")


class _Tee(io.TextIOBase):
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
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def _call(run_fn: RunFn, args: list[str]) -> tuple[Mapping[str, Any] | None, str]:
    """Run one config; return (metrics, '') or (None, one-line error). KeyboardInterrupt propagates."""
    tee = _Tee(sys.stderr)
    argv = sys.argv
    try:
        sys.argv = argv[:1]  # LightningCLI warns when it sees both `args` and command-line arguments
        with contextlib.redirect_stderr(tee):
            metrics = run_fn(args)
        return metrics, ""
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a study records every failure and goes on
        traceback.print_exc()
        return None, _one_line(err, tee.tail)
    finally:
        sys.argv = argv
        _release_memory()


# ----------------------------------------------------------------------------------------------- runs


def _fresh_dir(log_dir: Path) -> None:
    """Remove what an interrupted or failed earlier attempt left (stale checkpoints would be picked up)."""
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
    study_dir = out_dir / study.name
    csv_path = study_dir / "results.csv"
    variants = study.select(only)
    seeds = tuple(seeds) if seeds else study.seeds
    done = {run_key(r["variant"], r["seed"], r["scale"]) for r in read_rows(csv_path) if r["status"] == "ok"}
    run_fn = run_fn or _default_run_fn()
    todo = [(v, s) for v in variants for s in seeds if run_key(v.name, s, scale) not in done]
    print(f"[study {study.name}] scale {scale}: {len(variants) * len(seeds)} runs, {len(todo)} to do", flush=True)
    for i, (variant, seed) in enumerate(todo, 1):
        run_extra = dict(extra or {})
        if swept_lrs and variant.name in swept_lrs:
            run_extra["model.optimizer.lr"] = swept_lrs[variant.name]
        log_dir = run_dir(out_dir, study, variant, scale, seed)
        row: dict[str, Any] = {"study": study.name, "scale": scale, "variant": variant.name, "group": variant.group, "seed": seed}
        try:
            args = build_args(study, variant, scale, seed, log_dir, run_extra)
        except ValueError as err:
            metrics, message = None, _one_line(err)
        else:
            row["lr"] = merged_overrides(study, variant, scale, run_extra).get("model.optimizer.lr")
            print(f"[study {study.name}] ({i}/{len(todo)}) {variant.name} seed {seed}: {' '.join(args)}", flush=True)
            _fresh_dir(log_dir)
            metrics, message = _call(run_fn, args)
        if metrics is None:
            row.update(status="error", message=message, log_dir=str(log_dir))
        else:
            row.update(_row_metrics(metrics), status="ok", log_dir=str(metrics.get("log_dir") or log_dir))
            row.update(_after_run(study, Path(row["log_dir"])))
        _append_row(csv_path, RESULT_COLUMNS, row)
        print(f"[study {study.name}] {variant.name} seed {seed}: {row['status']} {message}", flush=True)
    rows = read_rows(csv_path)
    write_report(study, rows, study_dir)
    return rows


def _row_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "test_acc": _metric(metrics, "test/acc"),
        "val_acc": _metric(metrics, "val/acc_best", "val/acc"),
        "train_acc": _metric(metrics, "train/acc", "train/acc_epoch"),
        "train_loss": _metric(metrics, "train/loss", "train/loss_epoch"),
        "test_loss": _metric(metrics, "test/loss"),
        "epochs": metrics.get("epochs"),
        "global_step": metrics.get("global_step"),
        "fit_time_s": _metric(metrics, "fit_time_s"),
    }


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
        extra["message"] = f"evaluation failed: {_one_line(err)}"
    return extra


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
    csv_path = out_dir / study.name / "lr_sweep.csv"
    variants = [v for v in study.select(only) if v.lr_grid]
    if not variants:
        raise ValueError(f"lr_grid must be set on at least one selected variant of study {study.name}, got none")
    seeds = tuple(seeds) if seeds else study.seeds[:1]
    done = {
        run_key(r["variant"], r["seed"], r["scale"], r["lr"]) for r in read_rows(csv_path) if r["status"] == "ok"
    }
    run_fn = run_fn or _default_run_fn()
    for variant in variants:
        for lr, seed in itertools.product(variant.lr_grid, seeds):
            if run_key(variant.name, seed, scale, lr) in done:
                continue
            log_dir = run_dir(out_dir / study.name / "lr_sweep", study, variant, scale, seed, f"lr{_format_value(lr)}")
            run_extra = {**(extra or {}), "model.optimizer.lr": lr, "run_test": False}
            row: dict[str, Any] = {"study": study.name, "scale": scale, "variant": variant.name, "lr": lr, "seed": seed}
            try:
                args = build_args(study, variant, scale, seed, log_dir, run_extra)
            except ValueError as err:
                metrics, message = None, _one_line(err)
            else:
                print(f"[lr sweep {study.name}] {variant.name} lr {lr:g} seed {seed}", flush=True)
                _fresh_dir(log_dir)
                metrics, message = _call(run_fn, args)
            if metrics is None:
                row.update(status="error", message=message, log_dir=str(log_dir))
            else:
                row.update(
                    status="ok",
                    val_acc=_metric(metrics, "val/acc_best", "val/acc"),
                    epochs=metrics.get("epochs"),
                    fit_time_s=_metric(metrics, "fit_time_s"),
                    log_dir=str(metrics.get("log_dir") or log_dir),
                )
            _append_row(csv_path, SWEEP_COLUMNS, row)
    rows = read_rows(csv_path)
    chosen = chosen_lrs(rows, scale)
    _write_sweep_report(study, rows, scale, chosen, csv_path.parent)
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


def _write_sweep_report(study: Study, rows: list[dict[str, str]], scale: str, chosen: Mapping[str, float], out: Path) -> None:
    lines = [
        f"# LR sweep: {study.name} (scale {scale})",
        "",
        "Chosen on validation accuracy (`val/acc_best`, held-out split of the training set); the test split is never run.",
        "",
        "| variant | lr | n | val acc (%) | chosen |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        if r["scale"] == scale and r["status"] == "ok" and r.get("val_acc"):
            groups.setdefault((r["variant"], float(r["lr"])), []).append(float(r["val_acc"]))
    for (variant, lr), vals in sorted(groups.items()):
        grid = next((v.lr_grid for v in study.variants if v.name == variant), ())
        edge = " (grid edge: widen lr_grid)" if grid and lr in (min(grid), max(grid)) else ""
        mark = f"yes{edge}" if chosen.get(variant) == lr else ""
        lines.append(f"| {variant} | {lr:g} | {len(vals)} | {_mean_std(vals)} | {mark} |")
    errors = [r for r in rows if r["scale"] == scale and r["status"] != "ok"]
    lines += _error_lines(errors)
    (out / "lr_sweep.md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- report


def _floats(rows: Iterable[Mapping[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def _stats(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    st = _stats(values)
    if st is None:
        return "-"
    return f"{st[0] * scale:.{digits}f} ± {st[1] * scale:.{digits}f}"


def summarize(rows: Iterable[Mapping[str, str]], scale: str) -> list[dict[str, Any]]:
    """Per variant group (in first-seen order) at `scale`: n ok runs and the lists of each metric."""
    groups: dict[str, list[Mapping[str, str]]] = {}
    for r in rows:
        if r["scale"] == scale and r["status"] == "ok":
            groups.setdefault(r["group"] or r["variant"], []).append(r)
    summary = []
    for group, members in groups.items():
        entry: dict[str, Any] = {"group": group, "n": len(members)}
        for key in ("test_acc", "val_acc", "train_acc", "train_acc_clean", "epochs", "fit_time_s"):
            entry[key] = _floats(members, key)
        train = entry["train_acc_clean"] or entry["train_acc"]
        entry["gap"] = [
            float(r.get("train_acc_clean") or r["train_acc"]) - float(r["test_acc"])
            for r in members
            if (r.get("train_acc_clean") or r.get("train_acc")) and r.get("test_acc")
        ] if train else []
        summary.append(entry)
    return summary


def _error_lines(errors: list[Mapping[str, str]]) -> list[str]:
    if not errors:
        return []
    lines = ["", "Failed runs:", ""]
    lines += [f"- {r['variant']} seed {r['seed']}: {r.get('message', '')}" for r in errors]
    return lines


def write_report(study: Study, rows: list[dict[str, str]], out: Path) -> None:
    """results.md (one table per scale found in the rows) and results.png (the latest scale run)."""
    out.mkdir(parents=True, exist_ok=True)
    scales = list(dict.fromkeys(r["scale"] for r in rows))
    lines = [f"# Study: {study.name}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [
        "Mean ± sample std over the finished runs of each variant group (seeds, folds); accuracies in %.",
        f"Regenerate: `python -m bench.study {_display(study.path)} --report-only`.",
    ]
    for scale in scales:
        lines += ["", f"## Scale: {scale}", ""] + _table(study, summarize(rows, scale))
        ok = {run_key(r["variant"], r["seed"], scale) for r in rows if r["scale"] == scale and r["status"] == "ok"}
        failed = [r for r in rows if r["scale"] == scale and r["status"] != "ok"]
        lines += _error_lines([r for r in failed if run_key(r["variant"], r["seed"], scale) not in ok])
        if study.ensemble:
            from bench import ensemble

            lines += ["", "### Ensembles (test split, softmax averaged over the group's models)", ""]
            lines += ensemble.ensemble_table(ensemble.ensemble_summary(rows, scale))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if scales:
        plot_results(study, summarize(rows, scales[-1]), out / "results.png", scales[-1])


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _table(study: Study, summary: list[dict[str, Any]]) -> list[str]:
    head = ["variant", "n", "test acc (%)", "val acc (%)"]
    if study.gap:
        head += ["train acc (%)", "train-test gap (pp)"]
    head += ["epochs", "fit time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["group"], str(e["n"]), _mean_std(e["test_acc"]), _mean_std(e["val_acc"])]
        if study.gap:
            cells += [_mean_std(e["train_acc_clean"] or e["train_acc"]), _mean_std(e["gap"])]
        cells += [_mean_std(e["epochs"], 1.0, 1), _mean_std(e["fit_time_s"], 1.0, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if not summary:
        lines.append("| (no finished runs) |" + " |" * (len(head) - 1))
    return lines


def plot_results(study: Study, summary: list[dict[str, Any]], path: Path, scale: str) -> None:
    """Bar chart of the primary accuracy (mean, std error bars) per group; a gap panel for gap studies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if study.gap else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(5.0, 0.9 * len(summary) + 2) * panels, 4), squeeze=False)
    names = [e["group"] for e in summary]
    xs = list(range(len(summary)))
    label = "test accuracy (%)" if study.primary == "test_acc" else "validation accuracy (%)"
    stats = [_stats(e[study.primary]) or (math.nan, 0.0) for e in summary]
    ax = axes[0][0]
    ax.bar(xs, [m * 100 for m, _ in stats], yerr=[s * 100 for _, s in stats], capsize=4, color="tab:blue")
    finite = [m * 100 for m, _ in stats if not math.isnan(m)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 3))
    ax.set_ylabel(label)
    ax.set_title(f"{study.name} ({scale}, n={'/'.join(sorted({str(e['n']) for e in summary})) or 0})")
    if study.gap:
        gx = axes[0][1]
        width = 0.4
        train = [_stats(e["train_acc_clean"] or e["train_acc"]) or (math.nan, 0.0) for e in summary]
        gap = [_stats(e["gap"]) or (math.nan, 0.0) for e in summary]
        gx.bar([x - width / 2 for x in xs], [m * 100 for m, _ in train], width, yerr=[s * 100 for _, s in train], label="train acc", capsize=3)
        gx.bar([x + width / 2 for x in xs], [m * 100 for m, _ in gap], width, yerr=[s * 100 for _, s in gap], label="train - test (pp)", capsize=3)
        gx.set_title("train accuracy and generalization gap")
        gx.legend()
    for row in axes:
        for a in row:
            a.set_xticks(xs)
            a.set_xticklabels(names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- check


def check_study(study: Study, scale: str, extra: Mapping[str, Any] | None = None, only: Iterable[str] | None = None) -> dict[str, str]:
    """Parse and instantiate every selected variant's config without fitting or loading data.

    The first variant goes through the full `CifarCLI` (model, data module, callbacks, trainer); the
    others reuse its parser and instantiate the model, data module and callbacks (one parser build,
    so checking a whole study takes seconds). Returns {variant: '' or the one-line error}.
    """
    from models.cli import CifarCLI

    study.check_scale(scale)
    problems: dict[str, str] = {}
    parser = None
    for variant in study.select(only):
        log_dir = run_dir(Path("runs/check"), study, variant, scale, study.seeds[0])
        tee = _Tee(io.StringIO())
        argv = sys.argv
        try:
            args = build_args(study, variant, scale, study.seeds[0], log_dir, extra)
            sys.argv = argv[:1]
            with contextlib.redirect_stderr(tee), contextlib.redirect_stdout(io.StringIO()):
                if parser is None:
                    parser = CifarCLI(args).parser
                else:
                    parser.instantiate_classes(parser.parse_args(args))
            problems[variant.name] = ""
        except (Exception, SystemExit) as err:  # noqa: BLE001
            problems[variant.name] = _one_line(err, tee.tail)
        finally:
            sys.argv = argv
    return problems


# ----------------------------------------------------------------------------------------------- cli


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set must be key=value, got {item!r}")
        extra[key.lstrip("-")] = yaml.safe_load(value) if value else ""
    return extra


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.split("\n")[0])
    p.add_argument("study", help="study YAML (configs/studies/*.yaml)")
    p.add_argument("--out", default="runs/studies", help="output root; the study writes <out>/<name>/")
    p.add_argument("--scale", default="cpu", help="budget: a key of the study's scales (cpu, short, long, ...)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the study's seeds)")
    p.add_argument("--only", default="", help="comma-separated variant or group names")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--lr-sweep", action="store_true", help="fit each variant's lr_grid, pick LRs on validation accuracy")
    p.add_argument("--use-swept-lr", metavar="SWEEP_SCALE", help="use the LRs chosen by the sweep run at this scale")
    p.add_argument("--check", action="store_true", help="parse every variant's config, print the args, fit nothing")
    p.add_argument("--threads", type=int, help="torch CPU threads (tiny CPU models on a busy machine: 1)")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md / results.png from results.csv")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; user errors print one line and return 2."""
    opts = _parser().parse_args(argv)
    try:
        study = load_study(opts.study)
        only = [x for x in opts.only.split(",") if x]
        extra = _parse_set(opts.sets)
        out = Path(opts.out)
        if opts.report_only:
            write_report(study, read_rows(out / study.name / "results.csv"), out / study.name)
            print(f"wrote {out / study.name / 'results.md'}")
            return 0
        if opts.check:
            problems = check_study(study, opts.scale, extra, only)
            for name, problem in problems.items():
                print(f"{name}: {'ok' if not problem else problem}")
            return 2 if any(problems.values()) else 0
        if opts.lr_sweep:
            chosen = lr_sweep(study, opts.scale, out, opts.seeds, only, extra)
            for name, lr in chosen.items():
                print(f"{name}: lr {lr:g}")
            return 0
        swept = None
        if opts.use_swept_lr:
            swept = chosen_lrs(read_rows(out / study.name / "lr_sweep.csv"), opts.use_swept_lr)
            if not swept:
                raise ValueError(f"--use-swept-lr must name a scale with ok rows in lr_sweep.csv, got {opts.use_swept_lr!r}")
        import torch

        torch.set_float32_matmul_precision("high")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        start = time.perf_counter()
        rows = run_study(study, opts.scale, out, opts.seeds, only, extra, swept)
        ok = {run_key(r["variant"], r["seed"], r["scale"]) for r in rows if r["status"] == "ok"}
        errors = len({run_key(r["variant"], r["seed"], r["scale"]) for r in rows if r["scale"] == opts.scale} - ok)
        print(f"[study {study.name}] done in {time.perf_counter() - start:.0f} s; {errors} failed; see {out / study.name}/results.md")
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
