"""Run folders: where a run writes, the marker that says train.py made it, and the rules that keep earlier
runs and the user's own files safe.

- A run claims its folders before fit: the logger's version folder (strictly inside the logger's
  ``save_dir``) and its checkpoint folder each get ``cifar_aug_run.json`` with the run's status
  (running / finished / interrupted) and the checkpoint files it wrote there.
- A folder holding an earlier run is refused, unless ``ckpt_path`` is that run's latest checkpoint in
  its own checkpoint folder (``last.ckpt``, or a newer step checkpoint: continuing it, for more epochs
  or after an interruption). Any older checkpoint of an earlier run (a ``best-*`` file of a finished
  run) is a branch: it needs a new folder.
- ``--overwrite true`` replaces only what the marker vouches for: the marked version folder whole, and in
  a checkpoint folder the user named (``checkpoint.dirpath``) only the checkpoint files the marker lists.
  A folder without the marker, or one holding ``ckpt_path``, is never deleted.
- Two runs started at the same moment with an automatic logger version get different folders (the
  version folder is created exclusively; a taken one moves the run to the next version).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from augment.checks import CheckError

__all__ = [
    "MARKER",
    "RunFolder",
    "check_run_dir_location",
    "claim_version_folder",
    "is_latest_checkpoint",
    "forget_checkpoint",
    "read_marker",
    "record_checkpoint",
    "set_status",
]

MARKER = "cifar_aug_run.json"
LAST = "last.ckpt"


def read_marker(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """The marker of ``folder``; None when absent, unreadable or not a marker (never trusted then)."""
    if folder is None:
        return None
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files", []), list):
        return None
    return marker


def _write_marker(folder: Path, marker: dict[str, Any]) -> None:
    tmp = folder / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, folder / MARKER)


def record_checkpoint(path: str | os.PathLike) -> None:
    """Note a checkpoint file written into a marked folder (what ``--overwrite`` may later remove)."""
    path = Path(path)
    marker = read_marker(path.parent)
    if marker is not None and path.name not in marker.setdefault("files", []):
        marker["files"].append(path.name)
        _write_marker(path.parent, marker)


def forget_checkpoint(path: str | os.PathLike) -> None:
    """Drop a removed checkpoint file from its folder's marker."""
    path = Path(path)
    marker = read_marker(path.parent)
    if marker is not None and path.name in marker.get("files", []):
        marker["files"].remove(path.name)
        _write_marker(path.parent, marker)


def set_status(folders: list[Path], status: str, phase: str | None = None) -> None:
    """Record the run's status (running / finished / interrupted, with the interrupted phase) in its markers."""
    for folder in folders:
        marker = read_marker(folder)
        if marker is None:
            continue
        marker["status"] = status
        if phase is None:
            marker.pop("phase", None)
        else:
            marker["phase"] = phase
        _write_marker(folder, marker)


def is_latest_checkpoint(path: str | os.PathLike, step: int) -> bool:
    """``path`` (saved at global ``step``) is no older than its folder's ``last.ckpt``: the run's latest state."""
    import torch

    path = Path(path).resolve()
    last = path.parent / LAST
    if path == last or not last.is_file():
        return True
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable last.ckpt holds no later state to protect
        return True
    return step >= int(saved.get("global_step", -1)) if isinstance(saved, dict) else True


def check_run_dir_location(log_dir: str | os.PathLike, save_dir: str | os.PathLike, key: str, value: Any) -> None:
    """A logger's run folder must lie strictly inside its ``save_dir`` (paths resolved: ``..``, links)."""
    run, root = Path(log_dir).resolve(), Path(save_dir).resolve()
    if run == root or root not in run.parents:
        rule = (
            f"a folder name that puts the run strictly inside {root} (it resolves to {run}: "
            "an empty, '.' or '..' name or version would make the run folder a parent of other runs)"
        )
        raise CheckError(key, rule, value)


def _is_inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


