"""Optimizers, weight-decay groups and learning-rate schedules (models/optim.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from models.optim import (
    OPTIMIZERS,
    OptimizerConfig,
    SchedulerConfig,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    param_groups,
)


class TinyNet(nn.Module):
    """conv + bn + groupnorm + layernorm + linear: every kind of parameter param_groups must sort."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm([4, 2, 2])  # 3-d weight: excluded because it is a norm, not by its ndim
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5)
        self.scale = nn.Parameter(torch.ones(1))  # a bare 1-d parameter outside any norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.pool(self.gn(self.bn(self.conv(x)))))
        return self.fc(x.flatten(1)) * self.scale


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_split_by_identity():
    net = TinyNet()
    groups = param_groups(net, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert _ids(by_name["decay"]["params"]) == _ids([net.conv.weight, net.fc.weight])
    expected_no_decay = [
        net.conv.bias, net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias,
        net.ln.weight, net.ln.bias, net.fc.bias, net.scale,
    ]
    assert _ids(by_name["no_decay"]["params"]) == _ids(expected_no_decay)
    assert by_name["decay"]["weight_decay"] == 0.05
    assert by_name["no_decay"]["weight_decay"] == 0.0


def test_param_groups_without_exclusion_decay_everything():
    net = TinyNet()
    groups = param_groups(net, weight_decay=0.01, exclude_norm_and_bias=False)
    assert len(groups) == 1 and groups[0]["name"] == "decay"
    assert _ids(groups[0]["params"]) == _ids(net.parameters())


def test_param_groups_skip_frozen_and_honour_no_weight_decay():
    net = TinyNet()
    net.conv.weight.requires_grad_(False)
    net.no_weight_decay = lambda: {"fc.weight"}
    groups = {g["name"]: g for g in param_groups(net, weight_decay=0.1)}
    assert "decay" not in groups  # conv.weight frozen, fc.weight asked out: nothing left to decay
    assert id(net.fc.weight) in _ids(groups["no_decay"]["params"])
    assert id(net.conv.weight) not in _ids(groups["no_decay"]["params"])


def test_param_groups_detect_timm_norms():
    from timm.layers import BatchNormAct2d, LayerNorm2d

    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), BatchNormAct2d(4), LayerNorm2d(4))
    groups = {g["name"]: g for g in param_groups(net, weight_decay=0.1)}
    assert _ids(groups["decay"]["params"]) == {id(net[0].weight)}
    assert len(groups["no_decay"]["params"]) == 4


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    net = TinyNet()
    lr = 1.0 if name == "adadelta" else 0.01
    opt = build_optimizer(param_groups(net, 1e-4), OptimizerConfig(name=name, lr=lr))
    before = net.conv.weight.detach().clone()
    loss = net(torch.randn(2, 3, 4, 4)).square().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.conv.weight)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


@pytest.mark.parametrize(
    ("name", "momentum", "nesterov"),
    [("sgd", 0.0, False), ("momentum", 0.9, False), ("nesterov", 0.9, True)],
)
def test_sgd_flavours(name, momentum, nesterov):
    opt = build_optimizer(TinyNet().parameters(), OptimizerConfig(name=name, momentum=0.9, weight_decay=0.0))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (momentum, nesterov, 0.0)


def test_optimizer_specific_arguments_reach_torch():
    params = list(TinyNet().parameters())
    adamw = build_optimizer(params, OptimizerConfig(name="adamw", lr=1e-3, betas=(0.8, 0.95), eps=1e-6))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.95) and adamw.param_groups[0]["eps"] == 1e-6
    rms = build_optimizer(params, OptimizerConfig(name="rmsprop", alpha=0.9, momentum=0.5))
    assert (rms.param_groups[0]["alpha"], rms.param_groups[0]["momentum"]) == (0.9, 0.5)
    ada = build_optimizer(params, OptimizerConfig(name="adadelta", lr=1.0, rho=0.8))
    assert ada.param_groups[0]["rho"] == 0.8
    assert isinstance(build_optimizer(params, OptimizerConfig(name="adam")), torch.optim.Adam)
    assert isinstance(build_optimizer(params, OptimizerConfig(name="adagrad")), torch.optim.Adagrad)


