"""Reports from a study's CSV rows: results.md (mean ± std per variant group), results.png, lr_sweep.md."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.study.args import run_key
from bench.study.spec import REPO_ROOT, Study

__all__ = ["summarize", "write_report", "plot_results", "write_sweep_report"]


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
        keys = ("test_acc", "val_acc", "train_acc", "train_acc_clean", "epochs", "fit_time_s", "hessian_max_eig",
                "eps_sharpness")
        for key in keys:
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
    sharp = any(e["hessian_max_eig"] or e["eps_sharpness"] for e in summary)
    if sharp:
        head += ["Hessian max eig", "eps-sharpness (%)"]
    head += ["epochs", "fit time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["group"], str(e["n"]), _mean_std(e["test_acc"]), _mean_std(e["val_acc"])]
        if study.gap:
            cells += [_mean_std(e["train_acc_clean"] or e["train_acc"]), _mean_std(e["gap"])]
        if sharp:
            cells += [_mean_std(e["hessian_max_eig"], 1.0, 1), _mean_std(e["eps_sharpness"], 1.0, 1)]
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
        gx.bar([x - width / 2 for x in xs], [m * 100 for m, _ in train], width,
               yerr=[s * 100 for _, s in train], label="train acc", capsize=3)  # fmt: skip
        gx.bar([x + width / 2 for x in xs], [m * 100 for m, _ in gap], width,
               yerr=[s * 100 for _, s in gap], label="train - test (pp)", capsize=3)  # fmt: skip
        gx.set_title("train accuracy and generalization gap")
        gx.legend()
    for row in axes:
        for a in row:
            a.set_xticks(xs)
            a.set_xticklabels(names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_sweep_report(
    study: Study, rows: list[dict[str, str]], scale: str, chosen: Mapping[str, float], out: Path
) -> None:
    """lr_sweep.md: mean validation accuracy per (variant, lr) at `scale`, the chosen LR marked."""
    lines = [
        f"# LR sweep: {study.name} (scale {scale})",
        "",
        "Chosen on validation accuracy (`val/acc_best`, held-out split of the training set); "
        "the test split is never run.",
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