class RunFolder:
    """The folders one run writes (``log_dir`` may be None: no logger) and the claim on them."""

    def __init__(self, log_dir: str | None, checkpoint_dir: str | None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    @property
    def folders(self) -> list[Path]:
        folders = [f for f in (self.log_dir, self.checkpoint_dir) if f is not None]
        return list(dict.fromkeys(folders))

    def _holds_run(self) -> list[Path]:
        held = []
        if self.log_dir is not None and self.log_dir.is_dir() and any(self.log_dir.iterdir()):
            held.append(self.log_dir)
        ckpts = self.checkpoint_dir
        if ckpts is not None and ckpts != self.log_dir and ckpts.is_dir() and any(ckpts.glob("*.ckpt")):
            held.append(ckpts)
        return held

    def continues(self, ckpt_path: str | None, ckpt_step: int | None) -> bool:
        """``ckpt_path`` (saved at ``ckpt_step``) is the latest checkpoint of the run in its checkpoint folder."""
        if ckpt_path is None or ckpt_step is None or self.checkpoint_dir is None:
            return False
        inside = Path(ckpt_path).resolve().parent == self.checkpoint_dir.resolve()
        return inside and is_latest_checkpoint(ckpt_path, ckpt_step)

    def claim(self, ckpt_path: str | None, ckpt_step: int | None, overwrite: bool, key: str, value: Any) -> None:
        """Refuse (CheckError naming ``key``), clear (``overwrite``) or take the folders; then mark them running."""
        held = self._holds_run()
        if held and not self.continues(ckpt_path, ckpt_step):
            self._refuse_or_clear(held, ckpt_path, overwrite, key, value)
        self._mark_running()

    def _refuse_or_clear(self, held: list[Path], ckpt_path: str | None, overwrite: bool, key: str, value: Any) -> None:
        folder = held[0]
        inside = ckpt_path is not None and any(_is_inside(Path(ckpt_path), f) for f in held)
        if not overwrite:
            last = next(iter(sorted(folder.rglob(LAST))), None)
            if inside:
                hint = "ckpt_path is a checkpoint of that run: a branch from it needs a new run folder (leave the "
                hint += "logger version unset or name a new one); "
                hint += f"to continue the run itself pass its latest checkpoint, {LAST}"
                rule = f"a new run folder ({folder} holds the run ckpt_path belongs to; {hint})"
            elif read_marker(folder) is None and folder != self.log_dir:
                rule = f"a new checkpoint folder ({folder} holds checkpoint files that no run of train.py wrote)"
            else:
                continue_hint = f"pass --ckpt_path {last} to continue it, " if last is not None else ""
                rule = f"a new run folder ({folder} holds a run: {continue_hint}or pass --overwrite true to replace it)"
            raise CheckError(key, rule, value)
        if inside:
            rule = f"a folder that does not hold ckpt_path (--overwrite would delete {ckpt_path})"
            raise CheckError(key, rule, value)
        for occupied in held:
            if read_marker(occupied) is None:
                rule = f"a run folder made by train.py ({occupied} has no readable {MARKER}: it was not written "
                rule += "by a run of this tool, so --overwrite leaves it alone; move or delete it yourself)"
                raise CheckError(key, rule, value)
        for occupied in held:
            self._clear(occupied)

    def _clear(self, folder: Path) -> None:
        """Remove what the marker vouches for: the logger's version folder whole, else the listed checkpoints."""
        if folder == self.log_dir:
            shutil.rmtree(folder)
            return
        marker = read_marker(folder) or {}
        for name in marker.get("files", []):
            if Path(name).name == name:  # a bare file name written by this tool, never a path
                (folder / name).unlink(missing_ok=True)
        (folder / MARKER).unlink(missing_ok=True)

    def _mark_running(self) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            marker = read_marker(folder) or {"files": sorted(p.name for p in folder.glob("*.ckpt"))}
            marker["status"] = "running"
            marker.pop("phase", None)
            _write_marker(folder, marker)


def claim_version_folder(logger: Any) -> None:
    """Create an automatic-version logger folder exclusively; a folder taken meanwhile moves to the next version.

    ``logger``: a Lightning logger whose version the user left unset (TensorBoardLogger, CSVLogger).
    """
    for _ in range(1000):
        path = Path(logger.log_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
            return
        except FileExistsError:
            logger._version = logger.version + 1
