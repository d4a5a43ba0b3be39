"""Bad input, tried systematically: every invalid config or data case ends in one `error:` line naming the
field and the rule, exit code 2, no traceback and no checkpoint that could pass for a result.

The table runs in-process through `models.run.cli.main(argv)` (what train.py calls); three cases also run
`python train.py` in subprocesses to prove the real exit code and stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # see conftest  # end-to-end runs

REPO = Path(__file__).resolve().parents[1]


def cli_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    """A valid, seconds-long CPU run on the ImageFolder at `root`; `extra` (last) overrides."""
    return [
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(workdir),
        "--trainer.logger.init_args.save_dir", str(workdir),
        "--model.backbone", "test_resnet",
        "--model.cifar_stem", "false",
        "--data.dataset", "imagefolder",
        "--data.root", str(root),
        "--data.val_size", "8",
        "--data.batch_size", "8",
        "--data.loader", "device",
        "--data.num_workers", "0",
        *extra,
    ]


def _png(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _broken_data(base: Path) -> dict[str, Path]:
    """ImageFolder trees with one defect each (plus a good one); name -> root."""
    roots = {}

    def good(name: str) -> Path:
        roots[name] = make_imagefolder(base / name, num_classes=4, train_per_class=8, test_per_class=2)
        return roots[name]

    good("good")
    (good("empty_class") / "train" / "class_9").mkdir()
    (good("corrupt_image") / "train" / "class_1" / "0009.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _png(good("wrong_size") / "train" / "class_2" / "0100.png", size=(24, 24))
    _png(good("unknown_test_class") / "test" / "class_7" / "0000.png")  # a label the model cannot output
    (good("non_image_only") / "train" / "class_5").mkdir()
    (roots["non_image_only"] / "train" / "class_5" / "notes.txt").write_text("not an image")
    shutil.rmtree(good("no_test_split") / "test")
    one = base / "one_class"
    for split in ("train", "test"):
        for i in range(4):
            _png(one / split / "only" / f"{i}.png", seed=i)
    roots["one_class"] = one
    roots["empty_dir"] = base / "empty_dir"
    roots["empty_dir"].mkdir()
    cifar = base / "corrupt_cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (cifar / name).write_bytes(b"garbage")
    roots["corrupt_cifar10"] = cifar.parent
    return roots


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _broken_data(tmp_path_factory.mktemp("bad_data"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (case id, data root name, extra CLI args, field that must be named, rule fragment that must appear).
# "{tmp}" in an argument is replaced by the test's tmp_path.
CASES = [
    # unknown keys and wrong types (jsonargparse)
    ("unknown_key", "good", ["--model.colour", "red"], "model.colour", "unrecognized"),
    ("unknown_nested_key", "good", ["--model.mixup.beta", "1"], "model.mixup.beta", "unrecognized"),
    ("unknown_key_in_yaml", "good", ["--config", "{tmp}/unknown.yaml"], "colour", "Group 'data' does not accept"),
    ("broken_yaml", "good", ["--config", "{tmp}/broken.yaml"], "line 2", "parsing config"),
    ("missing_config_file", "good", ["--config", "{tmp}/nothere.yaml"], "nothere.yaml", "does not exist"),
    ("lr_not_a_number", "good", ["--model.optimizer.lr", "fast"], "model.optimizer.lr", "Expected a <class 'float'>"),
    ("batch_size_not_int", "good", ["--data.batch_size", "1.5"], "data.batch_size", "Expected a <class 'int'>"),
    ("precision_unknown", "good", ["--trainer.precision", "17"], "trainer.precision", "Does not validate"),
    ("linked_num_classes", "good", ["--model.num_classes", "3"], "model.num_classes", "data.num_classes"),
    # out-of-range values
    ("negative_lr", "good", ["--model.optimizer.lr", "-0.1"], "model.optimizer.lr", "> 0"),
    ("batch_size_zero", "good", ["--data.batch_size", "0"], "data.batch_size", ">= 1"),
    ("eval_batch_size_zero", "good", ["--data.eval_batch_size", "0"], "data.eval_batch_size", ">= 1"),
    ("drop_rate_one", "good", ["--model.drop_rate", "1.0"], "model.drop_rate", "[0, 1)"),
    ("drop_path_rate_negative", "good", ["--model.drop_path_rate", "-0.1"], "model.drop_path_rate", "[0, 1)"),
    ("mixup_alpha_negative", "good", ["--model.mixup.alpha", "-1"], "mixup.alpha", ">= 0"),
    ("cutmix_alpha_negative", "good", ["--model.cutmix.alpha", "-0.5"], "cutmix.alpha", ">= 0"),
    ("mixing_prob_above_one", "good", ["--model.mixing.prob", "1.5"], "mixing.prob", "[0, 1]"),
    ("switch_prob_above_one", "good", ["--model.mixing.switch_prob", "2"], "mixing.switch_prob", "[0, 1]"),
    ("cutout_size_negative", "good", ["--model.cutout.size", "-4"], "cutout.size", ">= 0"),
    ("cutout_p_above_one", "good", ["--model.cutout.p", "1.5"], "cutout.p", "[0, 1]"),
    ("noise_std_negative", "good", ["--model.input_noise.std", "-1"], "input_noise.std", ">= 0"),
    ("label_smoothing_one", "good", ["--model.label_smoothing", "1.0"], "model.label_smoothing", "[0, 1)"),
    ("ema_decay_one", "good", ["--model.ema_decay", "1.0"], "model.ema_decay", "[0, 1)"),
    ("weight_noise_std_negative", "good", ["--weight_noise.std", "-0.01"], "weight_noise.std", ">= 0"),
    ("norm_groups_zero", "good", ["--model.norm", "group", "--model.norm_groups", "0"], "model.norm_groups", ">= 1"),
    ("norm_groups_not_dividing_strict", "good",
     ["--model.norm", "group", "--model.norm_groups", "7", "--model.norm_strict", "true"],
     "model.norm_groups", "does not divide"),
    ("num_workers_negative", "good", ["--data.num_workers", "-1"], "data.num_workers", ">= 0"),
    ("padding_negative", "good", ["--data.padding", "-2"], "data.padding", ">= 0"),
    ("val_size_fraction_one", "good", ["--data.val_size", "1.0"], "data.val_size", "[0, 1)"),
    ("val_size_larger_than_train", "good", ["--data.val_size", "1000"], "data.val_size", "[0, 32)"),
    ("train_subset_zero", "good", ["--data.train_subset", "0"], "data.train_subset", ">= 1"),
    ("max_epochs_negative", "good", ["--trainer.max_epochs", "-5"], "max_epochs", "-1"),
    ("devices_zero", "good", ["--trainer.devices", "0"], "devices", "not a valid input"),
    ("seed_negative", "good", ["--seed_everything", "-1"], "seed_everything", "[0, 2**32)"),
    # unknown names
    ("unknown_optimizer", "good", ["--model.optimizer.name", "lion"], "optimizer.name", "one of"),
    ("unknown_scheduler", "good", ["--model.scheduler.name", "warmup"], "scheduler.name", "one of"),
    ("unknown_norm", "good", ["--model.norm", "batchnorm"], "model.norm", "one of"),
    ("unknown_backbone", "good", ["--model.backbone", "resnet19"], "model.backbone", "timm model name"),
    ("unknown_dataset", "good", ["--data.dataset", "mnist"], "data.dataset", "one of"),
    ("unknown_loader", "good", ["--data.loader", "tpu"], "data.loader", "one of"),
    # incompatible combinations
    ("fold_without_kfold", "good", ["--data.fold", "1"], "data.fold", "num_folds is 0"),
    ("fold_not_below_num_folds", "good", ["--data.num_folds", "3", "--data.fold", "3"], "data.fold", "[0, 3)"),
    ("num_folds_one", "good", ["--data.num_folds", "1"], "data.num_folds", ">= 2"),
    ("nesterov_without_momentum", "good",
     ["--model.optimizer.name", "nesterov", "--model.optimizer.momentum", "0"], "optimizer.momentum", "> 0"),
    ("milestones_decreasing", "good",
     ["--model.scheduler.name", "multistep", "--model.scheduler.milestones", "[5, 2]"],
     "scheduler.milestones", "increasing"),
    ("cifar_stem_unknown", "good", ["--model.cifar_stem", "stride3"], "model.cifar_stem", "one of"),
    ("cifar_stem_cannot_adapt", "good", ["--model.backbone", "levit_128s", "--model.cifar_stem", "auto"],
     "model.cifar_stem", "cannot build"),
    ("imagenet_model_on_32px", "good", ["--model.backbone", "levit_128s"], "model.backbone",
     "a network that takes 32x32 images"),
    ("gpu_on_cpu_machine", "good", ["--trainer.accelerator", "cuda"], "trainer.accelerator", "cpu or auto"),
    ("one_class_dataset", "one_class", [], "model.num_classes", ">= 2"),
    # missing or corrupt data
    ("root_missing", "good", ["--data.root", "{tmp}/no/such/folder"], "data.root", "no imagefolder data"),
    ("root_empty", "empty_dir", [], "data.root", "no imagefolder data"),
    ("cifar_root_empty", "empty_dir", ["--data.dataset", "cifar10"], "data.root", "no cifar10 data"),
    ("cifar_files_corrupt", "corrupt_cifar10", ["--data.dataset", "cifar10"], "data.root", "valid cifar10 copy"),
    ("no_test_split", "no_test_split", [], "data.root", "no test split"),
    ("empty_class_folder", "empty_class", [], "class_9", "has no images"),
    ("non_image_files_only", "non_image_only", [], "class_5", "has no images"),
    ("corrupt_image", "corrupt_image", [], "0009.png", "cannot decode image"),
    ("images_of_different_size", "wrong_size", [], "0100.png", "same size"),
    ("test_label_out_of_range", "unknown_test_class", [], "class_7", "not a class of the train split"),
    # Trainer and callback keys the CLI passes through: checked before fit (principle 1)
    ("monitor_unknown_metric", "good", ["--early_stopping.monitor", "val/accuracy"], "early_stopping.monitor",
     "one of val/acc, val/acc5, val/bal_acc, val/loss, train/acc, train/acc5, train/bal_acc, train/loss"),
    ("checkpoint_monitor_unknown", "good", ["--checkpoint.monitor", "val_acc"], "checkpoint.monitor", "one of val/acc"),
    ("early_stopping_mode_unknown", "good", ["--early_stopping.mode", "maximum"], "early_stopping.mode",
     "one of min, max"),
    ("accumulate_grad_batches_zero", "good", ["--trainer.accumulate_grad_batches", "0"],
     "trainer.accumulate_grad_batches", "an int >= 1"),
    ("check_val_every_n_epoch_zero", "good", ["--trainer.check_val_every_n_epoch", "0"],
     "trainer.check_val_every_n_epoch", "an int >= 1"),
    ("log_every_n_steps_zero", "good", ["--trainer.log_every_n_steps", "0"], "trainer.log_every_n_steps", ">= 1"),
    ("gradient_clip_negative", "good", ["--trainer.gradient_clip_val", "-1"], "trainer.gradient_clip_val", ">= 0"),
    ("gradient_clip_algorithm_unknown", "good", ["--trainer.gradient_clip_algorithm", "l3"],
     "trainer.gradient_clip_algorithm", "one of norm, value"),
    ("limit_train_batches_negative", "good", ["--trainer.limit_train_batches", "-1"],
     "trainer.limit_train_batches", "an int >= 0 or a float fraction in [0, 1]"),
    ("val_check_interval_zero", "good", ["--trainer.val_check_interval", "0"], "trainer.val_check_interval", ">= 1"),
    ("num_sanity_val_steps_below_minus_one", "good", ["--trainer.num_sanity_val_steps", "-2"],
     "trainer.num_sanity_val_steps", ">= -1"),
    ("save_top_k_below_minus_one", "good", ["--checkpoint.save_top_k", "-2"], "checkpoint.save_top_k", ">= -1"),
    ("patience_negative", "good", ["--early_stopping.patience", "-1"], "early_stopping.patience", ">= 0"),
    ("max_steps_below_minus_one", "good", ["--trainer.max_steps", "-3"], "trainer.max_steps", ">= -1"),
    # legal but destructive: refused before fit (principle 2)
    ("cutout_erases_every_image", "good", ["--model.cutout.n_holes", "1", "--model.cutout.size", "100"],
     "model.cutout.size", "< the image side 32"),
    ("cutout_fraction_one_erases_every_image", "good", ["--model.cutout.n_holes", "1", "--model.cutout.size", "1.0"],
     "model.cutout.size", "erases every image"),
    ("worker_cutout_erases_every_image", "good",
     ["--data.loader", "workers", "--data.cutout_holes", "1", "--data.cutout_size", "40"],
     "data.cutout_size", "< the image side 32"),
    ("max_epochs_zero", "good", ["--trainer.max_epochs", "0"], "trainer.max_epochs", "random initial weights"),
    ("max_steps_zero", "good", ["--trainer.max_steps", "0"], "trainer.max_steps", "0 trains nothing"),
    ("limit_train_batches_zero", "good", ["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches",
     "0 trains nothing"),
    ("label_smoothing_uniform_targets", "good", ["--model.label_smoothing", "0.75"], "model.label_smoothing",
     "< 0.75 for 4 classes"),
    # resuming from a bad checkpoint
    ("ckpt_path_missing", "good", ["--ckpt_path", "{tmp}/nothere.ckpt"], "ckpt_path", "existing checkpoint file"),
    ("ckpt_path_truncated", "good", ["--ckpt_path", "{tmp}/truncated.ckpt"], "ckpt_path", "complete torch checkpoint"),
    ("ckpt_path_not_lightning", "good", ["--ckpt_path", "{tmp}/weights.pt"], "ckpt_path", "Lightning checkpoint"),
    ("ckpt_path_other_model", "good", ["--ckpt_path", "{tmp}/other_model.ckpt"], "ckpt_path",
     "weights of this model config"),
]


def _inputs(tmp: Path) -> None:
    """Config files and checkpoints the table refers to through {tmp}."""
    _write(tmp / "unknown.yaml", "data:\n  colour: red\n")
    _write(tmp / "broken.yaml", "model: {backbone: [\n")
    torch.save({"weight": torch.zeros(3)}, tmp / "weights.pt")
    state = {"state_dict": {"backbone.fc.weight": torch.zeros(10, 7)}, "epoch": 0, "global_step": 0}
    torch.save(state, tmp / "other_model.ckpt")
    full = (tmp / "other_model.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(full[: len(full) // 2])


def _error_line(stderr: str) -> str:
    """The single `error:` line, checked to be the last line and the only one; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    return errors[0]


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix == ".ckpt" and p.parent.name == "checkpoints")


