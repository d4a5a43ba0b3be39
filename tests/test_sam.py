"""SAM / ASAM: one step equals the formula, every base optimizer, state dicts, and the Lightning closure
(same augmented batch twice, BatchNorm statistics of the first pass only, clipping, weight noise, resume)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from augment.checks import CheckError
from helpers import run_cli, tiny_args
from models.callbacks.weight_noise import WeightNoise
from models.classifier import CifarClassifier
from models.optim import OPTIMIZERS, OptimizerConfig, SAMConfig, build_optimizer
from models.sam import SAM, preserve_bn_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RHO, LR = 0.05, 0.1


# ------------------------------------------------------------------------------------------------ toy problems


def _quadratic(seed: int = 0) -> tuple[list[nn.Parameter], Any]:
    """Two float64 parameter tensors and f(w) = sum_i 0.5 w_i^T Q_i w_i + c_i^T w_i (Q_i SPD)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3,), (2, 2)]
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    mats = []
    for s in shapes:
        n = math.prod(s)
        a = torch.randn(n, n, generator=g, dtype=torch.float64)
        mats.append((a @ a.T + torch.eye(n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)))

    def loss(ws: list[torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * w.flatten() @ q @ w.flatten() + c @ w.flatten() for w, (q, c) in zip(ws, mats))

    return params, loss


def _grad(loss, ws: list[torch.Tensor]) -> list[torch.Tensor]:
    ws = [w.detach().clone().requires_grad_(True) for w in ws]
    return list(torch.autograd.grad(loss(ws), ws))


def _closure(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss, calls: list[int] | None = None):
    def closure() -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        optimizer.zero_grad()
        value = loss(params)
        value.backward()
        return value.detach()

    return closure


def _perturbation(ws: list[torch.Tensor], gs: list[torch.Tensor], adaptive: bool, eta: float) -> list[torch.Tensor]:
    """e(w) written out: rho g / ||g|| or rho T^2 g / ||T g||, T = |w| + eta, one norm over all tensors."""
    t = [w.abs() + eta if adaptive else torch.ones_like(w) for w in ws]
    norm = math.sqrt(sum(float(((ti * g) ** 2).sum()) for ti, g in zip(t, gs)))
    return [RHO * ti * ti * g / norm for ti, g in zip(t, gs)]


# ------------------------------------------------------------------------------------------------ the step


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_one_step_equals_the_formula(adaptive: bool) -> None:
    params, loss = _quadratic()
    w0 = [p.detach().clone() for p in params]
    eta = 0.01 if adaptive else 0.0
    sam = SAM(torch.optim.SGD(params, lr=LR), rho=RHO, adaptive=adaptive, eta=eta)
    calls: list[int] = []
    returned = sam.step(_closure(sam, params, loss, calls))

    e = _perturbation(w0, _grad(loss, w0), adaptive, eta)
    g2 = _grad(loss, [w + d for w, d in zip(w0, e)])
    assert len(calls) == 2
    assert float(returned) == pytest.approx(float(loss(w0)), rel=1e-12)  # the loss at w, not at w + e
    for p, w, g in zip(params, w0, g2):
        torch.testing.assert_close(p.detach(), w - LR * g, rtol=0, atol=1e-12)


def test_asam_differs_from_sam_and_eta_matters() -> None:
    results = []
    for adaptive, eta in ((False, 0.01), (True, 0.0), (True, 0.5)):
        params, loss = _quadratic()
        sam = SAM(torch.optim.SGD(params, lr=LR), rho=RHO, adaptive=adaptive, eta=eta)
        sam.step(_closure(sam, params, loss))
        results.append(torch.cat([p.detach().flatten() for p in params]))
    assert not torch.allclose(results[0], results[1]) and not torch.allclose(results[1], results[2])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_base_optimizer_steps_with_the_perturbed_gradient(name: str) -> None:
    """Two SAM steps == the base optimizer stepped by hand with the gradient at w + e(w)."""
    params, loss = _quadratic(1)
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    cfg = OptimizerConfig(name=name, lr=0.05, weight_decay=1e-2, sam={"rho": RHO})
    sam = build_optimizer(params, cfg)
    base_ref = build_optimizer(ref, OptimizerConfig(name=name, lr=0.05, weight_decay=1e-2))
    assert isinstance(sam, SAM) and type(sam.base_optimizer) is type(base_ref)
    for _ in range(2):
        sam.step(_closure(sam, params, loss))
        w = [p.detach() for p in ref]
        e = _perturbation(w, _grad(loss, w), adaptive=False, eta=0.0)
        for p, g in zip(ref, _grad(loss, [wi + d for wi, d in zip(w, e)])):
            p.grad = g
        base_ref.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-12)


