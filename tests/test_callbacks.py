"""models.callbacks: TensorBoard image grid, confusion matrices, hparams record, non-finite loss guard.

Runs real (tiny, CPU) Lightning fits with a LightningModule defined here that follows the project
conventions, then reads the event files back with TensorBoard's EventAccumulator.
"""

import io
import math
from argparse import Namespace
from dataclasses import dataclass

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from models.callbacks import (
    AugmentedImageGrid,
    ConfusionMatrixLogger,
    HparamsWithFinalMetrics,
    NonFiniteLossGuard,
    applicable_hparams,
    augmented_batch_figure,
    confusion_figure,
    denormalize_for_display,
    flatten_hparams,
    mix_labels,
    most_confused_markdown,
    most_confused_pairs,
    per_class_figure,
    readable_hparams,
)
from models.callbacks.images import grid_columns

CLASS_NAMES = ["cat", "dog", "ship", "frog"]
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
BATCH = 8
N_TRAIN, N_VAL, N_TEST = 32, 12, 10  # 4 optimizer steps per epoch
STEPS_PER_EPOCH = N_TRAIN // BATCH


def make_split(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent templates plus noise: x (n, 3, 8, 8) normalized-scale floats, y (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % num_classes
    x = templates[y] + 1.5 * torch.randn(n, 3, 8, 8, generator=g)
    return x, y


class TinyData(pl.LightningDataModule):
    """Fixed tiny splits with the conventional `class_names`, `mean`, `std` attributes."""

    def __init__(self, num_classes: int = 4, batch_size: int = BATCH):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = CLASS_NAMES if num_classes == 4 else [f"c{i}" for i in range(num_classes)]
        self.mean, self.std = MEAN, STD
        self.splits = {
            "train": make_split(N_TRAIN, num_classes, 1),
            "val": make_split(N_VAL, num_classes, 2),
            "test": make_split(N_TEST, num_classes, 3),
        }

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits[split]), batch_size=self.hparams.batch_size, shuffle=False)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


