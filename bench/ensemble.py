"""Ensembles of finished study runs: per-run split probabilities from the selected checkpoint, then
the accuracy of their averaged softmax (bagging, Breiman 1996; seed ensembles).

`save_split_probs(log_dir, "test")` loads `log_dir/checkpoints/best*.ckpt` and the run's data config
(`log_dir/config.yaml`, written by LightningCLI), predicts the split with the model's eval path
(EMA weights and flip TTA as configured, eval transforms) and stores `probs_<split>.npy` (N, K)
float32 and `labels_<split>.npy` (N,) int64 next to the checkpoint directory. `ensemble_summary`
groups the ok rows of a study's results.csv and compares each group's ensemble with its members.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "ensemble_probs",
    "ensemble_accuracy",
    "best_checkpoint",
    "predict_split",
    "save_split_probs",
    "load_split_probs",
    "ensemble_summary",
    "ensemble_table",
]

SPLITS = ("train", "test")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of probs (N, K) against int labels (N,), as a fraction."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, K) and labels (N,), got {probs.shape} and {labels.shape}")
    return float((probs.argmax(1) == labels).mean())


def ensemble_probs(members: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the members' probabilities: list of (N, K) -> (N, K)."""
    if not members:
        raise ValueError("members must hold at least one (N, K) probability array, got none")
    shapes = {np.shape(m) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"members must share one (N, K) shape, got {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(m, dtype=np.float64) for m in members]), axis=0)


def ensemble_accuracy(members: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the averaged softmax of the members (each (N, K)) against labels (N,)."""
    return accuracy(ensemble_probs(members), labels)


def best_checkpoint(log_dir: str | Path) -> Path:
    """The newest `best*.ckpt` under `log_dir/checkpoints` (the checkpoint the run tested)."""
    found = sorted(Path(log_dir, "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no best*.ckpt under {Path(log_dir, 'checkpoints')}")
    return found[-1]


def _run_config(log_dir: Path) -> dict[str, Any]:
    import yaml

    config_path = log_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.yaml in {log_dir} (LightningCLI writes it at fit start)")
    return yaml.safe_load(config_path.read_text()) or {}


def _split_datamodule(split: str, data: Mapping[str, Any]) -> Any:
    """A CIFARDataModule whose predict loader serves `split`: test, or the run's training part (eval transforms)."""
    from augment.data import CIFARDataModule

    class SplitDataModule(CIFARDataModule):
        def predict_dataloader(self) -> Any:
            if split == "test":
                return self.test_dataloader()
            self.setup("fit")
            self.val_indices, self.has_val = self.train_indices, True  # eval loader over the training part
            return self.val_dataloader()

    return SplitDataModule(**data)


def _label_collector() -> Any:
    import pytorch_lightning as pl

    class LabelCollector(pl.Callback):
        """Keeps the labels of every predicted batch, in prediction order."""

        def __init__(self) -> None:
            self.labels: list[np.ndarray] = []

        def on_predict_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
        ) -> None:
            self.labels.append(batch[1].detach().cpu().numpy())

    return LabelCollector()


def predict_split(log_dir: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, K) float32, labels (N,) int64) of a run's selected checkpoint on `split`.

    split: test (the official test split, limited like the run's `trainer.limit_test_batches`) or
    train (the run's training part, eval transforms, no augmentation). Runs on the run's accelerator
    and precision; the model's `predict_step` applies EMA weights and flip TTA as configured.
    """
    import pytorch_lightning as pl
    import torch

    from models.classifier import CifarClassifier

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    log_dir = Path(log_dir)
    config = _run_config(log_dir)
    trainer_cfg = config.get("trainer") or {}
    datamodule = _split_datamodule(split, config.get("data") or {})
    model = CifarClassifier.load_from_checkpoint(best_checkpoint(log_dir), map_location="cpu")
    limit = trainer_cfg.get("limit_test_batches") if split == "test" else None
    collector = _label_collector()
    trainer = pl.Trainer(
        accelerator=trainer_cfg.get("accelerator") or "auto",
        devices=1,
        precision=trainer_cfg.get("precision") or "32-true",
        logger=False,
        callbacks=[collector],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_predict_batches=1.0 if limit is None else limit,
    )
    batches = trainer.predict(model, datamodule=datamodule)
    probs = torch.cat([b.float().cpu() for b in batches]).numpy().astype(np.float32)
    labels = np.concatenate(collector.labels).astype(np.int64)
    if probs.shape[0] != labels.shape[0]:
        raise RuntimeError(f"predicted {probs.shape[0]} samples but collected {labels.shape[0]} labels")
    return probs, labels


def save_split_probs(log_dir: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Predict `split` for a run (unless `probs_<split>.npy` exists) and store probs and labels; return them."""
    log_dir = Path(log_dir)
    cached = load_split_probs(log_dir, split)
    if cached is not None:
        return cached
    probs, labels = predict_split(log_dir, split)
    np.save(log_dir / f"probs_{split}.npy", probs)
    np.save(log_dir / f"labels_{split}.npy", labels)
    return probs, labels


def load_split_probs(log_dir: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
    """The stored (probs, labels) of a run's split, or None when not predicted yet."""
    probs_path, labels_path = Path(log_dir, f"probs_{split}.npy"), Path(log_dir, f"labels_{split}.npy")
    if not (probs_path.is_file() and labels_path.is_file()):
        return None
    return np.load(probs_path), np.load(labels_path)


def ensemble_summary(rows: Iterable[Mapping[str, str]], scale: str, split: str = "test") -> list[dict[str, Any]]:
    """Per variant group at `scale`: n members with stored probs, member accuracies and ensemble accuracy."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for r in rows:
        if r["scale"] != scale or r["status"] != "ok" or not r.get("log_dir"):
            continue
        stored = load_split_probs(r["log_dir"], split)
        if stored is not None:
            groups.setdefault(r.get("group") or r["variant"], []).append(stored)
    summary = []
    for group, members in groups.items():
        labels = members[0][1]
        if any(not np.array_equal(m[1], labels) for m in members):
            raise ValueError(f"labels_{split}.npy must match across the members of group {group}, got different labels")
        singles = [accuracy(p, labels) for p, _ in members]
        summary.append(
            {
                "group": group,
                "n": len(members),
                "single_mean": statistics.fmean(singles),
                "single_std": statistics.stdev(singles) if len(singles) > 1 else 0.0,
                "single_best": max(singles),
                "ensemble": ensemble_accuracy([p for p, _ in members], labels),
            }
        )
    return summary


def ensemble_table(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown rows: group, n models, single-model test acc mean ± std and best, ensemble acc, gain."""
    lines = [
        "| variant | n models | single test acc (%) | best single (%) | ensemble test acc (%) | gain (pp) |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['group']} | {e['n']} | {e['single_mean'] * 100:.2f} ± {e['single_std'] * 100:.2f} | "
            f"{e['single_best'] * 100:.2f} | {e['ensemble'] * 100:.2f} | "
            f"{(e['ensemble'] - e['single_mean']) * 100:+.2f} |"
        )
    if not summary:
        lines.append("| (no stored probabilities) | | | | | |")
    return lines
