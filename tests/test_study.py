"""The study runner: config loading and args, CSV/report/plot, resume, failures, LR sweep, ensembles,
and every study config run at the `ci` scale on a tiny synthetic ImageFolder (CPU, a few steps)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import ensemble
from bench.study import (
    REPO_ROOT,
    RESULT_COLUMNS,
    SWEEP_COLUMNS,
    build_args,
    check_study,
    chosen_lrs,
    load_study,
    lr_sweep,
    main,
    merged_overrides,
    read_rows,
    run_study,
)

STUDIES = sorted((REPO_ROOT / "configs" / "studies").glob("*.yaml"))


def _write_study(tmp_path: Path, **raw) -> Path:
    doc = {
        "name": "toy",
        "base": [str(REPO_ROOT / "configs/cifar10_resnet18.yaml")],
        "seeds": [0, 1],
        "scales": {"ci": {"trainer.max_steps": 2}, "short": {"trainer.max_epochs": 15}},
        "variants": [{"name": "a"}, {"name": "b", "overrides": {"model.label_smoothing": 0.1}}],
    }
    doc.update(raw)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _arg(args: list[str], key: str) -> str:
    """The last value given for `--key` (later values win in jsonargparse)."""
    return [args[i + 1] for i, a in enumerate(args) if a == f"--{key}"][-1]


class CallLog:
    """Every call's args appended to a file (trials run in Ray worker processes), read back by `calls`."""

    def __init__(self, log: Path) -> None:
        self.log = log

    @property
    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def record(self, args: list[str]) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(args) + "\n")


class FakeRun(CallLog):
    """Stands in for models.run.cli.run in Ray trials: deterministic metrics from variant and seed."""

    def __init__(self, log: Path, fail: set[str] = frozenset()) -> None:
        super().__init__(log)
        self.fail = fail

    def __call__(self, args: list[str]) -> dict:
        self.record(args)
        logger = json.loads(_arg(args, "trainer.logger"))["init_args"]
        variant, seed = logger["name"], int(_arg(args, "seed_everything"))
        if variant in self.fail:
            raise ValueError("model.label_smoothing must be in [0, 1), got 2\nsecond line")
        log_dir = Path(logger["save_dir"], variant, logger["version"])
        log_dir.mkdir(parents=True, exist_ok=True)
        acc = {"a": 0.5, "b": 0.6}.get(variant, 0.4) + 0.02 * seed
        return {
            "test/acc": acc, "val/acc_best": acc + 0.01, "train/acc": acc + 0.1, "train/loss": 1.0,
            "test/loss": 1.5, "epochs": 1, "global_step": 2, "fit_time_s": 3.0, "log_dir": str(log_dir),
        }  # fmt: skip


class CountingRun(CallLog):
    """The real models.run.cli.run, each call logged (to count fits made in Ray workers)."""

    def __call__(self, args: list[str]) -> dict:
        from models.run.cli import run

        self.record(args)
        return run(args)


# ----------------------------------------------------------------------------------------------- loading


def test_every_study_config_loads_with_ci_and_gpu_scales() -> None:
    names = {p.stem for p in STUDIES}
    assert {"regularizers", "norms", "optimizers", "batch_size", "kfold", "bagging"} <= names
    for path in STUDIES:
        study = load_study(path)
        assert study.name == path.stem
        assert {"ci", "cpu", "short", "long"} <= set(study.scales)
        for variant in study.variants:
            args = build_args(study, variant, "ci", 0, Path("/tmp/x/y/z"))
            assert args.count("--config") >= 2


