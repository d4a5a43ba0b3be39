"""Backbones at any image size: the final map stays within 4..8 from 32 to 224 px; patch grids about 8x8."""

from __future__ import annotations

import pytest
import torch

from models.backbones import create_model
from models.cifar_adapt import _run_features, _spatial, auto_patch, auto_stride

SIZES = (32, 64, 96, 128, 224)


def test_auto_stride_and_patch_rules():
    assert [auto_stride(s) for s in (32, 48, 63, 64, 96, 127, 128, 224, 256)] == [8, 8, 8, 16, 16, 16, 32, 32, 32]
    assert [auto_patch(s) for s in SIZES] == [4, 8, 12, 16, 28]


@pytest.mark.parametrize("name", ["test_byobnet", "test_nfnet", "test_efficientnet"])
def test_cnn_final_map_within_4_to_8(name):
    for size in SIZES:
        model = create_model(name, 5, image_size=size)
        out, _ = _run_features(model, size)
        h, w = _spatial(out, model)
        assert 4 <= h <= 8 and h == w == size // auto_stride(size), (name, size, h)
        assert model.cifar_adaptation.final_size == f"{h}x{w}"


def test_vit_token_grid_about_8x8_and_non_square():
    for size in SIZES:
        model = create_model("test_vit", 5, image_size=size)
        assert model.cifar_adaptation.stem == f"patch{auto_patch(size)}"
        assert model.cifar_adaptation.final_size == "64 tokens"
    model = create_model("test_vit", 5, image_size=(64, 96))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 5)
    assert model.cifar_adaptation.final_size == "96 tokens"  # patch 8 (from the smaller side): 8 x 12


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "resnet18", "convnext_atto"])
def test_more_families_final_map_within_4_to_8(name):
    for size in SIZES:
        model = create_model(name, 5, image_size=size)
        out, _ = _run_features(model, size)
        h, w = _spatial(out, model)
        assert 4 <= h <= 8 and h == w, (name, size, h)


def test_resnet_keeps_its_cifar_stem_at_32_and_stride16_at_64():
    assert create_model("test_resnet", 5, image_size=32).cifar_adaptation.stem == "stem3x3"
    assert create_model("test_resnet", 5, image_size=64).cifar_adaptation.stem == "stride16"
    assert create_model("test_resnet", 5, image_size=128).cifar_adaptation.changed == ()
