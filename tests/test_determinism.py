"""Determinism on CPU: the same seed and config give bitwise-identical metrics and weights, another seed
does not; per-sample augmentation differs between epochs and between DataLoader workers and still
replays exactly from the data seed (checked on the batches the model receives, through the real
CIFARDataModule + Trainer path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from test_bad_input import cli_args

from helpers import make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # see conftest  # end-to-end runs

# Every regularizer that draws random numbers: batch-level mixing, Cutout, input noise, dropout.
RANDOM_REGULARIZERS = [
    "--model.mixup.alpha", "0.4",
    "--model.cutmix.alpha", "1.0",
    "--model.cutout.n_holes", "1",
    "--model.cutout.size", "8",
    "--model.input_noise.std", "0.05",
    "--model.drop_rate", "0.2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("det_data"), num_classes=4, train_per_class=8, test_per_class=2)


@pytest.fixture(scope="module")
def same_image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every image is the same (asymmetric, random) picture: batches then differ only by augmentation."""
    from PIL import Image

    root = tmp_path_factory.mktemp("same_image")
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for split, count in (("train", 8), ("test", 1)):
        for k in range(4):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                picture.save(folder / f"{i}.png")
    return root


def _run(root: Path, workdir: Path, *extra: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """models.run.cli.run metrics (minus wall time and paths) and the final weights of last.ckpt."""
    from models.run.cli import run

    metrics = run(cli_args(root, workdir, "--trainer.max_epochs", "2", *RANDOM_REGULARIZERS, *extra))
    (last,) = workdir.rglob("last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in metrics.items() if k not in ("fit_time_s", "log_dir")}, state


def test_same_seed_is_bitwise_identical_and_other_seed_differs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    metrics_a, weights_a = _run(data, tmp_path / "a", "--seed_everything", "0")
    metrics_b, weights_b = _run(data, tmp_path / "b", "--seed_everything", "0")
    metrics_c, weights_c = _run(data, tmp_path / "c", "--seed_everything", "1")

    assert {"train/loss", "val/loss", "val/acc", "test/acc", "global_step"} <= set(metrics_a)
    assert metrics_a == metrics_b  # exact float equality
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    assert metrics_c["train/loss"] != metrics_a["train/loss"]
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a if weights_a[k].is_floating_point())


class BatchRecorder(pl.Callback):
    """Keeps a copy of every training batch's images as the LightningModule receives them, per epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[torch.Tensor]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.epochs[-1].append(batch[0].detach().clone())


def _batches(root: Path, workdir: Path, *extra: str) -> list[list[torch.Tensor]]:
    """Training batches of a 2-epoch fit through CifarCLI (the objects train.py builds)."""
    from models.run.cli import CifarCLI

    cli = CifarCLI(cli_args(root, workdir, "--trainer.max_epochs", "2", "--data.batch_size", "4", *extra))
    recorder = BatchRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(recorder.epochs) == 2 and all(len(e) == 6 for e in recorder.epochs)  # 24 train images / 4
    return recorder.epochs


def _distinct(batches: list[torch.Tensor]) -> bool:
    return all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1 :])


class NonPersistentDataLoader(torch.utils.data.DataLoader):
    """DataLoader with workers restarted every epoch: where forked workers classically replay augmentations."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["persistent_workers"] = False
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize(
    ("loader", "persistent"),
    [("workers", True), ("workers", False), ("device", True)],
    ids=["workers", "workers_restarted", "device_loader"],
)
def test_augmentation_differs_across_epochs_and_workers_and_replays_from_seed(
    loader: str, persistent: bool, same_image_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if not persistent:
        monkeypatch.setattr(torch.utils.data, "DataLoader", NonPersistentDataLoader)
    workers = "2" if loader == "workers" else "0"
    args = ["--data.loader", loader, "--data.num_workers", workers, "--data.padding", "4", "--data.flip", "true"]
    first = _batches(same_image_data, tmp_path / "a", *args, "--data.seed", "0")
    # All 12 batches of the two epochs differ: batch 0 and 1 come from worker 0 and worker 1 (their first
    # batches), so equal worker seeds would make them equal; a replayed epoch would repeat epoch 0.
    assert _distinct(first[0] + first[1])
    again = _batches(same_image_data, tmp_path / "b", *args, "--data.seed", "0")
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], again[0] + again[1]))
    other = _batches(same_image_data, tmp_path / "c", *args, "--data.seed", "1")
    assert not any(torch.equal(a, b) for a, b in zip(first[0] + first[1], other[0] + other[1]))


def test_worker_seeder_is_what_separates_the_workers(same_image_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Control for the test above: without WorkerSeeder the two workers' first batches are identical,
    so the distinctness check really detects the seeding trap."""
    import augment.data.datamodule

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(augment.data.datamodule, "WorkerSeeder", lambda rank: None)
    monkeypatch.setattr(torch.utils.data, "DataLoader", NonPersistentDataLoader)
    epochs = _batches(same_image_data, tmp_path / "a", "--data.loader", "workers", "--data.num_workers", "2")
    assert torch.equal(epochs[0][0], epochs[0][1])  # worker 0 and worker 1 drew the same crops and flips
    assert torch.equal(epochs[0][0], epochs[1][0])  # and restarted workers repeat them the next epoch
