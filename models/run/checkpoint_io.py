"""Crash-safe checkpoint writes: a killed run never leaves a truncated ``last.ckpt`` behind.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, and fsspec's local
transaction writes to ``tempfile.mkstemp()`` (the system temp folder) and then ``shutil.move``s the
file into place. When the temp folder is on another filesystem than the checkpoint folder (a tmpfs
``/tmp``, ``TMPDIR`` on local scratch, checkpoints on NFS), ``shutil.move`` falls back to copying into
the destination, truncating it first: a SIGKILL during that copy leaves a partial checkpoint where the
previous good one was, and nothing is fsynced. ``AtomicCheckpointIO`` writes to a temporary file next
to the target, fsyncs it, ``os.replace``s it over the target (atomic on POSIX and Windows within one
filesystem) and fsyncs the folder. Remote (non-local) paths keep Lightning's behaviour. Each local file
written or removed is noted in its run folder's marker (see ``models.run.folder``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem

from models.run.folder import forget_checkpoint, record_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "atomic_torch_save", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, ...); every earlier checkpoint is kept as it was."""

    def __init__(self, path: Path, err: OSError) -> None:
        reason = err.strerror or str(err) or type(err).__name__
        self.message = f"cannot write checkpoint {path}: {reason}; the earlier checkpoints are kept"
        super().__init__(err.errno, self.message)

    def __str__(self) -> str:
        return self.message


def _temp_path(path: Path) -> Path:
    """Hidden temporary file next to ``path`` (same filesystem), unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers (any pid)."""
    prefix = f".{path.name}."
    for entry in path.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX):
            entry.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` so that ``path`` always holds either the old or the new complete file.

    Serializes to memory first (an error there leaves no file at all), writes a temporary file in the
    same folder, fsyncs it, replaces ``path`` with it and fsyncs the folder.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, permissions: the previous file at `path` is untouched
        raise CheckpointWriteError(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    _remove_stale_temps(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (see module docstring); loading is unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, os.fspath(path))
        record_checkpoint(path)  # what --overwrite may remove later (models.run.folder)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        if isinstance(get_filesystem(path), LocalFileSystem):
            forget_checkpoint(path)
