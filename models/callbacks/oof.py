"""Out-of-fold predictions: a k-fold run's validation split is its held-out fold; after fit its selected
model predicts that fold into ``oof.csv`` in the run folder."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from augment.crop import to_normalized_float
from models.run.resume import load_checkpoint_file

__all__ = ["OOF_FILE", "HeldOutPredictions", "oof_header", "write_oof"]

OOF_FILE = "oof.csv"


def oof_header(class_names: Sequence[Any], id_column: str = "id") -> list[str]:
    """Columns of oof.csv: id (or index), fold, label, pred, prob_<class> per class in label order."""
    return [id_column, "fold", "label", "pred", *(f"prob_{c}" for c in class_names)]


def write_oof(
    path: Path,
    ids: Sequence[Any],
    fold: int,
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[Any],
    id_column: str = "id",
) -> None:
    """Write oof.csv atomically: one row per held-out image; labels int (N,), probs float (N, K)."""
    names = [str(c) for c in class_names]
    pred = probs.argmax(1)
    text = np.char.mod("%.6g", probs.astype(np.float64))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(oof_header(names, id_column))
            for i, row_id in enumerate(ids):
                writer.writerow([row_id, fold, names[labels[i]], names[pred[i]], *text[i]])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _held_out_ids(datamodule: Any, indices: np.ndarray) -> tuple[list[Any], str]:
    """(ids, column name): csv data: the label file's ids (the training arrays are in its row order) under
    its id column; other data: the indices into the training split, as ``index``."""
    if getattr(datamodule, "dataset", None) == "csv":
        from augment.data.images import load_csv_labels

        path = Path(datamodule.train_csv).expanduser()
        path = path if path.is_absolute() else Path(datamodule.root).expanduser() / path
        ids = load_csv_labels(path, datamodule.id_column, datamodule.label_column)[0]
        return [ids[i] for i in indices], datamodule.id_column
    return [int(i) for i in indices], "index"


class HeldOutPredictions(pl.Callback):
    """After a k-fold fit (``data.num_folds`` > 0), predict the held-out fold with the selected checkpoint's
    weights (the evaluated network: EMA and flip TTA as validation uses them) into ``<run folder>/oof.csv``.

    Does nothing without k-fold. The selected checkpoint is the trainer's ModelCheckpoint best; the final
    weights when none was saved. ``oof/acc`` joins the run's metrics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not getattr(datamodule, "num_folds", 0) or getattr(datamodule, "val_indices", None) is None:
            return
        indices = np.asarray(datamodule.val_indices)
        images, labels = datamodule.arrays("train")
        with self._best_weights(trainer, pl_module):
            probs = self._predict(pl_module, images[indices], datamodule)
        labels = np.asarray(labels)[indices]
        accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")
        trainer.callback_metrics["oof/acc"] = torch.tensor(accuracy)
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.log_dir if trainer.loggers else trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ids, id_column = _held_out_ids(datamodule, indices)
        self.path = folder / OOF_FILE
        write_oof(self.path, ids, int(datamodule.fold), labels, probs, datamodule.class_names, id_column)
        rank_zero_info(f"{OOF_FILE}: fold {datamodule.fold}, {len(labels)} held-out images, accuracy {accuracy:.4f}")

    @staticmethod
    def _predict(pl_module: Any, images: np.ndarray, datamodule: Any) -> np.ndarray:
        """Probabilities (N, K) of the module's evaluation path for uint8 images (N, H, W, 3)."""
        batch_size = int(getattr(datamodule, "eval_batch_size", 256))
        out = []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(pl_module.device)
                    x = to_normalized_float(x, datamodule.mean, datamodule.std, layout="nhwc")
                    out.append(pl_module.eval_log_probs(x).exp().float().cpu())
        finally:
            pl_module.train(was_training)
        k = int(getattr(pl_module, "num_classes", 0))
        return torch.cat(out).numpy() if out else np.zeros((0, k), np.float32)

    @contextmanager
    def _best_weights(self, trainer: pl.Trainer, pl_module: Any) -> Iterator[None]:
        """The selected checkpoint's weights in ``pl_module`` for the prediction, the final ones back after."""
        path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if not path or not Path(path).is_file():
            yield
            return
        state = load_checkpoint_file(path, key="oof: selected checkpoint", mmap=False)["state_dict"]
        saved = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(state)
        try:
            yield
        finally:
            pl_module.load_state_dict(saved)
