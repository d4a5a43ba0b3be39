"""One picture of what the batch ops do: the same CIFAR-10 test images under each op, one row per op.

Rows: the images, pad-crop + flip, Cutout, Mixup, CutMix, the per-sample Mixup/CutMix switch and
Gaussian input noise, all from `augment` on a (B, 3, 32, 32) float batch in [0, 1], seeded. Mixing
rows name each image's classes and weights (own class first; the partner is the image to its left).

    python /work/shared/data/cifar_export.py cifar10 /tmp/c10 --format torchvision   # or any CIFAR-10 copy
    python -m bench.ops_picture --root /tmp/c10 --out docs/img/ops.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from augment import CutMix, Cutout, GaussianNoise, Mixup, MixupCutMix, random_crop_flip
from augment.data.datasets import load_dataset
from models.callbacks import mix_labels

SCALE, GAP, LABEL_PX, ROW_LABEL_PX, DPI = 3, 6, 30, 172, 100


def first_of_each_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Index of the first test image of classes 0 .. count - 1 (a fixed, varied selection)."""
    return np.array([int(np.flatnonzero(labels == k)[0]) for k in range(count)])


def op_rows(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(row title, images (B, 3, H, W) in [0, 1], targets (B, K) or labels (B,)) for every op."""
    g = torch.Generator().manual_seed(seed)
    mix = dict(num_classes=num_classes, per_sample=True, generator=g)
    rows = [("input", x, y), ("reflect-pad 4, crop,\nflip", random_crop_flip(x, padding=4, generator=g), y)]
    rows.append(("Cutout\n1 hole, 16 px", *Cutout(n_holes=1, size=16, fill=0.5, generator=g)(x, y)))
    rows.append(("Mixup\nalpha 1, per sample", *Mixup(alpha=1.0, **mix)(x, y)))
    rows.append(("CutMix\nalpha 1, per sample", *CutMix(alpha=1.0, **mix)(x, y)))
    switch = MixupCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, **mix)
    rows.append(("Mixup / CutMix switch\nper sample", *switch(x, y)))
    rows.append(("input noise\nstd 0.08", *GaussianNoise(0.08, clamp=(0.0, 1.0), generator=g)(x, y)))
    return rows


def picture(rows: list[tuple[str, torch.Tensor, torch.Tensor]], y: torch.Tensor, names: list[str]) -> Figure:
    """A mosaic of all rows (tiles upscaled SCALE times) with row titles and per-tile labels."""
    b, _, h, w = rows[0][1].shape
    tile_h, tile_w = h * SCALE, w * SCALE
    width = ROW_LABEL_PX + b * (tile_w + GAP)
    row_h = tile_h + LABEL_PX
    height = len(rows) * row_h + GAP
    mosaic = np.ones((height, width, 3), dtype=np.float32)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    for r, (title, images, targets) in enumerate(rows):
        top = GAP + r * row_h
        labels = mix_labels(y, targets, names) if targets.is_floating_point() else [names[i] for i in y.tolist()]
        for i in range(b):
            left = ROW_LABEL_PX + i * (tile_w + GAP)
            tile = images[i].clamp(0, 1).permute(1, 2, 0).numpy()
            mosaic[top:top + tile_h, left:left + tile_w] = tile.repeat(SCALE, 0).repeat(SCALE, 1)
            ax.text(left + tile_w / 2, top + tile_h + LABEL_PX / 2, labels[i].replace(" / ", "\n"),
                    ha="center", va="center", fontsize=7, linespacing=1.0)
        ax.text(8, top + tile_h / 2, title, ha="left", va="center", fontsize=9)
    ax.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/cifar10", help="folder holding cifar-10-batches-py")
    parser.add_argument("--out", default="docs/img/ops.png")
    parser.add_argument("--images", type=int, default=8, help="images per row (one per class, 1..10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colors", type=int, default=256, help="palette size of the PNG; 0 = full RGB")
    args = parser.parse_args()
    images, labels, names = load_dataset("cifar10", args.root, "test", cache_dir=False)
    index = first_of_each_class(labels, args.images)
    x = torch.from_numpy(images[index]).permute(0, 3, 1, 2).float().div(255.0)
    y = torch.from_numpy(labels[index]).long()
    fig = picture(op_rows(x, y, len(names), args.seed), y, names)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(buffer).convert("RGB")
    if args.colors:  # a palette PNG is about a third of the RGB one
        image = image.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {fig.get_size_inches()[0] * DPI:.0f} x "
          f"{fig.get_size_inches()[1] * DPI:.0f} px) from {len(index)} CIFAR-10 test images")


if __name__ == "__main__":
    main()
