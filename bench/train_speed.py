"""Training speed: a hand-written PyTorch loop (the anchor) vs the project's Lightning path, same model.

Both train the same timm backbone (CIFAR stem, `models.backbones.create_model`) with SGD-Nesterov,
a per-step one-cycle schedule, label smoothing, bf16 autocast on CUDA and channels_last, from uint8
images that live on the device with per-sample random crop (reflect pad 4) + flip done there:

- plain: `bench.speed_loops.PlainLoop`. One `index_select` per batch gathers crop + flip from the uint8
  (N, H, W, C) store (reflection folded into the index), one fused multiply-add normalizes; no host sync per step.
- lightning: `models.run.cli.CifarCLI` (the objects train.py builds: CifarClassifier, CIFARDataModule with
  `loader="device"`, the same callbacks, TensorBoard logger), no validation split, progress bar off,
  checkpointing off and on.
- `--mix on`: both apply the project's per-sample Mixup/CutMix switch (`augment.pipeline`), so the
  ratio still isolates framework overhead.
- `--sam`: one more Lightning run with SAM (`model.optimizer.sam`, rho 0.05) around the same optimizer;
  a line under the table gives its s/epoch against the plain Lightning run of the same invocation.

Runs are in one process (cudnn autotune is paid once, in the first run's first epoch). The first epoch
of every run is reported apart and left out of the steady s/epoch mean. Epochs are timed in wall time
after a device sync on CUDA, in this process's CPU time on CPU (a shared machine; one torch thread).
Peak memory is `torch.cuda.max_memory_allocated` per run (reset between runs). One markdown table
comes last. `--profile` instead counts torch ops per step and tensor-to-host reads per epoch of both
loops (`bench.host_sync.HostSyncAudit`); see docs/performance.md.

This module holds the command line, the report table and `--profile`; settings and data setup are in
`bench.speed_settings`, the two loops in `bench.speed_loops` (their public names are re-exported here).

    python -m bench.train_speed --device cuda --data-root data/cifar10     # GPU: resnet18, bf16, batch 512
    python -m bench.train_speed --device cpu --repeats 3                    # CPU: test_resnet, 2048 images
    python -m bench.train_speed --device cpu --subset 512 --batch-size 64 --profile
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.host_sync import HostSyncAudit, epoch_window, profile_tables
from bench.speed_loops import (
    PlainLoop,
    _lightning_trainer,
    crop_flip_normalize,
    device_dataset_bytes,
    train_lightning,
    train_plain,
)
from bench.speed_loops import _one_cycle as _one_cycle  # re-exported: tests check the schedule through this module
from bench.speed_settings import (
    MIX_CONFIG,
    RunResult,
    Settings,
    load_cifar10_train,
    synthetic_cifar,
    train_subset,
    write_imagefolder,
)

__all__ = [
    "Settings",
    "RunResult",
    "MIX_CONFIG",
    "synthetic_cifar",
    "load_cifar10_train",
    "crop_flip_normalize",
    "PlainLoop",
    "train_plain",
    "train_lightning",
    "device_dataset_bytes",
    "write_imagefolder",
    "train_subset",
    "profile_steps",
    "merge_repeats",
    "markdown_table",
    "sam_cost_lines",
    "main",
]

# ------------------------------------------------------------------------------------------------ report


def merge_repeats(runs: list[RunResult]) -> list[RunResult]:
    """One result per (name, mix), in first-seen order: the first run's warm-up epoch, then the steady
    epochs of every repeat (each repeat's own first epoch left out); peak memory is the largest seen."""
    merged: dict[tuple[str, bool], RunResult] = {}
    for run in runs:
        key = (run.name, run.mix)
        if key not in merged:
            merged[key] = dataclasses.replace(run, epoch_s=list(run.epoch_s), extra=dict(run.extra))
            continue
        into = merged[key]
        into.epoch_s += run.epoch_s[1:]
        into.final_loss = run.final_loss
        if run.peak_bytes is not None:
            into.peak_bytes = max(into.peak_bytes or 0, run.peak_bytes)
    return list(merged.values())


def _mb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def markdown_table(results: list[RunResult]) -> str:
    """One row per run; ratios against the plain run with the same mix setting."""
    anchors = {r.mix: r for r in results if r.name == "plain"}
    lines = [
        "| run | mix | first epoch s | s/epoch | img/s | time vs plain | peak MiB | mem vs plain | data on device "
        "| last-epoch loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        anchor = anchors.get(r.mix)
        t_ratio = f"{r.steady_s / anchor.steady_s:.3f}x" if anchor else "n/a"
        m_ratio = f"{r.peak_bytes / anchor.peak_bytes:.3f}x" if anchor and r.peak_bytes and anchor.peak_bytes else "n/a"
        lines.append(
            f"| {r.name} | {'on' if r.mix else 'off'} | {r.first_s:.2f} | {r.steady_s:.3f} | {r.images_per_s:,.0f} "
            f"| {t_ratio} | {_mb(r.peak_bytes)} | {m_ratio} | {r.data_note} | {r.final_loss:.3f} |"
        )
    return "\n".join(lines)


def sam_cost_lines(results: list[RunResult]) -> str:
    """'SAM step cost' lines: s/epoch of each `lightning +sam` run over the `lightning` run with the same mix."""
    base = {r.mix: r for r in results if r.name == "lightning"}
    lines = [
        f"SAM step cost (mix {'on' if r.mix else 'off'}): {r.steady_s / base[r.mix].steady_s:.2f}x the s/epoch of "
        f"the same Lightning run without SAM ({r.steady_s:.3f} vs {base[r.mix].steady_s:.3f} s)"
        for r in results
        if r.name == "lightning +sam" and r.mix in base
    ]
    return "\n\n" + "\n".join(lines) if lines else ""


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _measure(device: torch.device, train: Callable[..., RunResult], *args: Any) -> RunResult:
    """`train(*args)` with the device's peak-memory counter reset before and read after."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = train(*args)
    if device.type == "cuda":
        result.peak_bytes = torch.cuda.max_memory_allocated(device)
    print(f"  {result.name} mix={'on' if result.mix else 'off'}: epochs "
          + " ".join(f"{s:.3f}" for s in result.epoch_s) + f" s, loss {result.final_loss:.3f}", flush=True)
    return result


# ------------------------------------------------------------------------------------------------ profile


def profile_steps(settings: Settings, root: Path, images: np.ndarray, labels: np.ndarray, subset: int | None) -> str:
    """Epoch 1 of both loops under torch.profiler (op counts) and HostSyncAudit (tensor-to-host call sites)."""
    from torch.profiler import ProfilerActivity, profile

    settings = Settings(**{**settings.__dict__, "epochs": 3})
    dev = settings.device
    loop = PlainLoop(settings, torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev), mix=False)
    for _ in range(loop.steps_per_epoch):  # epoch 0: warm-up
        loop.step()
    plain_audit, light_audit = HostSyncAudit(), HostSyncAudit()
    with profile(activities=[ProfilerActivity.CPU]) as plain_prof, plain_audit:
        losses = [loop.step() for _ in range(loop.steps_per_epoch)]
        float(torch.stack(losses).mean())  # the anchor's one read per epoch
    light_prof = profile(activities=[ProfilerActivity.CPU])

    def enter() -> None:
        light_prof.__enter__()
        light_audit.__enter__()

    def exit_() -> None:
        light_audit.__exit__(None, None, None)
        light_prof.__exit__(None, None, None)

    window = epoch_window(enter, exit_)
    with tempfile.TemporaryDirectory() as tmp:
        cli = _lightning_trainer(settings, root, False, False, Path(tmp), subset, [window])
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    plain_ops = {e.key: e.count for e in plain_prof.key_averages()}
    light_ops = {e.key: e.count for e in light_prof.key_averages()}
    audits = {"plain": plain_audit, "lightning": light_audit}
    return profile_tables(plain_ops, light_ops, loop.steps_per_epoch, window.steps, audits)


# ------------------------------------------------------------------------------------------------ main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default=None, help="timm name (default resnet18 on CUDA, test_resnet on CPU)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run, the first is warm-up (default 4 / 3)")
    p.add_argument("--subset", type=int, default=None, help="train images (default all on CUDA, 2048 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 128 on CPU")
    p.add_argument("--data-root", default=None, help="CIFAR-10 torchvision folder; default synthetic uint8 data")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--clock", choices=("auto", "wall", "process"), default="auto",
                   help="auto: wall time on CUDA, this process's CPU time on CPU (steadier on a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --clock process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone in both loops")
    p.add_argument("--mix", choices=("off", "on", "both"), default="both", help="per-sample Mixup/CutMix switch")
    p.add_argument("--checkpoint", choices=("off", "on", "both"), default="both", help="Lightning checkpointing")
    p.add_argument("--repeats", type=int, default=1, help="run every loop this many times, interleaved")
    p.add_argument("--guard-every", type=int, default=None, metavar="N",
                   help="add a Lightning run whose NonFiniteLossGuard reads the loss every N steps")
    p.add_argument("--sam", action="store_true",
                   help="add a Lightning run with SAM (rho 0.05); its s/epoch vs plain Lightning is SAM's step cost")
    p.add_argument("--loops", default="plain,lightning", help="comma list of plain, lightning")
    p.add_argument("--profile", action="store_true", help="only profile one epoch of each loop: op counts, host syncs")
    p.add_argument("--max-time-ratio", type=float, default=None, help="exit 1 if lightning/plain s/epoch exceeds it")
    p.add_argument("--table-out", default=None, help="also write the markdown table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    on_gpu = device.type == "cuda"
    settings = Settings(
        device=device,
        backbone=args.backbone or ("resnet18" if on_gpu else "test_resnet"),
        epochs=args.epochs or (4 if on_gpu else 3),
        batch_size=args.batch_size or (512 if on_gpu else 128),
        bf16=args.precision == "bf16" or (args.precision == "auto" and on_gpu),
        channels_last=True,
        compile=args.compile,
        clock=("wall" if on_gpu else "process") if args.clock == "auto" else args.clock,
    )
    if settings.epochs < 1:
        raise SystemExit(f"error: --epochs must be >= 1, got {settings.epochs}")
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1, got {args.repeats}")
    saved = (torch.get_num_threads(), torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark)
    threads = args.threads or (1 if settings.clock == "process" else None)
    if threads:  # idle OpenMP workers spin, which process CPU time would count: one thread by default
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = on_gpu
    try:
        return _run(args, settings)
    finally:  # leave the process as found (the test suite calls main in-process)
        torch.set_num_threads(saved[0])
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _run(args: argparse.Namespace, settings: Settings) -> int:
    on_gpu = settings.device.type == "cuda"
    subset = args.subset if args.subset is not None else (None if on_gpu else 2048)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        tmp_path = Path(tmp)
        if args.data_root:
            images, labels = load_cifar10_train(args.data_root)
            source, root = f"CIFAR-10 train ({args.data_root})", Path(args.data_root)
        else:  # the Lightning path reads files: write the synthetic images as an ImageFolder tree
            images, labels = synthetic_cifar(subset or 50000, settings.seed)
            source, root = "synthetic uint8", None
            if "lightning" in args.loops or args.profile:
                root = write_imagefolder(tmp_path / "data", images, labels)
        if subset is not None and subset > len(labels):
            raise SystemExit(f"error: --subset must be <= {len(labels)}, got {subset}")
        lightning_subset = subset if subset is not None and subset < len(labels) else None
        images, labels = train_subset(images, labels, lightning_subset, settings.seed)
        if args.profile:
            print(profile_steps(settings, root, images, labels, lightning_subset))
            return 0
        return _run_all(args, settings, images, labels, root, lightning_subset, tmp_path, source)


def _run_all(args: argparse.Namespace, settings: Settings, images: np.ndarray, labels: np.ndarray, root: Path | None,
             subset: int | None, tmp: Path, source: str) -> int:
    device = settings.device
    mixes = {"off": [False], "on": [True], "both": [False, True]}[args.mix]
    checkpoints = {"off": [False], "on": [True], "both": [False, True]}[args.checkpoint]
    loops = [name.strip() for name in args.loops.split(",")]
    print(f"train_speed: {_device_name(device)}, torch {torch.__version__}, {settings.backbone}, batch "
          f"{settings.batch_size}, {'bf16 autocast' if settings.bf16 else 'fp32'}, channels_last, "
          f"{'compiled, ' if settings.compile else ''}{len(images)} images ({source}), {settings.epochs} epochs/run",
          flush=True)
    runs: list[RunResult] = []
    for _ in range(args.repeats):  # repeats interleave the loops, so slow phases of a shared machine hit all
        for mix in mixes:
            if "plain" in loops:
                runs.append(_measure(device, train_plain, settings, images, labels, mix))
            if "lightning" in loops:
                for checkpoint in checkpoints if not mix else [False]:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(_measure(device, train_lightning, settings, root, mix, checkpoint, work, subset))
                if args.guard_every and not mix:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(
                        _measure(device, train_lightning, settings, root, mix, False, work, subset, args.guard_every)
                    )
                if args.sam:
                    work = tmp / f"runs_{len(runs)}"
                    runs.append(_measure(device, train_lightning, settings, root, mix, False, work, subset, None, True))
    results = merge_repeats(runs)
    table = markdown_table(results) + sam_cost_lines(results)
    header = (f"\n## train_speed on {_device_name(device)}\n\n{settings.backbone}, batch {settings.batch_size}, "
              f"{'bf16 autocast' if settings.bf16 else 'fp32'}, channels_last, {len(images)} train images "
              f"({source}), {settings.epochs} epochs per run x {args.repeats}; s/epoch = mean without each run's "
              f"first epoch, {'wall time' if settings.clock == 'wall' else 'process CPU time'}; "
              f"torch {torch.__version__}\n")
    print(header)
    print(table, flush=True)
    if args.table_out:
        Path(args.table_out).write_text(header + "\n" + table + "\n")
    status = 0
    for r in results:
        if r.name.startswith("lightning") and r.extra.get("float_data_bytes"):
            print(f"FAIL: {r.name} keeps {r.extra['float_data_bytes'] / 1e6:.1f} MB of float images on the device")
            status = 1
    if args.max_time_ratio is not None:
        anchors = {r.mix: r for r in results if r.name == "plain"}
        for r in results:
            ratio = r.steady_s / anchors[r.mix].steady_s if r.mix in anchors else 0.0
            plain_lightning = r.name.startswith("lightning") and "+ckpt" not in r.name and "+sam" not in r.name
            if plain_lightning and ratio > args.max_time_ratio:
                print(f"FAIL: {r.name} mix={r.mix} takes {ratio:.3f}x the plain loop's time (> {args.max_time_ratio})")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
