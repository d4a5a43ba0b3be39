"""The run as a whole: `--trainer.default_root_dir` holds the whole run, train.py ends with a summary."""

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jsonargparse import Namespace

from helpers import main_cli, tiny_args
from models.run.log_dir import logs_under_root_dir, tensorboard_command
from models.run.summary import run_summary

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # end-to-end runs


def _without_logger_save_dir(args: list[str]) -> list[str]:
    i = args.index("--trainer.logger.init_args.save_dir")
    return args[:i] + args[i + 2:]


def test_default_root_dir_holds_the_whole_run_and_main_prints_a_summary(tiny_data, in_tmp_cwd, capsys):
    root = in_tmp_cwd / "elsewhere"
    assert main_cli(_without_logger_save_dir(tiny_args(tiny_data, root, max_epochs=2))) == 0
    out = capsys.readouterr().out
    assert os.listdir(in_tmp_cwd) == ["elsewhere"]
    (log_dir,) = root.glob("tiny/version_*")
    assert list(log_dir.glob("events.out.tfevents.*"))
    (best,) = (log_dir / "checkpoints").glob("best-epoch*.ckpt")
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(root)  # resolved in the saved config

    summary = out[out.index("run summary"):].splitlines()
    assert summary[0] == "run summary"
    fields = dict(re.fullmatch(r"  (\S.*?)\s{2,}(.*)", line).groups() for line in summary[1:6])
    epoch = int(re.search(r"epoch(\d+)", best.name).group(1))
    assert re.fullmatch(rf"\d+\.\d\d% at epoch {epoch}", fields["best val acc"])
    assert re.fullmatch(r"top-1 \d+\.\d\d%, top-5 \d+\.\d\d%, balanced \d+\.\d\d%", fields["test acc"])
    assert re.fullmatch(r"\d+\.\d s for 2 epochs, [\d,]+ train images/s", fields["fit"])
    assert fields["best checkpoint"] == str(best)
    assert fields["TensorBoard"] == f"tensorboard --logdir {log_dir}"


def _config(logger, root="runs") -> Namespace:
    return Namespace(trainer=Namespace(default_root_dir=root, logger=logger))


def _tb(save_dir) -> Namespace:
    return Namespace(class_path="pytorch_lightning.loggers.TensorBoardLogger", init_args=Namespace(save_dir=save_dir))


def test_logs_under_root_dir_fills_only_unset_save_dirs():
    config = _config([_tb(""), _tb(None), _tb("/explicit")], root="/work/run")
    logs_under_root_dir(config)
    assert [lg.init_args.save_dir for lg in config.trainer.logger] == ["/work/run", "/work/run", "/explicit"]
    config = _config(_tb(""), root=None)
    logs_under_root_dir(config)
    assert config.trainer.logger.init_args.save_dir == "."
    config = _config(False)
    logs_under_root_dir(config)
    assert config.trainer.logger is False
    assert tensorboard_command(Path("runs/a b/version_0")) == "tensorboard --logdir 'runs/a b/version_0'"


def test_summary_without_validation_test_or_logger():
    trainer = SimpleNamespace(callbacks=[], checkpoint_callback=None, loggers=[])
    assert run_summary(trainer, {"fit_time_s": 725.0, "epochs": 3}).splitlines() == [
        "run summary",
        "  best val acc  no validation split (the last epoch is tested)",
        "  test acc      not run (run_test false)",
        "  fit           12 min 05 s for 3 epochs",
        "  checkpoint    none saved",
        "  TensorBoard   no TensorBoard logger",
    ]


def test_summary_names_both_sharpness_measures_when_measured():
    trainer = SimpleNamespace(callbacks=[], checkpoint_callback=None, loggers=[])
    metrics = {"fit_time_s": 5.0, "epochs": 1, "sharpness/hessian_max_eig": 196.94, "sharpness/eps_sharpness": 2.5}
    assert "  sharpness     Hessian max eig 196.9, eps-sharpness 2.5%" in run_summary(trainer, metrics).splitlines()


def test_summary_names_the_checkpoint_monitor_when_it_is_not_val_acc():
    trainer = SimpleNamespace(callbacks=[], checkpoint_callback=None, loggers=[])
    metrics = {"fit_time_s": 5.0, "epochs": 1, "monitor": "val/bal_acc", "val/bal_acc_best": 0.41234,
               "test/acc": 0.5, "test/acc5": 0.9, "test/bal_acc": 0.25}
    lines = run_summary(trainer, metrics).splitlines()
    assert lines[1] == "  best val/bal_acc  0.4123 (the checkpoint's monitor)"
    assert lines[2] == "  test acc          top-1 50.00%, top-5 90.00%, balanced 25.00%"
