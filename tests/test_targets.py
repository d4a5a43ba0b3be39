"""One-hot, label smoothing, soft-target conversion and label checks."""

import pytest
import torch

from augment.targets import check_labels, check_probability, one_hot, smooth, to_soft


def test_one_hot_exact_values():
    y = torch.tensor([2, 0, 1])
    out = one_hot(y, 4, on_value=0.9, off_value=0.05)
    expected = torch.full((3, 4), 0.05)
    expected[0, 2] = expected[1, 0] = expected[2, 1] = 0.9
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smooth_int_labels_values_and_row_sums(smoothing):
    k = 10
    y = torch.tensor([3, 9, 0, 3])
    out = smooth(y, k, smoothing)
    off = smoothing / k
    assert torch.allclose(out[torch.arange(4), y], torch.full((4,), 1 - smoothing + off))
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[torch.arange(4), y] = False
    assert torch.allclose(out[mask], torch.full((int(mask.sum()),), off))
    torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_smooth_soft_targets_moves_toward_uniform():
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    out = smooth(soft, None, 0.2)
    torch.testing.assert_close(out, torch.tensor([[0.45, 0.45, 0.05, 0.05]]))


def test_to_soft_smooths_soft_targets_and_int_labels_alike():
    soft = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    assert to_soft(soft, 2, smoothing=0.0) is soft
    torch.testing.assert_close(to_soft(soft, 2, smoothing=0.1), torch.tensor([[0.275, 0.725], [0.95, 0.05]]))
    torch.testing.assert_close(to_soft(torch.tensor([1]), 2, 0.1), torch.tensor([[0.05, 0.95]]))


def test_missing_num_classes_names_the_argument():
    with pytest.raises(ValueError, match="num_classes"):
        to_soft(torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(torch.tensor([0, 1]), None)


@pytest.mark.parametrize("bad", [7, -1])
def test_out_of_range_label_names_value_and_num_classes(bad):
    y = torch.tensor([0, bad, 2])
    with pytest.raises(ValueError, match=rf"num_classes=5.*label {bad}"):
        check_labels(y, 5)
    with pytest.raises(ValueError, match=rf"label {bad}"):
        to_soft(y, 5)  # validate=True
    with pytest.raises(ValueError, match=rf"label {bad}"):
        to_soft(y, 5, validate=None)  # CPU labels are checked (no device sync)


def test_validate_false_skips_range_check(monkeypatch):
    import augment.targets as targets

    calls = []
    monkeypatch.setattr(targets, "check_labels", lambda y, k: calls.append(k))
    torch.testing.assert_close(targets.to_soft(torch.tensor([0, 1]), 2, validate=False), torch.eye(2))
    assert calls == []
    targets.to_soft(torch.tensor([0, 1]), 2, validate=True)
    assert calls == [2]


def test_soft_targets_with_wrong_width_raise():
    with pytest.raises(ValueError, match="num_classes"):
        to_soft(torch.ones(2, 3) / 3, 4)


def test_check_probability_rule_and_value():
    assert check_probability("prob", 1) == 1.0
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\], got 1.5"):
        check_probability("prob", 1.5)
