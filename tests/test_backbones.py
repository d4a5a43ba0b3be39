"""create_model: CIFAR stems per family, norm swap, dropout / drop-path, validation, offline pretrained."""

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from models.backbones import create_model, to_cifar_stem

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
X_SMALL = X[:, :, :16, :16]  # CIFAR-stem ResNets work at full resolution: keep the slow tests small


def _features(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_features(X)


def test_resnet18_cifar_stem_keeps_4x4_map_before_head():
    cifar = create_model("resnet18", 10)
    imagenet = create_model("resnet18", 10, cifar_stem=False)
    assert _features(cifar).shape == (2, 512, 4, 4)
    assert _features(imagenet).shape == (2, 512, 1, 1)
    conv = cifar.conv1
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert conv.in_channels == 3 and conv.out_channels == cifar.bn1.num_features == 64
    assert isinstance(cifar.maxpool, nn.Identity)
    assert [f["reduction"] for f in cifar.feature_info] == [1, 1, 2, 4, 8]
    with torch.no_grad():
        assert cifar(X).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18d", "resnet26t"])
def test_deep_stem_resnets_become_one_3x3_conv(name):
    reference = timm.create_model(name, num_classes=10)
    stem_out = [m for m in reference.conv1.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    model = create_model(name, 10)
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.stride == (1, 1)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == stem_out == model.bn1.num_features
    assert _features(model).shape[-2:] == (4, 4)
    with torch.no_grad():
        assert model(X).shape == (2, 10)


@pytest.mark.parametrize(
    "name, side",
    [
        ("efficientnet_b0", 2),  # stem stride 2 -> 1: total stride 32 -> 16
        ("mobilenetv3_small_100", 2),
        ("regnetx_002", 2),
        ("densenet121", 4),  # 7x7/2 conv + pool -> 3x3/1 conv: total stride 32 -> 8
        ("seresnext26d_32x4d", 4),
    ],
)
def test_other_families_lose_stem_downsampling(name, side):
    model = create_model(name, 7)
    features = _features(model)
    assert features.shape[-2:] == (side, side)
    assert _features(create_model(name, 7, cifar_stem=False)).shape[-2:] == (1, 1)
    assert model.forward_head(features).shape == (2, 7)


def test_stride_change_keeps_pretrained_stem_weights():
    model = timm.create_model("efficientnet_b0", num_classes=3)
    before = model.conv_stem.weight.clone()
    to_cifar_stem(model)
    assert model.conv_stem.stride == (1, 1) and torch.equal(model.conv_stem.weight, before)


def test_unsupported_family_raises_and_works_without_cifar_stem():
    with pytest.raises(ValueError, match=r"model\.cifar_stem=true is only supported for ResNet.*convnext_atto"):
        create_model("convnext_atto", 10)
    with torch.no_grad():
        assert create_model("convnext_atto", 10, cifar_stem=False).eval()(X).shape == (2, 10)


@pytest.mark.parametrize("norm", ["group", "layer", "instance"])
def test_norm_swap_applies_after_cifar_stem(norm):
    model = create_model("resnet18", 10, norm=norm, norm_groups=16)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    expected = {"group": 16, "layer": 1, "instance": 64}[norm]
    assert isinstance(model.bn1, nn.GroupNorm) and model.bn1.num_groups == expected
    y = model.train()(X_SMALL)
    y.sum().backward()
    assert model.conv1.weight.grad is not None


def test_drop_path_modules_and_max_rate():
    model = create_model("resnet18", 10, drop_path_rate=0.2)  # first block's rate is 0: no module
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 7 and max(rates) == pytest.approx(0.2) and rates == sorted(rates)
    effnet = create_model("efficientnet_b0", 10, drop_path_rate=0.2)
    rates = [m.drop_prob for m in effnet.modules() if isinstance(m, DropPath)]
    assert rates and 0 < max(rates) <= 0.2
    assert not any(isinstance(m, DropPath) for m in create_model("resnet18", 10).modules())


@pytest.mark.parametrize("kwargs", [{"drop_path_rate": 0.5}, {"drop_rate": 0.5}])
def test_train_outputs_vary_eval_is_deterministic(kwargs):
    torch.manual_seed(0)
    model = create_model("resnet18", 10, **kwargs)
    with torch.no_grad():
        for m in model.modules():  # timm zero-inits each block's last BN gamma: residual branches are 0
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
        model.train()
        assert not torch.allclose(model(X_SMALL), model(X_SMALL))
        model.eval()
        assert torch.equal(model(X_SMALL), model(X_SMALL))
    plain = create_model("resnet18", 10).train()
    with torch.no_grad():
        torch.testing.assert_close(plain(X_SMALL), plain(X_SMALL))  # the randomness comes from the dropout options


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop_rate": 1.0}, r"model\.drop_rate must be in \[0, 1\), got 1\.0"),
        ({"drop_rate": -0.1}, r"model\.drop_rate must be in \[0, 1\), got -0\.1"),
        ({"drop_path_rate": 1.5}, r"model\.drop_path_rate must be in \[0, 1\), got 1\.5"),
        ({"norm_groups": 0}, r"model\.norm_groups must be an int >= 1, got 0"),
        ({"norm": "rms"}, r"model\.norm must be one of batch, group, layer, instance, got 'rms'"),
        ({"num_classes": 0}, r"model\.num_classes must be an int >= 1, got 0"),
    ],
)
def test_invalid_arguments_raise_naming_the_field(kwargs, message):
    args = {"name": "resnet18", "num_classes": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        create_model(**args)


def test_unknown_backbone_and_unsupported_drop_path_raise():
    with pytest.raises(ValueError, match=r"model\.backbone must be a timm model name, got 'resnet_nope'"):
        create_model("resnet_nope", 10)
    with pytest.raises(ValueError, match=r"model\.drop_path_rate must be 0 for 'densenet121'"):
        create_model("densenet121", 10, drop_path_rate=0.1)


def test_pretrained_without_local_weights_raises_without_downloading(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    offline_before, download_before = hf_constants.HF_HUB_OFFLINE, torch.hub.download_url_to_file
    with pytest.raises(ValueError, match=r"model\.pretrained=true needs local weights for 'resnet18'"):
        create_model("resnet18", 10, pretrained=True)
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.pth"))
    # the download block is scoped to model creation
    assert hf_constants.HF_HUB_OFFLINE == offline_before and torch.hub.download_url_to_file is download_before


def test_pretrained_from_local_file_loads_weights_and_new_head(tmp_path):
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", 10, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, norm="group")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(model.layer1[0].bn1.weight, source.layer1[0].bn1.weight)  # affine survives the swap
    assert model.fc.out_features == 10


def test_pretrained_url_source_is_refused_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    overlay = {"hf_hub_id": None, "url": "https://example.invalid/resnet18.pth"}
    with pytest.raises(ValueError, match=r"needs local weights for 'resnet18'.*_DownloadBlocked"):
        create_model("resnet18", 10, pretrained=True, pretrained_cfg_overlay=overlay)
    assert not list(tmp_path.rglob("*.pth"))