def test_study_specific_content() -> None:
    reg = load_study(REPO_ROOT / "configs/studies/regularizers.yaml")
    assert len(reg.variants) == 11 and reg.variants[0].name == "baseline"
    assert "trivialaugment" in [v.name for v in reg.variants]
    kfold = load_study(REPO_ROOT / "configs/studies/kfold.yaml")
    folds = [v for v in kfold.variants if v.group == "kfold5"]
    assert [v.overrides["data.fold"] for v in folds] == [0, 1, 2, 3, 4]
    assert all(v.overrides["data.num_folds"] == 5 for v in folds) and kfold.primary == "val_acc"
    opt = load_study(REPO_ROOT / "configs/studies/optimizers.yaml")
    assert {v.overrides["model.optimizer.name"] for v in opt.variants} == {
        "sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw"
    }  # fmt: skip
    for v in opt.variants:  # the LR sweep is an Optuna search over a log-uniform range around the prior LR
        kind, (low, high) = v.search["model.optimizer.lr"]
        assert kind == "loguniform" and low < v.overrides["model.optimizer.lr"] < high and high / low >= 8
    norms = load_study(REPO_ROOT / "configs/studies/norms.yaml")
    lrs = {v.name: merged_overrides(norms, v, "short")["model.optimizer.lr"] for v in norms.variants}
    assert lrs["group_b8"] == pytest.approx(0.2 * 8 / 512) and lrs["batch_b128"] == pytest.approx(0.05)
    assert load_study(REPO_ROOT / "configs/studies/batch_size.yaml").gap
    assert load_study(REPO_ROOT / "configs/studies/bagging.yaml").ensemble


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "a/b"}, "study.name must be"),
        ({"seeds": []}, "study.seeds must be"),
        ({"scales": {}}, "study.scales must define"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"variants": [{"name": "a", "configs": ["nope.yaml"]}]}, "study.variants[0].configs must name existing"),
        ({"variants": [{"name": "a", "lr_grid": [0.1, -1]}]}, "study.variants[0].lr_grid must be"),
        ({"variants": [{"name": "a", "scales": {"huge": {}}}]}, "must use scales of study.scales"),
        ({"variants": [{"name": "a", "colour": 1}]}, "study.variants[0] keys must be among"),
        ({"report": {"primary": "loss"}}, "study.report.primary must be one of"),
        ({"linear_lr": {"base_lr": 0.1}}, "study.linear_lr must be"),
        ({"typo": 1}, "study keys must be among"),
    ],
)
def test_load_study_rejects_bad_fields(tmp_path: Path, raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study(_write_study(tmp_path, **raw))


def test_args_order_precedence_and_values(tmp_path: Path) -> None:
    study = load_study(
        _write_study(
            tmp_path,
            overrides={"data.batch_size": 64, "model.optimizer.lr": 0.3},
            scales={"ci": {"data.batch_size": 32, "configs": [str(REPO_ROOT / "configs/variants/cutout.yaml")]}},
            variants=[
                {
                    "name": "v",
                    "configs": [str(REPO_ROOT / "configs/variants/mixup.yaml")],
                    "overrides": {"data.batch_size": 16, "model.optimizer.weight_decay": 1e-5, "data.bootstrap": True},
                    "scales": {"ci": {"data.batch_size": 8}},
                }
            ],
        )
    )
    variant = study.variants[0]
    log_dir = tmp_path / "out" / "toy" / "v" / "ci_seed3"
    args = build_args(study, variant, "ci", 3, log_dir, {"model.cutout.size": 8})
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["cifar10_resnet18.yaml", "mixup.yaml", "cutout.yaml"]
    assert _arg(args, "data.batch_size") == "8"  # variant scale beats variant, scale and study
    assert _arg(args, "model.optimizer.weight_decay") == "1.0e-05"  # YAML reads it back as a float
    assert yaml.safe_load(_arg(args, "model.optimizer.weight_decay")) == 1e-5
    assert _arg(args, "data.bootstrap") == "true" and _arg(args, "model.cutout.size") == "8"
    assert _arg(args, "seed_everything") == "3"
    logger = json.loads(_arg(args, "trainer.logger"))["init_args"]
    assert Path(logger["save_dir"], logger["name"], logger["version"]) == log_dir
    with pytest.raises(ValueError, match="--scale must be one of ci for study toy"):
        build_args(study, variant, "long", 0, log_dir)


def test_linear_lr_needs_batch_size_and_scales_lr(tmp_path: Path) -> None:
    study = load_study(
        _write_study(
            tmp_path,
            linear_lr={"base_lr": 0.2, "base_batch": 512},
            variants=[{"name": "b2048", "overrides": {"data.batch_size": 2048}}, {"name": "nob"}],
        )
    )
    assert merged_overrides(study, study.variants[0], "ci")["model.optimizer.lr"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="data.batch_size must be set in the overrides of variant nob"):
        merged_overrides(study, study.variants[1], "ci")


def test_grid_expands_variants_with_group(tmp_path: Path) -> None:
    variants = [{"name": "k", "grid": {"data.fold": [0, 1]}, "overrides": {"x.y": 1}}]
    study = load_study(_write_study(tmp_path, variants=variants))
    assert [(v.name, v.group, v.overrides) for v in study.variants] == [
        ("k_fold0", "k", {"x.y": 1, "data.fold": 0}),
        ("k_fold1", "k", {"x.y": 1, "data.fold": 1}),
    ]
    assert study.select(["k"]) == list(study.variants)
    with pytest.raises(ValueError, match="--only must name variants or groups"):
        study.select(["zzz"])


# ----------------------------------------------------------------------------------------------- runner


class InterruptedRun(FakeRun):
    """Ctrl-C inside the runs of one seed (a KeyboardInterrupt where the fit runs): no result for them."""

    def __init__(self, log: Path, seed: int) -> None:
        super().__init__(log)
        self.seed = seed

    def __call__(self, args: list[str]) -> dict:
        if int(_arg(args, "seed_everything")) == self.seed:
            self.record(args)
            raise KeyboardInterrupt
        return super().__call__(args)


@pytest.mark.slow
def test_runs_interrupted_inside_their_trials_are_redone_alone_by_the_rerun(tmp_path: Path, ray_local) -> None:
    """A KeyboardInterrupt inside a trial's fit (Ray workers get the terminal's Ctrl-C too) gives no ok record:
    the study records the run as not finished, and the same command redoes only those runs."""
    study = load_study(_write_study(tmp_path))
    out = tmp_path / "out"
    first = run_study(study, "ci", out, run_fn=InterruptedRun(tmp_path / "first.jsonl", seed=1))
    assert sorted((r["variant"], r["seed"]) for r in first if r["status"] == "ok") == [("a", "0"), ("b", "0")]
    assert all(r["status"] != "ok" for r in first if r["seed"] == "1")
    rerun = FakeRun(tmp_path / "second.jsonl")
    rows = run_study(study, "ci", out, run_fn=rerun)
    assert sorted(int(_arg(args, "seed_everything")) for args in rerun.calls) == [1, 1]  # finished ones not rerun
    assert sorted((r["variant"], r["seed"]) for r in rows if r["status"] == "ok") == [
        ("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")
    ]  # fmt: skip


@pytest.mark.slow
def test_run_study_writes_csv_report_plot_and_resumes(tmp_path: Path, ray_local) -> None:
    study = load_study(_write_study(tmp_path))
    fake = FakeRun(tmp_path / "calls.jsonl")
    out = tmp_path / "out"
    rows = run_study(study, "ci", out, run_fn=fake)
    assert len(fake.calls) == 4
    with (out / "toy" / "results.csv").open() as f:
        assert tuple(next(csv.reader(f))) == RESULT_COLUMNS
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("a", "0", "ok"), ("a", "1", "ok"), ("b", "0", "ok"), ("b", "1", "ok")
    ]  # fmt: skip
    assert float(rows[3]["test_acc"]) == pytest.approx(0.62) and rows[3]["log_dir"].endswith("b/ci_seed1")
    md = (out / "toy" / "results.md").read_text()
    # a: test acc 0.50 / 0.52 -> 51.00 ± 1.41 (sample std); b: 61.00 ± 1.41
    assert "| a | 2 | 51.00 ± 1.41 | 52.00 ± 1.41 | 1.0 ± 0.0 | 3.0 ± 0.0 |" in md
    assert "| b | 2 | 61.00 ± 1.41 |" in md
    png = out / "toy" / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Second invocation: nothing new to fit, no new rows.
    again = run_study(study, "ci", out, run_fn=fake)
    assert len(fake.calls) == 4 and len(again) == 4
    # A new seed runs only the missing runs; another scale is a different key.
    run_study(study, "ci", out, seeds=[0, 1, 2], run_fn=fake)
    assert len(fake.calls) == 6
    run_study(study, "short", out, seeds=[0], only=["b"], run_fn=fake)
    assert len(fake.calls) == 7 and "## Scale: short" in (out / "toy" / "results.md").read_text()


