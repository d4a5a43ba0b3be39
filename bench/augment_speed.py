"""Time batch regularizers and policy augmentations against timm / torchvision / kornia in the same run.

Regularizers: one markdown table of ms per batch (median of ``--repeats`` runs after warmup, CUDA
synchronized) for B=512 x 3x32x32 and B=128 x 3x224x224, with ratios against timm's batch mode at its
expected cost per batch. timm's batch mode draws Mixup or CutMix per call (half each), so its median
lands on either cluster from run to run; the anchor is the mean of its Mixup-only and CutMix-only medians.

Policies (TrivialAugmentWide, RandAugment, AutoAugment CIFAR-10) on one uint8 batch 512 x 3x32x32: ours
per sample on the device, torchvision's per-image loop (what a DataLoader worker does for a batch),
torchvision's call on the whole batch tensor (one op and magnitude for all 512 images; its median time is
that of the median op, since each call draws one; its mean over many calls is the expected cost per
batch), torchvision's per-op floor (every sample's op at the speed of torchvision's whole-batch call of
that op: the share of samples drawing each op times that call's time, summed; the cost of one op per image
with no grouping) and kornia's batch version when kornia is installed (an optional anchor); ratios
against torchvision's loop.

    python -m bench.augment_speed --device cpu --repeats 50
    python -m bench.augment_speed --device cpu --suite policies --threads 1
    python -m bench.augment_speed --device cpu --threads 1 --check   # exit 1 past the CHECK_LIMITS ratios

``--check`` compares ratios measured in the same run (so a slower or busier machine moves both sides):
each policy per sample against the per-op floor (its ratio to torchvision's whole-batch call is printed too),
and the per-sample Mixup/CutMix switch against timm's per-batch Mixup at B=512 3x32x32. It is a
manual regression check; the tests never time anything.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from augment.erasing import Cutout
from augment.mixing import CutMix, Mixup, MixupCutMix
from augment.noise import GaussianNoise
from augment.policies import AutoAugment, RandAugment, TrivialAugmentWide

__all__ = [
    "main",
    "call_times",
    "time_ms",
    "policy_candidates",
    "policy_pairs",
    "op_shares",
    "op_floor_ms",
    "FLOOR",
    "ONE_OP_MEAN",
    "TIMM_EXPECTED",
    "mean_ms",
    "timm_expected_ms",
    "bench_policies",
    "policy_table",
    "CHECK_LIMITS",
    "check_ratios",
    "measured_ratios",
]

SHAPES = ((512, 3, 32, 32), (128, 3, 224, 224))
FLOOR = "each sample's op at whole-batch speed"
"""The policy anchor of :func:`op_floor_ms` (a method name of the policy table)."""
ONE_OP_MEAN = "whole batch (one op), mean of many calls"
"""The policy anchor of torchvision's whole-batch call at its expected cost (:func:`mean_ms`)."""
TIMM_EXPECTED = "timm Mixup batch, expected"
"""timm's per-batch switch at its expected cost: the mean of its Mixup-only and CutMix-only medians."""
MEAN_CALLS = 200
"""Calls averaged by :func:`mean_ms` for the one-op anchor."""
NUM_CLASSES = 100
POLICY_SHAPE = (512, 3, 32, 32)

POLICIES = ("TrivialAugmentWide", "RandAugment (2 ops, M=9)", "AutoAugment CIFAR-10")
PER_OP = " / per-op floor"
"""Suffix of a policy's ratio to :func:`op_floor_ms` in :func:`measured_ratios`."""
ONE_OP = " / one-op mean"
"""Suffix of a policy's ratio to torchvision's whole-batch call at its mean (expected) cost."""

CHECK_LIMITS = {**{f"{policy}{PER_OP}": 2.0 for policy in POLICIES}, "ours switch per-sample": 2.0}
"""``--check`` limits, same-run ratios: a policy's per-sample time / :func:`op_floor_ms` (every sample's op at
torchvision's whole-batch speed), and the per-sample switch's time / timm's per-batch switch at its expected
cost (B=512 3x32x32). The ratios to torchvision's whole-batch call are printed, not checked: the median
(``<policy>`` alone) is the median op's time and moves with the draws; the mean of many calls
(``<policy> / one-op mean``) estimates the floor's quantity, the expected cost of one random op on the batch,
with sampling noise. Figures: README "Benchmarks"."""


