"""Stratified hold-out, stratified k-fold, stratified subset and bootstrap index splits."""

import numpy as np
import pytest

from augment.checks import field_prefix
from augment.data.splits import (
    bootstrap_indices,
    class_counts,
    out_of_bag_indices,
    stratified_kfold,
    stratified_split,
    stratified_subset,
)


def _balanced(k=10, per_class=50, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class))


def _imbalanced():
    return np.random.default_rng(1).permutation(np.repeat(np.arange(4), [100, 37, 9, 1]))


def test_stratified_split_exact_per_class_counts_balanced():
    y = _balanced()
    train, val = stratified_split(y, 100, seed=0)
    assert len(val) == 100 and len(train) == 400
    assert class_counts(y[val], 10).tolist() == [10] * 10
    assert class_counts(y[train], 10).tolist() == [40] * 10


def test_stratified_split_fraction_and_imbalanced_quota():
    y = _imbalanced()  # 147 samples
    train, val = stratified_split(y, 0.2, seed=3)
    assert len(val) == round(0.2 * 147)
    counts = class_counts(y[val], 4)
    exact = np.array([100, 37, 9, 1]) * len(val) / 147
    assert (np.abs(counts - exact) < 1).all()  # floor or ceil of the exact share
    assert counts.sum() == len(val)


def test_stratified_split_disjoint_cover_sorted_deterministic():
    y = _imbalanced()
    train, val = stratified_split(y, 30, seed=5)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    t2, v2 = stratified_split(y, 30, seed=5)
    assert np.array_equal(val, v2) and np.array_equal(train, t2)
    _, v3 = stratified_split(y, 30, seed=6)
    assert not np.array_equal(val, v3)


def test_stratified_split_zero_and_errors():
    y = _balanced()
    train, val = stratified_split(y, 0, seed=0)
    assert np.array_equal(train, np.arange(500)) and val.size == 0
    for bad in (500, 501, -1, 1.0, -0.1, True, "10"):
        with pytest.raises(ValueError, match="^val_size must be"):
            stratified_split(y, bad, seed=0)
    with pytest.raises(ValueError, match=r"^val_size must be 0 \(off\) or a fraction giving 1..499 of 500 samples "
                       r"\(it rounds to 0\), got 0.0001$"):
        stratified_split(y, 0.0001, seed=0)
    with pytest.raises(ValueError, match="^data.val_size must be"), field_prefix("data"):
        stratified_split(y, 500, seed=0)
    with pytest.raises(ValueError, match=r"of 500 samples \(it rounds to 500\)"):
        stratified_split(y, 0.9999, seed=0)


def test_stratified_split_accepts_torch_labels():
    torch = pytest.importorskip("torch")
    y = _balanced()
    a = stratified_split(torch.from_numpy(y), 50, seed=0)
    b = stratified_split(y, 50, seed=0)
    assert np.array_equal(a[1], b[1])


def test_stratified_subset_balanced_and_bounds():
    y = _balanced()
    sub = stratified_subset(y, 60, seed=0)
    assert len(sub) == 60 and len(np.unique(sub)) == 60
    assert class_counts(y[sub], 10).tolist() == [6] * 10
    assert np.array_equal(stratified_subset(y, 500, seed=0), np.arange(500))
    with pytest.raises(ValueError, match="^size must be an int in \\[1, 500\\]"):
        stratified_subset(y, 501, seed=0)
    with pytest.raises(ValueError, match="^train_subset must be an int in \\[1, 500\\]"):
        stratified_subset(y, 501, seed=0, field="train_subset")


@pytest.mark.parametrize("k", [2, 3, 7])
def test_kfold_disjoint_cover_and_balanced(k):
    y = _imbalanced()
    vals = [stratified_kfold(y, k, f, seed=0) for f in range(k)]
    all_val = np.concatenate([v for _, v in vals])
    assert np.array_equal(np.sort(all_val), np.arange(len(y)))  # folds cover everything, disjoint
    sizes = [len(v) for _, v in vals]
    assert max(sizes) - min(sizes) <= 1
    per_class = np.stack([class_counts(y[v], 4) for _, v in vals])  # (k, classes)
    assert (per_class.max(0) - per_class.min(0) <= 1).all()
    for train, val in vals:
        assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(y)


def test_kfold_deterministic_and_seed_dependent():
    y = _balanced()
    a = stratified_kfold(y, 5, 2, seed=0)[1]
    assert np.array_equal(a, stratified_kfold(y, 5, 2, seed=0)[1])
    assert not np.array_equal(a, stratified_kfold(y, 5, 2, seed=1)[1])


def test_kfold_errors():
    y = _balanced()
    with pytest.raises(ValueError, match="^num_folds must be 0 \\(off\\) or an int in \\[2, 500\\], got 1"):
        stratified_kfold(y, 1, 0)
    with pytest.raises(ValueError, match="^fold must be an int in \\[0, 5\\)"):
        stratified_kfold(y, 5, 5)
    with pytest.raises(ValueError, match="^data.fold"), field_prefix("data"):
        stratified_kfold(y, 5, -1)


def test_bootstrap_with_replacement_deterministic():
    idx = bootstrap_indices(1000, seed=0)
    assert len(idx) == 1000 and idx.min() >= 0 and idx.max() < 1000
    unique = len(np.unique(idx))
    assert 580 < unique < 690  # expected 1 - 1/e = 63.2% distinct
    assert np.array_equal(idx, bootstrap_indices(1000, seed=0))
    assert not np.array_equal(idx, bootstrap_indices(1000, seed=1))
    oob = out_of_bag_indices(1000, idx)
    assert len(oob) == 1000 - unique and np.intersect1d(oob, idx).size == 0
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        bootstrap_indices(0)


def test_labels_validation():
    with pytest.raises(ValueError, match="labels must be 1-D"):
        stratified_split(np.zeros((2, 2), dtype=int), 1)
    with pytest.raises(ValueError, match="non-negative integer"):
        stratified_split(np.array([0.5, 1.0]), 1)
