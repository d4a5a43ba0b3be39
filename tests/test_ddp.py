"""Distributed: a 2-process CPU DDP run (gloo) of train.py completes with each rank reading its own shard, its
checkpoint loads in one process and scores exactly the validation accuracy DDP reported (metrics are
synced over ranks), and that accuracy matches a single-process run within binomial noise."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_bad_input import cli_args

from helpers import make_imagefolder

REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, CLASSES, VAL_SIZE, EPOCHS = 48, 4, 96, 4
BATCH = 16  # effective batch: 16 in one process, 8 per rank in DDP
STEPS_PER_EPOCH = (TRAIN_PER_CLASS * CLASSES - VAL_SIZE) // BATCH  # 6 (drop_last); unsharded DDP would take 12


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(
        tmp_path_factory.mktemp("ddp_data"), num_classes=CLASSES, train_per_class=TRAIN_PER_CLASS, test_per_class=2
    )


def _args(data: Path, workdir: Path, *extra: str) -> list[str]:
    return cli_args(
        data, workdir, "--trainer.max_epochs", str(EPOCHS), "--data.val_size", str(VAL_SIZE),
        "--model.optimizer.lr", "0.05", "--run_test", "false", *extra,
    )


def _val_accuracy(checkpoint: Path, data: Path) -> float:
    """Accuracy of the checkpoint's eval model on the full validation split, in this single process."""
    from augment.data import CIFARDataModule
    from models.classifier import CifarClassifier

    model = CifarClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = CIFARDataModule(dataset="imagefolder", root=str(data), val_size=VAL_SIZE, batch_size=BATCH, loader="device")
    dm.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            correct += int((model.eval_log_probs(x).argmax(1) == y).sum())
            total += y.numel()
    assert total == VAL_SIZE
    return correct / total


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_single_process(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.run.cli import run

    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    ddp_args = _args(
        data, ddp_dir / "runs",
        "--trainer.devices", "2",
        "--trainer.strategy.class_path", "pytorch_lightning.strategies.DDPStrategy",
        "--trainer.strategy.init_args.process_group_backend", "gloo",
        "--data.batch_size", str(BATCH // 2),
        "--checkpoint.save_top_k", "-1",  # one file per epoch, named with the synced val/acc
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    with open(ddp_dir / "log.txt", "w") as log:  # Lightning re-launches train.py for rank 1 itself
        ddp = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *ddp_args], cwd=ddp_dir, env=env, stdout=log, stderr=log
        )

    # Meanwhile (2 cores: it mostly waits for DDP), the single-process baseline in this process.
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run(_args(data, tmp_path / "single", "--data.batch_size", str(BATCH)))
    finally:
        torch.set_num_threads(threads)

    assert ddp.wait(timeout=240) == 0, (ddp_dir / "log.txt").read_text()[-3000:]
    (last,) = ddp_dir.rglob("last.ckpt")
    end = torch.load(last, map_location="cpu", weights_only=True)
    assert end["epoch"] == EPOCHS - 1
    assert end["global_step"] == EPOCHS * STEPS_PER_EPOCH  # each rank took half the data per epoch
    assert single["global_step"] == EPOCHS * STEPS_PER_EPOCH

    # Every epoch's checkpoint loads in one process and scores exactly the val/acc DDP logged for it (in
    # its name): validation is sharded without loss or duplication and the metric is synced over ranks.
    logged = {}
    for path in last.parent.glob("best-*.ckpt"):
        logged[path.name] = (float(re.search(r"val_acc(\d\.\d{4})", path.name).group(1)), _val_accuracy(path, data))
    assert len(logged) == EPOCHS
    assert all(ddp == pytest.approx(one, abs=5e-5) for ddp, one in logged.values()), logged
    assert any(0 < one < 1 for _, one in logged.values()), logged  # not only trivial 100% epochs
    (state,) = [s for k, s in end["callbacks"].items() if k.startswith("RunCheckpoint")]
    ddp_acc = float(state["best_model_score"])

    # Same data, same effective batch: accuracies agree within 3 binomial standard errors of their difference.
    single_acc = single["val/acc_best"]
    p = (ddp_acc + single_acc) / 2
    tolerance = 3 * math.sqrt(2 * p * (1 - p) / VAL_SIZE) + 1 / VAL_SIZE
    assert abs(ddp_acc - single_acc) <= tolerance, (ddp_acc, single_acc, tolerance)
    assert min(ddp_acc, single_acc) > 1.5 / CLASSES  # both learned (chance is 1/4)


@pytest.mark.parametrize("world_size", [2, 3])
def test_gpu_resident_loader_shards_by_rank(world_size: int, data: Path) -> None:
    """Under DDP each rank of the GPU-resident loader gets a disjoint, equal-sized part of the epoch's order
    (train and validation); together they cover the split, padded by wrap-around like DistributedSampler."""
    from augment.data import CIFARDataModule

    dm = CIFARDataModule(dataset="imagefolder", root=str(data), val_size=VAL_SIZE, batch_size=8, loader="device")
    dm.setup("fit")
    for split_indices, make in ((dm.train_indices, dm.train_dataloader), (dm.val_indices, dm.val_dataloader)):
        parts = []
        for rank in range(world_size):
            dm.trainer = SimpleNamespace(
                global_rank=rank, world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu"))
            )
            loader = make()
            order = loader.epoch_indices(0).numpy()
            assert len(order) == -(-len(split_indices) // world_size) == loader.samples_per_rank
            parts.append(order)
        dm.trainer = None
        together = np.concatenate(parts)
        padding = len(together) - len(split_indices)
        assert sorted(set(together.tolist())) == sorted(split_indices.tolist())  # covers the split
        assert len(together) - len(set(together.tolist())) == padding  # overlap only by the padding
