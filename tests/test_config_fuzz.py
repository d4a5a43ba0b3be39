"""A seeded fuzz test over the config schema: every config with 1-3 keys set to a wrong type, a boundary or
an out-of-range value either trains (one step) or exits 2 with one `error:` line naming a key it set; no
traceback ever reaches the user.

The keys and their types come from the CLI's own parsed defaults (so a new setting is fuzzed the day it is
added); a few keys are left out because a legal value of theirs downloads, compiles or measures for minutes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from helpers import main_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SEED, CASES = 0, 400
SECTIONS = ("model.", "data.", "checkpoint.", "early_stopping.", "weight_noise.", "sharpness.")
TRAINER_KEYS = (
    "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.log_every_n_steps",
    "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm", "trainer.precision",
    "trainer.accumulate_grad_batches", "trainer.check_val_every_n_epoch", "trainer.val_check_interval",
    "trainer.num_sanity_val_steps", "trainer.deterministic", "trainer.benchmark",
)
# Legal values of these start work that takes minutes (a download, a compile, a measurement) or spawn processes.
LEFT_OUT = ("model.pretrained", "model.compile", "data.download", "data.num_workers", "sharpness.enable")


def base_args(data: Path, workdir: Path) -> list[str]:
    """A valid run bounded to one training step whatever single bound a case changes."""
    return [
        "--seed_everything", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "1", "--trainer.max_steps", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(workdir),
        "--trainer.logger", "false", "--run_test", "false",
        "--model.backbone", "test_resnet", "--model.cifar_stem", "true",
        "--data.dataset", "imagefolder", "--data.root", str(data), "--data.val_size", "16",
        "--data.batch_size", "8", "--data.loader", "device", "--data.num_workers", "0",
    ]


def schema(data: Path, workdir: Path) -> dict[str, Any]:
    """Every scalar setting the CLI parses for a valid run, with its parsed default."""
    from models.run.cli import CifarCLI

    flat = vars(CifarCLI(base_args(data, workdir)).config.clone().as_flat())
    keys = {k: v for k, v in flat.items() if k.startswith(SECTIONS) or k in TRAINER_KEYS}
    scalar = (bool, int, float, str)
    return {k: v for k, v in keys.items() if k not in LEFT_OUT and (v is None or isinstance(v, scalar))}


def wrong_values(default: Any) -> list[str]:
    """Command-line spellings of wrong types, boundaries and out-of-range values for a setting."""
    if isinstance(default, bool):
        return ["maybe", "2", "-1", "null"]
    if isinstance(default, int):
        return ["-1", "0", "-1000000000", "10000", "1.5", "many", "null", ".nan"]
    if isinstance(default, float):
        return ["-1.0", "0.0", ".nan", ".inf", "-.inf", "1e30", "x", "null"]
    if isinstance(default, str):
        return ["", "no_such_choice", "7", "null"]
    return ["x", "-1", "0.5", ".nan"]


@pytest.fixture(scope="module")
def fuzz_space(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return schema(tiny_data, tmp_path_factory.mktemp("schema"))


def test_schema_is_read_from_the_cli(fuzz_space: dict[str, Any]) -> None:
    assert len(fuzz_space) > 80
    assert fuzz_space["model.mixup.alpha"] == 0.0 and fuzz_space["data.batch_size"] == 8
    assert not any(k in fuzz_space for k in LEFT_OUT)


def test_wrong_values_train_or_exit_2_with_one_line_naming_a_key(
    fuzz_space: dict[str, Any], tiny_data: Path, in_tmp_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path = in_tmp_cwd  # relative paths a case sets (checkpoint.dirpath: x) land here, not in the checkout
    rng = random.Random(SEED)
    keys = sorted(fuzz_space)
    outcomes = {"trained": 0, "refused": 0}
    failures = []
    for case in range(CASES):
        chosen = rng.sample(keys, rng.choice((1, 2, 3)))
        settings = [(key, rng.choice(wrong_values(fuzz_space[key]))) for key in chosen]
        args = base_args(tiny_data, tmp_path / f"case{case}")
        args += [f"--{key}={value}" for key, value in settings]
        try:
            code = main_cli(args)
        except BaseException as err:  # noqa: BLE001 - any escape is a failure of the case, reported below
            code = f"raised {type(err).__name__}: {str(err)[:300]}"
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        named = [key for key, _ in settings if errors and (key in errors[0] or key.split(".", 1)[1] in errors[0])]
        ok = "Traceback" not in err and (code == 0 or (code == 2 and len(errors) == 1 and named))
        if not ok:
            said = (errors or err.splitlines()[-1:] or [""])[0][:300]
            failures.append(f"case {case} {settings}: exit {code}: {said}")
        elif code == 0:
            outcomes["trained"] += 1
        else:
            outcomes["refused"] += 1
    assert not failures, f"{len(failures)} of {CASES} cases:\n" + "\n".join(failures)
    assert outcomes["trained"] >= 10 and outcomes["refused"] >= CASES // 2, outcomes
