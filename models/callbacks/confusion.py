"""`ConfusionMatrixLogger`: confusion matrix, sorted per-class accuracy and the most-confused pairs for val / test.

Figures are `matplotlib.figure.Figure` objects rendered by TensorBoard's writer on the Agg canvas (no
pyplot state, no display). Up to `MAX_ANNOTATED_CLASSES` classes the matrix carries per-cell
percentages on a square-root colour scale; above it (CIFAR-100) it has no cell text and a log colour
scale, on which off-diagonal mass of a few samples is still visible; class names label both axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from matplotlib.colors import LogNorm, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from augment.checks import is_int, require
from models.callbacks._tensorboard import tensorboard_writer

__all__ = [
    "MAX_ANNOTATED_CLASSES",
    "PER_CLASS_GROUP",
    "ConfusionMatrixLogger",
    "confusion_figure",
    "per_class_figure",
    "most_confused_pairs",
    "most_confused_markdown",
]

# Above this many classes the confusion matrix has no per-cell text and no per-class scalars
# (a 100x100 grid of numbers is unreadable and 100 scalar charts drown the Scalars tab).
MAX_ANNOTATED_CLASSES = 20
# Group of the per-class validation curves: TensorBoard sorts groups by name and lists this one right
# after `val/`, so the per-class cards never push `val/loss` or the confusion matrix to a second page.
PER_CLASS_GROUP = "val_per_class"
DPI = 100
_PERCENT = FuncFormatter(lambda v, _: f"{100 * v:g}%")


def _tick_size(k: int) -> float:
    return 9.0 if k <= 12 else max(3.5, min(8.0, 550.0 / k))


def confusion_figure(rows: torch.Tensor, names: Sequence[str], title: str) -> Figure:
    """Heat map of a row-normalized (K, K) matrix, true class on rows, names on both axes.

    K <= 20: percentages in the non-zero cells (rounded, one text per cell), square-root colour scale.
    K > 20: no cell text, log colour scale from 0.1% (zero cells stay white).
    """
    k = rows.shape[0]
    values = rows.double().numpy()
    annotate = k <= MAX_ANNOTATED_CLASSES
    side = max(4.5, 2.6 + 0.3 * k) if annotate else 13.0
    fig = Figure(figsize=(side, side - 0.4), dpi=DPI)
    ax = fig.add_subplot()
    if annotate:
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
        image = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest")
    else:
        masked = values.copy()
        masked[masked <= 0] = math.nan  # log scale: empty cells drawn as background
        image = ax.imshow(masked, cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1.0), interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, format=_PERCENT)
    colorbar.ax.tick_params(labelsize=8)
    ticks = list(range(k))
    size = _tick_size(k)
    ax.set_xticks(ticks, list(names), rotation=90, fontsize=size)
    ax.set_yticks(ticks, list(names), fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if annotate:
        text_size = 9 if k <= 12 else 7
        for i in range(k):
            for j in range(k):
                value = values[i, j]
                if value > 0:
                    color = "white" if value > 0.45 else "black"
                    ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=text_size, color=color)
    fig.tight_layout()
    return fig


def per_class_figure(accuracy: torch.Tensor, names: Sequence[str], title: str) -> Figure:
    """Horizontal bars of per-class accuracy (K,), sorted from worst (top) to best, one name per bar.

    Classes absent from the split (NaN) are left out; K <= 20 bars carry their percentage.
    """
    acc = accuracy.double()
    present = [(float(a), str(n)) for a, n in zip(acc.tolist(), names) if not math.isnan(a)]
    present.sort(key=lambda pair: pair[0])
    k = max(len(present), 1)
    few = k <= MAX_ANNOTATED_CLASSES
    fig = Figure(figsize=(5.5 if few else 6.5, (0.3 * k + 1.3) if few else (0.13 * k + 1.3)), dpi=DPI)
    ax = fig.add_subplot()
    values = [a for a, _ in present]
    positions = list(range(len(present)))
    ax.barh(positions, values, color="tab:blue", height=0.75)
    ax.set_yticks(positions, [n for _, n in present], fontsize=9 if few else _tick_size(k))
    ax.set_ylim(len(present) - 0.5, -0.5)  # worst class on top, no empty margin
    ax.set_xlim(0.0, 1.0)
    ax.xaxis.set_major_formatter(_PERCENT)
    ax.tick_params(axis="x", labelsize=8)
    mean = sum(values) / len(values) if values else math.nan
    ax.axvline(mean, color="tab:orange", linewidth=1.0)
    ax.set_title(f"{title} (sorted; orange: mean {100 * mean:.1f}%)", fontsize=10)
    if few:
        for y, value in zip(positions, values):
            inside = value > 0.8  # white text inside the bar's end, else black text after it
            x, ha, color = (value - 0.01, "right", "white") if inside else (value + 0.01, "left", "black")
            ax.text(x, y, f"{100 * value:.1f}%", va="center", ha=ha, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def most_confused_pairs(matrix: torch.Tensor, top: int = 10) -> list[tuple[int, int, int, float]]:
    """The `top` largest off-diagonal cells of a count matrix (true rows): (true, predicted, count, share of true).

    Sorted by count, then by share of the true class, then by index; zero cells are left out.
    """
    counts = matrix.double().clone()
    counts.fill_diagonal_(0.0)
    k = counts.shape[0]
    share = (counts / matrix.double().sum(dim=1).clamp_min(1.0).unsqueeze(1)).flatten()
    counts = counts.flatten()
    order = torch.sort(share, descending=True, stable=True).indices  # ties keep row-major index order
    order = order[torch.sort(counts[order], descending=True, stable=True).indices]
    order = order[counts[order] > 0][:top]
    return [(idx // k, idx % k, int(counts[idx]), float(share[idx])) for idx in order.tolist()]


def most_confused_markdown(matrix: torch.Tensor, names: Sequence[str], top: int = 10) -> str:
    """A markdown table of `most_confused_pairs` for TensorBoard's Text tab."""
    pairs = most_confused_pairs(matrix, top)
    if not pairs:
        return "no confusions"
    lines = ["| true | predicted as | count | share of true |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {names[i]} | {names[j]} | {count} | {100 * share:.1f}% |" for i, j, count, share in pairs]
    return "\n".join(lines)


