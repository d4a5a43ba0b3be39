"""create_model: CIFAR adaptation of every family in the table, norm swap, dropout / drop-path, validation, offline."""

import socket

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from bench.backbone_table import FAMILIES
from models.backbones import create_model, has_batch_norm, to_cifar_stem
from models.cifar_adapt import CIFAR_STEMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
X_SMALL = X[:, :, :16, :16]  # CIFAR-stem ResNets work at full resolution: keep the slow tests small


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection or hub download during a test fails it (no download ever happens)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access during a backbone test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    yield
    assert attempts == []


def _features(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_features(x)


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ----- every family of the table ----------------------------------------------------------------------


NO_BATCHNORM = {  # documented in docs/backbones.md: norm swap does not apply
    "nf_regnet_b0",  # norm-free (scaled weight standardization)
    "convnext_atto",  # LayerNorm2d
    "vit_tiny_patch16_224",  # LayerNorm
    "deit_tiny_patch16_224",
}


@pytest.mark.parametrize("family, name, stem", FAMILIES, ids=[row[1] for row in FAMILIES])
def test_family_adapts_to_32x32_trains_and_swaps_norms(family, name, stem):
    model = create_model(name, 10)
    assert model.cifar_adaptation.stem == stem
    features = _features(model)
    if stem.startswith("patch"):  # (B, prefix + 64 tokens, C): an 8x8 grid of 4x4 patches
        assert features.shape[1] - model.num_prefix_tokens == 64
    else:
        assert features.shape[-2:] == (4, 4)  # total stride 8
        assert model.feature_info[-1]["reduction"] == 8
    logits = model.train()(X)
    assert logits.shape == (2, 10)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    assert has_batch_norm(model) == (name not in NO_BATCHNORM)
    if name in NO_BATCHNORM:
        with pytest.raises(ValueError, match=rf"^model\.norm=group needs BatchNorm layers to swap, '{name}'"):
            create_model(name, 10, norm="group")
        return
    swapped = create_model(name, 10, norm="group", norm_groups=8)
    assert _batch_norms(swapped) == []
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups <= 8 for m in swapped.modules())
    with torch.no_grad():
        assert torch.isfinite(swapped.eval()(X)).all()


