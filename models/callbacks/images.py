"""`AugmentedImageGrid`: the training batch the model really saw, as TensorBoard images.

Two images per logged batch, under `train/view/` so that TensorBoard (cards sort by tag) shows them after
the train curves and speed cards:
  `train/view/augmented_batch`           the augmented tensors as a pixel-exact grid (no resampling, no text);
  `train/view/augmented_batch_labelled`  a figure of (input, augmented) pairs, tiles upscaled, each pair
                                         labelled with what the augmented image is made of, e.g.
                                         "cat 0.62 / ship 0.38" (own class and weight, then the partner's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from augment.checks import is_int, require
from models.callbacks._tensorboard import tensorboard_writer

__all__ = [
    "AugmentedImageGrid",
    "augmented_batch_figure",
    "denormalize_for_display",
    "grid_columns",
    "mix_labels",
]

FIGURE_DPI = 100
PAIR_GAP_PX = 4  # between the input tile and its augmented tile
CELL_GAP_PX = 14  # between pairs
LABEL_PX = 48  # label band under each pair: two lines, large enough to read at TensorBoard's card width
MARGIN_PX = 8
TITLE_PX = 48
MIN_WEIGHT = 0.005  # mixing weights below this are shown as unmixed


def denormalize_for_display(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Undo `(x - mean) / std` and clamp to [0, 1] for display; x: (B, C, H, W) -> float (B, C, H, W).

    mean/std are per channel, in [0, 1] units or in [0, 255] units (detected by max(mean) > 1).
    Integer inputs are taken as 0..255 pixels and only rescaled.
    """
    if not x.is_floating_point():
        return x.float().div(255.0).clamp(0.0, 1.0)
    x = x.float()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
        std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
        x = x * std_t + mean_t
        if max(mean) > 1.0:
            x = x / 255.0
    return x.clamp(0.0, 1.0)


def grid_columns(n: int) -> int:
    """Columns of a grid about twice as wide as tall: rows = ceil(sqrt(n / 2)), columns = ceil(n / rows).

    32 images make 8 x 4 (full), 5 make 3 x 2.
    """
    rows = max(1, math.ceil(math.sqrt(n / 2)))
    return math.ceil(n / rows)


def mix_labels(
    labels: torch.Tensor, targets: torch.Tensor | None, names: Sequence[str], label_smoothing: float = 0.0
) -> list[str]:
    """One label per sample: "cat" when unmixed, else "cat 0.62 / ship 0.38" (own class, then the partner).

    labels: (B,) int, the images' own classes. targets: the (B, K) soft targets trained on (label
    smoothing `s` inside: weights are recovered as `(t - s / K) / (1 - s)`), int labels or None.
    """
    own = labels.long().cpu()
    if targets is None or not targets.is_floating_point():
        return [names[i] for i in own.tolist()]
    t = targets.detach().double().cpu()
    k = t.shape[1]
    weights = (t - label_smoothing / k) / (1.0 - label_smoothing) if label_smoothing > 0 else t
    own_weight = weights.gather(1, own.view(-1, 1)).squeeze(1)
    others = weights.scatter(1, own.view(-1, 1), -math.inf)
    other_weight, other = others.max(dim=1)
    out = []
    for i, w_own, j, w_other in zip(own.tolist(), own_weight.tolist(), other.tolist(), other_weight.tolist()):
        if w_other < MIN_WEIGHT:
            out.append(names[i])
        else:
            out.append(f"{names[i]} {w_own:.2f} / {names[j]} {w_other:.2f}")
    return out


def _font_pt(width_px: float, lines: Sequence[str], largest: float = 14.0) -> float:
    """Font size (pt at FIGURE_DPI) that fits the longest line into width_px (glyphs about 0.6 em wide)."""
    chars = max((len(line) for line in lines), default=1) or 1
    return min(largest, width_px / (0.6 * chars) * 72.0 / FIGURE_DPI)