@pytest.mark.slow
def test_failing_run_is_recorded_and_the_study_continues(tmp_path: Path, ray_local) -> None:
    study = load_study(_write_study(tmp_path, seeds=[0]))
    fake = FakeRun(tmp_path / "calls.jsonl", fail={"a"})
    rows = run_study(study, "ci", tmp_path / "out", run_fn=fake)
    assert [(r["variant"], r["status"]) for r in rows] == [("a", "error"), ("b", "ok")]
    assert rows[0]["message"] == "ValueError: model.label_smoothing must be in [0, 1), got 2"
    assert "- a seed 0: ValueError: model.label_smoothing" in (tmp_path / "out/toy/results.md").read_text()
    # The failed run is retried by the next invocation; once it passes the error leaves the report.
    fake.fail = set()
    rows = run_study(study, "ci", tmp_path / "out", run_fn=fake)
    assert len(fake.calls) == 3 and [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert "Failed runs" not in (tmp_path / "out/toy/results.md").read_text()


@pytest.mark.slow
def test_parse_error_exit_is_recorded_with_its_message(tmp_path: Path, ray_local) -> None:
    import sys

    def exits(args: list[str]) -> dict:
        print("usage: ...\nerror: Parser key 'model.colour' not found", file=sys.stderr)
        raise SystemExit(2)

    rows = run_study(load_study(_write_study(tmp_path, seeds=[0])), "ci", tmp_path / "out", only=["a"], run_fn=exits)
    assert rows[0]["status"] == "error"
    assert rows[0]["message"] == "SystemExit: error: Parser key 'model.colour' not found"


class SweepRun(FakeRun):
    """Validation accuracy by learning rate (0.01: 0.3, 0.1: 0.7, 1.0: 0.5) plus 0.01 x seed."""

    def __call__(self, args: list[str]) -> dict:
        self.record(args)
        lr = float(_arg(args, "model.optimizer.lr"))
        seed = int(_arg(args, "seed_everything"))
        return {"val/acc_best": {0.01: 0.3, 0.1: 0.7, 1.0: 0.5}[lr] + 0.01 * seed, "epochs": 1, "fit_time_s": 1.0}


@pytest.mark.slow
def test_lr_sweep_picks_best_validation_lr_and_never_tests(tmp_path: Path, ray_local) -> None:
    study = load_study(_write_study(tmp_path, variants=[{"name": "a", "lr_grid": [0.01, 0.1, 1.0]}, {"name": "b"}]))
    run_fn = SweepRun(tmp_path / "calls.jsonl")

    chosen = lr_sweep(study, "ci", tmp_path / "out", run_fn=run_fn)
    calls = run_fn.calls
    assert chosen == {"a": 0.1} and len(calls) == 3
    assert all(_arg(a, "run_test") == "false" for a in calls)
    rows = read_rows(tmp_path / "out/toy/lr_sweep.csv")
    assert tuple(rows[0]) == SWEEP_COLUMNS and all("test" not in k for k in rows[0])
    assert "| a | 0.1 | 1 | 70.00 ± 0.00 | yes |" in (tmp_path / "out/toy/lr_sweep.md").read_text()
    assert lr_sweep(study, "ci", tmp_path / "out", run_fn=run_fn) == {"a": 0.1} and len(run_fn.calls) == 3  # resumed
    # Ties go to the smaller LR; other scales are ignored.
    tie = [
        {"variant": "a", "lr": "0.1", "scale": "ci", "status": "ok", "val_acc": "0.5"},
        {"variant": "a", "lr": "0.01", "scale": "ci", "status": "ok", "val_acc": "0.5"},
        {"variant": "a", "lr": "1", "scale": "short", "status": "ok", "val_acc": "0.9"},
    ]
    assert chosen_lrs(tie, "ci") == {"a": 0.01}
    # The swept LR feeds the main study.
    fake = FakeRun(tmp_path / "study_calls.jsonl")
    run_study(study, "ci", tmp_path / "out", seeds=[0], only=["a"], swept_lrs=chosen, run_fn=fake)
    assert _arg(fake.calls[0], "model.optimizer.lr") == "0.1"


@pytest.mark.slow
def test_lr_sweep_and_study_write_one_record_format(tmp_path: Path, ray_local) -> None:
    """Both go through one run loop: the same run gives the same record in lr_sweep.csv and results.csv."""
    study = load_study(
        _write_study(tmp_path, seeds=[0], variants=[{"name": "a", "lr_grid": [0.1]}, {"name": "b", "lr_grid": [0.1]}])
    )
    fake = FakeRun(tmp_path / "calls.jsonl", fail={"b"})
    out = tmp_path / "out"
    assert lr_sweep(study, "ci", out, run_fn=fake) == {"a": 0.1}
    run_study(study, "ci", out, swept_lrs={"a": 0.1, "b": 0.1}, run_fn=fake)
    sweep, runs = read_rows(out / "toy/lr_sweep.csv"), read_rows(out / "toy/results.csv")
    shared = [c for c in SWEEP_COLUMNS if c != "log_dir"]
    assert [{c: r[c] for c in shared} for r in sweep] == [{c: r[c] for c in shared} for r in runs]
    assert [(r["variant"], r["lr"], r["status"], r["val_acc"]) for r in sweep] == [
        ("a", "0.1", "ok", "0.51"), ("b", "0.1", "error", "")
    ]  # fmt: skip
    assert sweep[1]["message"] == "ValueError: model.label_smoothing must be in [0, 1), got 2"
    assert Path(sweep[0]["log_dir"]) == out / "toy/lr_sweep/toy/a/ci_lr0.1_seed0"
    assert Path(runs[0]["log_dir"]) == out / "toy/a/ci_seed0"
    assert [_arg(c, "run_test") for c in fake.calls[:2]] == ["false", "false"]
    assert all("--run_test" not in c for c in fake.calls[2:])


def test_main_reports_user_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write_study(tmp_path)
    assert main([str(path), "--scale", "huge", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: --scale must be one of ci, short for study toy, got 'huge'"
    assert main([str(path), "--set", "novalue", "--out", str(tmp_path / "o")]) == 2
    assert main([str(tmp_path / "missing.yaml")]) == 2


# ----------------------------------------------------------------------------------------------- ensembles


def test_ensemble_accuracy_averages_probabilities() -> None:
    labels = np.array([0, 1, 2, 1])
    m1 = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 3/4
    m2 = np.array([[0.3, 0.7, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.4], [0.0, 1.0, 0.0]])  # 2/4
    assert ensemble.accuracy(m1, labels) == 0.75 and ensemble.accuracy(m2, labels) == 0.5
    # mean: [.45 .55 0] -> 1 (wrong), [.3 .7 0] -> 1, [0 .3 .7] -> 2, [0 1 0] -> 1: 3/4
    np.testing.assert_allclose(ensemble.ensemble_probs([m1, m2])[0], [0.45, 0.55, 0.0])
    assert ensemble.ensemble_accuracy([m1, m2], labels) == 0.75
    # Averaging probabilities is not majority voting: two weakly wrong members lose to one sure member.
    sure = np.array([[0.9, 0.1]])
    weak = np.array([[0.45, 0.55]])
    assert ensemble.ensemble_accuracy([sure, weak, weak], np.array([0])) == 1.0
    with pytest.raises(ValueError, match="members must share one"):
        ensemble.ensemble_probs([m1, m1[:2]])
    with pytest.raises(ValueError, match="members must hold at least one"):
        ensemble.ensemble_probs([])


def test_ensemble_summary_groups_stored_probs(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 0])
    probs = {
        "r0": np.eye(2)[[0, 1, 0, 0]] * 0.8 + 0.1,  # 3/4
        "r1": np.eye(2)[[1, 1, 1, 0]] * 0.6 + 0.2,  # 3/4, but less sure
        "r2": np.eye(2)[[0, 0, 1, 1]] * 0.8 + 0.1,  # 2/4, other group
    }
    rows = []
    for name, p in probs.items():
        d = tmp_path / name
        d.mkdir()
        np.save(d / "probs_test.npy", p.astype(np.float32))
        np.save(d / "labels_test.npy", labels)
        group = "g" if name != "r2" else "h"
        rows.append({"scale": "ci", "status": "ok", "group": group, "variant": name, "log_dir": str(d)})
    rows.append({"scale": "ci", "status": "error", "group": "g", "variant": "x", "log_dir": str(tmp_path / "none")})
    summary = {e["group"]: e for e in ensemble.ensemble_summary(rows, "ci")}
    assert summary["g"]["n"] == 2 and summary["g"]["single_mean"] == 0.75
    # mean of r0, r1: [.55 .45] ok, [.15 .85] ok, [.55 .45] wrong (label 1), [.85 .15] ok
    assert summary["g"]["ensemble"] == 0.75
    assert summary["h"]["n"] == 1 and summary["h"]["ensemble"] == 0.5
    table = ensemble.ensemble_table(list(summary.values()))
    assert table[2] == "| g | 2 | 75.00 ± 0.00 | 75.00 | 75.00 | +0.00 |"


# ----------------------------------------------------------------------------------------------- ci scale, real fits


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """The ci models are tiny: one thread is as fast, and immune to a busy machine's thread contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder with 4 classes x 24 train / 8 test images, 32x32 RGB PNG (class = brightness band)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((32, 32, 3)) * 60 + c * 60).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _study_main(name: str, out: Path, data: Path, *extra: str) -> int:
    study = str(REPO_ROOT / f"configs/studies/{name}.yaml")
    return main([study, "--scale", "ci", "--out", str(out), "--set", f"data.root={data}", *extra])


def test_every_study_variant_instantiates_at_ci_scale(tiny_data: Path) -> None:
    for path in STUDIES:
        problems = check_study(load_study(path), "ci", {"data.root": str(tiny_data)})
        assert problems and all(p == "" for p in problems.values()), (path.name, problems)
    bad = check_study(load_study(STUDIES[0]), "ci", {"data.root": str(tiny_data), "model.optimizer.name": "sgdd"})
    assert all(p.startswith("ValueError: model.optimizer.name must be one of") for p in bad.values())


@pytest.mark.slow
def test_regularizers_ci_runs_reports_and_resumes(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    counted = CountingRun(tmp_path / "calls.jsonl")
    study = load_study(REPO_ROOT / "configs/studies/regularizers.yaml")
    run_study(study, "ci", tmp_path, only=["combined"], extra={"data.root": str(tiny_data)}, run_fn=counted)
    assert len(counted.calls) == 1
    rows = read_rows(tmp_path / "regularizers/results.csv")
    assert [(r["variant"], r["scale"], r["status"]) for r in rows] == [("combined", "ci", "ok")]
    row = rows[0]
    assert 0.0 <= float(row["test_acc"]) <= 1.0 and 0.0 <= float(row["val_acc"]) <= 1.0
    assert row["global_step"] == "2" and row["epochs"] == "1" and float(row["fit_time_s"]) > 0
    assert float(row["train_loss"]) > 0 and 0.0 <= float(row["train_acc"]) <= 1.0
    assert Path(row["log_dir"]) == tmp_path / "regularizers/combined/ci_seed0"
    assert list(Path(row["log_dir"], "checkpoints").glob("best*.ckpt"))
    config = yaml.safe_load(Path(row["log_dir"], "config.yaml").read_text())
    assert config["model"]["label_smoothing"] == 0.1 and config["model"]["drop_path_rate"] == 0.05
    md = (tmp_path / "regularizers/results.md").read_text()
    assert f"| combined | 1 | {float(row['test_acc']) * 100:.2f} ± 0.00 |" in md
    assert (tmp_path / "regularizers/results.png").stat().st_size > 1000
    csv_mtime = (tmp_path / "regularizers/results.csv").stat().st_mtime_ns
    assert _study_main("regularizers", tmp_path, tiny_data, "--only", "combined") == 0
    assert len(counted.calls) == 1  # resumed: nothing refit
    assert (tmp_path / "regularizers/results.csv").stat().st_mtime_ns == csv_mtime


@pytest.mark.slow
def test_failing_variant_recorded_with_real_cli(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    path = _write_study(
        tmp_path,
        base=[str(REPO_ROOT / "configs/cifar10_resnet18.yaml")],
        seeds=[0],
        scales={"ci": {"configs": [str(REPO_ROOT / "configs/studies/overlays/ci.yaml")]}},
        variants=[{"name": "bad", "overrides": {"model.mixup.alpha": -1.0}}, {"name": "good"}],
    )
    assert main([str(path), "--scale", "ci", "--out", str(tmp_path / "out"), "--set", f"data.root={tiny_data}"]) == 0
    rows = read_rows(tmp_path / "out/toy/results.csv")
    assert [(r["variant"], r["status"]) for r in rows] == [("bad", "error"), ("good", "ok")]
    assert rows[0]["message"].startswith("ValueError: model.mixup.alpha must be")


@pytest.mark.slow
def test_norms_ci_small_batch_group_norm(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    assert _study_main("norms", tmp_path, tiny_data, "--only", "group_b8") == 0
    (row,) = read_rows(tmp_path / "norms/results.csv")
    assert row["status"] == "ok" and float(row["lr"]) == pytest.approx(0.2 * 8 / 512)
    config = yaml.safe_load(Path(row["log_dir"], "config.yaml").read_text())
    assert config["model"]["norm"] == "group" and config["data"]["batch_size"] == 8


@pytest.mark.slow
def test_optimizers_ci_lr_sweep_then_study(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    import dataclasses

    study = load_study(REPO_ROOT / "configs/studies/optimizers.yaml")
    adam = dataclasses.replace(study.variant("adam"), lr_grid=(1e-3, 1e-2))
    study = dataclasses.replace(study, variants=(adam,))
    chosen = lr_sweep(study, "ci", tmp_path, extra={"data.root": str(tiny_data)})
    rows = read_rows(tmp_path / "optimizers/lr_sweep.csv")
    assert [(r["lr"], r["status"]) for r in rows] == [("0.001", "ok"), ("0.01", "ok")]
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["lr"])))
    assert chosen == {"adam": float(best["lr"])}
    # The sweep never tests: no test metrics in the run's logs.
    config = yaml.safe_load(Path(rows[0]["log_dir"], "config.yaml").read_text())
    assert config["run_test"] is False and config["model"]["optimizer"]["name"] == "adam"


@pytest.mark.slow
def test_batch_size_ci_reports_clean_train_accuracy_and_gap(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    assert _study_main("batch_size", tmp_path, tiny_data, "--only", "b512") == 0
    (row,) = read_rows(tmp_path / "batch_size/results.csv")
    assert row["status"] == "ok", row["message"]
    probs, labels = ensemble.load_split_probs(row["log_dir"], "train")
    assert probs.shape == (80, 4) and labels.shape == (80,)  # 96 train images - 16 validation
    assert float(row["train_acc_clean"]) == pytest.approx(ensemble.accuracy(probs, labels))
    md = (tmp_path / "batch_size/results.md").read_text()
    gap = (float(row["train_acc_clean"]) - float(row["test_acc"])) * 100
    assert "train-test gap (pp)" in md and f"| {gap:.2f} ± 0.00 |" in md


@pytest.mark.slow
def test_kfold_ci_fold_and_single_split(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    assert _study_main("kfold", tmp_path, tiny_data, "--only", "kfold5_fold1,single_split") == 0
    rows = read_rows(tmp_path / "kfold/results.csv")
    assert [(r["variant"], r["group"], r["status"]) for r in rows] == [
        ("kfold5_fold1", "kfold5", "ok"), ("single_split", "single_split", "ok")
    ]  # fmt: skip
    config = yaml.safe_load(Path(rows[0]["log_dir"], "config.yaml").read_text())
    assert (config["data"]["num_folds"], config["data"]["fold"]) == (5, 1)
    # The k-fold group's out-of-fold predictions and CV summary (bench.study.oof), from the one fold run here.
    summary = json.loads((tmp_path / "kfold/cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [1] and summary["std_accuracy"] is None
    assert summary["images"] == 19  # fold 1 of the 96 training images in 5 stratified folds (24 per class)


@pytest.mark.slow
def test_bagging_ci_ensemble_of_bootstrap_models(tiny_data: Path, tmp_path: Path, ray_local) -> None:
    assert _study_main("bagging", tmp_path, tiny_data, "--only", "bagged", "--seeds", "0", "1") == 0
    rows = read_rows(tmp_path / "bagging/results.csv")
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    members = [ensemble.load_split_probs(r["log_dir"], "test") for r in rows]
    for (probs, labels), r in zip(members, rows):
        assert probs.shape == (32, 4)  # the whole test split: 4 classes x 8
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert ensemble.accuracy(probs, labels) == pytest.approx(float(r["test_acc"]))  # same checkpoint, same data
    configs = [yaml.safe_load(Path(r["log_dir"], "config.yaml").read_text())["data"] for r in rows]
    assert [(c["bootstrap"], c["seed"]) for c in configs] == [(True, 0), (True, 1)]
    expected = ensemble.ensemble_accuracy([p for p, _ in members], members[0][1]) * 100
    assert "| bagged | 2 | " in (md := (tmp_path / "bagging/results.md").read_text())
    assert f"| {expected:.2f} |" in md.split("### Ensembles")[1]


@pytest.mark.slow
def test_sharpness_metrics_become_study_columns(tmp_path: Path, ray_local) -> None:
    """A run with sharpness on records both measures; the report gains their mean +- std columns."""
    from bench.study import load_study, run_study

    study = load_study(_write_study(tmp_path, seeds=[0, 1], variants=[{"name": "a"}]))

    def fake(args: list[str]) -> dict:
        eig, eps = {0: (10.0, 2.0), 1: (14.0, 4.0)}[int(_arg(args, "seed_everything"))]
        return {"test/acc": 0.5, "sharpness/hessian_max_eig": eig, "sharpness/eps_sharpness": eps}

    rows = run_study(study, "ci", tmp_path / "out", run_fn=fake)
    assert [(r["hessian_max_eig"], r["eps_sharpness"]) for r in rows] == [("10", "2"), ("14", "4")]
    report = (tmp_path / "out" / "toy" / "results.md").read_text()
    assert "| Hessian max eig | eps-sharpness (%) |" in report
    assert "| 12.0 ± 2.8 | 3.0 ± 1.4 |" in report  # sample std of (10, 14) and (2, 4)
