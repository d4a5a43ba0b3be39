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
def test_nothing_on_returns_none(config):
    assert build_batch_augment(config, num_classes=10) is None


def test_order_cutout_mixing_noise_and_settings():
    compose = build_batch_augment(FULL, num_classes=10, label_smoothing=0.1)
    assert [type(op) for op in compose.ops] == [Cutout, MixupCutMix, GaussianNoise]
    mixing = compose.ops[1]
    assert (mixing.mixup_alpha, mixing.cutmix_alpha, mixing.per_sample) == (0.2, 1.0, True)
    assert (mixing.label_smoothing, mixing.num_classes) == (0.1, 10)
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
    assert out is x and targets is y


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
        (lambda: MixupConfig(alpha=-1), r"mixup\.alpha must be >= 0, got -1"),
        (lambda: CutMixConfig(alpha=-0.5), r"cutmix\.alpha must be >= 0, got -0.5"),
        (lambda: CutMixConfig(correct_lam="yes"), r"cutmix\.correct_lam must be a bool"),
        (lambda: MixingConfig(prob=1.2), r"mixing\.prob must be in \[0, 1\], got 1.2"),
        (lambda: MixingConfig(switch_prob=-0.1), r"mixing\.switch_prob must be in \[0, 1\]"),
        (lambda: MixingConfig(stop_epoch=-1), r"mixing\.stop_epoch must be None or an int >= 0"),
        (lambda: CutoutConfig(n_holes=-1), r"cutout\.n_holes must be an int >= 0, got -1"),
        (lambda: CutoutConfig(size=-3), r"cutout\.size must be >= 0.*got -3"),
        (lambda: CutoutConfig(size=1.5), r"cutout\.size must be .*got 1.5"),
        (lambda: CutoutConfig(p=2), r"cutout\.p must be in \[0, 1\]"),
        (lambda: NoiseConfig(std=-0.1), r"input_noise\.std must be a finite number >= 0, got -0.1"),
        (lambda: NoiseConfig(p=1.1), r"input_noise\.p must be in \[0, 1\]"),
        (lambda: NoiseConfig(clamp=(1, 0)), r"input_noise\.clamp must be"),
    ],
)
def test_config_errors_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


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
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        build_batch_augment({"mixup": {"alpha": 1.0}}, num_classes=10, label_smoothing=1.5)