def _lrs(cfg: SchedulerConfig, total: int, per_epoch: float, base: float = 0.1) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    sched = build_scheduler(opt, cfg, total_steps=total, steps_per_epoch=per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_values():
    cfg = SchedulerConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1)
    lrs = _lrs(cfg, total=50, per_epoch=10)
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[10] == pytest.approx(0.1)  # warmup over: the cosine starts at the peak
    assert lrs[30] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # midpoint of the 40 post-warmup steps
    assert lr_multiplier(50, cfg, 50, 10) == pytest.approx(0.1)  # the end reaches min_lr_ratio
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_onecycle_peak_and_end():
    cfg = SchedulerConfig(name="onecycle", pct_start=0.25, start_ratio=0.2, min_lr_ratio=0.0)
    lrs = _lrs(cfg, total=100, per_epoch=10, base=1.0)
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.2 + 0.8 * 10 / 25)
    assert lrs[25] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[25 + 75 // 3] == pytest.approx(1 - 25 / 75)
    assert lr_multiplier(100, cfg, 100, 10) == pytest.approx(0.0)
    cos = SchedulerConfig(name="onecycle", pct_start=0.5, anneal="cosine", min_lr_ratio=0.2)
    assert lr_multiplier(75, cos, 100, 10) == pytest.approx(0.2 + 0.8 * 0.5)


def test_onecycle_after_warmup_spans_remaining_steps():
    cfg = SchedulerConfig(name="onecycle", warmup_epochs=0.5, pct_start=0.5)
    # 4 warmup steps of 20, then 16 steps: peak at 4 + 8 = 12
    assert [lr_multiplier(s, cfg, 20, 8) for s in (0, 2, 4, 12)] == pytest.approx([0.0, 0.5, 0.0, 1.0])


def test_step_and_multistep_drops():
    step = SchedulerConfig(name="step", step_size=2, gamma=0.5)
    assert [lr_multiplier(s, step, 100, 10) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25]
    )
    multi = SchedulerConfig(name="multistep", milestones=[1, 3], gamma=0.1, min_lr_ratio=0.05)
    assert [lr_multiplier(s, multi, 100, 10) for s in (9, 10, 29, 30)] == pytest.approx([1.0, 0.1, 0.1, 0.05])
    assert lr_multiplier(7, SchedulerConfig(name="none"), 10, 5) == 1.0


def test_scheduler_state_dict_is_plain_data():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, SchedulerConfig(name="cosine"), total_steps=10, steps_per_epoch=2)
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None]  # a plain function: nothing unpicklable in checkpoints


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "lion"}, "optimizer.name must be one of"),
        ({"lr": 0.0}, "optimizer.lr must be > 0, got 0.0"),
        ({"weight_decay": -1e-4}, "optimizer.weight_decay"),
        ({"momentum": 1.0}, "optimizer.momentum must be in [0, 1), got 1.0"),
        ({"name": "nesterov", "momentum": 0.0}, "optimizer.momentum must be > 0 for nesterov"),
        ({"betas": (0.9,)}, "optimizer.betas"),
        ({"eps": 0}, "optimizer.eps"),
    ],
)
def test_optimizer_config_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        OptimizerConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "poly"}, "scheduler.name must be one of"),
        ({"warmup_epochs": -1}, "scheduler.warmup_epochs"),
        ({"min_lr_ratio": 1.5}, "scheduler.min_lr_ratio must be in [0, 1], got 1.5"),
        ({"step_size": 0}, "scheduler.step_size must be an int >= 1, got 0"),
        ({"milestones": [3, 1]}, "scheduler.milestones must be increasing"),
        ({"gamma": 0}, "scheduler.gamma"),
        ({"pct_start": 1.0}, "scheduler.pct_start must be in (0, 1), got 1.0"),
        ({"anneal": "exp"}, "scheduler.anneal"),
    ],
)
def test_scheduler_config_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        SchedulerConfig(**kwargs)


def test_build_scheduler_needs_finite_total_for_cosine():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="scheduler.name=cosine needs a finite number of steps"):
        build_scheduler(opt, SchedulerConfig(name="cosine"), total_steps=math.inf, steps_per_epoch=10)
    sched = build_scheduler(opt, SchedulerConfig(name="step"), total_steps=math.inf, steps_per_epoch=10)
    assert opt.param_groups[0]["lr"] == 0.1 and sched.last_epoch == 0


def test_build_optimizer_rejects_empty():
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], OptimizerConfig())

