"""Study YAML -> `Study` / `Variant`: keys, base and overlay configs, scales, grids, seeds, report options.

Every field is checked once, here, and a bad one raises ValueError naming its YAML path
(`study.variants[2].lr_grid must be ...`). Relative config paths are relative to the repository root.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from augment.checks import CheckError, check_choice, is_int, is_real, require

__all__ = ["REPO_ROOT", "Variant", "Study", "load_study", "format_value"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDY_KEYS = {"name", "description", "base", "seeds", "scales", "overrides", "linear_lr", "report", "variants", "sweep"}
VARIANT_KEYS = {"name", "group", "configs", "overrides", "scales", "grid", "lr_grid", "seed_keys", "note", "search"}
SEARCH_KINDS = ("loguniform", "uniform", "int", "choice")
SWEEP_DEFAULTS = {"num_samples": 8, "grace_period": 1, "reduction_factor": 2, "max_t": 1000, "seed": 0}
REPORT_KEYS = {"primary", "gap", "ensemble"}
PRIMARY_METRICS = ("test_acc", "val_acc")


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
    search: dict[str, tuple[str, tuple[Any, ...]]] = field(default_factory=dict)  # {key: (kind, values)}


@dataclass(frozen=True)
class Study:
    """A parsed study YAML (see `bench.study` for the keys)."""

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
    sweep: dict[str, int] = field(default_factory=lambda: dict(SWEEP_DEFAULTS))

    def variant(self, name: str) -> Variant:
        """The variant called `name`, else ValueError listing the names."""
        for v in self.variants:
            if v.name == name:
                return v
        raise CheckError("variant", f"one of {', '.join(v.name for v in self.variants)}", name)

    def check_scale(self, scale: str) -> str:
        """`scale` if the study defines it, else ValueError listing the scales."""
        require(scale in self.scales, "--scale", f"one of {', '.join(self.scales)} for study {self.name}", scale)
        return scale

    def select(self, only: Iterable[str] | None) -> list[Variant]:
        """Variants whose name or group is in `only` (all when None); unknown names raise ValueError."""
        if not only:
            return list(self.variants)
        wanted = list(only)
        known = {v.name for v in self.variants} | {v.group for v in self.variants}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(
                f"--only must name variants or groups of {self.name} ({', '.join(sorted(known))}), got {unknown}"
            )
        return [v for v in self.variants if v.name in wanted or v.group in wanted]


def format_value(value: Any) -> str:
    """A short form of a value for run names (`1e-05`, `0.1`, `True`)."""
    if isinstance(value, float):
        return f"{value:g}".replace("+", "")
    return str(value)


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _paths(field_name: str, value: Any) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        value = [value]
    require(
        isinstance(value, list) and all(isinstance(v, (str, Path)) for v in value),
        field_name, "a list of config paths", value,
    )  # fmt: skip
    paths = tuple(_resolve(v) for v in value)
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{field_name} must name existing files, got {str(p)!r}")
    return paths


def _overrides(field_name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(isinstance(k, str) and k for k in value)
    require(ok, field_name, "a mapping of dotted config keys to values", value)
    return dict(value)


def _scale_map(field_name: str, value: Any) -> dict[str, dict[str, Any]]:
    """{scale: overrides}; an override key `configs` (list of files) stays a tuple of resolved paths."""
    if value is None:
        return {}
    require(isinstance(value, dict), field_name, "a mapping of scale name to overrides", value)
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
    require(not extra, f"{field_name} keys", f"among {', '.join(sorted(allowed))}", ", ".join(extra))


def _safe_name(field_name: str, name: Any) -> str:
    ok = isinstance(name, str) and bool(name) and not any(c in name for c in "/\\ ,") and not name.startswith(".")
    require(ok, field_name, "a non-empty name without '/', ',' or spaces", name)
    return name


def _expand_grid(raw: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """One raw variant per combination of `grid` values, named `<name>_<last key part><value>...`."""
    grid = raw.get("grid")
    if grid is None:
        return [dict(raw)]
    ok = isinstance(grid, dict) and bool(grid) and all(isinstance(v, list) and v for v in grid.values())
    require(ok, f"{where}.grid", "a mapping of dotted keys to non-empty lists", grid)
    keys = list(grid)
    expanded = []
    for values in itertools.product(*(grid[k] for k in keys)):
        suffix = "_".join(f"{k.split('.')[-1]}{format_value(v)}" for k, v in zip(keys, values))
        item = {k: v for k, v in raw.items() if k != "grid"}
        item["name"] = f"{raw['name']}_{suffix}"
        item.setdefault("group", raw["name"])
        item["overrides"] = {**_overrides(f"{where}.overrides", raw.get("overrides")), **dict(zip(keys, values))}
        expanded.append(item)
    return expanded


def _variant(raw: Mapping[str, Any], where: str) -> Variant:
    name = _safe_name(f"{where}.name", raw.get("name"))
    lr_grid = raw.get("lr_grid") or []
    ok = isinstance(lr_grid, list) and all(is_real(x) and x > 0 for x in lr_grid)
    require(ok, f"{where}.lr_grid", "a list of positive learning rates", lr_grid)
    seed_keys = raw.get("seed_keys") or []
    ok = isinstance(seed_keys, list) and all(isinstance(k, str) and k for k in seed_keys)
    require(ok, f"{where}.seed_keys", "a list of dotted config keys", seed_keys)
    return Variant(
        name=name,
        seed_keys=tuple(seed_keys),
        group=_safe_name(f"{where}.group", raw.get("group", name)),
        configs=_paths(f"{where}.configs", raw.get("configs")),
        overrides=_overrides(f"{where}.overrides", raw.get("overrides")),
        scales=_scale_map(f"{where}.scales", raw.get("scales")),
        lr_grid=tuple(float(x) for x in lr_grid),
        search=_search(f"{where}.search", raw.get("search")),
    )


def _distribution(where: str, value: Any) -> tuple[str, tuple[Any, ...]]:
    """`{loguniform: [low, high]}` / `{uniform: [low, high]}` / `{int: [low, high]}` / `{choice: [a, b, ...]}`."""
    rule = f"{{kind: [...]}} with kind one of {', '.join(SEARCH_KINDS)}"
    ok = isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SEARCH_KINDS
    require(ok, where, rule, value)
    kind, values = next(iter(value.items()))
    if kind == "choice":
        require(isinstance(values, list) and bool(values), f"{where}.choice", "a non-empty list", values)
        return kind, tuple(values)
    number = is_int if kind == "int" else is_real
    ok = isinstance(values, list) and len(values) == 2 and all(number(v) for v in values)
    require(ok, f"{where}.{kind}", f"[low, high] of {'ints' if kind == 'int' else 'numbers'}", values)
    low, high = values
    if kind == "int":
        require(low <= high, f"{where}.int", "[low, high] with low <= high", values)
    elif kind == "uniform":
        require(low < high, f"{where}.uniform", "[low, high] with low < high", values)
    else:
        require(0 < low < high, f"{where}.loguniform", "[low, high] with 0 < low < high", values)
    return kind, (low, high)


def _search(where: str, value: Any) -> dict[str, tuple[str, tuple[Any, ...]]]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and bool(value) and all(isinstance(k, str) and k for k in value)
    require(ok, where, "a mapping of dotted config keys to distributions", value)
    return {k: _distribution(f"{where}.{k}", v) for k, v in value.items()}


def _sweep_settings(value: Any) -> dict[str, int]:
    if value is None:
        return dict(SWEEP_DEFAULTS)
    require(isinstance(value, dict), "study.sweep", "a mapping", value)
    _check_keys("study.sweep", value, set(SWEEP_DEFAULTS))
    settings = {**SWEEP_DEFAULTS, **value}
    for key, low in (("num_samples", 1), ("grace_period", 1), ("reduction_factor", 2), ("max_t", 1), ("seed", 0)):
        require(is_int(settings[key]) and settings[key] >= low, f"study.sweep.{key}", f"an int >= {low}", settings[key])
    return settings


def _linear_lr(value: Any) -> tuple[float, int] | None:
    if value is None:
        return None
    rule = "{base_lr: float, base_batch: int}"
    require(isinstance(value, dict) and set(value) == {"base_lr", "base_batch"}, "study.linear_lr", rule, value)
    ok = is_real(value["base_lr"]) and value["base_lr"] > 0 and is_int(value["base_batch"]) and value["base_batch"] > 0
    require(ok, "study.linear_lr", f"{rule} with base_lr > 0 and base_batch > 0", value)
    return float(value["base_lr"]), int(value["base_batch"])


def _variants(raw_variants: Any, scales: Mapping[str, Any]) -> tuple[Variant, ...]:
    require(isinstance(raw_variants, list) and bool(raw_variants), "study.variants", "a non-empty list", raw_variants)
    variants: list[Variant] = []
    for i, rv in enumerate(raw_variants):
        where = f"study.variants[{i}]"
        require(isinstance(rv, dict), where, "a mapping", rv)
        _check_keys(where, rv, VARIANT_KEYS)
        _safe_name(f"{where}.name", rv.get("name"))
        variants.extend(_variant(item, where) for item in _expand_grid(rv, where))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    require(not dupes, "study.variants names", "unique", dupes)
    for v in variants:
        unknown = sorted(set(v.scales) - set(scales))
        if unknown:
            raise ValueError(
                f"variant {v.name}.scales must use scales of study.scales ({', '.join(scales)}), got {unknown}"
            )
    return tuple(variants)


def load_study(path: str | Path) -> Study:
    """Parse and validate a study YAML; raise ValueError naming the bad field."""
    path = _resolve(path)
    require(path.is_file(), "study", "an existing YAML file", str(path))
    raw = yaml.safe_load(path.read_text())
    require(isinstance(raw, dict), "study", "a YAML mapping", type(raw).__name__)
    _check_keys("study", raw, STUDY_KEYS)
    name = _safe_name("study.name", raw.get("name"))
    seeds = raw.get("seeds", [0])
    ok = isinstance(seeds, list) and bool(seeds) and all(is_int(s) for s in seeds)
    require(ok, "study.seeds", "a non-empty list of ints", seeds)
    scales = _scale_map("study.scales", raw.get("scales"))
    if not scales:
        raise ValueError("study.scales must define at least one scale, got none")
    report = raw.get("report") or {}
    require(isinstance(report, dict), "study.report", "a mapping", report)
    _check_keys("study.report", report, REPORT_KEYS)
    primary = check_choice("study.report.primary", report.get("primary", "test_acc"), PRIMARY_METRICS)
    linear_lr = _linear_lr(raw.get("linear_lr"))
    variants = _variants(raw.get("variants"), scales)
    return Study(
        name=name,
        path=path,
        base=_paths("study.base", raw.get("base")),
        seeds=tuple(seeds),
        scales=scales,
        variants=variants,
        overrides=_overrides("study.overrides", raw.get("overrides")),
        linear_lr=linear_lr,
        primary=primary,
        gap=bool(report.get("gap", False)),
        ensemble=bool(report.get("ensemble", False)),
        description=str(raw.get("description", "")).strip(),
        sweep=_sweep_settings(raw.get("sweep")),
    )
