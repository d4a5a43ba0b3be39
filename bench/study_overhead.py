"""What Ray Tune costs and gains a study on one machine: N tiny trials one after another in this process (the
old sequential runner) against the same N as Ray trials, 1 and K at a time.

    python -m bench.study_overhead                 # 4 trials, 2 at a time, 6 epochs on 800 synthetic 32x32 images
    python -m bench.study_overhead --trials 4 --concurrent 2 --epochs 2 --images 64

Every fit uses one torch thread (on a shared 2-core machine two spinning OpenMP threads make a tiny CNN's
step 10-30x slower), so the modes differ only in how many fits run at once. Prints one table: wall time of
each mode and its ratio to the sequential run; Ray's start-up and shutdown (fixed cost per study); Ray's cost
per trial ((Ray one at a time - start-up - sequential) / N: worker start, imports, Tune's bookkeeping and
the per-epoch reports). Every trial is the same tiny fit (timm test_resnet on a synthetic 4-class
ImageFolder); the data lives in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.study import REPO_ROOT, build_args, load_study, run_study
from bench.study.engine import EngineOptions, ray_session


def _imagefolder(root: Path, per_class: int, classes: int = 4) -> Path:
    """`root/{train,test}/class_k/i.png`: class-coloured noise (learnable in a few steps)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 8)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 * c + 30, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _study(folder: Path, trials: int, epochs: int) -> Path:
    doc = {
        "name": "overhead",
        "base": [str(REPO_ROOT / "configs/cifar10_resnet18.yaml")],
        "seeds": list(range(trials)),
        "scales": {"tiny": {"configs": [str(REPO_ROOT / "configs/studies/overlays/ci.yaml")],
                            "trainer.max_epochs": epochs, "trainer.limit_train_batches": 1.0,
                            "data.val_size": 32}},
        "variants": [{"name": "tiny"}],
    }  # fmt: skip
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sequential(study_path: Path, out: Path, data: Path, threads: int) -> float:
    """The N fits one after another in this process (as the runner did before Ray)."""
    import torch

    from models.run.cli import run

    torch.set_num_threads(threads)
    study = load_study(study_path)
    start = time.perf_counter()
    for seed in study.seeds:
        log_dir = out / study.name / "tiny" / f"tiny_seed{seed}"
        run(build_args(study, study.variants[0], "tiny", seed, log_dir, {"data.root": str(data), "run_test": False}))
    return time.perf_counter() - start


def _ray(study_path: Path, out: Path, data: Path, concurrent: int, cpus: int) -> tuple[float, float, float]:
    """(init s, trials s, shutdown s) of the study as Ray trials, `concurrent` at a time with `cpus` each
    (one torch thread per fit, as in the sequential run)."""
    options = EngineOptions(max_concurrent=concurrent, cpus_per_trial=cpus, threads=1)
    start = time.perf_counter()
    with ray_session(options):
        ready = time.perf_counter()
        run_study(load_study(study_path), "tiny", out, extra={"data.root": str(data), "run_test": False},
                  options=options)  # fmt: skip
        done = time.perf_counter()
    return ready - start, done - ready, time.perf_counter() - done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.study_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--images", type=int, default=200, help="training images per class (4 classes)")
    opts = p.parse_args(argv)
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="study-overhead-"))
    try:
        data = _imagefolder(tmp / "data", opts.images)
        study = _study(tmp, opts.trials, opts.epochs)
        from augment.data.datasets import load_dataset

        for split in ("train", "test"):  # decode and cache the images once, outside every timed mode
            load_dataset("imagefolder", data, split, download=False)
        seq = _sequential(study, tmp / "seq", data, 1)
        print(f"[overhead] sequential: {seq:.1f} s", flush=True)
        init1, ray1, stop1 = _ray(study, tmp / "ray1", data, 1, cores)
        print(f"[overhead] Ray 1 at a time: {init1 + ray1 + stop1:.1f} s", flush=True)
        initk, rayk, stopk = _ray(study, tmp / "rayk", data, opts.concurrent, max(1, cores // opts.concurrent))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total1, totalk = init1 + ray1 + stop1, initk + rayk + stopk
    per_trial = (ray1 - seq) / opts.trials
    print(f"{opts.trials} tiny trials (test_resnet, {opts.epochs} epochs, {4 * opts.images} images), {cores} cores")
    print("| mode | wall s | vs sequential |")
    print("|---|---|---|")
    print(f"| sequential, one process | {seq:.1f} | 1.00 |")
    print(f"| Ray, 1 at a time, {cores} CPUs each | {total1:.1f} | {total1 / seq:.2f} |")
    print(f"| Ray, {opts.concurrent} at a time, {max(1, cores // opts.concurrent)} CPUs each | {totalk:.1f} | "
          f"{totalk / seq:.2f} |")  # fmt: skip
    print(f"Ray fixed cost per study: start-up {init1:.1f} / {initk:.1f} s, shutdown {stop1:.1f} / {stopk:.1f} s")
    print(f"Ray cost per trial (1 at a time, start-up excluded): {per_trial:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
