"""Studies on Ray Tune: trials in parallel, a trial equal to a standalone run, resume after a killed driver,
an Optuna/ASHA sweep whose overlay train.py takes, and bad input (one line, exit 2) before any work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.study import REPO_ROOT, build_args, load_study, main, read_rows, run_study
from helpers import run_cli, subprocess_env

CI_OVERLAY = str(REPO_ROOT / "configs/studies/overlays/ci.yaml")


def _study(tmp_path: Path, name: str = "toy", **raw) -> Path:
    doc = {
        "name": name,
        "base": [str(REPO_ROOT / "configs/cifar10_resnet18.yaml")],
        "seeds": [0],
        "scales": {"ci": {"configs": [CI_OVERLAY]}},
        "variants": [{"name": "a"}, {"name": "b", "overrides": {"model.label_smoothing": 0.1}}],
    }
    doc.update(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class SleepRun:
    """A fake fit that sleeps, writing (variant, pid, start, end) to a file: shows when trials overlap."""

    def __init__(self, log: Path, seconds: float) -> None:
        self.log, self.seconds = log, seconds

    def __call__(self, args: list[str]) -> dict:
        start = time.time()
        time.sleep(self.seconds)
        logger = json.loads(args[args.index("--trainer.logger") + 1])["init_args"]
        with self.log.open("a") as f:
            f.write(json.dumps([logger["name"], os.getpid(), start, time.time()]) + "\n")
        return {"val/acc_best": 0.5, "test/acc": 0.5, "epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- bad input


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"model.optimizer.lr": {"loguniform": [0.1, 0.001]}},
         "error: study.variants[0].search.model.optimizer.lr.loguniform must be [low, high] with 0 < low < high, "
         "got [0.1, 0.001]"),
        ({"model.optimizer.lr": {"uniform": [1.0, 0.5]}},
         "error: study.variants[0].search.model.optimizer.lr.uniform must be [low, high] with low < high, "
         "got [1.0, 0.5]"),
        ({"model.optimizer.lr": {"lognormal": [0.1, 1.0]}},
         "error: study.variants[0].search.model.optimizer.lr must be {kind: [...]} with kind one of loguniform, "
         "uniform, int, choice, got {'lognormal': [0.1, 1.0]}"),
    ],
)  # fmt: skip
def test_bad_distribution_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, search: dict, message: str):
    path = _study(tmp_path, variants=[{"name": "a", "search": search}])
    assert main([str(path), "--scale", "ci", "--sweep", "--out", str(tmp_path / "out")]) == 2
    assert _error(capsys) == message
    assert not (tmp_path / "out").exists()


def test_unknown_search_key_is_one_line_before_ray(tiny_data: Path, tmp_path: Path, capsys) -> None:
    path = _study(tmp_path, variants=[{"name": "a", "search": {"model.optimzer.lr": {"loguniform": [1e-3, 1e-1]}}}])
    argv = [str(path), "--scale", "ci", "--sweep", "--out", str(tmp_path / "out"), "--set", f"data.root={tiny_data}"]
    assert main(argv) == 2
    assert _error(capsys) == "error: variant a search key must be a config key train.py takes, got 'model.optimzer.lr'"
    assert not (tmp_path / "out" / "toy" / "sweep.csv").exists()


def test_cluster_address_that_does_not_answer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    assert main([str(_study(tmp_path)), "--scale", "ci", "--out", str(tmp_path / "out"), "--address", address]) == 2
    assert time.perf_counter() - start < 10
    assert _error(capsys) == (
        f"error: --address must be auto, host:port or ray://host:port of a running Ray cluster (no answer within 3 s), "
        f"got '{address}'"
    )
    assert main([str(_study(tmp_path)), "--scale", "ci", "--out", str(tmp_path / "out"), "--address", "nowhere"]) == 2
    assert _error(capsys).startswith("error: --address must be auto, host:port or ray://host:port")
    assert read_rows(tmp_path / "out" / "toy" / "results.csv") == []


def test_missing_ray_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main([str(_study(tmp_path)), "--scale", "ci", "--out", str(tmp_path / "out")]) == 2
    assert _error(capsys).endswith('pip install "cifar-aug[tune]"')


def test_trial_resources_split_the_cores() -> None:
    from bench.study.engine import EngineOptions, trial_resources

    assert trial_resources(EngineOptions(max_concurrent=2), {"CPU": 2}) == ({"cpu": 1.0, "gpu": 0.0}, 1)
    assert trial_resources(EngineOptions(max_concurrent=3), {"CPU": 16}) == ({"cpu": 5.0, "gpu": 0.0}, 5)
    assert trial_resources(EngineOptions(), {"CPU": 16}) == ({"cpu": 1.0, "gpu": 0.0}, 1)
    assert trial_resources(EngineOptions(), {"CPU": 64, "GPU": 8}) == ({"cpu": 8.0, "gpu": 1.0}, 8)
    assert trial_resources(EngineOptions(gpus_per_trial=0.5), {"CPU": 32, "GPU": 8}) == ({"cpu": 2.0, "gpu": 0.5}, 2)
    with pytest.raises(ValueError, match="--cpus-per-trial must be <= the 2 CPUs Ray has, got 4"):
        trial_resources(EngineOptions(cpus_per_trial=4), {"CPU": 2})


# ----------------------------------------------------------------------------------------------- Ray trials


@pytest.mark.slow
def test_two_trials_run_at_the_same_time(tmp_path: Path, ray_local) -> None:
    from bench.study.engine import EngineOptions

    log = tmp_path / "spans.jsonl"
    study = load_study(_study(tmp_path))
    rows = run_study(study, "ci", tmp_path / "out", run_fn=SleepRun(log, 4.0), options=EngineOptions(max_concurrent=2))
    assert [(r["variant"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    (_, pid_a, start_a, end_a), (_, pid_b, start_b, end_b) = sorted(json.loads(x) for x in log.read_text().splitlines())
    assert pid_a != pid_b and max(start_a, start_b) < min(end_a, end_b)  # two workers, overlapping in time


@pytest.mark.slow
def test_trial_equals_standalone_run_bit_for_bit(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    """Same config and seed: a Ray trial and models.run.cli.run in this process (as train.py) give the same final
    validation accuracy and the same last.ckpt weights (one torch thread in both)."""
    scales = {"ci": {"configs": [CI_OVERLAY], "trainer.max_epochs": 2}}
    study = load_study(_study(tmp_path, variants=[{"name": "a"}], scales=scales))
    extra = {"data.root": str(tiny_data)}
    (row,) = run_study(study, "ci", tmp_path / "out", extra=extra)
    assert row["status"] == "ok", row["message"]
    trial = json.loads((Path(row["log_dir"]) / "record.json").read_text())
    alone = run_cli(build_args(study, study.variants[0], "ci", 0, tmp_path / "alone" / "toy" / "a" / "ci_seed0", extra))
    assert trial["val_acc"] == alone["val/acc_best"] and trial["epochs"] == alone["epochs"] == 2
    ours = torch.load(Path(row["log_dir"], "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    theirs = torch.load(Path(alone["log_dir"], "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ours["state_dict"].keys() == theirs["state_dict"].keys() and ours["global_step"] == theirs["global_step"]
    assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in ours["state_dict"])


@pytest.mark.slow
def test_sweep_writes_an_overlay_train_py_takes(tiny_data: Path, tmp_path: Path, ray_local, capsys) -> None:
    search = {"model.optimizer.lr": {"loguniform": [1e-3, 0.3]}, "model.optimizer.name": {"choice": ["sgd", "adam"]}}
    path = _study(tmp_path, name="sw", variants=[{"name": "a", "search": search}],
                  sweep={"num_samples": 3, "grace_period": 1, "reduction_factor": 2},
                  scales={"ci": {"configs": [CI_OVERLAY], "trainer.max_epochs": 2}})  # fmt: skip
    argv = [str(path), "--scale", "ci", "--sweep", "--out", str(tmp_path / "out"), "--set", f"data.root={tiny_data}",
            "--max-concurrent", "2"]  # fmt: skip
    assert main(argv) == 0
    rows = read_rows(tmp_path / "out/sw/sweep.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"ok", "stopped"}
    done = [r for r in rows if r["status"] == "ok"]
    assert done and all(r["epochs"] == "2" for r in done)  # ASHA stops only after its first rung (1 epoch)
    assert all(r["epochs"] == "1" for r in rows if r["status"] == "stopped")
    best = max(done, key=lambda r: float(r["val_acc"]))
    overlay = tmp_path / "out/sw/sweep/a_ci_best.yaml"
    params = json.loads(best["params"])
    assert yaml.safe_load(overlay.read_text()) == {
        "model": {"optimizer": {"lr": params["model.optimizer.lr"], "name": params["model.optimizer.name"]}}
    }
    assert 1e-3 <= params["model.optimizer.lr"] <= 0.3
    assert "trials on Ray" in capsys.readouterr().out
    # train.py takes the overlay as is.
    args = build_args(load_study(path), load_study(path).variants[0], "ci", 0, tmp_path / "fit/x/a/v",
                      {"data.root": str(tiny_data), "run_test": False})  # fmt: skip
    metrics = run_cli([*args, "--config", str(overlay), "--trainer.max_epochs", "1"])
    config = yaml.safe_load(Path(metrics["log_dir"], "config.yaml").read_text())
    assert config["model"]["optimizer"]["lr"] == params["model.optimizer.lr"]
    assert config["model"]["optimizer"]["name"] == params["model.optimizer.name"]
    # Resumed: the same command runs nothing more.
    assert main(argv) == 0
    assert len(read_rows(tmp_path / "out/sw/sweep.csv")) == 3
    assert "3 trials, 3 done, 0 to do" in capsys.readouterr().out


def _ray_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL the driver's process group once one trial has its record; the same command finishes the rest and
    leaves the finished trial's files untouched; no Ray process of that driver is left running."""
    variants = [{"name": n, "overrides": {"model.label_smoothing": s}} for n, s in (("a", 0.0), ("b", 0.1), ("c", 0.2))]
    path = _study(tmp_path, variants=variants)
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # the driver's Ray session lives here (short socket paths)
    env = dict(subprocess_env(), TMPDIR=ray_tmp)
    cmd = [sys.executable, "-m", "bench.study", str(path), "--scale", "ci", "--out", str(out),
           "--set", f"data.root={tiny_data}", "--max-concurrent", "1"]  # fmt: skip
    try:
        driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        records = [out / "toy" / v / "ci_seed0" / "record.json" for v in "abc"]
        deadline = time.time() + 120
        while not any(r.exists() for r in records) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        finished = [r for r in records if r.exists()]
        assert finished and len(finished) < 3, "kill came too late to leave work undone"
        files = [p for r in finished for p in r.parent.rglob("*") if p.is_file()]
        before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
        deadline = time.time() + 30
        while _ray_processes(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert _ray_processes(ray_tmp) == []  # raylet, gcs_server and workers went with their driver
        rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        rows = read_rows(out / "toy" / "results.csv")
        assert sorted((r["variant"], r["status"]) for r in rows) == [("a", "ok"), ("b", "ok"), ("c", "ok")]
        assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before  # not run again, not rewritten
        for r in finished:  # skipped (in the ledger) or taken from its record.json, never a trial again
            assert f"{r.parent.parent.name} seed 0: ok in" not in rerun.stdout
        assert _ray_processes(ray_tmp) == []
    finally:
        for line in _ray_processes(ray_tmp):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