def test_table_has_at_least_25_distinct_cases() -> None:
    assert len(CASES) >= 25
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "data", "extra", "field", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error_and_no_result(
    case: str, data: str, extra: list[str], field: str, rule: str, data_roots: dict[str, Path],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from models.run.cli import main

    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    code = main(cli_args(data_roots[data], tmp_path / "runs", *extra))
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    assert field in line and rule in line, line
    assert _checkpoints(tmp_path) == []
    assert not (tmp_path / "runs").exists()  # no run folder, no config.yaml, no event file


def test_truncated_dataset_cache_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    """A cache file cut short by a crash is ignored (warning) and rebuilt from the images."""
    from augment.data.datasets import CACHE_DIRNAME, load_dataset

    root = make_imagefolder(tmp_path / "data", num_classes=2, train_per_class=4, test_per_class=2)
    images, labels, names = load_dataset("imagefolder", root, "train")
    (cached,) = (root / CACHE_DIRNAME).glob("imagefolder-train-*.images.npy")
    cached.write_bytes(cached.read_bytes()[:200])
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        again, again_labels, again_names = load_dataset("imagefolder", root, "train")
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels) and again_names == names
    assert np.load(cached).shape == images.shape  # rewritten whole


# Subprocess cases: the real train.py exit code and stderr (a parse error, a config value, a data defect).
SUBPROCESS_CASES = [
    ("parse_error", "good", ["--model.colour", "red"], "model.colour"),
    ("config_value", "good", ["--model.mixup.alpha", "-1"], "mixup.alpha"),
    ("data_defect", "corrupt_image", [], "0009.png"),
]


def test_train_py_exits_2_with_one_error_line(data_roots: dict[str, Path], tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    procs = {}
    for name, data, extra, _ in SUBPROCESS_CASES:  # in parallel: each pays ~5-10 s of imports
        workdir = tmp_path / name
        workdir.mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *cli_args(data_roots[data], workdir / "runs", *extra)],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    stderrs = {}
    for name, _, _, field in SUBPROCESS_CASES:
        stdout, stderrs[name] = procs[name].communicate(timeout=120)
        assert procs[name].returncode == 2, stderrs[name]
        assert field in _error_line(stderrs[name])
        assert "Traceback" not in stdout
        assert _checkpoints(tmp_path / name) == []
    # A parse error prints the error line and nothing else (no 100-line usage block).
    assert len(stderrs["parse_error"].strip().splitlines()) == 1, stderrs["parse_error"]