def test_restore_is_bit_exact_for_a_zero_learning_rate() -> None:
    params, loss = _quadratic(2)
    w0 = [p.detach().clone() for p in params]
    sam = SAM(torch.optim.SGD(params, lr=0.0), rho=0.5)
    sam.step(_closure(sam, params, loss))
    assert all(torch.equal(p.detach(), w) for p, w in zip(params, w0))


def test_state_dict_round_trip_continues_exactly_and_schedulers_see_the_base_groups() -> None:
    params, loss = _quadratic(3)
    sam = SAM(torch.optim.Adam(params, lr=0.01), rho=RHO, adaptive=True)
    for _ in range(3):
        sam.step(_closure(sam, params, loss))
    state = copy.deepcopy(sam.state_dict())
    assert state["sam"] == {"rho": RHO, "adaptive": True, "eta": 0.01}
    saved_w = [p.detach().clone() for p in params]
    for _ in range(2):
        sam.step(_closure(sam, params, loss))

    resumed = [nn.Parameter(w.clone()) for w in saved_w]
    sam2 = SAM(torch.optim.Adam(resumed, lr=0.01), rho=RHO, adaptive=True)
    sam2.load_state_dict(state)
    assert sam2.param_groups is sam2.base_optimizer.param_groups and sam2.state is sam2.base_optimizer.state
    for _ in range(2):
        sam2.step(_closure(sam2, resumed, loss))
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, resumed))

    schedule = torch.optim.lr_scheduler.LambdaLR(sam2, lambda step: 0.5)
    assert schedule.optimizer is sam2 and sam2.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_second_pass_context_wraps_only_the_second_call() -> None:
    params, loss = _quadratic()
    inside: list[bool] = []
    state = {"in": False}

    class Flag:
        def __enter__(self) -> None:
            state["in"] = True

        def __exit__(self, *args: Any) -> None:
            state["in"] = False

    sam = SAM(torch.optim.SGD(params, lr=LR), second_pass=Flag)
    base_closure = _closure(sam, params, loss)

    def closure() -> torch.Tensor:
        inside.append(state["in"])
        return base_closure()

    sam.step(closure)
    assert inside == [False, True] and not state["in"]


def test_bad_arguments_raise_one_line_errors() -> None:
    params, loss = _quadratic()
    base = torch.optim.SGD(params, lr=LR)
    with pytest.raises(CheckError, match=r"^rho must be > 0, got 0$"):
        SAM(base, rho=0)
    with pytest.raises(CheckError, match=r"^eta must be >= 0, got -0.1$"):
        SAM(base, eta=-0.1)
    with pytest.raises(CheckError, match=r"^adaptive must be true or false, got 1$"):
        SAM(base, adaptive=1)
    with pytest.raises(CheckError, match=r"^base must be a torch.optim.Optimizer \(not a SAM\)"):
        SAM(SAM(base))
    with pytest.raises(CheckError, match=r"^closure must be a callable .* use bf16-mixed\), got None$"):
        SAM(base).step()
    with pytest.raises(CheckError, match=r"^optimizer.sam.rho must be > 0, got -1$"):
        OptimizerConfig(sam={"rho": -1})
    with pytest.raises(CheckError, match=r"^optimizer.sam must be a mapping of rho, adaptive, eta, got \{'radius': 1"):
        OptimizerConfig(sam={"radius": 1})
    assert OptimizerConfig(sam={"rho": 0.5, "adaptive": True}).sam == SAMConfig(rho=0.5, adaptive=True)
    assert OptimizerConfig().sam is None and not isinstance(build_optimizer(params, OptimizerConfig()), SAM)


def test_preserve_bn_stats_restores_running_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2), nn.BatchNorm1d(2))
    net(torch.randn(4, 3, 6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    with preserve_bn_stats(net):
        net(torch.randn(4, 3, 6, 6) + 3.0)
        assert not torch.equal(net[1].running_mean, before["1.running_mean"])  # it did move inside
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------------------------ Lightning


def _classifier(**kwargs: Any) -> CifarClassifier:
    torch.manual_seed(0)
    optimizer = {"name": "sgd", "lr": LR, "weight_decay": 0.0, "sam": {"rho": RHO}}
    return CifarClassifier(backbone="test_resnet", num_classes=4, optimizer=optimizer, scheduler={"name": "none"},
                           **kwargs)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)


def _fit_one_step(model: pl.LightningModule, callbacks: list[pl.Callback] | None = None, **kwargs: Any) -> None:
    x, y = _batch()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks, **kwargs,
    )
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=8))


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def _expected_sam_update(
    start: CifarClassifier, x: torch.Tensor, y: torch.Tensor, noise: WeightNoise | None = None
) -> list[torch.Tensor]:
    """w - lr * grad f(w + e) with e from grad f at w (at w + noise when given), in train mode."""
    ref = copy.deepcopy(start)
    net = ref.backbone.train()
    params = [p for p in net.parameters() if p.requires_grad]
    clean = [p.detach().clone() for p in params]
    if noise is not None:
        noise.add_noise(ref)
    g1 = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    e = _perturbation(clean, list(g1), adaptive=False, eta=0.0)
    with torch.no_grad():
        for p, w, d in zip(params, clean, e):
            p.copy_(w + d)
    g2 = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    return [w - LR * g for w, g in zip(clean, g2)]


