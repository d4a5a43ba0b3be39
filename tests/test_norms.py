"""swap_norm: BatchNorm -> group / layer / instance on timm CNNs, fused norm-act layers, exact numerics."""

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from models.norms import GroupNormAct, num_norm_groups, swap_norm

ARCHS = ["resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "densenet121"]
KINDS = ["group", "layer", "instance"]
# Backward per (arch, kind) is the slow part on CPU: each arch gets a backward for one kind
# (rotated, so each kind is trained through two archs; resnet18 does all three below) and a
# forward for every kind.
BACKWARD_KIND = {"resnet18": "group", "resnet50": "layer", "efficientnet_b0": "instance",
                 "mobilenetv3_small_100": "group", "regnetx_002": "layer", "densenet121": "instance"}


def _batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _fused_acts(model: nn.Module) -> dict[str, type]:
    """name -> activation type of every module with an ``act`` child next to a norm (timm norm-act layers)."""
    return {n: type(m.act) for n, m in model.named_modules() if isinstance(getattr(m, "act", None), nn.Module)
            and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))}


@pytest.mark.parametrize("arch", ARCHS)
def test_swap_every_kind_on_timm_cnns(arch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for kind in KINDS:
        model = timm.create_model(arch, num_classes=3)
        assert _batchnorms(model), "architecture should start with BatchNorm"
        acts_before = _fused_acts(model)
        assert bool(acts_before) == (not arch.startswith("resnet"))  # timm ResNet has no fused norm-act
        out = swap_norm(model, kind, groups=8)
        assert out is model
        assert _batchnorms(model) == []
        assert _fused_acts(model) == acts_before  # same fused layers, same activation types
        if kind == "layer":
            assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))
        if kind == "instance":
            assert all(m.num_groups == m.num_channels for m in model.modules() if isinstance(m, nn.GroupNorm))
        if kind == "group":  # every count divides its channels and is at most 8
            gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
            assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in gns)
        if kind != BACKWARD_KIND[arch]:
            with torch.no_grad():
                y = model(x)
            assert y.shape == (2, 3) and torch.isfinite(y).all()
            continue
        y = model(x)
        assert y.shape == (2, 3) and torch.isfinite(y).all()
        y.square().sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_resnet18_each_kind(kind):
    model = swap_norm(timm.create_model("resnet18", num_classes=4), kind)
    y = model(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert model.conv1.weight.grad is not None and model.bn1.weight.grad.abs().sum() > 0


def _bn(channels: int, fused: bool = False) -> nn.BatchNorm2d:
    bn = timm.layers.BatchNormAct2d(channels, act_layer=nn.SiLU) if fused else nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, channels))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return bn


def test_layer_norm_matches_per_sample_normalization_over_chw():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 7) * 3 + 1
    net = swap_norm(nn.Sequential(_bn(6)), "layer")
    expected = F.layer_norm(x, x.shape[1:], eps=1e-5) * net[0].weight.view(1, -1, 1, 1) + net[0].bias.view(1, -1, 1, 1)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_instance_norm_matches_per_sample_per_channel_normalization():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 7) * 3 + 1
    net = swap_norm(nn.Sequential(_bn(6)), "instance")
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * net[0].weight.view(1, -1, 1, 1) + net[0].bias.view(1, -1, 1, 1)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_group_norm_matches_grouped_statistics_and_is_batch_independent():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 3, 3)
    net = swap_norm(nn.Sequential(_bn(8)), "group", groups=2)
    g = x.view(4, 2, -1)
    normed = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)).view_as(x)
    expected = normed * net[0].weight.view(1, -1, 1, 1) + net[0].bias.view(1, -1, 1, 1)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x[:1]), net(x)[:1])  # per-sample: no batch statistics


def test_fused_layer_keeps_activation_drop_and_affine():
    bn = _bn(6, fused=True)
    drop = nn.Dropout(0.0)
    bn.drop = drop
    act = bn.act
    net = swap_norm(nn.Sequential(bn), "layer")
    new = net[0]
    assert isinstance(new, GroupNormAct) and new.act is act and new.drop is drop and isinstance(new.act, nn.SiLU)
    torch.testing.assert_close(new.weight, bn.weight)
    torch.testing.assert_close(new.bias, bn.bias)
    x = torch.randn(2, 6, 4, 4)
    expected = F.silu(F.group_norm(x, 1, bn.weight, bn.bias, bn.eps))
    torch.testing.assert_close(new(x), expected)


def test_affine_copied_and_params_fresh_when_swapped():
    bn = _bn(12)
    net = swap_norm(nn.Sequential(nn.Conv2d(3, 12, 3), bn), "group", groups=4)
    gn = net[1]
    assert type(gn) is nn.GroupNorm and gn.num_groups == 4 and gn.eps == bn.eps
    assert torch.equal(gn.weight, bn.weight) and torch.equal(gn.bias, bn.bias)
    assert gn.weight is not bn.weight
    assert not any(k.startswith("1.running") for k in net.state_dict())


def test_non_affine_bn_gives_non_affine_group_norm():
    net = swap_norm(nn.Sequential(nn.BatchNorm2d(4, affine=False)), "instance")
    assert net[0].weight is None and net[0].num_groups == 4


def test_indivisible_channels_use_largest_divisor_or_raise_when_strict():
    assert num_norm_groups("group", 24, 32) == 24
    assert num_norm_groups("group", 40, 32) == 20
    assert num_norm_groups("group", 7, 4) == 1
    assert num_norm_groups("group", 64, 32) == 32
    assert num_norm_groups("layer", 24, 32) == 1 and num_norm_groups("instance", 24, 32) == 24
    net = nn.Sequential(nn.Conv2d(3, 24, 1), nn.Sequential(nn.BatchNorm2d(24)))
    assert swap_norm(net, "group", 32)[1][0].num_groups == 24
    net = nn.Sequential(nn.Conv2d(3, 24, 1), nn.Sequential(nn.BatchNorm2d(24)))
    with pytest.raises(ValueError, match=r"norm_groups=32 does not divide channels=24 in 1\.0"):
        swap_norm(net, "group", 32, strict=True)


def test_batch_is_noop_and_bad_arguments_raise():
    model = nn.Sequential(nn.BatchNorm2d(4))
    assert swap_norm(model, "batch") is model and isinstance(model[0], nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"model\.norm must be one of batch, group, layer, instance, got 'rms'"):
        swap_norm(model, "rms")
    with pytest.raises(ValueError, match=r"model\.norm_groups must be an int >= 1, got 0"):
        swap_norm(model, "group", groups=0)


def test_shared_root_and_mode_preserving_swap():
    shared = nn.BatchNorm2d(4)
    net = nn.Sequential(shared, nn.Sequential(shared)).eval()
    swap_norm(net, "layer")
    assert net[0] is net[1][0] and isinstance(net[0], nn.GroupNorm) and not net[0].training
    root = swap_norm(nn.BatchNorm2d(4), "instance")
    assert isinstance(root, nn.GroupNorm) and root.num_groups == 4


def test_swap_keeps_dtype():
    net = nn.Sequential(nn.BatchNorm2d(4)).to(torch.float64)
    swap_norm(net, "group", groups=2)
    assert net[0].weight.dtype == torch.float64
