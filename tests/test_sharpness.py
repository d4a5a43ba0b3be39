"""Sharpness measures: the Hessian eigenvalue against the closed form of linear least squares, Keskar's
epsilon-sharpness against a brute-force grid on a 2-parameter problem, no side effects, and the
callback after a tiny CLI fit (scalars, HPARAMS, run summary, the best checkpoint's weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from augment.checks import CheckError
from augment.data import CIFARDataModule
from helpers import read_tensorboard, run_cli, tiny_args
from models.callbacks.sharpness import Sharpness
from models.classifier import CifarClassifier
from models.sharpness import (
    dataset_loss,
    epsilon_sharpness,
    hessian_max_eigenvalue,
    measure_sharpness,
    training_subset,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), target)


def _regression(n: int = 50, d: int = 3) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(d, 1).double(), x, y


def test_hessian_eigenvalue_of_least_squares_matches_the_closed_form() -> None:
    model, x, y = _regression()
    model.bias.requires_grad_(False)  # frozen parameters are measured too (and stay frozen)
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    want = float(torch.linalg.eigvalsh(2.0 / len(x) * z.T @ z).max())  # H of mean (z w - y)^2 = 2/N z^T z
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got, used = hessian_max_eigenvalue(model, x, y, iterations=200, tol=1e-12, batch_size=16, loss_fn=_mse)
    assert got == pytest.approx(want, rel=1e-9)
    assert used < 200  # it converged and stopped
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and not model.bias.requires_grad


def test_hessian_power_iteration_is_seeded() -> None:
    model, x, y = _regression()
    runs = [hessian_max_eigenvalue(model, x, y, iterations=3, tol=0.0, seed=s, loss_fn=_mse) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0][0] != runs[2][0] and runs[0][1] == 3


class TanhRegression(nn.Module):
    """Two parameters: prediction b * tanh(a * x)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b * torch.tanh(self.a * x)


X = torch.linspace(-2, 2, 41, dtype=torch.float64)
T = 1.5 * torch.tanh(1.2 * X)  # the minimum is (a, b) = (1.2, 1.5), loss 0


def _brute_force(a: float, b: float, eps: float, points: int = 801) -> tuple[float, float]:
    """(f(w), max of f on a points x points grid over the box |y_i| <= eps (|w_i| + 1))."""
    ra, rb = eps * (abs(a) + 1), eps * (abs(b) + 1)
    grid_a = torch.linspace(a - ra, a + ra, points, dtype=torch.float64)[:, None, None]
    grid_b = torch.linspace(b - rb, b + rb, points, dtype=torch.float64)[None, :, None]
    values = ((grid_b * torch.tanh(grid_a * X) - T) ** 2).mean(-1)
    return float(((b * torch.tanh(a * X) - T) ** 2).mean()), float(values.max())


@pytest.mark.parametrize(
    ("a", "b", "eps", "rel"),
    [(1.2, 1.5, 0.2, 2e-3), (-0.3, 0.5, 0.5, 1e-9), (3.0, -1.0, 1.0, 1e-9)],
    ids=["at-the-minimum", "off-minimum", "wide-box"],
)
def test_epsilon_sharpness_matches_a_brute_force_search(a: float, b: float, eps: float, rel: float) -> None:
    f0, top = _brute_force(a, b, eps)
    model = TanhRegression(a, b)
    for seed in range(3):
        sharpness, base, best = epsilon_sharpness(model, X, T, eps, steps=10, seed=seed, batch_size=16, loss_fn=_mse)
        assert base == pytest.approx(f0, rel=1e-12, abs=1e-15)
        assert best == pytest.approx(top, rel=rel) and best <= top * (1 + 1e-12)  # the grid holds the corners
        assert sharpness == pytest.approx(100.0 * (best - base) / (1.0 + base), rel=1e-12)
    assert (model.a.item(), model.b.item()) == (a, b)  # restored bit-exactly


