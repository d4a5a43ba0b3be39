"""Build `gpu_bundle/` for `bench/gpu_check.sh`: wheels the GPU machine lacks plus the CIFAR-10 mosaics.

    python bench/prepare_gpu_bundle.py [--out gpu_bundle] [--shared-data ../shared/data] [--part-mib 58]

Run it on a machine with PyPI access (pip downloads cp312 manylinux wheels for the GPU machine's
Python 3.12). The device tool carries at most 64 MiB per call, so the bundle is split into
`part1/` and `part2/`, each under `--part-mib` MiB, carried by two calls back to back (the second
call finds the first part still there while the machine is warm; see docs/performance.md):

    gpu_bundle/part1/wheels/*.whl            jsonargparse[signatures], albumentations and their deps
    gpu_bundle/part1/data/cifar_export.py    the exporter from ../shared/data
    gpu_bundle/partN/data/cifar10/...        the lossless WebP mosaics, labels, SHA256SUMS (split by size)
    gpu_bundle/MANIFEST.txt                  every file, its part and size

`gpu_bundle/` is ignored through `.git/info/exclude` (added here if missing) so it never lands in git.
`--check` only re-checks an existing bundle (sizes, dependency closure, data files) without downloading.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["WHEELS", "PREINSTALLED", "DEVICE_PYTHON", "build_bundle", "check_bundle", "main"]

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
DEVICE_PYTHON = "3.12"  # python3 on the GPU machines (device KINDS.md: Python 3.12.3, x86-64)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# What the GPU image lacks (its package list has neither jsonargparse nor albumentations), pinned to
# the versions the project is tested with here. Keep one version of each.
WHEELS = {
    "jsonargparse": "4.53.0",
    "docstring-parser": "0.18.0",
    "typeshed-client": "2.15.0",
    "albumentations": "2.0.8",
    "albucore": "0.0.24",
    "simsimd": "6.5.16",
    "stringzilla": "5.3.2",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",
}
# On the GPU image already (device KINDS.md package list); too large to carry (opencv ~ 50 MB).
PREINSTALLED = {
    "numpy", "scipy", "pyyaml", "opencv-python-headless", "torch", "torchvision", "timm",
    "pytorch-lightning", "lightning", "torchmetrics", "tensorboard", "matplotlib", "pillow", "packaging",
    "importlib-resources", "setuptools",
}
DATA_META = ("README.md", "SHA256SUMS", "classes.txt", "filenames.npz", "labels.npz")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _exclude(path: str) -> None:
    """Add `/path/` to .git/info/exclude unless it is there."""
    exclude = REPO / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    line = f"/{path.strip('/')}/"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if line not in lines:
        with exclude.open("a") as f:
            f.write(line + "\n")


def download_wheels(dest: Path) -> None:
    """pip download every pinned wheel for CPython 3.12 manylinux x86-64 (no deps: the pins are the closure)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, version in WHEELS.items()]
    subprocess.run(cmd, check=True)


