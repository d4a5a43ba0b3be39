"""The wheel a library user gets: `augment` only, needing torch alone; `augment.data` names the extra it needs.

Offline: the wheel is built without build isolation from a copy of the sources, and installed with
--no-deps into a fresh virtual environment that sees torch and torch's own dependencies only (symlinked
into one folder on PYTHONPATH), so numpy, Pillow, Lightning, timm and torchvision are not importable there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _closure(root: str) -> set[str]:
    """Distribution ``root`` and everything it requires on this platform (installed ones)."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement this environment does not have
        seen.add(key)
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if "extra" in marker:
                continue
            if marker.strip() and not _marker_holds(marker):
                continue
            todo.append(re.split(r"[ <>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return seen


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker.strip()).evaluate()


def _torch_only_path(folder: Path) -> Path:
    """A folder of symlinks to torch's installed files (its top-level packages and modules), nothing else."""
    folder.mkdir()
    site = Path(metadata.distribution("torch").locate_file(""))
    for key in _closure("torch"):
        for file in metadata.distribution(key).files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            link = folder / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
    return folder


def test_wheel_ships_augment_only_and_runs_with_torch_alone(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("augment", "models", "bench"):  # models/ and bench/ present, so the test sees them left out
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    (wheel,) = dist.glob("cifar_aug-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"augment"}, tops

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=120)

    script = textwrap.dedent(
        """
        import importlib.util, pathlib, sys
        import torch
        import augment
        assert "site-packages" in pathlib.Path(augment.__file__).parts, augment.__file__
        for name in ("numpy", "PIL", "pytorch_lightning", "timm", "torchvision", "models", "bench"):
            assert importlib.util.find_spec(name) is None, name
        mix = augment.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, per_sample=True, num_classes=10,
                                  generator=torch.Generator().manual_seed(0))
        x, targets = mix(torch.rand(5, 3, 8, 8), torch.arange(5))
        assert x.shape == (5, 3, 8, 8) and targets.shape == (5, 10)
        assert torch.allclose(targets.sum(1), torch.ones(5))
        try:
            import augment.data
        except ImportError as err:
            print(err)
        else:
            sys.exit("augment.data imported without the train extra")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(_torch_only_path(tmp_path / "torch_only"))
    run = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    message = run.stdout.strip()
    assert "\n" not in message and 'pip install "cifar-aug[train]"' in message, message
    assert "numpy" in message and "pytorch_lightning" in message, message
