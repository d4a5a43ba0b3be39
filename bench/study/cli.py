"""`python -m bench.study`: the command line of the study runner; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.study.args import run_key
from bench.study.check import check_study
from bench.study.engine import EngineOptions
from bench.study.records import read_rows
from bench.study.report import write_report
from bench.study.runner import chosen_lrs, lr_sweep, run_study, write_kfold_oof
from bench.study.spec import load_study

__all__ = ["main"]


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set must be key=value, got {item!r}")
        extra[key.lstrip("-")] = yaml.safe_load(value) if value else ""
    return extra


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.study",
        description="Study runner: variants x seeds of `models.run.cli.run`, one CSV row per run, tables and a plot.",
    )
    p.add_argument("study", help="study YAML (configs/studies/*.yaml)")
    p.add_argument("--out", default="runs/studies", help="output root; the study writes <out>/<name>/")
    p.add_argument("--scale", default="cpu", help="budget: a key of the study's scales (cpu, short, long, ...)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the study's seeds)")
    p.add_argument("--only", default="", help="comma-separated variant or group names")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run")  # fmt: skip
    p.add_argument("--lr-sweep", action="store_true",
                   help="fit each variant's lr_grid, pick LRs on validation accuracy")  # fmt: skip
    p.add_argument("--sweep", action="store_true",
                   help="search each variant's `search` space (Optuna TPE, ASHA); write the best config as an overlay")
    p.add_argument("--num-samples", type=int, help="trials per variant in --sweep (default: study.sweep.num_samples)")
    p.add_argument("--use-swept-lr", metavar="SWEEP_SCALE",
                   help="use the LRs chosen by the sweep (--sweep or --lr-sweep) run at this scale")  # fmt: skip
    p.add_argument("--check", action="store_true", help="parse every variant's config, print the args, fit nothing")
    p.add_argument("--threads", type=int, help="torch CPU threads in each trial (default: the trial's CPUs)")
    ray = p.add_argument_group("Ray Tune (the trial engine)")
    ray.add_argument("--address", help="join a running Ray cluster: auto, host:port or ray://host:port "
                     "(default: start Ray on this machine)")  # fmt: skip
    ray.add_argument("--max-concurrent", type=int, help="trials at a time (default: as many as the resources allow)")
    ray.add_argument("--cpus-per-trial", type=float,
                     help="CPUs per trial (default: cores // max-concurrent, else 1)")
    ray.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: 1 where there are GPUs, else 0)")
    ray.add_argument("--max-failures", type=int, default=2,
                     help="retries of a trial whose worker died (it resumes from its last.ckpt)")  # fmt: skip
    ray.add_argument("--ray-logs", action="store_true", help="show Ray's and the trials' logs (quiet by default)")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md / results.png from results.csv")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; user errors print one line and return 2."""
    opts = _parser().parse_args(argv)
    try:
        return _main(opts)
    except (ValueError, ImportError) as err:
        from models.run.cli import one_line

        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are recorded; run the same command again to resume the study",
              file=sys.stderr)
        return 130


def _engine_options(opts: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        address=opts.address, max_concurrent=opts.max_concurrent, cpus_per_trial=opts.cpus_per_trial,
        gpus_per_trial=opts.gpus_per_trial, threads=opts.threads, max_failures=opts.max_failures,
        ray_logs=opts.ray_logs,
    )  # fmt: skip


def _main(opts: argparse.Namespace) -> int:
    options = _engine_options(opts)
    study = load_study(opts.study)
    only = [x for x in opts.only.split(",") if x]
    extra = _parse_set(opts.sets)
    out = Path(opts.out)
    if opts.report_only:
        rows = read_rows(out / study.name / "results.csv")
        write_report(study, rows, out / study.name)
        for scale in dict.fromkeys(r["scale"] for r in rows):
            write_kfold_oof(study, rows, scale, out / study.name)
        print(f"wrote {out / study.name / 'results.md'}")
        return 0
    if opts.check:
        problems = check_study(study, opts.scale, extra, only)
        for name, problem in problems.items():
            print(f"{name}: {'ok' if not problem else problem}")
        return 2 if any(problems.values()) else 0
    grid = any(v.lr_grid for v in study.select(only))
    if opts.sweep or (opts.lr_sweep and not grid):  # the LR sweep of a study with search spaces is a search
        from bench.study.sweep import sweep

        for name, path in sweep(study, opts.scale, out, only, extra, options, opts.num_samples).items():
            print(f"{name}: {path}")
        return 0
    if opts.lr_sweep:
        chosen = lr_sweep(study, opts.scale, out, opts.seeds, only, extra, options=options)
        for name, lr in chosen.items():
            print(f"{name}: lr {lr:g}")
        return 0
    swept = None
    if opts.use_swept_lr:
        from bench.study.sweep import swept_values

        searched = swept_values(out / study.name, [v.name for v in study.variants], opts.use_swept_lr)
        swept = {v: p["model.optimizer.lr"] for v, p in searched.items() if "model.optimizer.lr" in p}
        swept.update(chosen_lrs(read_rows(out / study.name / "lr_sweep.csv"), opts.use_swept_lr))
        if not swept:
            raise ValueError(
                f"--use-swept-lr must name a scale with ok rows in lr_sweep.csv or sweep.csv, got {opts.use_swept_lr!r}"
            )
    start = time.perf_counter()
    rows = run_study(study, opts.scale, out, opts.seeds, only, extra, swept, options=options)
    ok = {run_key(r["variant"], r["seed"], r["scale"]) for r in rows if r["status"] == "ok"}
    errors = len({run_key(r["variant"], r["seed"], r["scale"]) for r in rows if r["scale"] == opts.scale} - ok)
    print(f"[study {study.name}] done in {time.perf_counter() - start:.0f} s; {errors} failed; "
          f"see {out / study.name}/results.md")  # fmt: skip
    return 0
