"""bench.augment_speed's --check: the flag parses and the threshold logic works on given numbers (nothing is timed)."""

from __future__ import annotations

import pytest

from bench import augment_speed as bench


def test_check_flag_is_accepted_and_named_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    assert "--check" in capsys.readouterr().out


def test_check_ratios_flags_only_ratios_past_their_limit():
    limits = {"TrivialAugmentWide": 1.5, "ours switch per-sample": 1.0}
    ratios = {"cpu: TrivialAugmentWide": 1.49, "cpu: ours switch per-sample": 1.01, "cpu: not checked": 99.0}
    assert bench.check_ratios(ratios, limits) == ["cpu: ours switch per-sample: 1.01x exceeds the limit 1.00x"]
    assert bench.check_ratios({"cuda: TrivialAugmentWide": 1.5}, limits) == []


def test_measured_ratios_use_same_run_anchors():
    policy_rows = {
        "cpu": {
            "ours TrivialAugmentWide, per sample": ("TrivialAugmentWide", 6.0, False),
            "torchvision TrivialAugmentWide, whole batch (one op)": ("TrivialAugmentWide", 2.0, False),
            "torchvision TrivialAugmentWide, per-image loop": ("TrivialAugmentWide", 60.0, True),
        }
    }
    # The switch is held to timm's expected cost per batch, not to the median of its Mixup-or-CutMix calls.
    timm = {bench.TIMM_EXPECTED: [2.0, 20.0], "timm Mixup batch": [1.0, 9.0]}
    rows = {"cpu": {"ours switch per-sample": [3.0, 10.0], **timm}}
    ratios = bench.measured_ratios(rows, policy_rows)
    assert ratios == {"cpu: TrivialAugmentWide": 3.0, "cpu: ours switch per-sample": 1.5}
    assert bench.check_ratios(ratios) == []  # the one-op ratio is printed, not checked
    failures = bench.check_ratios(ratios, {"TrivialAugmentWide": 2.9})
    assert failures == ["cpu: TrivialAugmentWide: 3.00x exceeds the limit 2.90x"]


def test_per_op_floor_ratio_uses_the_floor_row():
    policy_rows = {"cpu": {
        "ours AutoAugment CIFAR-10, per sample": ("AutoAugment CIFAR-10", 6.0, False),
        "torchvision AutoAugment CIFAR-10, whole batch (one op)": ("AutoAugment CIFAR-10", 2.0, False),
        f"torchvision AutoAugment CIFAR-10, {bench.FLOOR}": ("AutoAugment CIFAR-10", 5.0, False),
        f"torchvision AutoAugment CIFAR-10, {bench.ONE_OP_MEAN}": ("AutoAugment CIFAR-10", 4.0, False),
    }}
    ratios = bench.measured_ratios({}, policy_rows)
    assert ratios == {
        "cpu: AutoAugment CIFAR-10": 3.0,
        "cpu: AutoAugment CIFAR-10 / one-op mean": 1.5,
        "cpu: AutoAugment CIFAR-10 / per-op floor": 1.2,
    }
    assert bench.check_ratios(ratios) == []  # only the floor ratio is checked (limit 2x)


def test_timm_expected_cost_weights_its_mixup_and_cutmix_medians():
    results = {"timm Mixup batch, Mixup only": [3.0, 30.0], "timm Mixup batch, CutMix only": [1.0, 20.0]}
    assert bench.timm_expected_ms(results) == [2.0, 25.0]
    assert bench.timm_expected_ms(results, switch_prob=0.25) == [2.5, 27.5]


def test_op_shares_are_the_policy_draw_frequencies():
    from augment.policies import AutoAugment, TrivialAugmentWide

    shares = bench.op_shares(TrivialAugmentWide(), 32, 32, draws=14_000)
    assert len(shares) == 14 and {step for step, _ in shares} == {0}
    assert abs(sum(share for share, _ in shares.values()) - 1.0) < 1e-9
    assert all(abs(share - 1 / 14) < 0.01 for share, _ in shares.values())
    auto = bench.op_shares(AutoAugment(), 32, 32, draws=4000)
    assert {step for step, _ in auto} == {0, 1}
    for step in (0, 1):
        assert abs(sum(share for (s, _), (share, _) in auto.items() if s == step) - 1.0) < 1e-9
    assert auto[0, "Identity"][0] > 0.3  # sub-policy steps skipped with probability 1 - p
