"""CifarClassifier (models/classifier.py): loss paths, metrics, EMA, TTA, mixing stop, short CPU fits
with each regularizer, checkpoints and exact resume. Tiny data: 64 images 16x16, 8 classes, timm's
`test_resnet` (0.37 M parameters)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from augment.losses import soft_target_cross_entropy
from augment.pipeline import CutoutConfig, MixupConfig
from augment.targets import one_hot, smooth
from models.callbacks.weight_noise import WeightNoise
from models.classifier import CifarClassifier, flip_tta_log_probs
from models.optim import OptimizerConfig, SchedulerConfig

K = 8  # classes
SIZE = 16  # image side
BACKBONE = "test_resnet"

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*self.trainer.*reference is not registered.*"),  # unit steps, no Trainer
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`.*"),
]


def tiny_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    """Class prototypes plus noise: learnable in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(K, 3, SIZE, SIZE, generator=gen)
    y = torch.arange(n) % K
    x = prototypes[y] + 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return TensorDataset(x, y)


def loader(batch_size: int = 32, shuffle: bool = False, n: int = 64) -> DataLoader:
    return DataLoader(tiny_dataset(n), batch_size=batch_size, shuffle=shuffle)


def make_model(**kwargs) -> CifarClassifier:
    defaults = dict(
        backbone=BACKBONE,
        num_classes=K,
        optimizer=OptimizerConfig(name="nesterov", lr=0.05, weight_decay=5e-4),
        scheduler=SchedulerConfig(name="none"),
    )
    defaults.update(kwargs)
    return CifarClassifier(**defaults)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class LossRecorder(pl.Callback):
    """Keeps every training loss as a float (a host sync per step: fine in a test)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# ----- loss paths -----------------------------------------------------------------------------


def test_soft_and_int_targets_give_the_same_loss_for_one_hot():
    model = make_model()
    logits = torch.randn(6, K, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 7, 7])
    int_loss = model.loss(logits, y)
    assert torch.allclose(model.loss(logits, one_hot(y, K)), int_loss, atol=1e-6)
    assert torch.allclose(int_loss, F.cross_entropy(logits, y), atol=1e-6)


def test_label_smoothing_on_int_labels_matches_smoothed_soft_targets():
    model = make_model(label_smoothing=0.2)
    logits = torch.randn(5, K, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([4, 0, 3, 3, 1])
    expected = soft_target_cross_entropy(logits, smooth(y, K, 0.2))
    assert torch.allclose(model.loss(logits, y), expected, atol=1e-6)
    # soft targets are taken as they are: no second smoothing
    assert torch.allclose(model.loss(logits, smooth(y, K, 0.2)), expected, atol=1e-6)


def test_training_step_mixes_with_smoothing_inside_and_scores_original_labels():
    torch.manual_seed(0)
    model = make_model(mixup=MixupConfig(alpha=1.0), label_smoothing=0.1)
    x, y = tiny_dataset(16)[:]
    augment = model.batch_augment()
    state = model._augment_generator.get_state()
    loss = model.training_step((x, y), 0)

    model._augment_generator.set_state(state)
    x_mixed, targets = augment(x, y)
    assert targets.shape == (16, K) and torch.allclose(targets.sum(1), torch.ones(16))
    assert targets.min() >= 0.1 / K - 1e-6  # smoothing is inside the mixed targets
    logits = model.backbone(x_mixed)
    assert torch.allclose(loss, soft_target_cross_entropy(logits, targets), atol=1e-5)
    expected_acc = (logits.argmax(1) == y).float().mean()
    assert torch.allclose(model.train_metrics["acc"].compute(), expected_acc)
    assert model.train_metrics["acc5"].top_k == 5


# ----- evaluation: EMA weights and flip TTA -----------------------------------------------------


class HalfSensitive(nn.Module):
    """Logits from the left half of the image only, so a horizontal flip changes them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * (SIZE // 2), K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[..., : SIZE // 2].flatten(1))


def test_flip_tta_averages_probabilities():
    torch.manual_seed(0)
    net = HalfSensitive()
    x = torch.randn(4, 3, SIZE, SIZE)
    expected = (F.softmax(net(x), 1) + F.softmax(net(x.flip(3)), 1)) / 2
    got = flip_tta_log_probs(net, x).exp()
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, F.softmax(net(x), 1), atol=1e-3)