def _wheel_requirements(wheel: Path) -> list[str]:
    """Requires-Dist lines of a wheel that apply on CPython 3.12 Linux without extras (`signatures` kept)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    env = {"python_version": DEVICE_PYTHON, "python_full_version": DEVICE_PYTHON + ".3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
    needs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        extras_ok = [""] + (["signatures", "typing-extensions"] if _norm(wheel.name).startswith("jsonargparse") else [])
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras_ok):
            needs.append(req.name)
    return needs


def check_wheels(wheels: Path) -> list[str]:
    """Problems with the wheel folder: missing pins, duplicates, or a dependency neither carried nor preinstalled."""
    problems = []
    found: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        found.setdefault(_norm(wheel.name.split("-")[0]), []).append(wheel.name)
        tags = wheel.name[:-4].split("-")[-3:]
        if not (tags[0] in ("py3", "py2.py3", "cp312") or tags[0].startswith("py3")):
            problems.append(f"{wheel.name}: not built for CPython 3.12")
    for name in WHEELS:
        if _norm(name) not in found:
            problems.append(f"missing wheel: {name}=={WHEELS[name]}")
    for name, files in found.items():
        if len(files) > 1:
            problems.append(f"two wheels of {name}: {', '.join(files)}")
    for wheel in wheels.glob("*.whl"):
        for need in _wheel_requirements(wheel):
            if _norm(need) not in found and _norm(need) not in PREINSTALLED:
                problems.append(f"{wheel.name} needs {need}: neither carried nor preinstalled on the GPU image")
    return problems


def _parts(files: list[Path], first_part_used: int, limit: int) -> list[list[Path]]:
    """Greedy split of files, in order, into parts of at most `limit` bytes (part 1 already holds some)."""
    parts: list[list[Path]] = [[]]
    used = first_part_used
    for path in files:
        size = path.stat().st_size
        if used + size > limit:
            parts.append([])
            used = 0
        parts[-1].append(path)
        used += size
    return parts


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_bundle(out: Path, shared_data: Path, part_mib: float = 58.0, download: bool = True) -> list[Path]:
    """Write out/part1..partN (wheels + exporter + CIFAR-10 files) and out/MANIFEST.txt; return the part folders."""
    source = shared_data / "cifar10"
    if not (shared_data / "cifar_export.py").is_file() or not (source / "SHA256SUMS").is_file():
        raise FileNotFoundError(f"--shared-data must hold cifar_export.py and cifar10/, got {shared_data}")
    limit = int(part_mib * MIB)
    wheel_cache = out / ".wheels"
    if download or not any(wheel_cache.glob("*.whl")):
        download_wheels(wheel_cache)
    for part in out.glob("part*"):
        shutil.rmtree(part)
    part1 = out / "part1"
    shutil.copytree(wheel_cache, part1 / "wheels")
    (part1 / "data").mkdir(parents=True)
    shutil.copy2(shared_data / "cifar_export.py", part1 / "data" / "cifar_export.py")
    meta = [source / name for name in DATA_META]
    mosaics = sorted(source.glob("train_*.webp")) + sorted(source.glob("test_*.webp"))
    groups = _parts(meta + mosaics, _dir_size(part1), limit)
    folders = []
    for index, group in enumerate(groups, start=1):
        target = out / f"part{index}" / "data" / "cifar10"
        target.mkdir(parents=True, exist_ok=True)
        for path in group:
            shutil.copy2(path, target / path.name)
        folders.append(out / f"part{index}")
    with (out / "MANIFEST.txt").open("w") as manifest:
        for folder in folders:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                manifest.write(f"{path.relative_to(out)}\t{path.stat().st_size}\n")
    return folders


def check_bundle(out: Path, part_mib: float = 58.0) -> list[str]:
    """Problems with a built bundle: part sizes, wheel closure, data files against SHA256SUMS."""
    parts = sorted(out.glob("part*"))
    if not parts:
        return [f"no part folders in {out}"]
    problems = []
    for part in parts:
        size = _dir_size(part)
        if size > part_mib * MIB:
            problems.append(f"{part.name} is {size / MIB:.1f} MiB > {part_mib} MiB")
    problems += check_wheels(out / "part1" / "wheels")
    data = {p.name: p for part in parts for p in (part / "data" / "cifar10").glob("*")}
    sums = data.get("SHA256SUMS")
    if sums is None:
        return problems + ["SHA256SUMS missing from the bundle"]
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(None, 1)
        name = name.lstrip("*")
        if name not in data:
            problems.append(f"data file missing: {name}")
        elif hashlib.sha256(data[name].read_bytes()).hexdigest() != digest:
            problems.append(f"data file corrupt: {name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_bundle", help="bundle folder, relative to the repo root")
    parser.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--part-mib", type=float, default=58.0, help="largest part in MiB (device carry: 64 MiB)")
    parser.add_argument("--no-download", action="store_true", help="reuse wheels downloaded earlier")
    parser.add_argument("--check", action="store_true", help="only check an existing bundle")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    if REPO in out.parents:
        _exclude(str(out.relative_to(REPO)))
    if not args.check:
        folders = build_bundle(out, Path(args.shared_data).resolve(), args.part_mib, not args.no_download)
        for folder in folders:
            shown = folder.relative_to(REPO) if REPO in folder.parents else folder
            print(f"{shown}: {_dir_size(folder) / MIB:.1f} MiB")
    problems = check_bundle(out, args.part_mib)
    for problem in problems:
        print(f"bundle problem: {problem}", file=sys.stderr)
    print(f"bundle {'OK' if not problems else 'has problems'}: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