def test_docs_table_lists_exactly_the_tested_families():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text().split("## Tested families")[1]
    rows = [line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")]
    assert rows == [name for _, name, _ in FAMILIES]


# ----- the general stride rule -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["regnetx_002", "repvgg_a0", "dla46_c", "convnext_atto", "efficientnet_b0"])
def test_stride_rule_keeps_every_weight_shape(name):
    reference = timm.create_model(name, num_classes=10)
    model = create_model(name, 10, cifar_stem="stride8")
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert _features(reference).shape[-2:] == (1, 1) and _features(model).shape[-2:] == (4, 4)


def test_stride_rule_changes_parallel_branches_of_a_stage_together():
    model = create_model("regnetx_002", 10, cifar_stem="stride8")
    block = model.s1.b1  # the first stage: strided 3x3 conv and strided 1x1 shortcut
    assert model.stem.conv.stride == (1, 1)
    assert block.conv2.conv.stride == (1, 1) and block.downsample.conv.stride == (1, 1)
    assert model.s2.b1.conv2.conv.stride == (2, 2) and model.s2.b1.downsample.conv.stride == (2, 2)
    assert model.cifar_adaptation.changed == (
        "stem.conv stride 1", "s1.b1.conv2.conv stride 1", "s1.b1.downsample.conv stride 1"
    )


@pytest.mark.parametrize("stem, side", [("stride4", 8), ("stride8", 4), ("stride16", 2)])
def test_stride_target_sets_the_final_map(stem, side):
    model = create_model("mobilenetv2_050", 10, cifar_stem=stem)
    assert _features(model).shape[-2:] == (side, side)
    assert model.cifar_adaptation.stride_after == 32 // side
    assert model.feature_info[-1]["reduction"] == 32 // side


def test_stride16_is_the_former_efficientnet_stem_and_keeps_its_weights():
    reference = timm.create_model("efficientnet_b0", num_classes=3)
    model = timm.create_model("efficientnet_b0", num_classes=3)
    model.load_state_dict(reference.state_dict())
    to_cifar_stem(model, "efficientnet_b0", "stride16")
    assert model.cifar_adaptation.changed == ("conv_stem stride 1",)
    assert model.conv_stem.stride == (1, 1)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_pools_become_identity_and_even_kernel_stem_keeps_the_size():
    dla = create_model("dla46_c", 10)
    assert isinstance(dla.level2.downsample, nn.Identity)  # a MaxPool2d(2, 2) shortcut before
    convnext = create_model("convnext_atto", 10)
    stem = convnext.stem[0]  # 4x4 stride-4 patchify conv -> 4x4 stride 1, padded 1 before and 2 after
    assert stem.kernel_size == (4, 4) and stem.stride == (1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(torch.nn.functional.pad(X, (1, 2, 1, 2)), stem.weight, stem.bias)
        torch.testing.assert_close(stem(X), expected)
    assert expected.shape[-2:] == (32, 32)


# ----- hand-tuned stems (ResNet family, DenseNet) ------------------------------------------------------


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


def test_resnet_stride8_keeps_the_imagenet_stem_weights():
    model = create_model("resnet18", 10, cifar_stem="stride8")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (1, 1) and model.conv1.padding == (3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert _features(model).shape[-2:] == (4, 4)


# ----- patch models ------------------------------------------------------------------------------------


def test_vit_is_built_for_32x32_with_4x4_patches_and_patch2_gives_256_tokens():
    vit = create_model("vit_tiny_patch16_224", 10)
    assert vit.patch_embed.proj.kernel_size == (4, 4) and vit.patch_embed.grid_size == (8, 8)
    assert vit.pos_embed.shape == (1, 65, 192)
    fine = create_model("deit_tiny_patch16_224", 10, cifar_stem="patch2")
    assert _features(fine).shape == (2, 257, 192)


def test_pretrained_vit_embeddings_are_resampled_from_local_weights(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = create_model("vit_tiny_patch16_224", 10, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert model.patch_embed.proj.weight.shape == (192, 3, 4, 4)
    assert torch.equal(model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert torch.equal(model.cls_token, source.cls_token)


def test_drop_path_works_on_cnn_and_patch_families_and_is_refused_without_timm_support():
    for name in ("vit_tiny_patch16_224", "convnext_atto"):
        rates = [m.drop_prob for m in create_model(name, 10, drop_path_rate=0.1).modules() if isinstance(m, DropPath)]
        assert rates and max(rates) == pytest.approx(0.1)
    for name in ("ghostnet_050", "dla46_c"):  # documented in docs/backbones.md (with densenet, tested below)
        with pytest.raises(ValueError, match=rf"^model\.drop_path_rate must be 0 for '{name}'"):
            create_model(name, 10, drop_path_rate=0.1)


# ----- cifar_stem values and models the rule cannot adapt ---------------------------------------------


def test_cifar_stem_none_and_false_keep_the_imagenet_model():
    for value in ("none", False):
        resnet = create_model("resnet18", 10, cifar_stem=value)
        assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2)
        assert isinstance(resnet.maxpool, nn.MaxPool2d) and resnet.cifar_adaptation.stem == "none"
    vit = create_model("vit_tiny_patch16_224", 10, cifar_stem="none")
    assert vit.patch_embed.img_size == (224, 224) and vit.patch_embed.proj.kernel_size == (16, 16)
    assert create_model("resnet18", 10, cifar_stem=True).cifar_adaptation.stem == "stem3x3"


@pytest.mark.parametrize(
    "name, stem, message",
    [
        ("tresnet_m", "auto", r"model\.cifar_stem=auto cannot adapt 'tresnet_m' \(TResNet\): total stride stays 32 "
         r"\(not 8\): it downsamples in body\.s2d \(SpaceToDepth\)"),
        ("levit_128s", "auto", r"model\.cifar_stem=auto \(patch4\) cannot build 'levit_128s' for 32x32 inputs with "
         r"4x4 patches: .*'patch_size'"),
        ("pit_ti_224", True, r"model\.cifar_stem=auto \(patch4\) cannot adapt 'pit_ti_224' "
         r"\(PoolingVisionTransformer\): it merges tokens after the patch embedding"),
        ("convnext_atto", "stem3x3", r"model\.cifar_stem=stem3x3 cannot adapt 'convnext_atto' \(ConvNeXt\): stem3x3 is "
         r"for timm ResNet and DenseNet models; use stride8"),
        ("vit_tiny_patch16_224", "stride8", r"model\.cifar_stem=stride8 cannot adapt 'vit_tiny_patch16_224': timm "
         r"builds it for a fixed input size"),
        ("resnet18", "patch4", r"model\.cifar_stem=patch4 cannot build 'resnet18' for 32x32 inputs with 4x4 patches: "
         r".*'img_size'"),
        ("resnet18", "stride3", r"model\.cifar_stem must be one of " + ", ".join(CIFAR_STEMS) + ", got 'stride3'"),
    ],
)
def test_unadaptable_model_or_bad_value_is_a_one_line_error(name, stem, message):
    with pytest.raises(ValueError, match="^" + message) as info:
        create_model(name, 10, cifar_stem=stem)
    assert "\n" not in str(info.value)


def test_classifier_records_and_prints_the_chosen_adaptation(monkeypatch):
    import models.classifier as classifier

    printed = []
    monkeypatch.setattr(classifier, "rank_zero_info", printed.append)
    model = classifier.CifarClassifier(backbone="mobilenetv2_050", cifar_stem="auto")
    assert model.hparams["cifar_stem"] == "auto" and model.hparams["cifar_stem_resolved"] == "stride8"
    assert printed == [f"model.cifar_stem=auto: {model.backbone.cifar_adaptation}"]
    assert printed[0].startswith("model.cifar_stem=auto: stride8: total stride 32 -> 8 (conv_stem stride 1")
    with pytest.raises(ValueError, match=r"^model\.cifar_stem must be one of auto, none, .*, got 'yes'$"):
        classifier.CifarClassifier(backbone="mobilenetv2_050", cifar_stem="yes")


# ----- norm swap, dropout and arguments (ResNet) -------------------------------------------------------


@pytest.mark.parametrize("norm", ["group", "layer", "instance"])
def test_norm_swap_applies_after_cifar_stem(norm):
    model = create_model("resnet18", 10, norm=norm, norm_groups=16)
    assert not _batch_norms(model)
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


# ----- offline pretrained weights ----------------------------------------------------------------------


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


@pytest.mark.slow
def test_size_table_rows_follow_the_size_rule(capsys):
    from bench.backbone_table import main

    main(["--sizes", "32", "64", "128", "--models", "resnet18", "--batch", "2", "--repeats", "1"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [(r[1].strip(), r[2].strip(), r[5].strip()) for r in rows] == [
        ("32", "stem3x3", "4x4"), ("64", "stride16", "4x4"), ("128", "stride32", "4x4")
    ]
    assert all(float(r[6].replace(",", "")) > 0 for r in rows)


def test_size_table_refuses_sizes_below_32():
    from bench.backbone_table import main

    with pytest.raises(SystemExit):
        main(["--sizes", "16"])


def test_docs_size_table_covers_six_families_at_every_size():
    from pathlib import Path

    from bench.backbone_table import SIZE_MODELS

    text = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    section = text.split("## Other image sizes")[1].split("\n## ")[0]
    rows = {(line.split("|")[1].strip().strip("`"), line.split("|")[2].strip()) for line in section.splitlines()
            if line.startswith("| `")}
    assert len(SIZE_MODELS) >= 6
    assert rows == {(name, str(size)) for name in SIZE_MODELS for size in (32, 64, 96, 128, 224)}