def _upscale(tile: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) -> (H * scale, W * scale, 3) by pixel repetition."""
    return tile.repeat(scale, axis=0).repeat(scale, axis=1)


def augmented_batch_figure(
    inputs: torch.Tensor,
    augmented: torch.Tensor,
    labels: Sequence[str],
    columns: int = 4,
    scale: int = 3,
    title: str = "",
) -> Figure:
    """(input, augmented) pairs, `columns` pairs per row, tiles upscaled `scale` times, a label under each pair.

    inputs, augmented: float (N, 3 or 1, H, W) in [0, 1]. The figure is exactly as many pixels as the
    mosaic needs (one image, nearest-neighbour, no resampling); `labels` has N entries.
    """
    n, _, h, w = augmented.shape
    if inputs.shape != augmented.shape or len(labels) != n:
        raise ValueError(f"inputs, augmented and labels must match, got {tuple(inputs.shape)}, "
                         f"{tuple(augmented.shape)} and {len(labels)} labels")
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    tile_h, tile_w = h * scale, w * scale
    pair_w = 2 * tile_w + PAIR_GAP_PX
    cell_h = tile_h + LABEL_PX
    width = 2 * MARGIN_PX + columns * pair_w + (columns - 1) * CELL_GAP_PX
    height = MARGIN_PX + rows * cell_h + (rows - 1) * CELL_GAP_PX
    mosaic = np.ones((height, width, 3), dtype=np.float32)

    def rgb(x: torch.Tensor) -> np.ndarray:
        x = x.detach().float().cpu()
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        return x.permute(1, 2, 0).numpy()

    centres = []
    for i in range(n):
        r, c = divmod(i, columns)
        top = MARGIN_PX + r * (cell_h + CELL_GAP_PX)
        left = MARGIN_PX + c * (pair_w + CELL_GAP_PX)
        mosaic[top : top + tile_h, left : left + tile_w] = _upscale(rgb(inputs[i]), scale)
        right = left + tile_w + PAIR_GAP_PX
        mosaic[top : top + tile_h, right : right + tile_w] = _upscale(rgb(augmented[i]), scale)
        centres.append((left + pair_w / 2, top + tile_h + LABEL_PX / 2))

    fig = Figure(figsize=(width / FIGURE_DPI, (height + TITLE_PX) / FIGURE_DPI), dpi=FIGURE_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + TITLE_PX)))
    ax.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_axis_off()
    for (x, y), text in zip(centres, labels):
        lines = text.split(" / ")  # "cat 0.62 / ship 0.38": one line per class
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=_font_pt(pair_w, lines), linespacing=1.05)
    if title:
        fig.suptitle(title, fontsize=12, y=1.0 - 0.5 * TITLE_PX / (height + TITLE_PX), va="center")
    return fig


class AugmentedImageGrid(pl.Callback):
    """Log the augmented training batch to TensorBoard (`train/view/augmented_batch` and `..._labelled`).

    Logged at the first batch of epoch 0 and of every `every_n_epochs`-th epoch after it, rank zero
    only, at the step of that batch (0 for the first). Images are un-normalized with
    `trainer.datamodule.mean/std` when present and clamped to [0, 1]; at most `max_images` are shown.
    The pixel grid has `grid_columns(n)` columns (32 images: 8 x 4); the labelled figure holds
    `labelled_columns` pairs per row with tiles upscaled `upscale` times.

    Handshake with the LightningModule (which owns the batch augmentation):
      1. `on_train_batch_start` of a logging batch sets `pl_module.keep_augmented_batch = True`.
      2. The module's `training_step`, seeing the flag, stores the input it trained on (after
         Cutout / Mixup / CutMix / noise) as `pl_module.last_augmented_batch = x.detach()`,
         float (B, C, H, W), normalized; optionally the batch before those ops as
         `last_input_batch` and the targets trained on as `last_augmented_targets` ((B, K) soft,
         with `pl_module.label_smoothing` inside, or int labels).
      3. `on_train_batch_end` reads them, sets the flag back to False and the attributes to None
         (freeing the device memory), and logs.
    A module without the handshake gets the batch's images as they arrived (per-sample
    augmentation only), or `pl_module.augment_preview(x, y)[0]` when it defines that method.
    Inputs default to the batch's images, targets to its labels; class names come from
    `trainer.datamodule.class_names` when it has one per class, else indices.
    """

    def __init__(
        self, every_n_epochs: int = 5, max_images: int = 32, labelled_columns: int = 4, upscale: int = 3
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("max_images", max_images),
                            ("labelled_columns", labelled_columns), ("upscale", upscale)):
            require(is_int(value) and value >= 1, name, ">= 1", value)
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.labelled_columns = labelled_columns
        self.upscale = upscale
        self._capturing = False
        self._step = 0

    def _wants(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        return (
            batch_idx == 0
            and trainer.current_epoch % self.every_n_epochs == 0
            and trainer.is_global_zero
            and tensorboard_writer(trainer) is not None
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._wants(trainer, batch_idx):
            pl_module.keep_augmented_batch = True
            pl_module.last_augmented_batch = None
            self._capturing = True
            self._step = trainer.global_step  # the step this batch trains, before the optimizer increments it

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._capturing:
            return
        self._capturing = False
        pl_module.keep_augmented_batch = False
        images = getattr(pl_module, "last_augmented_batch", None)
        inputs = getattr(pl_module, "last_input_batch", None)
        targets = getattr(pl_module, "last_augmented_targets", None)
        for name in ("last_augmented_batch", "last_input_batch", "last_augmented_targets"):
            if hasattr(pl_module, name):
                setattr(pl_module, name, None)
        if images is None:
            images = self._fallback_images(pl_module, batch)
        if images is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        n = min(self.max_images, images.shape[0])
        shown = denormalize_for_display(images[:n].detach(), mean, std).cpu().contiguous()
        writer = tensorboard_writer(trainer)
        writer.add_image("train/view/augmented_batch", make_grid(shown, nrow=grid_columns(n), padding=2), self._step)

        x, y = self._batch_parts(batch)
        if inputs is None:
            inputs = x
        if y is None or inputs is None or inputs.shape[0] < n or y.shape[0] < n:
            return
        names = self._class_names(datamodule, targets, y)
        smoothing = float(getattr(pl_module, "label_smoothing", 0.0) or 0.0)
        labels = mix_labels(y[:n], None if targets is None else targets[:n], names, smoothing)
        originals = denormalize_for_display(inputs[:n].detach(), mean, std).cpu()
        title = (f"step {self._step}: input (left) and as trained (right); "
                 "label: own class and weight / partner class and weight")
        figure = augmented_batch_figure(originals, shown, labels, self.labelled_columns, self.upscale, title)
        writer.add_figure("train/view/augmented_batch_labelled", figure, self._step)

    @staticmethod
    def _batch_parts(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not isinstance(batch, Sequence) or len(batch) < 2:
            return None, None
        x, y = batch[0], batch[1]
        x = x if isinstance(x, torch.Tensor) and x.ndim == 4 else None
        y = y if isinstance(y, torch.Tensor) and y.ndim == 1 and not y.is_floating_point() else None
        return x, y

    @staticmethod
    def _class_names(datamodule: Any, targets: torch.Tensor | None, y: torch.Tensor) -> list[str]:
        names = getattr(datamodule, "class_names", None)
        k = targets.shape[1] if targets is not None and targets.ndim == 2 else int(y.max()) + 1
        if names is not None and len(names) >= k:
            return [str(name) for name in names]
        return [str(i) for i in range(k)]

    @staticmethod
    def _fallback_images(pl_module: pl.LightningModule, batch: Any) -> torch.Tensor | None:
        if not isinstance(batch, Sequence) or len(batch) < 1:
            return None
        x = batch[0]
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            return None
        preview = getattr(pl_module, "augment_preview", None)
        if callable(preview) and len(batch) > 1:
            with torch.no_grad():
                x = preview(x, batch[1])[0]
        return x