def test_lightning_step_reuses_the_augmented_batch_keeps_bn_stats_and_counts_metrics_once() -> None:
    model = _classifier(mixup={"alpha": 1.0})
    start = copy.deepcopy(model)
    inputs: list[torch.Tensor] = []
    model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    updates: list[int] = []
    original_update = model.train_loss.update
    model.train_loss.update = lambda *a, **k: (updates.append(1), original_update(*a, **k))[1]
    _fit_one_step(model)

    assert len(inputs) == 2 and torch.equal(inputs[0], inputs[1])  # the same mixed batch at w and at w + e
    assert not torch.equal(inputs[0], _batch()[0])  # ...and it was mixed
    assert len(updates) == 1
    reference = start.backbone.train()
    reference(inputs[0])  # one train-mode forward at w on that batch
    got, want = _bn_buffers(model.backbone), _bn_buffers(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not model._sam_second_pass and model._sam_batch is None


def test_lightning_step_equals_the_formula() -> None:
    model = _classifier()
    x, y = _batch()
    want = _expected_sam_update(model, x, y)
    _fit_one_step(model)
    got = [p.detach() for p in model.backbone.parameters() if p.requires_grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_weight_noise_perturbs_the_first_pass_and_the_update_starts_from_clean_weights() -> None:
    model = _classifier()
    x, y = _batch()
    want = _expected_sam_update(model, x, y, noise=WeightNoise(std=0.05, seed=3))
    without_noise = _expected_sam_update(model, x, y)
    noise = WeightNoise(std=0.05, seed=3)
    _fit_one_step(model, callbacks=[noise])
    got = [p.detach() for p in model.backbone.parameters() if p.requires_grad]
    assert not noise.is_noisy
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert not all(torch.allclose(g, w, rtol=1e-4, atol=1e-6) for g, w in zip(got, without_noise))


def test_gradient_clipping_applies_to_the_gradient_of_the_update() -> None:
    steps = {}
    for clip in (None, 1e-2):
        model = _classifier()
        w0 = torch.cat([p.detach().flatten().clone() for p in model.backbone.parameters()])
        _fit_one_step(model, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        steps[clip] = float((torch.cat([p.detach().flatten() for p in model.backbone.parameters()]) - w0).norm())
    assert steps[None] > 10 * LR * 1e-2  # the clip is far below the gradient norm...
    assert steps[1e-2] == pytest.approx(LR * 1e-2, rel=1e-2)  # ...and the step is lr * clip


@pytest.mark.slow
def test_bf16_autocast_step_is_finite_and_moves_the_weights() -> None:
    model = _classifier(ema_decay=0.9)
    w0 = torch.cat([p.detach().flatten().clone() for p in model.backbone.parameters()])
    _fit_one_step(model, precision="bf16-mixed")
    w1 = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    assert torch.isfinite(w1).all() and not torch.equal(w0, w1)
    assert model.global_step == 1


def test_gradient_accumulation_is_refused() -> None:
    with pytest.raises(CheckError, match=r"^trainer.accumulate_grad_batches must be 1 with model.optimizer.sam"):
        _fit_one_step(_classifier(), accumulate_grad_batches=2)


# ------------------------------------------------------------------------------------------------ resume

SAM_ARGS = ("--model.optimizer.sam", '{"rho": 0.05, "adaptive": true}', "--model.mixup.alpha", "0.4",
            "--model.ema_decay", "0.9", "--model.scheduler.name", "step", "--model.scheduler.step_size", "1",
            "--run_test", "false")


def _weights(metrics: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = Path(metrics["log_dir"]) / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sam_resume_is_bitwise_equal_to_an_uninterrupted_run(tiny_data: Path, in_tmp_cwd: Path) -> None:
    full = run_cli(tiny_args(tiny_data, in_tmp_cwd, *SAM_ARGS, max_epochs=2, name="full"))
    part = run_cli(tiny_args(tiny_data, in_tmp_cwd, *SAM_ARGS, max_epochs=1, name="part"))
    last = Path(part["log_dir"]) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["optimizer_states"][0]["sam"] == {"rho": 0.05, "adaptive": True, "eta": 0.01}
    assert checkpoint["optimizer_states"][0]["state"]  # the base optimizer's momentum buffers are in it
    resumed = run_cli(tiny_args(tiny_data, in_tmp_cwd, *SAM_ARGS, "--ckpt_path", str(last), max_epochs=2, name="part"))
    assert resumed["global_step"] == full["global_step"] == 8
    a, b = _weights(part), _weights(full)  # the resumed run keeps writing into the first part's folder
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert resumed["train/loss"] == full["train/loss"]
