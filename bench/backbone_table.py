"""The tested timm family table: every model built by ``create_model(name, 10)`` (``cifar_stem: auto``).

Prints one markdown table: model, family, the adaptation ``auto`` chose, parameters, multiply-adds of
one 3x32x32 image (``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2), the final feature map (or
token count), forward+backward ms for a batch of 32 (training mode, gradients only, ``--threads``
torch threads; median of ``--repeats`` rounds that time every model once, after a warmup round) with
the ratio to resnet18 measured in the same run, and whether the BatchNorm swap (``model.norm``) applies.
``tests/test_backbones.py`` tests every row; ``docs/backbones.md`` holds the output.

    python -m bench.backbone_table               # the whole table (minutes on a 2-core CPU)
    python -m bench.backbone_table --models vit_tiny_patch16_224 --repeats 1  # + the resnet18 anchor
    python -m bench.backbone_table --sizes 32 64 96 128 224   # SIZE_MODELS at other image sizes

``--sizes`` prints one row per model and size instead (``create_model(name, 10, image_size=S)``): the
adaptation chosen, parameters, MACs and final map at that size, and forward+backward ms of a batch of
``--batch`` (default 8 in this mode), timed in interleaved rounds per size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.backbones import create_model, has_batch_norm

__all__ = [
    "FAMILIES", "SIZE_MODELS", "ANCHOR", "norm_swap_note", "macs", "final_size", "train_step", "interleaved_ms",
    "size_table", "main",
]

ANCHOR = "resnet18"

# (family, smallest practical timm model of it, the adaptation cifar_stem=auto picks)
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("ResNet", "resnet18", "stem3x3"),
    ("SE-ResNet", "seresnet18", "stem3x3"),
    ("Wide-ResNet", "wide_resnet50_2", "stem3x3"),
    ("ResNeXt (ByobNet)", "resnext26ts", "stride8"),
    ("DenseNet", "densenet121", "stem3x3"),
    ("EfficientNet", "efficientnet_b0", "stride8"),
    ("EfficientNetV2", "efficientnetv2_rw_t", "stride8"),
    ("MobileNetV2", "mobilenetv2_050", "stride8"),
    ("MobileNetV3", "mobilenetv3_small_100", "stride8"),
    ("MobileNetV4", "mobilenetv4_conv_small", "stride8"),
    ("GhostNet", "ghostnet_050", "stride8"),
    ("RegNet", "regnetx_002", "stride8"),
    ("RepVGG", "repvgg_a0", "stride8"),
    ("CSPNet", "cs3darknet_s", "stride8"),
    ("DLA", "dla46_c", "stride8"),
    ("HGNetV2", "hgnetv2_b0", "stride8"),
    ("VoVNet", "ese_vovnet19b_dw", "stride8"),
    ("ReXNet", "rexnet_100", "stride8"),
    ("NFNet (norm-free)", "nf_regnet_b0", "stride8"),
    ("ConvNeXt", "convnext_atto", "stride8"),
    ("ViT", "vit_tiny_patch16_224", "patch4"),
    ("DeiT", "deit_tiny_patch16_224", "patch4"),
)

# one model of each of seven families for the image-size table (``--sizes``)
SIZE_MODELS: tuple[str, ...] = (
    "resnet18", "densenet121", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "convnext_atto",
    "vit_tiny_patch16_224",
)


def norm_swap_note(model: nn.Module) -> str:
    """"yes" when the model has BatchNorm to swap, else "no" with the norms it uses instead."""
    if has_batch_norm(model):
        return "yes"
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))})
    return f"no ({', '.join(kinds)})" if kinds else "no (no norm layers)"


def macs(model: nn.Module, size: int = 32) -> int:
    """Multiply-adds of one forward of a 1x3x``size``x``size`` image (FLOPs counted by torch / 2)."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def final_size(model: nn.Module, size: int = 32) -> str:
    """The final feature map "HxW" (NCHW or NHWC) or "N tokens" (without class / prefix tokens)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
    if out.dim() == 3:
        return f"{out.shape[1] - int(getattr(model, 'num_prefix_tokens', 0) or 0)} tokens"
    if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC"):
        return f"{out.shape[1]}x{out.shape[2]}"
    return f"{out.shape[2]}x{out.shape[3]}"


def train_step(model: nn.Module, batch: int, size: int = 32) -> Callable[[], None]:
    """One forward + backward (training mode, gradients only) of a fixed batch x 3 x size x size."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).float().logsumexp(1).mean().backward()

    return step


