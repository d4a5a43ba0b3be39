"""A k-fold study's out-of-fold predictions: the folds' ``oof.csv`` files joined, and the CV summary.

    python -m bench.study.oof STUDY_DIR     # every run folder below STUDY_DIR holding oof.csv

Writes into the study folder ``oof.csv`` (the folds' rows, fold by fold), ``cv_summary.json`` and
``cv_summary.md``: accuracy per fold, their mean +- sample standard deviation (n - 1), and the OOF accuracy
(correct over all held-out images: every training image once). Folds must be distinct, with one header.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["OOF_FILE", "SUMMARY_JSON", "SUMMARY_MD", "find_oof_runs", "write_study_oof", "main"]

OOF_FILE = "oof.csv"
SUMMARY_JSON = "cv_summary.json"
SUMMARY_MD = "cv_summary.md"


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not {"fold", "label", "pred"} <= set(rows[0]):
        raise ValueError(f"{path} must be an oof.csv with fold, label and pred columns")
    return rows[0], rows[1:]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["| fold | images | accuracy |", "|---:|---:|---:|"]
    lines += [f"| {f['fold']} | {f['images']} | {f['accuracy']:.4f} |" for f in summary["folds"]]
    std = summary["std_accuracy"]
    lines += [
        "",
        f"Fold accuracy: {summary['mean_accuracy']:.4f} +- {std:.4f} (mean +- sample std over "
        f"{len(summary['folds'])} folds)" if std is not None else
        f"Fold accuracy: {summary['mean_accuracy']:.4f} (one fold)",
        f"OOF accuracy: {summary['oof_accuracy']:.4f} ({summary['correct']} of {summary['images']} held-out images)",
    ]
    return "\n".join(lines) + "\n"


def write_study_oof(study_dir: str | Path, run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Join the runs' oof.csv into ``study_dir/oof.csv`` and write cv_summary.json / .md; return the summary.

    Summary keys: folds [{fold, images, accuracy, run}], mean_accuracy, std_accuracy (sample std, None for
    one fold), oof_accuracy, correct, images, columns. Refuses runs without oof.csv, differing columns and
    a fold that appears twice.
    """
    study_dir = Path(study_dir)
    if not run_dirs:
        raise ValueError(f"write_study_oof needs run folders holding {OOF_FILE}, got none for {study_dir}")
    header: list[str] | None = None
    parts: list[tuple[int, Path, list[list[str]]]] = []
    for run in run_dirs:
        path = Path(run) / OOF_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{Path(run)} holds no {OOF_FILE} (a k-fold run writes it after fit)")
        cols, rows = _read(path)
        if header is not None and cols != header:
            raise ValueError(f"{path} has other columns than the first fold's ({', '.join(cols)})")
        header = cols
        folds = {r[cols.index("fold")] for r in rows}
        if len(folds) != 1:
            raise ValueError(f"{path} must hold one fold, got {sorted(folds)}")
        parts.append((int(folds.pop()), Path(run), rows))
    assert header is not None
    seen: dict[int, Path] = {}
    for fold, run, _ in parts:
        if fold in seen:
            raise ValueError(f"fold {fold} appears twice: {seen[fold]} and {run}")
        seen[fold] = run
    parts.sort(key=lambda p: p[0])
    label, pred = header.index("label"), header.index("pred")
    folds = []
    for fold, run, rows in parts:
        correct = sum(r[label] == r[pred] for r in rows)
        folds.append({"fold": fold, "images": len(rows), "correct": correct,
                      "accuracy": correct / len(rows) if rows else float("nan"), "run": str(run)})
    accuracies = [f["accuracy"] for f in folds]
    correct, images = sum(f["correct"] for f in folds), sum(f["images"] for f in folds)
    summary = {
        "folds": folds,
        "mean_accuracy": statistics.fmean(accuracies),
        "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "oof_accuracy": correct / images if images else float("nan"),
        "correct": correct,
        "images": images,
        "columns": header,
    }
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = study_dir / f".{OOF_FILE}.{os.getpid()}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for _, _, rows in parts:
            writer.writerows(rows)
    os.replace(tmp, study_dir / OOF_FILE)
    _atomic_text(study_dir / SUMMARY_JSON, json.dumps(summary, indent=1) + "\n")
    _atomic_text(study_dir / SUMMARY_MD, _markdown(summary))
    return summary


def find_oof_runs(study_dir: str | Path) -> list[Path]:
    """Run folders below ``study_dir`` that hold oof.csv, sorted; folders holding a joined one (with
    cv_summary.json) are not runs."""
    study_dir = Path(study_dir)
    found = (p.parent for p in study_dir.rglob(OOF_FILE) if p.is_file())
    return sorted(d for d in found if d != study_dir and not (d / SUMMARY_JSON).exists())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.study.oof STUDY_DIR`: exit 0, or 2 with one line on a bad folder."""
    parser = argparse.ArgumentParser(prog="python -m bench.study.oof", description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", help="folder holding the k-fold runs (searched recursively for oof.csv)")
    args = parser.parse_args(argv)
    study = Path(args.study_dir)
    try:
        if not study.is_dir():
            raise ValueError(f"STUDY_DIR must be an existing folder, got {str(study)!r}")
        runs = find_oof_runs(study)
        if not runs:
            raise ValueError(f"no run folder below {study} holds {OOF_FILE} (k-fold runs write it: data.num_folds)")
        summary = write_study_oof(study, runs)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_markdown(summary), end="")
    print(f"wrote {study / OOF_FILE}, {study / SUMMARY_JSON}, {study / SUMMARY_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