def test_eval_uses_ema_weights_and_tta():
    torch.manual_seed(0)
    model = make_model(ema_decay=0.9, tta_flip=True).eval()
    with torch.no_grad():
        for p in model.ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = tiny_dataset(8)[:]
    with torch.no_grad():
        expected = flip_tta_log_probs(model.ema.module, x)
        assert torch.allclose(model.eval_log_probs(x), expected, atol=1e-6)
        assert not torch.allclose(model.eval_log_probs(x), flip_tta_log_probs(model.backbone, x), atol=1e-4)
        model.validation_step((x, y), 0)
    assert torch.allclose(model.val_loss.compute(), F.nll_loss(expected, y), atol=1e-6)
    assert torch.equal(model.val_confmat.compute().sum(), torch.tensor(8))
    assert model.eval_model is model.ema.module
    assert make_model().eval_model is not None and make_model().ema is None


def test_ema_is_frozen_and_outside_the_optimizer():
    model = make_model(ema_decay=0.99)
    fit_trainer = trainer(max_steps=1)
    fit_trainer.fit(model, loader())
    ema_ids = {id(p) for p in model.ema.parameters()}
    optimized = {id(p) for group in fit_trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.backbone.parameters()}
    assert not ema_ids & optimized
    assert not any(p.requires_grad for p in model.ema.parameters())


class EmaChecker(pl.Callback):
    """Before the module's own on_train_batch_end, predicts the EMA it must hold after the update."""

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        self.expected: torch.Tensor | None = None
        self.checked = 0
        self.last_step = 0

    def expected_decay(self, step: int) -> float:
        t = step - 1  # ModelEmaV3: the first update copies, warmup counts from there
        if t <= 0:
            return 0.0
        return min(self.decay, 1 - (1 + t) ** (-2 / 3)) if self.warmup else self.decay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ema = pl_module.ema.module.fc.weight
        if self.expected is not None:  # the previous prediction must hold now
            assert torch.allclose(ema, self.expected, atol=1e-6)
            self.checked += 1
        if trainer.global_step == self.last_step:  # accumulation micro-batch: no optimizer step, no update
            self.expected = ema.detach().clone()
            return
        self.last_step = trainer.global_step
        d = self.expected_decay(trainer.global_step)
        self.expected = d * ema.detach() + (1 - d) * pl_module.backbone.fc.weight.detach()


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_math_once_per_optimizer_step(warmup):
    torch.manual_seed(0)
    model = make_model(ema_decay=0.5, ema_warmup=warmup)
    checker = EmaChecker(0.5, warmup)
    trainer(max_steps=3, accumulate_grad_batches=2, callbacks=[checker]).fit(model, loader(batch_size=16))
    assert checker.checked == 5  # 6 micro-batches, each checked against the previous prediction
    assert torch.allclose(model.ema.module.fc.weight, checker.expected, atol=1e-6)


# ----- mixing stop and the augmented-batch handshake -------------------------------------------


