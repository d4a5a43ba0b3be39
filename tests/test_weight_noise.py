"""WeightNoise: gradient at the noisy point, exact update of the clean weights, filters, scaling."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.callbacks.weight_noise import WeightNoise, noise_params

LR = 0.1


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _loader(n: int = 16, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size)


class Recorder(pl.LightningModule):
    """Tiny classifier that records, per micro-batch, the batch and the weights it saw, and per step the grads."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.batches, self.seen, self.grads, self.at_step, self.val_seen = [], [], [], [], []

    def _state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters()}

    def training_step(self, batch, batch_idx):
        self.batches.append(batch)
        self.seen.append(self._state())
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def on_before_optimizer_step(self, optimizer):  # runs after the callbacks' hook
        self.grads.append({n: p.grad.clone() for n, p in self.named_parameters()})
        self.at_step.append(self._state())

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(self._state())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def _fit(module: pl.LightningModule, callback: WeightNoise, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[callback], **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=_loader())
    return trainer


def _replay_sgd(start: dict[str, torch.Tensor], grads: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Noise-free SGD from ``start`` with the given gradients, done by torch.optim.SGD itself."""
    params = {n: nn.Parameter(t.clone()) for n, t in start.items()}
    opt = torch.optim.SGD(params.values(), lr=LR)
    for step in grads:
        for n, p in params.items():
            p.grad = step[n].clone()
        opt.step()
    return {n: p.detach() for n, p in params.items()}


def test_fit_updates_clean_weights_with_gradient_from_noisy_point():
    module = Recorder()
    start = module._state()
    _fit(module, WeightNoise(std=0.05, seed=0), max_steps=3)
    assert len(module.grads) == 3
    final = module._state()
    replay = _replay_sgd(start, module.grads)
    for name in final:  # bit-exact: the step ran on the clean weights
        assert torch.equal(final[name], replay[name]), name
    clean_before_step = [start] + [_replay_sgd(start, module.grads[:k]) for k in (1, 2)]
    for k in range(3):
        seen, clean = module.seen[k], clean_before_step[k]
        for name in ("net.0.weight", "net.4.weight"):
            assert not torch.equal(seen[name], clean[name])  # forward ran at the noisy point
            assert torch.equal(module.at_step[k][name], clean[name])  # restored before the step
        for name in ("net.0.bias", "net.1.weight", "net.4.bias"):
            assert torch.equal(seen[name], clean[name])  # default filter: conv/linear weights only
    # the gradient is the noisy-point one, not the clean-point one
    clean_net = _net()
    clean_net.load_state_dict({n.removeprefix("net."): t for n, t in start.items()}, strict=False)
    x, y = module.batches[0]
    F.cross_entropy(clean_net(x), y).backward()
    assert not torch.allclose(clean_net[0].weight.grad, module.grads[0]["net.0.weight"])


def test_gradient_accumulation_uses_one_noise_sample_per_step():
    module = Recorder()
    start = module._state()
    _fit(module, WeightNoise(std=0.05, seed=0), max_steps=2, accumulate_grad_batches=2)
    assert len(module.seen) == 4 and len(module.grads) == 2
    for first, second in ((0, 1), (2, 3)):  # same noisy weights within a step: no pile-up
        assert torch.equal(module.seen[first]["net.0.weight"], module.seen[second]["net.0.weight"])
    noise = module.seen[0]["net.4.weight"] - start["net.4.weight"]
    assert 0.035 < noise.std().item() < 0.065  # one draw of std 0.05, not an accumulated sum
    final, replay = module._state(), _replay_sgd(start, module.grads)
    assert all(torch.equal(final[n], replay[n]) for n in final)


def test_validation_sees_clean_weights_and_eval_output_is_unchanged():
    module = Recorder()
    callback = WeightNoise(std=0.1, seed=0)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], max_epochs=1, num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(8))
    final = module._state()
    assert module.val_seen and all(torch.equal(v[n], final[n]) for v in module.val_seen for n in final)
    assert not callback.is_noisy
    x = torch.randn(3, 2, 6, 6)
    module.eval()
    expected = module.net(x)
    trainer.validate(module, dataloaders=_loader(8), verbose=False)
    assert torch.equal(module.net(x), expected)


def test_restore_is_bit_exact_and_noise_does_not_pile_up():
    net = _net()
    clean = {n: p.detach().clone() for n, p in net.named_parameters()}
    callback = WeightNoise(std=0.3, seed=0)
    callback.add_noise(net)
    noisy = net[0].weight.detach().clone()
    callback.add_noise(net)  # already noisy: nothing added
    assert torch.equal(net[0].weight, noisy) and callback.is_noisy
    callback.restore()
    assert all(torch.equal(p, clean[n]) for n, p in net.named_parameters())
    callback.restore()  # restoring twice is a no-op
    assert all(torch.equal(p, clean[n]) for n, p in net.named_parameters())


@pytest.mark.parametrize("hook", ["on_validation_start", "on_train_epoch_end", "on_train_end", "on_exception"])
def test_safety_hooks_restore_clean_weights(hook):
    net = _net()
    clean = net[4].weight.detach().clone()
    callback = WeightNoise(std=0.3, seed=0)
    callback.on_train_batch_start(None, net, None, 0)
    assert not torch.equal(net[4].weight, clean)
    args = (None, net, RuntimeError("boom")) if hook == "on_exception" else (None, net)
    getattr(callback, hook)(*args)
    assert torch.equal(net[4].weight, clean) and not callback.is_noisy


def test_checkpoint_taken_while_noisy_holds_clean_weights():
    net = _net()
    clean = net[0].weight.detach().clone()
    callback = WeightNoise(std=0.3, seed=0)
    callback.add_noise(net)
    checkpoint = {"state_dict": net.state_dict()}
    callback.on_save_checkpoint(None, net, checkpoint)
    assert torch.equal(checkpoint["state_dict"]["0.weight"], clean)
    assert not torch.equal(net[0].weight, clean)  # the running step keeps its noisy weights


def test_relative_std_scales_with_tensor_rms():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 300))
    with torch.no_grad():
        net[0].weight.normal_(0, 1.0)
        net[1].weight.normal_(0, 10.0)
    clean = [net[0].weight.detach().clone(), net[1].weight.detach().clone()]
    rms = [c.square().mean().sqrt().item() for c in clean]
    for relative, expected in ((True, [0.01 * r for r in rms]), (False, [0.01, 0.01])):
        callback = WeightNoise(std=0.01, relative=relative, seed=1)
        callback.add_noise(net)
        measured = [(net[i].weight - clean[i]).std().item() for i in range(2)]
        callback.restore()
        assert measured == pytest.approx(expected, rel=0.03)


def test_filter_selects_exactly_conv_and_linear_weights():
    net = nn.ModuleDict({
        "conv": nn.Conv2d(3, 4, 3), "conv1d": nn.Conv1d(3, 4, 1), "deconv": nn.ConvTranspose2d(4, 2, 2),
        "bn": nn.BatchNorm2d(4), "ln": nn.LayerNorm(4), "emb": nn.Embedding(5, 4),
        "fc": nn.Linear(4, 2), "frozen": nn.Linear(2, 2),
    })
    net["frozen"].requires_grad_(False)
    names = [n for n, _ in noise_params(net, "conv_linear")]
    assert names == ["conv.weight", "conv1d.weight", "deconv.weight", "fc.weight"]
    every = [n for n, _ in noise_params(net, "all")]
    assert every == [n for n, p in net.named_parameters() if p.requires_grad] and "emb.weight" in every
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    callback = WeightNoise(std=0.1, seed=0)
    callback.add_noise(net)
    changed = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert changed == names


def test_seeded_noise_is_reproducible_and_zero_std_is_noop():
    a, b = _net(), _net()
    WeightNoise(std=0.1, seed=7).add_noise(a)
    WeightNoise(std=0.1, seed=7).add_noise(b)
    assert torch.equal(a[0].weight, b[0].weight)
    net = _net()
    before = net[0].weight.detach().clone()
    callback = WeightNoise(std=0.0)
    callback.add_noise(net)
    assert torch.equal(net[0].weight, before) and not callback.is_noisy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"std": -0.1}, r"weight_noise\.std must be a finite number >= 0, got -0\.1"),
        ({"std": float("nan")}, r"weight_noise\.std must be a finite number >= 0, got nan"),
        (
            {"std": 0.1, "param_filter": "bias"},
            r"weight_noise\.param_filter must be one of conv_linear, all, got 'bias'",
        ),
    ],
)
def test_invalid_arguments_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightNoise(**kwargs)
