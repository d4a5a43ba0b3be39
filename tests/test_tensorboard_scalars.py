"""Tags of a tiny run: one step axis, per-step loss and learning rate, speed, hparams, progress lines, and the
documented tag list (docs/tensorboard.md) equal to what the event file holds.

One 3-epoch CPU fit + test (4 optimizer steps per epoch, `log_every_n_steps=2`) with every TensorBoard
callback, read back with TensorBoard's EventAccumulator.
"""

import contextlib
import io
import math
import re
import time
import warnings
from argparse import Namespace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from test_callbacks import CLASS_NAMES, STEPS_PER_EPOCH, TinyClassifier, TinyData, read_events

from models.callbacks import (
    AugmentedImageGrid,
    ConfusionMatrixLogger,
    FitProgress,
    HparamsWithFinalMetrics,
    LearningRateLogger,
    StepAxis,
    TrainingSpeedMonitor,
    TrainValLayout,
    collapse_shared_lr,
    cuda_peak_memory_gib,
    format_duration,
)
from models.callbacks.hparams import METRICS, PRIMARY_HPARAMS
from models.callbacks.scalars import lr_tag
from models.callbacks.speed import batch_size_of

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tensorboard.md"

EPOCHS, LOG_EVERY, LR0 = 3, 2, 0.1
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
LOG_STEPS = [i for i in range(TOTAL_STEPS) if (i + 1) % LOG_EVERY == 0]  # batches whose on_step values are written
EPOCH_END_STEPS = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]


def top2(logits, y):
    return (logits.topk(2, dim=1).indices == y[:, None]).any(1).float().mean()


def balanced(logits, y):
    """Mean recall of the classes present in ``y``."""
    hit = (logits.argmax(1) == y).float()
    classes = y.unique()
    return torch.stack([hit[y == c].mean() for c in classes]).mean()


