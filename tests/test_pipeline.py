"""build_batch_augment: order, on/off, stop_epoch, config validation."""

import pytest
import torch

from augment.erasing import Cutout
from augment.mixing import MixupCutMix
from augment.noise import GaussianNoise
from augment.pipeline import (
    Compose,
    CutMixConfig,
    CutoutConfig,
    MixingConfig,
    MixupConfig,
    NoiseConfig,
    as_config,
    build_batch_augment,
)

FULL = {
    "mixup": {"alpha": 0.2},
    "cutmix": {"alpha": 1.0, "correct_lam": True},
    "mixing": {"prob": 1.0, "switch_prob": 0.5, "per_sample": True, "stop_epoch": 3},
    "cutout": {"n_holes": 1, "size": 8, "fill": 0.0, "p": 1.0},
    "input_noise": {"std": 0.1, "p": 1.0, "clamp": None},
}


ALL_OFF = {"mixup": {"alpha": 0.0}, "cutout": {"n_holes": 0}, "input_noise": {"std": 0}}


@pytest.mark.parametrize("config", [None, {}, ALL_OFF])
def test_nothing_on_gives_an_empty_pipeline_that_still_returns_smoothed_soft_targets(config):
    compose = build_batch_augment(config, num_classes=10, label_smoothing=0.2)
    assert len(compose) == 0 and not compose.mixes
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 9, 4])
    out, targets = compose(x, y)
    assert out is x
    expected = torch.full((3, 10), 0.02)
    expected[[0, 1, 2], [0, 9, 4]] = 0.82
    torch.testing.assert_close(targets, expected)


@pytest.mark.parametrize(
    "config",
    [
        {"cutout": {"n_holes": 1, "size": 4}},
        {"input_noise": {"std": 0.1}},
        {"mixup": {"alpha": 1.0}, "mixing": {"stop_epoch": 0}},
        {"mixup": {"alpha": 1.0}, "mixing": {"prob": 0.0}},
    ],
    ids=["cutout_only", "noise_only", "after_stop_epoch", "mixing_prob_0"],
)
def test_every_pipeline_returns_soft_targets_with_smoothing_applied_once(config):
    compose = build_batch_augment(config, num_classes=4, label_smoothing=0.4)
    y = torch.tensor([0, 1, 2, 3, 3])
    _, targets = compose(torch.randn(5, 3, 8, 8), y)
    assert targets.shape == (5, 4) and targets.dtype == torch.float32
    torch.testing.assert_close(targets, torch.eye(4)[y] * 0.6 + 0.1)


def test_soft_input_targets_are_smoothed_not_ignored():
    compose = build_batch_augment({"input_noise": {"std": 0.1}}, num_classes=2, label_smoothing=0.4)
    soft = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    _, targets = compose(torch.randn(2, 3, 4, 4), soft)
    torch.testing.assert_close(targets, soft * 0.6 + 0.2)  # 0.5 would be uniform for 2 classes: refused


def test_compose_without_num_classes_passes_int_labels_through():
    y = torch.tensor([1, 2])
    _, out = Compose([GaussianNoise(0.1)])(torch.randn(2, 3, 4, 4), y)
    assert out is y
    with pytest.raises(ValueError, match="num_classes must be given for label smoothing"):
        Compose([], label_smoothing=0.1)


def test_set_generator_reaches_every_op():
    compose = build_batch_augment(FULL, num_classes=10)
    generator = torch.Generator()
    compose.set_generator(generator)
    assert all(op.generator is generator for op in compose.ops)


def test_order_cutout_mixing_noise_and_settings():
    compose = build_batch_augment(FULL, num_classes=10, label_smoothing=0.1)
    assert [type(op) for op in compose.ops] == [Cutout, MixupCutMix, GaussianNoise]
    mixing = compose.ops[1]
    assert (mixing.mixup_alpha, mixing.cutmix_alpha, mixing.per_sample) == (0.2, 1.0, True)
    assert (mixing.label_smoothing, mixing.num_classes) == (0.0, 10)  # smoothing happens once, in Compose
    assert (compose.label_smoothing, compose.num_classes) == (0.1, 10)
    assert compose.mixes and compose.stop_epoch == 3


def test_dataclass_values_and_only_noise():
    compose = build_batch_augment({"input_noise": NoiseConfig(std=0.2)}, num_classes=10)
    assert [type(op) for op in compose.ops] == [GaussianNoise]
    assert not compose.mixes


def test_call_gives_soft_targets_with_smoothing_and_is_deterministic():
    x = torch.randn(7, 3, 16, 16)
    y = torch.randint(0, 10, (7,))
    run = lambda: build_batch_augment(FULL, 10, 0.1, generator=torch.Generator().manual_seed(0))(x, y)
    (out, targets), (again, targets_again) = run(), run()
    assert out.shape == x.shape and targets.shape == (7, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(7))
    assert targets.min() >= 0.1 / 10 - 1e-7
    assert torch.equal(out, again) and torch.equal(targets, targets_again)