class TinyClassifier(pl.LightningModule):
    """Linear classifier on 3x8x8 images; its 'batch augmentation' is a horizontal flip."""

    def __init__(self, num_classes: int = 4, lr: float = 0.05, bad_loss_from_step: int | None = None,
                 bad_value: float = math.nan, handshake: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.head = nn.Linear(3 * 8 * 8, num_classes)
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.keep_augmented_batch = False
        self.last_augmented_batch = None
        self.kept_batches = 0

    def forward(self, x):
        return self.head(x.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.flip(-1)
        if self.keep_augmented_batch and self.hparams.handshake:
            self.last_augmented_batch = x.detach()
            self.kept_batches += 1
        loss = F.cross_entropy(self(x), y)
        if self.hparams.bad_loss_from_step is not None and self.global_step >= self.hparams.bad_loss_from_step:
            loss = loss * self.hparams.bad_value
        self.log("train/loss", loss)
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        getattr(self, f"{stage}_confmat").update(logits.argmax(1), y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y))
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def make_trainer(tmp_path, callbacks, logger=None, max_epochs=3, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=max_epochs, callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger is None else logger,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        default_root_dir=tmp_path, **kwargs,
    )


def read_events(log_dir: str) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(log_dir, size_guidance={ea.IMAGES: 0, ea.SCALARS: 0, ea.TENSORS: 0})
    return acc.Reload()


def grid_pixels(log_dir: str) -> np.ndarray:
    image = read_events(log_dir).Images("train/view/augmented_batch")[0]
    return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")).astype(np.float64)


def expected_grid(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (make_grid((x * std + mean).clamp(0, 1), nrow=3, padding=2) * 255).permute(1, 2, 0).numpy()


def hand_confusion(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Confusion counts (true row, predicted column) by an explicit loop over samples."""
    with torch.no_grad():
        preds = model(x).argmax(1)
    counts = torch.zeros(k, k, dtype=torch.long)
    for true, pred in zip(y.tolist(), preds.tolist()):
        counts[true, pred] += 1
    return counts


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """fit 3 epochs + test with all logging callbacks, TensorBoardLogger with its defaults."""
    tmp_path = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model, data = TinyClassifier(), TinyData()
    confusion = ConfusionMatrixLogger()
    callbacks = [AugmentedImageGrid(every_n_epochs=2, max_images=5), confusion, HparamsWithFinalMetrics(),
                 NonFiniteLossGuard(check_every_n_steps=2)]
    trainer = make_trainer(tmp_path, callbacks)
    trainer.fit(model, datamodule=data)
    test_result = trainer.test(model, datamodule=data, verbose=False)[0]
    return Namespace(model=model, data=data, trainer=trainer, confusion=confusion, test_result=test_result,
                     events=read_events(trainer.logger.log_dir))


def test_scalar_and_image_tags_are_logged(logged_run):
    tags = logged_run.events.Tags()
    for tag in ["train/loss", "val/acc", "val/loss", "test/acc", "val_best/acc", "val_best/epoch",
                "train/speed/fit_time_s"]:
        assert tag in tags["scalars"], tag
    assert {f"val_per_class/{name}" for name in CLASS_NAMES} <= set(tags["scalars"])
    assert not [tag for tag in tags["scalars"] if tag.startswith(("hp/", "test/class_acc", "val/class_acc"))]
    assert {"train/view/augmented_batch", "val/confusion_matrix", "val/per_class_acc", "test/confusion_matrix",
            "test/per_class_acc"} <= set(tags["images"])
    assert "hp_metric" not in tags["scalars"]  # Lightning's placeholder record was turned off
    assert len(logged_run.events.Scalars("train/loss")) == 3 * STEPS_PER_EPOCH


def test_confusion_figures_once_per_epoch_without_sanity_check(logged_run):
    events = logged_run.events
    assert [e.step for e in events.Images("val/confusion_matrix")] == [STEPS_PER_EPOCH * (i + 1) for i in range(3)]
    assert len(events.Images("test/confusion_matrix")) == 1
    image = events.Images("val/confusion_matrix")[0]
    assert image.width >= 400 and image.height >= 400


def test_confusion_counts_match_hand_computation(logged_run):
    model, data = logged_run.model, logged_run.data
    for stage, n in [("val", N_VAL), ("test", N_TEST)]:
        expected = hand_confusion(model, *data.splits[stage], k=4)
        got = logged_run.confusion.last_confusion[stage]
        assert torch.equal(got.long(), expected), stage
        assert int(got.sum()) == n  # reset each epoch, sanity-check batches excluded
        if stage == "test":
            continue  # one point per class: in the per-class figure only
        for i, name in enumerate(CLASS_NAMES):
            logged = logged_run.events.Scalars(f"val_per_class/{name}")[-1].value
            assert logged == pytest.approx(expected[i, i].item() / expected[i].sum().item(), abs=1e-6)
    assert logged_run.model.val_confmat.update_count == 0  # reset after the last epoch


def test_augmented_grid_shows_the_module_batch_unnormalized(logged_run):
    images = logged_run.events.Images("train/view/augmented_batch")
    assert [e.step for e in images] == [0, 2 * STEPS_PER_EPOCH]  # epochs 0 and 2 with every_n_epochs=2
    # 5 images of 8x8 on a 3-column grid, padding 2: 2 rows
    assert (images[0].width, images[0].height) == (3 * 10 + 2, 2 * 10 + 2)
    x_first = logged_run.data.splits["train"][0][:5]
    assert np.abs(grid_pixels(logged_run.trainer.logger.log_dir) - expected_grid(x_first.flip(-1))).max() <= 1.0
    assert logged_run.model.kept_batches == 2
    assert logged_run.model.keep_augmented_batch is False and logged_run.model.last_augmented_batch is None


@pytest.mark.parametrize("with_preview", [False, True])
def test_augmented_grid_falls_back_without_handshake(tmp_path, with_preview):
    model = TinyClassifier(handshake=False)
    if with_preview:
        model.augment_preview = lambda x, y: (-x, y)
    trainer = make_trainer(tmp_path, [AugmentedImageGrid(every_n_epochs=1, max_images=5)], max_epochs=1,
                           enable_checkpointing=False)
    trainer.fit(model, datamodule=TinyData())
    x_first = TinyData().splits["train"][0][:5]  # the loader's images, before the module's flip
    expected = expected_grid(-x_first if with_preview else x_first)
    assert np.abs(grid_pixels(trainer.logger.log_dir) - expected).max() <= 1.0


def test_hparams_record_has_flattened_params_and_final_metrics(logged_run):
    events = logged_run.events
    content = events.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HparamsWithFinalMetrics.METRICS)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.lr"].number_value == pytest.approx(0.05)
    assert start.hparams["model.bad_loss_from_step"].string_value == "off"  # an unset option
    assert start.hparams["data.batch_size"].number_value == BATCH
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags == {"val_best/acc", "val_best/epoch", "test/acc", "test/acc5", "test/loss",
                           "train/speed/fit_time_s"}
    assert metric_tags - {"test/acc5"} <= set(events.Tags()["scalars"])  # the module logs no acc5
    best = max(e.value for e in events.Scalars("val/acc"))
    assert events.Scalars("val_best/acc")[-1].value == pytest.approx(best)
    assert events.Scalars("test/acc")[-1].value == pytest.approx(logged_run.test_result["test/acc"])


@pytest.mark.parametrize("logger", [False, "csv"])
def test_callbacks_run_without_tensorboard(tmp_path, logger):
    model, data = TinyClassifier(), TinyData()
    confusion = ConfusionMatrixLogger()
    logger = CSVLogger(tmp_path) if logger == "csv" else False
    trainer = make_trainer(tmp_path, [AugmentedImageGrid(every_n_epochs=1), confusion, HparamsWithFinalMetrics()],
                           logger=logger, max_epochs=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    assert model.kept_batches == 0 and model.keep_augmented_batch is False
    assert int(confusion.last_confusion["val"].sum()) == N_VAL


def test_many_classes_skip_per_class_scalars_but_keep_figures(tmp_path):
    model, data = TinyClassifier(num_classes=30), TinyData(num_classes=30)
    trainer = make_trainer(tmp_path, [ConfusionMatrixLogger()], max_epochs=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    tags = read_events(trainer.logger.log_dir).Tags()
    assert not any(t.startswith("val_per_class/") for t in tags["scalars"])
    assert {"val/confusion_matrix", "val/per_class_acc"} <= set(tags["images"])


def test_confusion_figure_text_only_for_few_classes():
    from models.callbacks import confusion_figure as _confusion_figure

    small = _confusion_figure(torch.eye(4, dtype=torch.float64), CLASS_NAMES, "t")
    large = _confusion_figure(torch.eye(100, dtype=torch.float64), [str(i) for i in range(100)], "t")
    assert len(small.axes[0].texts) == 4  # one label per non-zero cell
    assert len(large.axes[0].texts) == 0


def _weights_finite(path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _nan_run(tmp_path, bad_from: int, every: int, bad_value: float = math.nan):
    torch.manual_seed(0)
    model = TinyClassifier(bad_loss_from_step=bad_from, bad_value=bad_value)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every,
                                 save_top_k=-1, save_on_exception=True)
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard(check_every_n_steps=every), checkpoint], max_epochs=4)
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, datamodule=TinyData())
    return model, trainer, checkpoint, str(info.value)


def test_nan_loss_raises_with_step_and_keeps_last_good_checkpoint(tmp_path):
    model, trainer, checkpoint, message = _nan_run(tmp_path, bad_from=5, every=1)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert message == (f"non-finite loss (nan) at global step 5, epoch 1, batch 1; "
                       f"the last good checkpoint is kept at {last}")
    assert trainer.should_stop
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5  # saved after step 4, the last finite one
    assert _weights_finite(last)
    assert all(_weights_finite(p) for p in (tmp_path / "ckpt").glob("*.ckpt"))  # no save on the exception
    reloaded = TinyClassifier.load_from_checkpoint(last)
    assert torch.isfinite(reloaded.head.weight).all()


def test_deferred_check_reports_the_exact_bad_step(tmp_path):
    model, trainer, checkpoint, message = _nan_run(tmp_path, bad_from=4, every=3, bad_value=math.inf)
    assert message.startswith("non-finite loss (inf) at global step 4, epoch 1, batch 0;")
    assert trainer.global_step == 6  # detected at the next check, two steps later
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    assert _weights_finite(last)


def test_hparams_record_is_written_at_fit_start_and_a_failed_fit_ends_it_as_failed(tmp_path):
    model = TinyClassifier(bad_loss_from_step=5)
    callbacks = [NonFiniteLossGuard(check_every_n_steps=1), HparamsWithFinalMetrics()]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, enable_checkpointing=False)
    with pytest.raises(FloatingPointError):
        trainer.fit(model, datamodule=TinyData())
    events = read_events(trainer.logger.log_dir)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.lr"].number_value == pytest.approx(0.05)
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_FAILURE
    assert [e.step for e in events.Scalars("val_best/acc")] == [STEPS_PER_EPOCH]  # epoch 0 finished, epoch 1 not


def test_nan_before_any_checkpoint_says_none_saved(tmp_path):
    model = TinyClassifier(bad_loss_from_step=0)
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard()], enable_checkpointing=False)
    with pytest.raises(FloatingPointError, match=r"global step 0, epoch 0, batch 0; .* none saved yet$"):
        trainer.fit(model, datamodule=TinyData())


@pytest.mark.parametrize("make, field", [
    (lambda: NonFiniteLossGuard(check_every_n_steps=0), "check_every_n_steps must be >= 1, got 0"),
    (lambda: AugmentedImageGrid(every_n_epochs=0), "every_n_epochs must be >= 1, got 0"),
    (lambda: AugmentedImageGrid(max_images=-2), "max_images must be >= 1, got -2"),
])
def test_invalid_arguments(make, field):
    with pytest.raises(ValueError, match=f"^{field}$"):
        make()


def test_denormalize_for_display_exact_values():
    x = torch.tensor([[-2.0, 0.0, 2.0]]).view(1, 1, 1, 3)
    assert denormalize_for_display(x, (0.5,), (0.25,)).flatten().tolist() == [0.0, 0.5, 1.0]
    pixels = denormalize_for_display(torch.tensor([[-1.0, 1.0]]).view(1, 1, 1, 2), (127.5,), (63.75,))
    assert pixels.flatten().tolist() == pytest.approx([0.25, 0.75])  # [0, 255]-unit mean/std
    assert denormalize_for_display(torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)).flatten(
    ).tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert denormalize_for_display(torch.tensor([-0.5, 1.5]).view(1, 1, 1, 2)).flatten().tolist() == [0.0, 1.0]


def test_flatten_hparams_keeps_simple_types():
    @dataclass
    class Mixup:
        alpha: float = 0.2
        per_sample: bool = True

    tree = {"backbone": "resnet18", "mixup": Mixup(), "opt": Namespace(lr=0.1, milestones=[30, 60]),
            "stop_epoch": None, "weights": torch.ones(3), "mean": (0.5, 0.4), "_instantiator": "cli"}
    assert flatten_hparams(tree, "model") == {
        "model.backbone": "resnet18", "model.mixup.alpha": 0.2, "model.mixup.per_sample": True,
        "model.opt.lr": 0.1, "model.opt.milestones": "[30, 60]", "model.stop_epoch": "off",
        "model.mean": "[0.5, 0.4]",
    }


def test_best_val_acc_survives_resume(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = HparamsWithFinalMetrics()
    make_trainer(tmp_path, [first, checkpoint], max_epochs=2).fit(TinyClassifier(), datamodule=TinyData())
    assert 0.0 <= first.best_val_acc <= 1.0
    resumed = HparamsWithFinalMetrics()
    resumed.best_val_acc = -1.0  # must be replaced by the checkpointed value (no epoch is left to run)
    trainer = make_trainer(tmp_path, [resumed], max_epochs=2, enable_checkpointing=False)
    trainer.fit(TinyClassifier(), datamodule=TinyData(), ckpt_path=checkpoint.last_model_path)
    assert resumed.best_val_acc == first.best_val_acc


# ----- labelled augmented batch, grid shape ----------------------------------------------------

def test_grid_columns_fill_the_grid_about_twice_as_wide_as_tall():
    assert [grid_columns(n) for n in (1, 2, 5, 8, 32)] == [1, 2, 3, 4, 8]  # 32 -> 8 x 4, 5 -> 3 x 2
    for n in range(1, 129):
        cols = grid_columns(n)
        rows = math.ceil(n / cols)
        assert (rows - 1) * cols < n <= rows * cols  # no empty row
        assert rows <= cols <= 2 * rows + 1


def test_mix_labels_name_own_class_and_partner_with_weights():
    from augment import smooth

    names = ["cat", "dog", "ship", "frog"]
    y = torch.tensor([0, 2, 1, 3])
    partner = torch.tensor([2, 2, 3, 1])  # the second sample is "mixed" with its own class
    lam = torch.tensor([0.62, 0.3, 1.0, 0.55], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    mixed = lam[:, None] * eye[y] + (1 - lam[:, None]) * eye[partner]
    for smoothing in (0.0, 0.1):
        targets = smooth(mixed, 4, smoothing)
        assert mix_labels(y, targets, names, smoothing) == [
            "cat 0.62 / ship 0.38", "ship", "dog", "frog 0.55 / dog 0.45"]
    assert mix_labels(y, y, names) == ["cat", "ship", "dog", "frog"]  # int targets: no mixing
    assert mix_labels(y, None, names) == ["cat", "ship", "dog", "frog"]


def test_augmented_batch_figure_places_upscaled_pairs_and_labels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from models.callbacks import images as img

    g = torch.Generator().manual_seed(0)
    inputs, augmented = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    labels = [f"c{i} 0.50 / c{i + 1} 0.50" for i in range(5)]
    fig = augmented_batch_figure(inputs, augmented, labels, columns=2, scale=3, title="t")
    tile, pair = 24, 2 * 24 + img.PAIR_GAP_PX
    width = 2 * img.MARGIN_PX + 2 * pair + img.CELL_GAP_PX
    height = img.MARGIN_PX + 3 * (tile + img.LABEL_PX) + 2 * img.CELL_GAP_PX
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    assert canvas.get_width_height() == (width, height + img.TITLE_PX)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == [label.replace(" / ", "\n") for label in labels]  # a line per class
    assert min(t.get_fontsize() for t in ax.texts) >= 8
    mosaic = np.asarray(ax.images[0].get_array())
    for i in range(5):
        r, c = divmod(i, 2)
        top = img.MARGIN_PX + r * (tile + img.LABEL_PX + img.CELL_GAP_PX)
        left = img.MARGIN_PX + c * (pair + img.CELL_GAP_PX)
        expected_in = np.kron(inputs[i].permute(1, 2, 0).numpy(), np.ones((3, 3, 1)))
        expected_out = np.kron(augmented[i].permute(1, 2, 0).numpy(), np.ones((3, 3, 1)))
        np.testing.assert_allclose(mosaic[top:top + tile, left:left + tile], expected_in, atol=1e-6)
        right = left + tile + img.PAIR_GAP_PX
        np.testing.assert_allclose(mosaic[top:top + tile, right:right + tile], expected_out, atol=1e-6)
    assert (mosaic[top + tile + 1:top + tile + img.LABEL_PX, left:left + pair] == 1.0).all()  # white label band
    with pytest.raises(ValueError, match="must match"):
        augmented_batch_figure(inputs, augmented[:4], labels)


def test_labelled_grid_is_logged_beside_the_pixel_grid(logged_run):
    images = logged_run.events.Images("train/view/augmented_batch_labelled")
    assert [e.step for e in images] == [e.step for e in logged_run.events.Images("train/view/augmented_batch")]
    expected = augmented_batch_figure(torch.zeros(5, 3, 8, 8), torch.zeros(5, 3, 8, 8), [""] * 5, title="t")
    width, height = (expected.get_size_inches() * expected.dpi).round().astype(int)
    assert (images[0].width, images[0].height) == (width, height)
    assert images[0].width >= 4 * 2 * 8 * 3  # 4 pairs per row, tiles upscaled 3 times


# ----- confusion figures, per-class accuracy, most-confused pairs ------------------------------

def _rows(counts: torch.Tensor) -> torch.Tensor:
    counts = counts.double()
    return counts / counts.sum(1, keepdim=True)


def test_confusion_figure_for_10_classes_has_names_and_cell_percentages():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm

    names = [f"class{i}" for i in range(10)]
    counts = torch.diag(torch.full((10,), 80)) + torch.roll(torch.diag(torch.full((10,), 20)), 1, dims=1)
    counts[3, 5] = 7
    fig = confusion_figure(_rows(counts), names, "val")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == len(ax.texts) == 21  # one per non-zero cell
    assert cells[(0, 0)] == "80" and cells[(0, 1)] == "20" and cells[(3, 5)] == "7" and cells[(3, 3)] == "75"
    assert isinstance(ax.images[0].norm, PowerNorm)  # square-root scale: small off-diagonal cells show
    canvas = FigureCanvasAgg(fig)
    width, height = canvas.get_width_height()
    assert 500 <= width <= 700 and 450 <= height <= 650  # fits TensorBoard's card without shrinking to mush


def test_confusion_figure_for_100_classes_has_names_and_a_log_scale_without_cell_text():
    from matplotlib.colors import LogNorm

    names = [f"n{i}" for i in range(100)]
    counts = torch.diag(torch.full((100,), 45)) + torch.roll(torch.eye(100, dtype=torch.long) * 5, 1, dims=1)
    counts[7, 90] = 1
    fig = confusion_figure(_rows(counts), names, "val")
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert isinstance(ax.images[0].norm, LogNorm) and ax.images[0].norm.vmin == pytest.approx(1e-3)
    shown = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert np.isnan(shown[0, 50]) and shown[7, 90] == pytest.approx(1 / 51)  # zero cells blank, one sample visible
    assert (fig.get_size_inches() * fig.dpi >= 1200).all()


def test_per_class_figure_sorts_worst_first_and_skips_absent_classes():
    accuracy = torch.tensor([0.9, 0.5, math.nan, 0.75], dtype=torch.float64)
    fig = per_class_figure(accuracy, CLASS_NAMES, "val")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dog", "frog", "cat"]
    assert [round(p.get_width(), 6) for p in ax.patches] == [0.5, 0.75, 0.9]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # first (worst) bar on top
    assert [t.get_text() for t in ax.texts] == ["50.0%", "75.0%", "90.0%"]


def test_most_confused_pairs_exact_order():
    counts = torch.tensor([[50, 3, 0, 1], [4, 40, 4, 0], [0, 0, 10, 3], [2, 0, 0, 9]])
    # counts first; equal counts by share of the true class (3 of 13 beats 3 of 54), then index
    assert most_confused_pairs(counts, top=5) == [
        (1, 0, 4, 4 / 48), (1, 2, 4, 4 / 48), (2, 3, 3, 3 / 13), (0, 1, 3, 3 / 54), (3, 0, 2, 2 / 11)]
    assert most_confused_pairs(torch.eye(3), top=5) == []
    table = most_confused_markdown(counts, CLASS_NAMES, top=2).splitlines()
    assert table[2:] == ["| dog | cat | 4 | 8.3% |", "| dog | ship | 4 | 8.3% |"]


def test_most_confused_text_is_logged_per_evaluation(logged_run):
    events = logged_run.events
    for stage, count in (("val", 3), ("test", 1)):
        texts = events.Tensors(f"{stage}/most_confused/text_summary")
        assert len(texts) == count
        expected = most_confused_markdown(logged_run.confusion.last_confusion[stage], CLASS_NAMES)
        assert texts[-1].tensor_proto.string_val[0].decode() == expected


# ----- HPARAMS: only what the chosen settings read ---------------------------------------------

_CHANGED = {"momentum": 0.5, "betas": (0.8, 0.99), "eps": 1e-6, "alpha": 0.9, "rho": 0.8}


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw"])
def test_optimizer_fields_table_matches_what_the_optimizer_reads(name):
    from models.callbacks.hparams import OPTIMIZER_FIELDS_FOR
    from models.optim import OptimizerConfig, build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    base = build_optimizer(params, OptimizerConfig(name=name)).defaults
    for field, value in _CHANGED.items():
        changed = build_optimizer(params, OptimizerConfig(name=name, **{field: value})).defaults
        assert (changed != base) == (name in OPTIMIZER_FIELDS_FOR[field]), (name, field)


_SCHEDULE_CHANGES = {"min_lr_ratio": 0.2, "step_size": 3, "milestones": [5], "gamma": 0.5, "pct_start": 0.5,
                     "start_ratio": 0.1, "anneal": "cosine", "warmup_epochs": 1.0}


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "multistep", "none"])
def test_scheduler_fields_table_matches_what_the_schedule_reads(name):
    from models.callbacks.hparams import SCHEDULER_FIELDS_FOR
    from models.optim import SchedulerConfig, lr_multiplier

    def curve(**changes):
        cfg = SchedulerConfig(name=name, **{"step_size": 2, "milestones": [3], **changes})
        return [lr_multiplier(step, cfg, 100, 10.0) for step in range(100)]

    base = curve()
    for field, value in _SCHEDULE_CHANGES.items():
        applies = name in SCHEDULER_FIELDS_FOR.get(field, (name,))  # not in the table: read by every schedule
        assert (curve(**{field: value}) != base) == applies, (name, field)


def test_applicable_hparams_drop_settings_the_run_never_reads():
    from models.optim import OptimizerConfig, SchedulerConfig

    model = {"backbone": "resnet18", "norm": "batch", "norm_groups": 32, "optimizer": OptimizerConfig(name="sgd"),
             "scheduler": SchedulerConfig(name="cosine"), "mixup": {"alpha": 0.0},
             "cutmix": {"alpha": 1.0, "correct_lam": True},
             "mixing": {"prob": 1.0, "switch_prob": 0.5, "per_sample": True, "stop_epoch": None},
             "cutout": {"n_holes": 0, "size": 16, "fill": 0.0, "p": 1.0},
             "input_noise": {"std": 0.0, "p": 1.0, "clamp": None}, "ema_decay": 0.0, "ema_warmup": True}
    data = {"dataset": "cifar10", "root": "/data", "download": False, "val_size": 5000, "num_folds": 0, "fold": 0,
            "batch_size": 512, "cutout_holes": 0, "cutout_size": 16, "channels_last": True}
    flat = {**flatten_hparams(model, "model"), **flatten_hparams(data, "data")}
    kept = applicable_hparams(flat)
    assert sorted(kept) == sorted([
        "model.backbone", "model.norm", "model.optimizer.name", "model.optimizer.lr", "model.optimizer.weight_decay",
        "model.optimizer.exclude_norm_and_bias", "model.optimizer.sam", "model.scheduler.name",
        "model.scheduler.warmup_epochs", "model.scheduler.min_lr_ratio", "model.mixup.alpha", "model.cutmix.alpha",
        "model.cutmix.correct_lam", "model.mixing.prob", "model.mixing.per_sample", "model.mixing.stop_epoch",
        "model.cutout.n_holes", "model.input_noise.std", "model.ema_decay", "data.dataset", "data.val_size",
        "data.num_folds", "data.batch_size", "data.cutout_holes"])
    assert all(kept[key] == flat[key] for key in kept)
    assert readable_hparams({"a": True, "b": False, "c": 1, "d": "x"}) == {"a": "true", "b": "false", "c": 1, "d": "x"}
