"""Every YAML recipe under configs/ (studies excepted: they have their own format and tests) parses and
instantiates model, datamodule and trainer through `CifarCLI`, with its values in the objects.

GPU recipes get `--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true`; CIFAR
recipes point `data.root` at an empty folder (class names and normalization are constants, so nothing
is read). Variant overlays are composed on top of configs/cifar10_resnet18.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy

from helpers import REPO, main_cli, tiny_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG_DIR = REPO / "configs"
DDP_OVERLAY = CONFIG_DIR / "cifar10_ddp.yaml"  # trainer settings only: composed on a recipe
BASE_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p != DDP_OVERLAY)
VARIANTS = sorted((CONFIG_DIR / "variants").glob("*.yaml"))
MAIN_RECIPE = CONFIG_DIR / "cifar10_resnet18.yaml"
ON_CPU = ("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true")
NOT_INSTANTIATED = ("root", "download")  # pointed elsewhere by every test


def _cli(*args: str) -> Any:
    """`CifarCLI(args)` (instantiates model, datamodule and trainer; runs nothing)."""
    from models.run.cli import CifarCLI

    return CifarCLI(list(args))


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _assert_subset(expected: Mapping[str, Any], actual: Mapping[str, Any], where: str) -> None:
    """Every key of `expected` (recursively) has the same value in `actual`."""
    for key, value in expected.items():
        assert key in actual, f"{where}.{key} missing"
        if isinstance(value, Mapping):
            _assert_subset(value, actual[key], f"{where}.{key}")
        else:
            assert actual[key] == value, f"{where}.{key}: {actual[key]!r} != {value!r}"


def _assert_config_reached_objects(cli: Any, config: Mapping[str, Any]) -> None:
    """model/data sections -> hparams of the instances; early_stopping, weight_noise -> the callbacks."""
    _assert_subset(config.get("model", {}), cli.model.hparams, "model")
    data = {k: v for k, v in config.get("data", {}).items() if k not in NOT_INSTANTIATED}
    _assert_subset(data, cli.datamodule.hparams, "data")
    trainer = cli.trainer
    if "max_epochs" in config.get("trainer", {}):
        assert trainer.max_epochs == config["trainer"]["max_epochs"]
    if "early_stopping" in config:
        early = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
        _assert_subset(config["early_stopping"], vars(early), "early_stopping")
    if "weight_noise" in config:
        from models.callbacks.weight_noise import WeightNoise

        noise = next(c for c in trainer.callbacks if isinstance(c, WeightNoise))
        _assert_subset(config["weight_noise"], vars(noise), "weight_noise")


def test_every_config_is_covered() -> None:
    """A new folder of recipes must get a test here (configs/studies has its own)."""
    found = {p for p in CONFIG_DIR.rglob("*.yaml") if p.relative_to(CONFIG_DIR).parts[0] != "studies"}
    assert found == set(BASE_CONFIGS) | set(VARIANTS) | {DDP_OVERLAY}
    assert len(BASE_CONFIGS) >= 4 and len(VARIANTS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("config", BASE_CONFIGS, ids=lambda p: p.stem)
def test_base_config_instantiates(config: Path, tmp_path: Path, in_tmp_cwd: Path) -> None:
    values = _yaml(config)
    cli = _cli("--config", str(config), *ON_CPU, "--data.root", str(tmp_path), "--data.download", "false")
    _assert_config_reached_objects(cli, values)
    dataset = values["data"]["dataset"]
    num_classes = {"cifar10": 10, "cifar100": 100}[dataset]
    assert cli.model.num_classes == num_classes  # linked from data.num_classes
    logits = cli.model.eval()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, num_classes)
    assert cli.trainer.checkpoint_callback.monitor == "val/acc"
    assert any(c.__class__.__name__ == "LastCheckpoint" for c in cli.trainer.checkpoint_callbacks)


@pytest.mark.slow
def test_ddp_overlay_instantiates(tmp_path: Path, in_tmp_cwd: Path) -> None:
    """The DDP overlay on the main recipe builds a DDP trainer: 2 devices x 2 nodes (CPU stands in for GPUs)."""
    overlay = _yaml(DDP_OVERLAY)["trainer"]
    assert set(_yaml(DDP_OVERLAY)) == {"trainer"}
    cli = _cli("--config", str(MAIN_RECIPE), "--config", str(DDP_OVERLAY),
               "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
               "--data.root", str(tmp_path), "--data.download", "false")
    trainer = cli.trainer
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == overlay["devices"] == 2
    assert trainer.num_nodes == overlay["num_nodes"] == 2
    assert trainer.world_size == 4
    assert overlay["sync_batchnorm"] is True and trainer.strategy._layer_sync is not None
    _assert_config_reached_objects(cli, _yaml(MAIN_RECIPE))
    # and with one process, as the brief's single-machine fallback
    single = _cli("--config", str(MAIN_RECIPE), "--config", str(DDP_OVERLAY), *ON_CPU,
                  "--trainer.strategy", "auto", "--trainer.num_nodes", "1", "--data.root", str(tmp_path))
    assert single.trainer.world_size == 1


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.stem)
def test_variant_overlay_instantiates(variant: Path, tmp_path: Path, in_tmp_cwd: Path) -> None:
    overlay = _yaml(variant)
    assert overlay, f"{variant.name} is empty"
    cli = _cli("--config", str(MAIN_RECIPE), "--config", str(variant), *ON_CPU,
               "--data.root", str(tmp_path), "--data.download", "false")
    _assert_config_reached_objects(cli, overlay)
    untouched = {k: v for k, v in _yaml(MAIN_RECIPE)["model"].items() if k not in overlay.get("model", {})}
    _assert_subset(untouched, cli.model.hparams, "model (from the base recipe)")
    norm = overlay.get("model", {}).get("norm")
    if norm is not None:
        kinds = {type(m).__name__ for m in cli.model.backbone.modules()}
        assert "BatchNorm2d" not in kinds, f"{variant.name}: BatchNorm2d left in {sorted(kinds)}"
    logits = cli.model.eval()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_command_line_overrides_the_yaml(tmp_path: Path, in_tmp_cwd: Path) -> None:
    cli = _cli("--config", str(MAIN_RECIPE), "--config", str(CONFIG_DIR / "variants/mixup.yaml"), *ON_CPU,
               "--data.root", str(tmp_path), "--model.mixup.alpha", "0.3", "--data.batch_size", "64",
               "--early_stopping.patience", "3", "--trainer.max_epochs", "7")
    assert _yaml(CONFIG_DIR / "variants/mixup.yaml")["model"]["mixup"]["alpha"] == 1.0
    assert cli.model.hparams["mixup"]["alpha"] == 0.3
    assert cli.model.hparams["cutmix"]["alpha"] == 0.0  # the overlay's other fields stay
    assert cli.datamodule.batch_size == 64
    assert next(c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)).patience == 3
    assert cli.trainer.max_epochs == 7
    assert cli.model.batch_augment().ops  # the pipeline really builds with the overridden values


def test_cpu_smoke_checkpoint_and_stopping_monitor_val(tmp_path: Path, in_tmp_cwd: Path) -> None:
    cli = _cli("--config", str(CONFIG_DIR / "cpu_smoke.yaml"), "--data.root", str(tmp_path))
    best = cli.trainer.checkpoint_callback
    assert isinstance(best, ModelCheckpoint) and best.monitor == "val/acc" and best.mode == "max"
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert cli.datamodule.resolved_loader in ("device", "workers")


def test_best_checkpoint_name_carries_its_own_monitor(tmp_path: Path, in_tmp_cwd: Path) -> None:
    base = ("--config", str(CONFIG_DIR / "cpu_smoke.yaml"), "--data.root", str(tmp_path))
    assert _cli(*base).trainer.checkpoint_callback.filename == "best-epoch{epoch:03d}-val_acc{val/acc:.4f}"
    balanced = _cli(*base, "--checkpoint.monitor", "val/bal_acc").trainer.checkpoint_callback
    assert balanced.filename == "best-epoch{epoch:03d}-val_bal_acc{val/bal_acc:.4f}"
    loss = _cli(*base, "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min").trainer.checkpoint_callback
    assert loss.filename == "best-epoch{epoch:03d}-val_loss{val/loss:.4f}"
    named = _cli(*base, "--checkpoint.monitor", "val/loss", "--checkpoint.filename", "mine{epoch}")
    assert named.trainer.checkpoint_callback.filename == "mine{epoch}"  # a name the user chose is kept


# --- bad config or data: one `error:` line naming the field, exit code 2 (more cases: test_bad_input.py)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (("--data.root", "{missing}"), "data.root"),
        (("--data.root", "{flat}"), "data.root"),
        (("--data.val_size", "500"), "data.val_size"),
        (("--data.dataset", "cifar1000"), "data.dataset"),
        (("--model.mixup.alpha", "-1"), "mixup.alpha"),
    ],
    ids=["missing_root", "wrong_layout", "val_larger_than_train", "unknown_dataset", "negative_mixup"],
)
def test_bad_config_gives_one_error_line(
    extra: tuple[str, str], field: str, tiny_data: Path, in_tmp_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = in_tmp_cwd / "flat"  # images directly under root: no train/ and test/ folders
    flat.mkdir()
    for image in sorted((tiny_data / "train" / "class_0").iterdir())[:3]:
        (flat / image.name).write_bytes(image.read_bytes())
    values = [v.format(missing=in_tmp_cwd / "nowhere", flat=flat) for v in extra]
    code = main_cli(tiny_args(tiny_data, in_tmp_cwd / "work", *values, max_epochs=1))
    assert code == 2
    line = _error_line(capsys)
    assert field in line, line
    assert not list(in_tmp_cwd.rglob("*.ckpt"))