def interleaved_ms(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median ms per step over ``repeats`` rounds that run every step once (after one warmup round).

    Round-robin timing spreads load from other processes over all models alike, so ratios stay fair.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def size_table(names: list[str], sizes: list[int], batch: int, repeats: int) -> None:
    """Print the image-size table: one row per model and size."""
    print(
        f"CPU forward+backward, batch {batch} x 3xSxS, median of {repeats} interleaved rounds (per size) after "
        f"1 warmup round; torch {torch.__version__}, torch threads: {torch.get_num_threads()}, "
        f"CPUs: {os.cpu_count()}, {platform.processor() or platform.machine()}\n"
    )
    print(f"| model | size | cifar_stem auto | params (M) | MACs (M) | final map | fwd+bwd ms (batch {batch}) |")
    print("|---|---:|---|---:|---:|---|---:|")
    rows: dict[tuple[str, int], str] = {}
    for size in sizes:
        models = {name: create_model(name, 10, image_size=size) for name in names}
        ms = interleaved_ms({name: train_step(model, batch, size) for name, model in models.items()}, repeats)
        for name, model in models.items():
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rows[name, size] = (
                f"| `{name}` | {size} | {model.cifar_adaptation.stem} | {params:.2f} | "
                f"{macs(model, size) / 1e6:,.0f} | {final_size(model, size)} | {ms[name]:,.0f} |"
            )
    for name in names:
        for size in sizes:
            print(rows[name, size])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="a subset of the table's model names (the anchor always runs)")
    parser.add_argument("--sizes", nargs="*", type=int, help="image sizes: the image-size table of SIZE_MODELS")
    parser.add_argument("--batch", type=int, help="batch size (default 32, or 8 with --sizes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: spinning threads on a shared CPU distort the ratios)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.sizes:
        if min(args.sizes) < 32:
            parser.error(f"--sizes must be at least 32, got {min(args.sizes)}")
        size_table(list(args.models or SIZE_MODELS), args.sizes, args.batch or 8, args.repeats)
        return
    args.batch = args.batch or 32
    rows = [row for row in FAMILIES if not args.models or row[1] in args.models or row[1] == ANCHOR]
    unknown = sorted(set(args.models or ()) - {name for _, name, _ in FAMILIES})
    if unknown:
        parser.error(f"--models must be names from the table, got {', '.join(unknown)}")
    print(
        f"CPU forward+backward, batch {args.batch} x 3x32x32, median of {args.repeats} interleaved rounds after "
        f"1 warmup round; torch {torch.__version__}, torch threads: {torch.get_num_threads()}, "
        f"CPUs: {os.cpu_count()}, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| model | family | cifar_stem auto | params (M) | MACs at 32x32 (M) | final map | "
        f"fwd+bwd ms (batch {args.batch}) | vs {ANCHOR} | norm swap |"
    )
    print("|---|---|---|---:|---:|---|---:|---:|---|")
    models = {name: create_model(name, 10) for _, name, _ in rows}
    ms = interleaved_ms({name: train_step(model, args.batch) for name, model in models.items()}, args.repeats)
    for family, name, _ in rows:
        model = models[name]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"| `{name}` | {family} | {model.cifar_adaptation.stem} | {params:.2f} | {macs(model) / 1e6:,.0f} | "
            f"{final_size(model)} | {ms[name]:,.0f} | {ms[name] / ms[ANCHOR]:.2f}x | {norm_swap_note(model)} |"
        )


if __name__ == "__main__":
    main()
