"""The per-run record of studies and the LR sweep, and the CSV files that hold them (append, fsync, read back)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.study.args import run_key

__all__ = ["RESULT_COLUMNS", "SWEEP_COLUMNS", "Ledger", "read_rows", "append_row", "metric_fields"]

RESULT_COLUMNS = (
    "study", "scale", "variant", "group", "seed", "status", "test_acc", "val_acc", "train_acc",
    "train_acc_clean", "train_loss", "test_loss", "epochs", "global_step", "fit_time_s", "lr",
    "hessian_max_eig", "eps_sharpness", "message", "log_dir",
)  # fmt: skip
# The sweep's file keeps the record's columns that exist without a test run.
SWEEP_COLUMNS = (
    "study", "scale", "variant", "lr", "seed", "status", "val_acc", "epochs", "fit_time_s", "message", "log_dir",
)  # fmt: skip


def _study_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return run_key(row["variant"], row["seed"], row["scale"])


def _sweep_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return run_key(row["variant"], row["seed"], row["scale"], row["lr"])


@dataclass(frozen=True)
class Ledger:
    """A results CSV: its path, the record columns it keeps and the key a finished run is found by."""

    path: Path
    columns: tuple[str, ...]
    key: Callable[[Mapping[str, Any]], tuple[str, ...]]

    @classmethod
    def results(cls, study_dir: Path) -> Ledger:
        """`results.csv`: one row per (variant, seed, scale)."""
        return cls(Path(study_dir) / "results.csv", RESULT_COLUMNS, _study_key)

    @classmethod
    def sweep(cls, study_dir: Path) -> Ledger:
        """`lr_sweep.csv`: one row per (variant, seed, scale, lr)."""
        return cls(Path(study_dir) / "lr_sweep.csv", SWEEP_COLUMNS, _sweep_key)

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.path)

    def done(self) -> set[tuple[str, ...]]:
        """Keys of the runs recorded with status ok."""
        return {self.key(r) for r in self.rows() if r["status"] == "ok"}

    def append(self, row: Mapping[str, Any]) -> None:
        append_row(self.path, self.columns, row)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, columns: Sequence[str], row: Mapping[str, Any]) -> None:
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


def metric_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record's metric fields from the metrics `models.run.cli.run` returns."""
    return {
        "test_acc": _metric(metrics, "test/acc"),
        "val_acc": _metric(metrics, "val/acc_best", "val/acc"),
        "train_acc": _metric(metrics, "train/acc", "train/acc_epoch"),
        "train_loss": _metric(metrics, "train/loss", "train/loss_epoch"),
        "test_loss": _metric(metrics, "test/loss"),
        "epochs": metrics.get("epochs"),
        "global_step": metrics.get("global_step"),
        "fit_time_s": _metric(metrics, "fit_time_s"),
        "hessian_max_eig": _metric(metrics, "sharpness/hessian_max_eig"),  # with sharpness.enable
        "eps_sharpness": _metric(metrics, "sharpness/eps_sharpness"),
    }
