"""The logs a tiny fit writes are served by a real `tensorboard` server (scalars, images, hparams, layout over HTTP)."""

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.callbacks import (
    AugmentedImageGrid,
    HparamsWithFinalMetrics,
    LearningRateLogger,
    StepAxis,
    TrainingSpeedMonitor,
    TrainValLayout,
)

STEPS_PER_EPOCH, EPOCHS = 3, 2
STARTUP_TIMEOUT_S = 60.0


class TinyClassifier(pl.LightningModule):
    """Linear classifier on 3x8x8 images, 4 classes; keeps its (noised) batch on request."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 4)
        self.keep_augmented_batch = False
        self.last_augmented_batch = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)
        if self.keep_augmented_batch:
            self.last_augmented_batch = x.detach()
        loss = F.cross_entropy(self.head(x.flatten(1)), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.head(x.flatten(1)).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **query) -> object:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post_json(base: str, path: str, body: dict) -> object:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_for_tags(base: str, server: subprocess.Popen, run: str) -> tuple[dict, dict]:
    """Poll until the server answers and has loaded the run's scalar and image tags."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    scalars, images = {}, {}
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tensorboard exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            scalars = get_json(base, "/data/plugin/scalars/tags").get(run, {})
            images = get_json(base, "/data/plugin/images/tags").get(run, {})
            if "val/acc" in scalars and "train/view/augmented_batch" in images:
                return scalars, images
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard did not serve run {run!r} within {STARTUP_TIMEOUT_S} s: {scalars} {images}")


@pytest.fixture
def tensorboard_logdir(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=24 // STEPS_PER_EPOCH)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=EPOCHS, logger=logger, log_every_n_steps=1,
                         callbacks=[AugmentedImageGrid(every_n_epochs=1, max_images=4), StepAxis(), TrainValLayout(),
                                    LearningRateLogger(logging_interval="step"), TrainingSpeedMonitor(),
                                    HparamsWithFinalMetrics()],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(TinyClassifier(), loader, loader)
    return tmp_path


def test_tensorboard_serves_scalars_and_images(tensorboard_logdir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tensorboard_logdir), "--port", str(port),
         "--host", "127.0.0.1", "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        run = "tb/version_0"
        scalars, images = wait_for_tags(base, server, run)
        assert {"train/loss", "val/acc"} <= set(scalars)
        assert "train/view/augmented_batch" in images

        train_loss = get_json(base, "/data/plugin/scalars/scalars", run=run, tag="train/loss")
        assert [step for _, step, _ in train_loss] == list(range(STEPS_PER_EPOCH * EPOCHS))
        val_acc = get_json(base, "/data/plugin/scalars/scalars", run=run, tag="val/acc")
        assert len(val_acc) == EPOCHS and all(0.0 <= acc <= 1.0 for _, _, acc in val_acc)

        grids = get_json(base, "/data/plugin/images/images", run=run, tag="train/view/augmented_batch")
        assert [g["step"] for g in grids] == [0, STEPS_PER_EPOCH]  # first batch of each epoch
        with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?{grids[0]['query']}",
                                    timeout=5) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
        check_new_tags(base, run)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def tensorboard_order(tag: str) -> list:
    """Sort key of TensorBoard's tag comparator for tags without numbers: "/" before every other character."""
    return [(0, "") if char == "/" else (1, char) for char in tag]


def check_new_tags(base: str, run: str) -> None:
    """Per-step learning rate, speed scalars on the run's one step axis, labelled grid, hparams, layout;
    the first two tag groups (the ones TensorBoard's Time Series opens) are train and val."""
    scalars = get_json(base, "/data/plugin/scalars/tags")[run]
    images = get_json(base, "/data/plugin/images/tags")[run]
    assert {"train/lr", "train/speed/images_per_s", "train/speed/epoch_time_s", "val_best/acc",
            "train/speed/fit_time_s"} <= set(scalars)
    assert "epoch" not in scalars and not [tag for tag in scalars if tag.startswith(("hp/", "lr-", "perf/"))]
    groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted([*scalars, *images], key=tensorboard_order)))
    assert groups == ["train", "val", "val_best"]
    lr = get_json(base, "/data/plugin/scalars/scalars", run=run, tag="train/lr")
    assert [step for _, step, _ in lr] == list(range(STEPS_PER_EPOCH * EPOCHS))
    assert all(abs(value - 0.1) < 1e-7 for _, _, value in lr)
    epoch_ends = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]  # where the next epoch's grid sits too
    for tag in ("val/acc", "train/speed/epoch_time_s"):
        assert [step for _, step, _ in get_json(base, "/data/plugin/scalars/scalars", run=run, tag=tag)] == epoch_ends
    speed = get_json(base, "/data/plugin/scalars/scalars", run=run, tag="train/speed/images_per_s")
    assert len(speed) == STEPS_PER_EPOCH * EPOCHS and all(value > 0 for _, _, value in speed)

    (labelled,) = get_json(base, "/data/plugin/images/images", run=run, tag="train/view/augmented_batch_labelled")[:1]
    url = f"{base}/data/plugin/images/individualImage?{labelled['query']}"
    with urllib.request.urlopen(url, timeout=5) as response:
        width, height = Image.open(io.BytesIO(response.read())).size
    assert width >= 4 * 2 * 8 * 3 and height > 8 * 3  # 4 upscaled (input, augmented) pairs per row

    experiment = post_json(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"seed", "trainer.max_epochs", "trainer.precision"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HparamsWithFinalMetrics.METRICS)
    groups = post_json(base, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [], "startIndex": 0,
        "sliceSize": 10})
    (group,) = groups["sessionGroups"]
    assert group["name"].startswith("version_0 tb ")  # the trial id names the version first
    values = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
    assert 0.0 <= values["val_best/acc"] <= 1.0 and values["train/speed/fit_time_s"] > 0

    layout = get_json(base, "/data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"] for cat in layout["category"] for chart in cat["chart"]}
    assert charts["loss (epoch means)"] == ["^train/loss$", "^val/loss$"]