class TargetRecorder(pl.Callback):
    """Records per step: epoch, whether the loss saw mixed targets (soft rows that are not one-hot), the
    augmented inputs. Every target the loss sees is soft (B, K)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, bool, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.keep_augmented_batch = True
        original = pl_module.loss

        def spy(logits, targets):
            assert targets.is_floating_point() and targets.shape == logits.shape
            mixed = bool((targets.max(1).values < 1).any())
            self.rows.append((trainer.current_epoch, mixed, pl_module.last_augmented_batch))
            return original(logits, targets)

        pl_module.loss = spy

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        del pl_module.loss  # back to the class method


def test_mixing_stops_at_stop_epoch_while_cutout_stays():
    torch.manual_seed(0)
    model = make_model(
        mixup={"alpha": 1.0},
        mixing={"stop_epoch": 1},
        cutout=CutoutConfig(n_holes=1, size=6, fill=0.0),
        channels_last=True,
    )
    recorder = TargetRecorder()
    trainer(max_epochs=2, callbacks=[recorder]).fit(model, loader())
    assert [(epoch, soft) for epoch, soft, _ in recorder.rows] == [(0, True), (0, True), (1, False), (1, False)]
    for _, _, x in recorder.rows[2:]:
        assert (x == 0).flatten(1).any(1).all()  # every image has a hole (noise data has no exact zeros)
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_generator_follows_the_global_seed():
    x, y = tiny_dataset(8)[:]

    def mixed(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = make_model(mixup={"alpha": 1.0}, mixing={"per_sample": True})
        return model.batch_augment()(x, y)[0]

    assert torch.equal(mixed(3), mixed(3))
    assert not torch.equal(mixed(3), mixed(4))


# ----- short fits: the loss falls with each regularizer ----------------------------------------

REGULARIZERS = {
    "plain": {},
    "mixup": {"mixup": {"alpha": 0.2}},
    "cutmix": {"cutmix": {"alpha": 1.0}},
    "switch_per_sample": {"mixup": {"alpha": 0.2}, "cutmix": {"alpha": 1.0}, "mixing": {"per_sample": True}},
    "cutout": {"cutout": {"n_holes": 1, "size": 6}},
    "input_noise": {"input_noise": {"std": 0.1}},
    "label_smoothing": {"label_smoothing": 0.1},
    "dropout_droppath": {"drop_rate": 0.2, "drop_path_rate": 0.1},
    "weight_noise": {},
    # per-sample norms learn slower with SGD at this size (2x2 maps in the last stage): AdamW
    "group_norm": {"norm": "group", "norm_groups": 8, "optimizer": OptimizerConfig(name="adamw", lr=0.01)},
    "layer_norm": {"norm": "layer", "optimizer": OptimizerConfig(name="adamw", lr=0.01)},
    "instance_norm": {"norm": "instance", "optimizer": OptimizerConfig(name="adamw", lr=0.01)},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_fit_loss_decreases_with_each_regularizer(name):
    pl.seed_everything(0, verbose=False)
    model = make_model(**REGULARIZERS[name])
    recorder = LossRecorder()
    callbacks = [recorder] + ([WeightNoise(std=0.01, seed=0)] if name == "weight_noise" else [])
    trainer(max_steps=24, callbacks=callbacks).fit(model, loader(shuffle=True))
    first, last = sum(recorder.losses[:4]) / 4, sum(recorder.losses[-4:]) / 4
    assert len(recorder.losses) == 24 and all(math.isfinite(v) for v in recorder.losses)
    assert last < 0.75 * first, (name, first, last)


@pytest.mark.slow
def test_metrics_logged_for_train_val_test():
    pl.seed_everything(0, verbose=False)
    model = make_model(ema_decay=0.9)
    fit_trainer = trainer(max_epochs=1, limit_val_batches=None)
    fit_trainer.fit(model, loader(), loader())
    logged = set(fit_trainer.callback_metrics)
    expected = {f"{stage}/{name}" for stage in ("train", "val") for name in ("loss", "acc", "acc5", "bal_acc")}
    assert expected <= logged
    (test,) = fit_trainer.test(model, loader(), verbose=False)
    assert set(test) == {"test/loss", "test/acc", "test/acc5", "test/bal_acc"}
    assert 0.0 <= test["test/bal_acc"] <= 1.0
    assert 0.0 <= test["test/acc"] <= test["test/acc5"] <= 1.0
    assert torch.equal(model.test_confmat.compute().sum(), torch.tensor(64))


# ----- checkpoints --------------------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_round_trip(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = make_model(ema_decay=0.9, mixup=MixupConfig(alpha=0.2), scheduler={"name": "cosine"})
    fit_trainer = trainer(max_steps=2)
    fit_trainer.fit(model, loader())
    path = tmp_path / "model.ckpt"
    fit_trainer.save_checkpoint(path)

    raw = torch.load(path, weights_only=True)  # only plain data: no pickled classes
    assert raw["hyper_parameters"]["mixup"] == {"alpha": 0.2}
    loaded = CifarClassifier.load_from_checkpoint(path)
    assert loaded.batch_augment_config["mixup"] == MixupConfig(alpha=0.2)
    assert loaded.scheduler_config == SchedulerConfig(name="cosine")
    x, _ = tiny_dataset(8)[:]
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.eval_log_probs(x), loaded.eval_log_probs(x))


def _final_state(model: CifarClassifier, fit_trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = fit_trainer.optimizers[0].state_dict()["state"]
    state.update({f"momentum_{i}": s["momentum_buffer"].clone() for i, s in opt_state.items()})
    state["lr"] = torch.tensor(fit_trainer.optimizers[0].param_groups[0]["lr"])
    return state


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    def new_model() -> CifarClassifier:
        return make_model(
            ema_decay=0.9,
            mixup={"alpha": 1.0},
            mixing={"per_sample": True},
            cutout={"n_holes": 1, "size": 4, "p": 0.5},
            scheduler={"name": "onecycle", "pct_start": 0.3},
        )

    pl.seed_everything(0, verbose=False)
    straight = new_model()
    straight_trainer = trainer(max_epochs=3)
    straight_trainer.fit(straight, loader())

    pl.seed_everything(0, verbose=False)
    first = new_model()
    first_trainer = trainer(max_epochs=3, callbacks=[StopAfterFirstEpoch()])  # same schedule, stops early
    first_trainer.fit(first, loader())
    path = tmp_path / "half.ckpt"
    first_trainer.save_checkpoint(path)

    pl.seed_everything(123, verbose=False)  # a different process seed: the checkpoint must carry all state
    resumed = new_model()
    resumed_trainer = trainer(max_epochs=3)
    resumed_trainer.fit(resumed, loader(), ckpt_path=path)

    expected, got = _final_state(straight, straight_trainer), _final_state(resumed, resumed_trainer)
    assert resumed_trainer.global_step == straight_trainer.global_step == 6
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), got[key].float(), atol=1e-6), key


# ----- construction, config parsing and errors -------------------------------------------------


def test_dicts_become_dataclasses_and_hparams_stay_plain():
    model = make_model(mixup={"alpha": 0.3}, optimizer={"name": "adamw", "lr": 1e-3})
    assert model.optimizer_config == OptimizerConfig(name="adamw", lr=1e-3)
    assert model.hparams["mixup"] == {"alpha": 0.3}
    assert model.hparams["optimizer"]["name"] == "adamw"


@pytest.mark.slow
def test_channels_last_and_compile_flags():
    model = make_model(channels_last=True)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    compiled = make_model(compile=True)
    assert compiled.state_dict().keys() == make_model().state_dict().keys()


def test_lightning_cli_parser_exposes_nested_fields():
    from pytorch_lightning.cli import LightningArgumentParser

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(CifarClassifier, "model")
    args = [
        f"--model.backbone={BACKBONE}",
        f"--model.num_classes={K}",
        "--model.mixup.alpha=0.2",
        "--model.mixing.stop_epoch=5",
        "--model.optimizer.name=adamw",
        "--model.scheduler.milestones=[2, 4]",
    ]
    config = parser.parse_args(args)
    model = parser.instantiate_classes(config).model
    assert isinstance(model, CifarClassifier)
    assert model.batch_augment_config["mixup"].alpha == 0.2
    assert model.batch_augment_config["mixing"].stop_epoch == 5
    assert model.optimizer_config.name == "adamw"
    assert model.scheduler_config.milestones == [2, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_smoothing": 1.0}, r"^model\.label_smoothing must be in \[0, 1\), got 1\.0$"),
        ({"ema_decay": -0.1}, r"^model\.ema_decay must be in \[0, 1\), got -0\.1$"),
        ({"num_classes": 1}, r"^model\.num_classes must be an int >= 2, got 1$"),
        (
            {"backbone": "resnet19"},
            r"^model\.backbone must be a timm model name, got 'resnet19'; close names: .*resnet18",
        ),
        (
            {"mixup": {"beta": 1.0}},
            r"^model\.mixup keys must be among \['alpha'\], got unknown key model\.mixup\.beta$",
        ),
        ({"mixup": {"alpha": -1.0}}, r"^model\.mixup\.alpha must be >= 0"),
        ({"optimizer": {"name": "lion"}}, r"^model\.optimizer\.name must be one of"),
        ({"tta_flip": "yes"}, r"^model\.tta_flip must be true or false"),
        ({"norm": "weird"}, r"^model\.norm must be one of"),
    ],
)
def test_user_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)