def test_measures_run_in_eval_mode_and_leave_the_model_as_found() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3))
    net(torch.randn(8, 3, 8, 8))  # non-trivial running statistics
    net[5].weight.requires_grad_(False)
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 3, (12,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    first = measure_sharpness(net, x, y, hessian_iterations=3, eps_steps=2, batch_size=5)
    second = measure_sharpness(net, x, y, hessian_iterations=3, eps_steps=2, batch_size=5)
    assert first == second  # eval mode: BatchNorm running stats, no dropout -> deterministic
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert net.training and all(m.training for m in net) and not net[5].weight.requires_grad
    with torch.no_grad():
        want = F.cross_entropy(net.eval()(x), y).item()
    net.train()
    assert first.loss == pytest.approx(want, rel=1e-6) and dataset_loss(net, x, y, batch_size=7) == pytest.approx(want)
    assert first.settings == {"num_images": 12, "batch_size": 5, "hessian_iterations": 3, "hessian_tol": 1e-3,
                              "eps": 1e-3, "eps_steps": 2, "seed": 0, "loss": "cross_entropy"}
    assert first.max_loss >= first.loss and first.eps_sharpness >= 0.0


def test_bad_settings_raise_naming_the_yaml_field() -> None:
    with pytest.raises(CheckError, match=r"^sharpness.eps must be > 0, got 0$"):
        Sharpness(enable=True, eps=0)
    with pytest.raises(CheckError, match=r"^sharpness.weights must be one of best, last, got 'mid'$"):
        Sharpness(weights="mid")
    with pytest.raises(CheckError, match=r"^iterations must be an int >= 1, got 0$"):
        hessian_max_eigenvalue(nn.Linear(2, 1), torch.zeros(1, 2), torch.zeros(1), iterations=0)


# ------------------------------------------------------------------------------------------------ callback

SHARP_ARGS = ("--sharpness.enable", "true", "--sharpness.num_images", "16", "--sharpness.batch_size", "8",
              "--sharpness.hessian_iterations", "3", "--sharpness.eps_steps", "2", "--model.ema_decay", "0.9")


def _datamodule(root: Path) -> CIFARDataModule:
    data = CIFARDataModule(dataset="imagefolder", root=str(root), val_size=24, batch_size=16, loader="device")
    data.setup("fit")
    return data


def test_training_subset_is_stratified_and_never_validation(tiny_data: Path) -> None:
    data = _datamodule(tiny_data)
    x, y = training_subset(data, 16, seed=0)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=4).tolist() == [4, 4, 4, 4]
    val = torch.cat([batch[0] for batch in data.val_dataloader()])  # normalized, un-augmented
    assert not (x[:, None] == val[None]).flatten(2).all(2).any()
    everything, _ = training_subset(data, 10_000, seed=0)
    assert len(everything) == len(set(data.train_indices.tolist())) == 72


@pytest.mark.slow
def test_callback_logs_scalars_hparams_and_summary_of_the_best_checkpoint(tiny_data: Path, in_tmp_cwd: Path) -> None:
    metrics: dict[str, Any] = run_cli(tiny_args(tiny_data, in_tmp_cwd, *SHARP_ARGS, "--run_test", "false"))
    for name in ("sharpness/hessian_max_eig", "sharpness/eps_sharpness", "sharpness/loss"):
        assert name in metrics and metrics[name] == metrics[name]  # a number, not NaN
    assert metrics["sharpness/hessian_iterations"] == 3

    # the same numbers, measured here on the best checkpoint's EMA weights
    best = sorted((Path(metrics["log_dir"]) / "checkpoints").glob("best-*.ckpt"))[-1]
    model = CifarClassifier.load_from_checkpoint(str(best), map_location="cpu")
    x, y = training_subset(_datamodule(tiny_data), 16, seed=0)
    want = measure_sharpness(model.eval_model, x, y, hessian_iterations=3, eps_steps=2, batch_size=8)
    assert metrics["sharpness/hessian_max_eig"] == pytest.approx(want.hessian_max_eig, rel=1e-5)
    assert metrics["sharpness/eps_sharpness"] == pytest.approx(want.eps_sharpness, rel=1e-5)

    scalars, _ = read_tensorboard(metrics["log_dir"])
    step = metrics["global_step"]
    assert scalars["sharpness/hessian_max_eig"] == [(step, pytest.approx(metrics["sharpness/hessian_max_eig"]))]
    assert not [tag for tag in scalars if tag.startswith("hp/")]  # HPARAMS reads the sharpness tags themselves
    assert scalars["sharpness/eps_sharpness"] == [(step, pytest.approx(metrics["sharpness/eps_sharpness"]))]
