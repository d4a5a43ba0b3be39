"""Study runner: variants x seeds of `models.run.cli.run` as Ray Tune trials, one CSV row per run, tables, a plot.

    python -m bench.study configs/studies/regularizers.yaml --scale short
    python -m bench.study configs/studies/norms.yaml --scale cpu --max-concurrent 2 --set data.root=/work/data/cifar10
    python -m bench.study configs/studies/optimizers.yaml --scale sweep --sweep
    python -m bench.study configs/studies/optimizers.yaml --scale short --use-swept-lr sweep
    python -m bench.study configs/studies/regularizers.yaml --scale long --address auto --out /shared/runs/studies

A study YAML names the base recipes, the budgets (`scales`: CLI overrides per budget), the seeds and
the variants (overlay configs + overrides). The args of one run are, in order (later wins):
base configs, variant configs, study `overrides`, `scales[scale]`, variant `overrides`, variant
`scales[scale]`, linear LR scaling, `--set`, the variant's `seed_keys` (set to the run seed), then the
runner's seed and logger. A scale's `configs` list is passed after the variant's configs. Every run is
one Ray Tune trial (Ray embedded on one machine, or a cluster by `--address`; see docs/studies.md) and logs
under `<out>/<study>/<variant>/<scale>_seed<k>`. Outputs in `<out>/<study>/`: results.csv (appended and
flushed after every run, so an interrupted study loses nothing; a run already there with status ok
is skipped), results.md (mean +- std per variant group), results.png, and for the LR sweep
lr_sweep.csv / lr_sweep.md (chosen on validation accuracy; the sweep never runs the test split).
A failing run is recorded with status error and its one-line message, and the study goes on.
Studies and the LR sweep share one run loop (`run_planned`) and one per-run record.

Study YAML keys: name, description, base (list of config files), seeds, scales {name: {key: value}},
overrides, linear_lr {base_lr, base_batch}, report {primary: test_acc | val_acc, gap: bool,
ensemble: bool}, sweep {num_samples, grace_period, reduction_factor, max_t, seed}, variants [{name, group,
configs, overrides, scales, grid {key: [values]}, lr_grid [floats], seed_keys [keys], search {key:
{loguniform | uniform | int | choice: [...]}}}]. Relative paths are relative to the repository root.

Modules: `spec` (the YAML -> Study / Variant), `args` (one run's overrides, CLI args, directory, key),
`records` (the per-run record and its CSVs), `runner` (planned runs, studies, LR grid), `engine` (Ray and
Tune), `trial` (the trial function), `tune_report` (per-epoch reports), `sweep` (Optuna + ASHA), `oof`
(k-fold out-of-fold summary), `report` (results.md / results.png / lr_sweep.md), `check` (`--check`),
`cli` (`python -m bench.study`).
"""

from bench.study.args import build_args, merged_overrides, run_dir, run_key
from bench.study.check import check_study
from bench.study.cli import main
from bench.study.records import RESULT_COLUMNS, SWEEP_COLUMNS, read_rows
from bench.study.report import plot_results, summarize, write_report
from bench.study.runner import PlannedRun, chosen_lrs, lr_sweep, run_planned, run_study
from bench.study.spec import REPO_ROOT, Study, Variant, load_study

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
    "PlannedRun",
    "run_planned",
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