def _tag_safe(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


class ConfusionMatrixLogger(pl.Callback):
    """Log confusion matrices and per-class accuracy of `pl_module.val_confmat` / `test_confmat`.

    At each validation / test epoch end (not during sanity checking) the metric is computed
    (torchmetrics syncs it across ranks; every rank takes part), then rank zero logs to
    TensorBoard at `trainer.global_step`:
      `<stage>/confusion_matrix`  figure, rows (true class) normalized to sum 1 (see `confusion_figure`)
      `<stage>/per_class_acc`     figure, diag / row sum (recall per class), sorted, with names
      `<stage>/most_confused`     text, a table of the `top_pairs` largest off-diagonal cells (TensorBoard
                                  files it as `<stage>/most_confused/text_summary`)
      `val_per_class/<name>`      scalars, validation only (the one test point per class is in the
                                  per-class figure), only for <= 20 classes
    and the metric is reset (also after sanity checking, so its batches never leak into epoch 0).
    Class names come from `trainer.datamodule.class_names` when it has K entries, else indices.
    The last raw matrix per stage stays in `self.last_confusion[stage]` (K, K) on CPU.
    """

    def __init__(self, top_pairs: int = 10) -> None:
        super().__init__()
        require(is_int(top_pairs) and top_pairs >= 1, "top_pairs", ">= 1", top_pairs)
        self.top_pairs = top_pairs
        self.last_confusion: dict[str, torch.Tensor] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "test")

    def _log_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        metric = getattr(pl_module, f"{stage}_confmat", None)
        if metric is None:
            return
        if trainer.sanity_checking:
            metric.reset()
            return
        matrix = metric.compute().detach().cpu()  # a collective under DDP: every rank computes
        metric.reset()
        self.last_confusion[stage] = matrix
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or not matrix.sum() > 0:
            return
        matrix = matrix.double()
        support = matrix.sum(dim=1)
        rows = matrix / support.clamp_min(1e-12).unsqueeze(1)
        accuracy = matrix.diagonal() / support  # NaN for classes absent from the split
        names = self._class_names(trainer, matrix.shape[0])
        step = trainer.global_step
        writer.add_figure(f"{stage}/confusion_matrix", confusion_figure(rows, names, f"{stage} confusion matrix"), step)
        per_class = per_class_figure(accuracy, names, f"{stage} per-class accuracy")
        writer.add_figure(f"{stage}/per_class_acc", per_class, step)
        writer.add_text(f"{stage}/most_confused", most_confused_markdown(matrix, names, self.top_pairs), step)
        if stage == "val" and matrix.shape[0] <= MAX_ANNOTATED_CLASSES:
            for name, value in zip(names, accuracy.tolist()):
                writer.add_scalar(f"{PER_CLASS_GROUP}/{_tag_safe(name)}", value, step)

    @staticmethod
    def _class_names(trainer: pl.Trainer, num_classes: int) -> list[str]:
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
        return [str(i) for i in range(num_classes)]