class ScheduledClassifier(TinyClassifier):
    """Two parameter groups sharing lr = LR0 * (1 - step / 12), stepped every batch; epoch-level train/acc.

    `optimizer`: a record of the optimizer settings in the project's shape (only logged as hyperparameters).
    """

    def __init__(self, optimizer: dict | None = None, **kwargs):
        super().__init__(**kwargs)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        x, y = batch
        logits = self(x.flip(-1))
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)  # as the project's module
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        self.log("train/acc5", top2(logits, y), on_step=False, on_epoch=True)
        self.log("train/bal_acc", balanced(logits, y), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/acc5", top2(self(batch[0]), batch[1]))
        self.log("val/bal_acc", balanced(self(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        super().test_step(batch, batch_idx)
        self.log("test/acc5", top2(self(batch[0]), batch[1]))
        self.log("test/bal_acc", balanced(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        groups = [{"params": [self.head.weight], "name": "decay", "weight_decay": 1e-4},
                  {"params": [self.head.bias], "name": "no_decay", "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=LR0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / TOTAL_STEPS)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("scalars")
    pl.seed_everything(7)
    speed, progress, hparams = TrainingSpeedMonitor(), FitProgress(every_n_epochs=0, probe_steps=2,
                                                                   cpu_warn_after_s=1e-9), HparamsWithFinalMetrics()
    callbacks = [StepAxis(), LearningRateLogger(logging_interval="step"), speed, TrainValLayout(), hparams, progress,
                 ConfusionMatrixLogger(), AugmentedImageGrid(every_n_epochs=2, max_images=4)]
    trainer = pl.Trainer(accelerator="cpu", max_epochs=EPOCHS, callbacks=callbacks, log_every_n_steps=LOG_EVERY,
                         logger=TensorBoardLogger(tmp_path, name="tb"), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    model, data = ScheduledClassifier(optimizer={"name": "sgd", "lr": LR0, "betas": [0.9, 0.999]}), TinyData()
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_wall = time.perf_counter() - start
        test_result = trainer.test(model, datamodule=data, verbose=False)[0]
    events = read_events(trainer.logger.log_dir)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return Namespace(trainer=trainer, events=events, scalars=scalars, speed=speed, progress=progress, hparams=hparams,
                     stdout=out.getvalue(), warnings=[str(w.message) for w in caught], fit_wall=fit_wall,
                     test_result=test_result)


def steps(run, tag):
    return [step for step, _ in run.scalars[tag]]


def test_per_step_loss_and_one_learning_rate_curve_from_step_0(run):
    assert steps(run, "train/loss") == steps(run, "train/loss_step") == LOG_STEPS
    assert not [tag for tag in run.scalars if tag.startswith(("lr-", "train/lr/"))]  # the groups share the rate
    lr = run.scalars["train/lr"]
    assert [step for step, _ in lr] == [0, *LOG_STEPS]  # the starting rate, then every log_every_n_steps
    for step, value in lr:  # the rate the batch at that step trains with
        assert value == pytest.approx(LR0 * (1 - step / TOTAL_STEPS), rel=1e-6)


def test_epoch_level_tags_share_the_global_step_and_no_epoch_or_hp_copies(run):
    for tag in ("train/acc", "val/acc", "val/loss", "train/speed/epoch_time_s", "train/speed/epoch_images_per_s",
                "train/speed/val_time_s", "val_best/acc", "val_best/epoch", "val_per_class/cat"):
        assert steps(run, tag) == EPOCH_END_STEPS, tag  # Lightning alone writes train/val at 3, 7, 11
    for tag in ("test/acc", "test/acc5", "train/speed/fit_time_s"):
        assert steps(run, tag) == [TOTAL_STEPS], tag
    assert "epoch" not in run.scalars  # neither Lightning's per-step points nor the epoch ends
    assert not [tag for tag in run.scalars if tag.startswith(("hp/", "hp_metric", "test/class_acc", "val/class_acc"))]


def test_lr_tags_for_groups_with_their_own_rates():
    assert lr_tag("lr-SGD") == "train/lr"
    assert lr_tag("lr-SGD/no_decay") == "train/lr/no_decay"
    assert lr_tag("lr-SGD-momentum") == "train/momentum"
    assert lr_tag("lr-AdamW/decay-weight_decay") == "train/weight_decay/decay"


def test_speed_scalars(run):
    assert steps(run, "train/speed/images_per_s") == LOG_STEPS
    assert all(v > 0 for _, v in run.scalars["train/speed/images_per_s"])
    assert "train/speed/cuda_peak_memory_gib" not in run.scalars  # CPU run
    epoch_time = [v for _, v in run.scalars["train/speed/epoch_time_s"]]
    val_time = [v for _, v in run.scalars["train/speed/val_time_s"]]
    rate = [v for _, v in run.scalars["train/speed/epoch_images_per_s"]]
    for total, val, images_per_s in zip(epoch_time, val_time, rate):
        assert 0 < val < total
        assert images_per_s == pytest.approx(32 / (total - val), rel=1e-3)  # 32 training images per epoch
    assert sum(epoch_time) <= run.fit_wall
    assert run.speed.train_images == EPOCHS * 32
    assert run.speed.images_per_s == pytest.approx(run.speed.train_images / run.speed.train_seconds)


def test_hparams_record_has_run_settings_readable_booleans_and_the_runs_own_metric_tags(run):
    content = run.events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert re.fullmatch(r"version_0 tb \d\d-\d\d \d\d:\d\d:\d\d", start.group_name), start.group_name  # the trial id
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS and end.end_time_secs >= start.start_time_secs > 0
    assert start.hparams["seed"].number_value == 7
    assert start.hparams["trainer.max_epochs"].number_value == EPOCHS
    assert start.hparams["trainer.precision"].string_value == "32-true"
    assert start.hparams["trainer.world_size"].number_value == 1
    assert start.hparams["model.handshake"].string_value == "true"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    assert metric_tags == list(METRICS) == ["val_best/acc", "test/acc", "test/acc5", "test/loss",
                                            "train/speed/fit_time_s", "val_best/epoch"]
    assert set(metric_tags) <= set(run.scalars)  # every metric is a scalar of the run, none a copy
    assert start.hparams["model.optimizer.name"].string_value == "sgd"
    assert "model.optimizer.betas" not in start.hparams  # SGD does not read betas...
    columns = {info.name for info in experiment.hparam_infos}
    assert "model.optimizer.betas" in columns and set(start.hparams) <= columns  # ...an Adam run's column stays
    first = {info.name for info in experiment.hparam_infos if info.differs}  # listed first, ticked
    assert first == set(PRIMARY_HPARAMS) & columns == {"data.batch_size", "model.optimizer.lr", "model.optimizer.name"}
    val_acc = [v for _, v in run.scalars["val/acc"]]
    assert [v for _, v in run.scalars["val_best/acc"]] == [max(val_acc[:i + 1]) for i in range(EPOCHS)]
    assert run.scalars["val_best/epoch"][-1][1] == val_acc.index(max(val_acc))
    assert 0 < run.scalars["train/speed/fit_time_s"][-1][1] <= run.fit_wall
    assert run.scalars["test/acc5"][-1][1] == pytest.approx(run.test_result["test/acc5"])
    assert run.hparams.best_val_epoch == val_acc.index(max(val_acc))


def test_custom_scalars_layout_overlays_train_and_val(run):
    (record,) = run.events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(record.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["loss (epoch means)"] == [r"^train/loss$", r"^val/loss$"]
    assert charts["top-1 accuracy"] == [r"^train/acc$", r"^val/acc$"]
    assert list(charts) == ["loss (epoch means)", "top-1 accuracy", "learning rate", "top-5 accuracy"]
    assert charts["learning rate"] == [r"^train/lr(/.*)?$"]


def test_progress_line_after_the_first_epoch_and_cpu_warning(run):
    lines = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0] == run.progress.last_line
    assert re.fullmatch(r"epoch 1/3: \d+\.\d s, [\d.e-]+ s/step; the fit ends in about [\d.]+ s \(around \d\d:\d\d\) "
                        r"at this pace", lines[0]), lines[0]
    cpu = [w for w in run.warnings if w.startswith("training on the CPU")]
    assert len(cpu) == 1  # once, after the first step plus probe_steps=2 more
    assert "the remaining 9 steps take about" in cpu[0] and "configs/cpu_smoke.yaml" in cpu[0]


def test_no_cpu_warning_for_a_short_run(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[FitProgress()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), datamodule=TinyData())
    assert not [w for w in caught if str(w.message).startswith("training on the CPU")]
    assert trainer.callbacks[0].cpu_estimate_s < 60


def test_collapse_shared_lr_keeps_different_rates_apart():
    shared = {"lr-SGD/decay": 0.1, "lr-SGD/no_decay": 0.1, "lr-Adam": 0.2}
    assert collapse_shared_lr(shared) == {"lr-SGD": 0.1, "lr-Adam": 0.2}
    apart = {"lr-SGD/decay": 0.1, "lr-SGD/no_decay": 0.05, "lr-SGD/decay-momentum": 0.9}
    assert collapse_shared_lr(apart) == apart


def test_small_helpers():
    assert [format_duration(s) for s in (41.24, 725, 11280, 190800, math.inf)] == [
        "41.2 s", "12 min 05 s", "3 h 08 min", "2 d 05 h", "unknown"]
    assert batch_size_of((torch.zeros(7, 3), torch.zeros(7))) == 7
    assert batch_size_of({"x": torch.zeros(5, 2)}) == 5 and batch_size_of(torch.zeros(3)) == 3
    assert cuda_peak_memory_gib(torch.device("cpu")) is None


@pytest.mark.parametrize("make, message", [
    (lambda: FitProgress(every_n_epochs=-1), "every_n_epochs must be >= 0, got -1"),
    (lambda: FitProgress(probe_steps=0), "probe_steps must be >= 1, got 0"),
    (lambda: FitProgress(cpu_warn_after_s=0), "cpu_warn_after_s must be > 0, got 0"),
])
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()


def test_per_batch_logging_reads_nothing_to_the_host(tmp_path):
    """On a GPU every tensor-to-host read is a device sync: the per-batch hooks and step logs make none
    between Lightning's logging steps (epoch 1 of a run that logs every 1000 steps)."""
    from bench.host_sync import HostSyncAudit, epoch_window

    audit = HostSyncAudit()
    window = epoch_window(audit.__enter__, lambda: audit.__exit__(None, None, None))
    callbacks = [window, StepAxis(), LearningRateLogger(logging_interval="step"), TrainingSpeedMonitor(),
                 TrainValLayout(), FitProgress()]
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, callbacks=callbacks, log_every_n_steps=1000,
                         logger=TensorBoardLogger(tmp_path, name="tb"), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(ScheduledClassifier(), datamodule=TinyData())
    assert window.steps == STEPS_PER_EPOCH
    ours = {site: n for (site, _), n in audit.sites.items() if site.startswith(("models/", "tests/"))}
    assert ours == {}


def documented_tags() -> set[str]:
    """The tags of docs/tensorboard.md's tag tables (first column), `<class>` expanded to the run's classes.

    CUDA-only tags are left out (a CPU run has none).
    """
    text = DOCS.read_text()
    section = text[text.index("## Tags"):]
    section = section[:section.index("\n## ", 1)]
    tags: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for tag in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            if "cuda" in tag:
                continue
            if "<class>" in tag:
                tags |= {tag.replace("<class>", name) for name in CLASS_NAMES}
            else:
                tags.add(tag)
    return tags


def test_documented_tags_are_the_tags_in_the_file(run):
    tags = run.events.Tags()
    in_file = set(tags["scalars"]) | set(tags["images"]) | {
        tag for tag in tags["tensors"] if not tag.startswith(("_hparams_/", "custom_scalars__config__"))}
    assert in_file == documented_tags()