def call_times(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 5) -> list[float]:
    """Wall time in seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` calls (CUDA synchronized)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` runs."""
    return statistics.median(call_times(fn, device, repeats, warmup)) * 1e3


def mean_ms(fn: Callable[[], object], device: torch.device, calls: int = MEAN_CALLS, warmup: int = 5) -> float:
    """Mean wall time of ``fn()`` in ms over ``calls`` runs: the expected cost of a call that draws its work."""
    return statistics.fmean(call_times(fn, device, calls, warmup)) * 1e3


def candidates(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Name -> zero-arg callable doing one batch. timm mixes ``x`` in place (values drift; timing does not)."""
    from timm.data import Mixup as TimmMixup
    from torchvision.transforms import v2

    k = NUM_CLASSES
    ours = {
        "ours Mixup batch": Mixup(1.0, num_classes=k),
        "ours CutMix batch": CutMix(1.0, num_classes=k),
        "ours switch per-batch": MixupCutMix(1.0, 1.0, num_classes=k),
        "ours switch per-sample": MixupCutMix(1.0, 1.0, per_sample=True, num_classes=k),
        "ours Cutout (1 hole, 0.5)": Cutout(1, 0.5),
        "ours GaussianNoise": GaussianNoise(0.1),
    }
    fns: dict[str, Callable[[], object]] = {"x.clone() anchor": x.clone}
    fns.update({name: (lambda op=op: op(x, y)) for name, op in ours.items()})
    for mode in ("batch", "pair", "elem"):
        timm_op = TimmMixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=k)
        fns[f"timm Mixup {mode}"] = lambda op=timm_op: op(x, y)
    for name, alphas in (("Mixup", (1.0, 0.0)), ("CutMix", (0.0, 1.0))):
        timm_op = TimmMixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], label_smoothing=0.0, num_classes=k)
        fns[f"timm Mixup batch, {name} only"] = lambda op=timm_op: op(x, y)
    fns["torchvision v2.MixUp"] = lambda op=v2.MixUp(alpha=1.0, num_classes=k): op(x, y)
    fns["torchvision v2.CutMix"] = lambda op=v2.CutMix(alpha=1.0, num_classes=k): op(x, y)
    return fns


def policy_pairs(gen: torch.Generator | None = None) -> dict[str, tuple[object, object]]:
    """Policy -> (ours, torchvision's ``transforms.v2`` class with the same settings)."""
    from torchvision.transforms import v2

    return {
        "TrivialAugmentWide": (TrivialAugmentWide(generator=gen), v2.TrivialAugmentWide()),
        "RandAugment (2 ops, M=9)": (RandAugment(num_ops=2, magnitude=9, generator=gen),
                                     v2.RandAugment(num_ops=2, magnitude=9)),
        "AutoAugment CIFAR-10": (AutoAugment(generator=gen), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
    }


def op_shares(policy: object, height: int, width: int, draws: int = 8192) -> dict[tuple[int, str], tuple[float, float]]:
    """(step, op name) -> (share of samples drawing it at that step, one magnitude they drew), from
    ``draws`` samples of ``policy.sample`` (steps a sub-policy skips are Identity)."""
    from augment.policy_ops import OPS

    shares = {}
    for step, (ops, mags) in enumerate(policy.sample(draws, height, width, generator=torch.Generator().manual_seed(1))):
        for index in ops.unique().tolist():
            picked = ops == index
            shares[step, OPS[index]] = (float(picked.double().mean()), float(mags[picked][0]))
    return shares


def op_floor_ms(policy: object, tv: object, x: torch.Tensor, repeats: int) -> float:
    """ms per batch if every sample's op ran at the speed of torchvision's whole-batch call of that op:
    the sum over steps and ops of (share of samples drawing it) x (torchvision's call of that op, with a
    magnitude drawn for it, on all of ``x``). The floor of "one op per image" at torchvision's kernel speed."""
    total = 0.0
    for (_, name), (share, magnitude) in op_shares(policy, x.shape[2], x.shape[3]).items():
        def call(name: str = name, magnitude: float = magnitude) -> object:
            return tv._apply_image_or_video_transform(x, name, magnitude, interpolation=tv.interpolation,
                                                      fill=tv._fill)
        total += share * time_ms(call, x.device, repeats)
    return total


def policy_candidates(x: torch.Tensor) -> dict[str, tuple[str, Callable[[], object], bool]]:
    """Name -> (policy, zero-arg callable doing one uint8 batch ``x``, is a per-image loop) for each policy."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    pairs = policy_pairs(gen)
    ours = {policy: pair[0] for policy, pair in pairs.items()}
    theirs = {policy: pair[1] for policy, pair in pairs.items()}
    fns: dict[str, tuple[str, Callable[[], object], bool]] = {}
    for policy, op in ours.items():
        tv = theirs[policy]
        fns[f"ours {policy}, per sample"] = (policy, lambda op=op: op(x), False)
        fns[f"torchvision {policy}, per-image loop"] = (policy, lambda tv=tv: [tv(image) for image in x], True)
        fns[f"torchvision {policy}, whole batch (one op)"] = (policy, lambda tv=tv: tv(x), False)
    try:
        import kornia.augmentation.auto as kornia_auto
    except ImportError:
        return fns
    xf = x.float().div(255.0)
    kornia_ops = {
        "TrivialAugmentWide": kornia_auto.TrivialAugment(),
        "RandAugment (2 ops, M=9)": kornia_auto.RandAugment(n=2, m=9),
    }
    for policy, op in kornia_ops.items():
        fns[f"kornia {policy} (float input)"] = (policy, lambda op=op: op(xf), False)
    return fns


def bench_policies(device: torch.device, repeats: int, loop_repeats: int) -> dict[str, tuple[str, float, bool]]:
    """Method -> (policy, ms per batch, is a per-image loop) on ``device``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, POLICY_SHAPE, dtype=torch.uint8, generator=gen).to(device)
    results = {}
    for name, (policy, fn, loop) in policy_candidates(x).items():
        n = loop_repeats if loop else repeats
        results[name] = (policy, time_ms(fn, device, n, warmup=1 if loop else 5), loop)
    for policy, (ours, tv) in policy_pairs().items():
        results[f"torchvision {policy}, {ONE_OP_MEAN}"] = (policy, mean_ms(lambda tv=tv: tv(x), device), False)
        results[f"torchvision {policy}, {FLOOR}"] = (policy, op_floor_ms(ours, tv, x, repeats), False)
    return results


def policy_table(rows: dict[str, dict[str, tuple[str, float, bool]]]) -> str:
    """Markdown table: device, method, ms per batch, speed-up over torchvision's per-image loop of that policy."""
    b, c, h, w = POLICY_SHAPE
    head = ["device", "method", f"B={b} {c}x{h}x{w} uint8 ms", "x faster than torchvision per-image loop"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for device, results in rows.items():
        loops = {policy: ms for policy, ms, loop in results.values() if loop}
        for name, (policy, ms, _) in results.items():
            lines.append(f"| {device} | {name} | {ms:.2f} | {loops[policy] / ms:.1f} |")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    """One line naming the CPU or GPU and torch's thread count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return f"{device.type}: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def bench_device(device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Method -> [ms per shape] on ``device``."""
    results: dict[str, list[float]] = {}
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        x = torch.randn(shape, generator=gen).to(device)
        y = torch.randint(0, NUM_CLASSES, (shape[0],), generator=gen).to(device)
        for name, fn in candidates(x, y).items():
            results.setdefault(name, []).append(time_ms(fn, device, repeats))
    results[TIMM_EXPECTED] = timm_expected_ms(results)
    return results


def timm_expected_ms(results: dict[str, list[float]], switch_prob: float = 0.5) -> list[float]:
    """timm's per-batch switch at its expected cost, per shape: ``1 - switch_prob`` of its batches are Mixup,
    ``switch_prob`` CutMix (timm's default 0.5), each at the median of its Mixup-only / CutMix-only rows."""
    halves = zip(results["timm Mixup batch, Mixup only"], results["timm Mixup batch, CutMix only"])
    return [(1.0 - switch_prob) * mixup + switch_prob * cutmix for mixup, cutmix in halves]


def table(rows: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table: device, method, then ms and ratio vs timm batch (expected cost) for each shape."""
    head = ["device", "method"]
    for b, c, h, w in SHAPES:
        head += [f"B={b} {c}x{h}x{w} ms", "x timm batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for device, results in rows.items():
        base = results[TIMM_EXPECTED]
        for name, times in results.items():
            cells = [device, name]
            for t, ref in zip(times, base):
                cells += [f"{t:.3f}", f"{t / ref:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_ratios(
    rows: dict[str, dict[str, list[float]]], policy_rows: dict[str, dict[str, tuple[str, float, bool]]]
) -> dict[str, float]:
    """``device: name`` -> the ratio :data:`CHECK_LIMITS` bounds, for what the run measured."""
    ratios = {}
    for device, results in policy_rows.items():
        for policy in POLICIES:
            ours = results.get(f"ours {policy}, per sample")
            anchors = (
                (policy, "whole batch (one op)"),
                (f"{policy}{ONE_OP}", ONE_OP_MEAN),
                (f"{policy}{PER_OP}", FLOOR),
            )
            for key, anchor in anchors:
                theirs = results.get(f"torchvision {policy}, {anchor}")
                if ours and theirs:
                    ratios[f"{device}: {key}"] = ours[1] / theirs[1]
    for device, results in rows.items():
        if "ours switch per-sample" in results and TIMM_EXPECTED in results:
            switch, timm = results["ours switch per-sample"][0], results[TIMM_EXPECTED][0]
            ratios[f"{device}: ours switch per-sample"] = switch / timm
    return ratios


def limit_of(key: str, limits: dict[str, float] = CHECK_LIMITS) -> float | None:
    """The limit of ratio ``device: name`` in ``limits`` (keyed by name), None when it is not checked."""
    return limits.get(key.split(": ", 1)[-1])


def check_ratios(ratios: dict[str, float], limits: dict[str, float] = CHECK_LIMITS) -> list[str]:
    """One line per ratio ``device: name`` above its limit in ``limits`` (keyed by name); empty when all pass."""
    failures = []
    for key, ratio in ratios.items():
        limit = limit_of(key, limits)
        if limit is not None and ratio > limit:
            failures.append(f"{key}: {ratio:.2f}x exceeds the limit {limit:.2f}x")
    return failures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu and cuda when available)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per method (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--suite", default="all", choices=("all", "regularizers", "policies"), help="which tables")
    parser.add_argument("--loop-repeats", type=int, default=5, help="timed runs of each per-image loop (slow)")
    limits = ", ".join(f"{name} {limit:g}x" for name, limit in CHECK_LIMITS.items())
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a same-run ratio is past its limit: ours per sample / torchvision's per-op floor "
        f"of that policy, ours per-sample switch / timm Mixup batch at its expected cost (B=512 3x32x32); "
        f"limits: {limits}",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    rows, policy_rows = {}, {}
    for name in devices:
        device = torch.device(name)
        print(machine(device))
        if args.suite in ("all", "regularizers"):
            rows[name] = bench_device(device, args.repeats)
        if args.suite in ("all", "policies"):
            policy_rows[name] = bench_policies(device, args.repeats, args.loop_repeats)
    if rows:
        print()
        print(table(rows))
    if policy_rows:
        print()
        print(policy_table(policy_rows))
    if args.check:
        ratios = measured_ratios(rows, policy_rows)
        print()
        for key, ratio in ratios.items():
            limit = limit_of(key)
            print(f"check {key}: {ratio:.2f}x ({'not checked' if limit is None else f'limit {limit:g}x'})")
        failures = check_ratios(ratios)
        for line in failures:
            print(f"FAIL {line}", file=sys.stderr)
        if failures:
            sys.exit(1)


if __name__ == "__main__":
    main()