def test_stop_epoch_turns_mixing_off():
    compose = build_batch_augment({"mixup": {"alpha": 1.0}, "mixing": {"stop_epoch": 2}}, num_classes=5)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    compose.set_epoch(1)
    assert compose.mixing_active and compose(x, y)[1].shape == (4, 5)
    compose.set_epoch(2)
    assert compose.mixes and not compose.mixing_active
    out, targets = compose(x, y)
    assert out is x
    torch.testing.assert_close(targets, torch.eye(5)[y])  # unmixed, still soft


def test_compose_applies_ops_in_order():
    calls = []
    ops = [lambda x, y, i=i: (calls.append(i), (x + 1, y))[1] for i in range(3)]
    out, _ = Compose(ops)(torch.zeros(1), None)
    assert calls == [0, 1, 2] and out.item() == 3 and not Compose(ops).mixes


def test_unknown_keys_name_the_key_and_allowed_keys():
    with pytest.raises(ValueError, match=r"among \['mixup', 'cutmix', 'mixing', 'cutout', 'input_noise'\].*'mixpu'"):
        build_batch_augment({"mixpu": {"alpha": 1.0}}, num_classes=10)
    with pytest.raises(ValueError, match=r"mixup keys must be among \['alpha'\].*mixup\.beta"):
        build_batch_augment({"mixup": {"beta": 1.0}}, num_classes=10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: as_config(MixupConfig, {"alpha": -1}, "mixup"), r"mixup\.alpha must be >= 0, got -1"),
        (lambda: as_config(CutMixConfig, {"alpha": -0.5}, "cutmix"), r"cutmix\.alpha must be >= 0, got -0.5"),
        (
            lambda: as_config(CutMixConfig, {"correct_lam": "yes"}, "cutmix"),
            r"cutmix\.correct_lam must be true or false",
        ),
        (lambda: as_config(MixingConfig, {"prob": 1.2}, "mixing"), r"mixing\.prob must be in \[0, 1\], got 1.2"),
        (lambda: as_config(MixingConfig, {"switch_prob": -0.1}, "mixing"), r"mixing\.switch_prob must be in \[0, 1\]"),
        (
            lambda: as_config(MixingConfig, {"stop_epoch": -1}, "mixing"),
            r"mixing\.stop_epoch must be null or an int >= 0",
        ),
        (lambda: as_config(CutoutConfig, {"n_holes": -1}, "cutout"), r"cutout\.n_holes must be an int >= 0, got -1"),
        (lambda: as_config(CutoutConfig, {"size": -3}, "cutout"), r"cutout\.size must be >= 0.*got -3"),
        (lambda: as_config(CutoutConfig, {"size": 1.5}, "cutout"), r"cutout\.size must be .*got 1.5"),
        (lambda: as_config(CutoutConfig, {"p": 2}, "cutout"), r"cutout\.p must be in \[0, 1\]"),
        (lambda: as_config(NoiseConfig, {"std": -0.1}, "input_noise"), r"input_noise\.std must be >= 0, got -0.1"),
        (lambda: as_config(NoiseConfig, {"p": 1.1}, "input_noise"), r"input_noise\.p must be in \[0, 1\]"),
        (lambda: as_config(NoiseConfig, {"clamp": (1, 0)}, "input_noise"), r"input_noise\.clamp must be"),
    ],
)
def test_config_errors_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dataclasses_name_their_section_and_the_config_layer_adds_the_path():
    with pytest.raises(ValueError, match=r"^mixup\.alpha must be >= 0, got -1$"):
        MixupConfig(alpha=-1)
    with pytest.raises(ValueError, match=r"^model\.cutout\.p must be in \[0, 1\], got 2$"):
        as_config(CutoutConfig, {"p": 2}, "model.cutout")


def test_dict_errors_surface_field_names():
    with pytest.raises(ValueError, match=r"mixup\.alpha"):
        build_batch_augment({"mixup": {"alpha": -1}}, num_classes=10)
    with pytest.raises(ValueError, match=r"cutout must be a mapping"):
        build_batch_augment({"cutout": 3}, num_classes=10)


def test_cutout_size_float_pixels_and_fraction():
    compose = build_batch_augment({"cutout": {"n_holes": 2, "size": 16.0}}, num_classes=10)
    assert compose.ops[0].size == 16 and compose.ops[0].n_holes == 2
    compose = build_batch_augment({"cutout": CutoutConfig(n_holes=1, size=0.25)}, num_classes=10)
    assert compose.ops[0].size == 0.25


def test_label_smoothing_out_of_range_raises():
    rule = r"label_smoothing must be >= 0 and < 0.9 for 10 classes \(at 0.9 every target is uniform\), got 1.5"
    with pytest.raises(ValueError, match=rule):
        build_batch_augment({"mixup": {"alpha": 1.0}}, num_classes=10, label_smoothing=1.5)
