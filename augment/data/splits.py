"""Seeded, deterministic index splits: stratified hold-out, stratified k-fold, bootstrap (numpy only).

All functions return sorted int64 index arrays into the labels they were given, so the same labels
and seed always give the same split on every machine (numpy's PCG64 via ``default_rng``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from augment.checks import check_int, is_int, is_real, require

__all__ = [
    "stratified_split",
    "stratified_subset",
    "stratified_kfold",
    "bootstrap_indices",
    "out_of_bag_indices",
    "class_counts",
]

# Distinct streams per purpose, so e.g. a split and a bootstrap with the same seed are independent.
_SPLIT, _KFOLD, _BOOTSTRAP = 1, 2, 3


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D class indices, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError("labels must be non-negative integer class indices")
    return y.astype(np.int64, copy=False)


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Number of samples per class, int64 (K,)."""
    y = _as_labels(labels)
    return np.bincount(y, minlength=num_classes or 0)


def _per_class_quota(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder, ties broken at random)."""
    n = int(counts.sum())
    exact = counts * (total / n)
    quota = np.floor(exact).astype(np.int64)
    left = total - int(quota.sum())
    if left:
        remainder = exact - quota
        # Sort by remainder (descending), random tie-break: deterministic for a given seed.
        order = np.lexsort((rng.random(counts.size), -remainder))
        quota[order[:left]] += 1
    return quota


def _resolve_count(val_size: int | float, n: int, field: str) -> int:
    """An int count or a float fraction of ``n`` -> an int count in [0, n)."""
    rule = f"an int count in [0, {n}) or a float fraction in [0, 1)"
    require(is_real(val_size), field, rule, val_size)
    if isinstance(val_size, float):
        require(0.0 <= val_size < 1.0, field, rule, val_size)
        count = int(round(val_size * n))
        rule = f"0 (off) or a fraction giving 1..{n - 1} of {n} samples (it rounds to {count})"
        require(val_size == 0 or 0 < count < n, field, rule, val_size)
        return count
    require(0 <= val_size < n, field, rule, val_size)
    return int(val_size)


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_size: int | float, seed: int = 0, field: str = "val_size"
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``val_size`` samples (count or fraction) with per-class counts proportional to the class sizes.

    Returns (train_idx, val_idx), disjoint, sorted, covering all samples. Per-class validation counts
    are the exact proportional share rounded by largest remainder, so they sum to the requested size.
    """
    y = _as_labels(labels)
    n = y.size
    k = _resolve_count(val_size, n, field)
    if k == 0:
        return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([seed, _SPLIT])
    counts = np.bincount(y)
    quota = _per_class_quota(counts, k, rng)
    order = np.argsort(y, kind="stable")  # indices grouped by class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    is_val = np.zeros(n, dtype=bool)
    for cls in np.flatnonzero(quota):  # a loop over classes, not samples
        members = order[starts[cls] : starts[cls] + counts[cls]]
        is_val[rng.permutation(members)[: quota[cls]]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def stratified_subset(
    labels: Sequence[int] | np.ndarray, size: int, seed: int = 0, field: str = "size"
) -> np.ndarray:
    """Sorted indices of a class-balanced (proportional) random subset of ``size`` samples."""
    y = _as_labels(labels)
    require(is_int(size) and 1 <= size <= y.size, field, f"an int in [1, {y.size}]", size)
    if size == y.size:
        return np.arange(y.size, dtype=np.int64)
    return stratified_split(y, int(size), seed + 7919, field=field)[1]


def stratified_kfold(
    labels: Sequence[int] | np.ndarray, num_folds: int, fold: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``fold`` of a seeded stratified ``num_folds``-fold partition: returns (train_idx, val_idx).

    The folds are disjoint and cover every sample; in every class, fold sizes differ by at most one,
    and so do the total fold sizes.
    """
    y = _as_labels(labels)
    require(
        is_int(num_folds) and 2 <= num_folds <= y.size, "num_folds", f"0 (off) or an int in [2, {y.size}]", num_folds
    )
    ok = is_int(fold) and 0 <= fold < num_folds
    require(ok, "fold", f"an int in [0, {num_folds}) for num_folds={num_folds}", fold)
    rng = np.random.default_rng([seed, _KFOLD])
    # Shuffle, then stable-sort by class: samples grouped by class, random order inside each class.
    shuffled = rng.permutation(y.size)
    grouped = shuffled[np.argsort(y[shuffled], kind="stable")]
    # Deal the grouped sequence round-robin into folds: balanced per class and overall.
    fold_of = np.empty(y.size, dtype=np.int64)
    fold_of[grouped] = np.arange(y.size) % num_folds
    val = fold_of == fold
    return np.flatnonzero(~val), np.flatnonzero(val)


def bootstrap_indices(n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices drawn uniformly with replacement from [0, n), sorted (a bagging resample)."""
    check_int("n", n, low=1)
    rng = np.random.default_rng([seed, _BOOTSTRAP])
    return np.sort(rng.integers(0, n, size=n, dtype=np.int64))


def out_of_bag_indices(n: int, sample: np.ndarray) -> np.ndarray:
    """Sorted indices in [0, n) that a bootstrap ``sample`` never drew."""
    drawn = np.zeros(n, dtype=bool)
    drawn[np.asarray(sample, dtype=np.int64)] = True
    return np.flatnonzero(~drawn)
