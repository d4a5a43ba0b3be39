"""bench/train_speed.py on CPU in its smallest mode, plus the pieces its numbers rest on (bench/host_sync.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.host_sync import HostSyncAudit
from bench.train_speed import (
    RunResult,
    _one_cycle,
    crop_flip_normalize,
    device_dataset_bytes,
    main,
    markdown_table,
    merge_repeats,
    synthetic_cifar,
    train_subset,
    write_imagefolder,
)


def _reference_crop_flip(images: torch.Tensor, index: torch.Tensor, seed: int, pad: int) -> torch.Tensor:
    """Per-sample F.pad(reflect) + crop + flip, drawing the same random numbers as crop_flip_normalize."""
    b = index.numel()
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-pad, pad + 1, (2, b, 1), generator=g)
    flip = torch.randint(0, 2, (b, 1), generator=g, dtype=torch.bool)
    out = []
    for i, k in enumerate(index.tolist()):
        img = images[k].permute(2, 0, 1).float()[None]  # (1, C, H, W)
        padded = F.pad(img, (pad, pad, pad, pad), mode="reflect")[0]
        top, left = int(offsets[0, i]) + pad, int(offsets[1, i]) + pad
        crop = padded[:, top : top + img.shape[2], left : left + img.shape[3]]
        out.append(crop.flip(2) if bool(flip[i]) else crop)
    return torch.stack(out)


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_flip_matches_pad_crop_flip_reference(pad: int) -> None:
    images = torch.randint(0, 256, (7, 9, 11, 3), dtype=torch.uint8)  # odd, non-square on purpose
    index = torch.tensor([6, 0, 3, 3, 5])
    ones, zeros = torch.ones(3), torch.zeros(3)
    got = crop_flip_normalize(images, index, ones, zeros, torch.Generator().manual_seed(5), pad=pad)
    want = _reference_crop_flip(images, index, seed=5, pad=pad)
    assert got.shape == (5, 3, 9, 11)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_crop_flip_normalizes_per_channel() -> None:
    images = torch.full((2, 8, 8, 3), 51, dtype=torch.uint8)  # constant image: crop/flip cannot change it
    scale, shift = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, -1.0, 3.0])
    got = crop_flip_normalize(images, torch.tensor([0, 1]), scale, shift, torch.Generator().manual_seed(0))
    assert torch.allclose(got[:, :, 0, 0], torch.tensor([51.0, 101.0, 28.5]).expand(2, 3))


def test_crop_flip_rejects_padding_reflect_cannot_do() -> None:
    images = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="pad must be in"):
        crop_flip_normalize(images, torch.tensor([0]), torch.ones(3), torch.zeros(3), torch.Generator(), pad=4)


def test_one_cycle_rises_then_falls_to_zero() -> None:
    f = _one_cycle(total_steps=100, pct_start=0.25)
    assert f(0) == 0.0
    assert f(25) == pytest.approx(1.0)
    assert f(12) < f(24) and f(30) > f(90)
    assert f(100) == pytest.approx(0.0)


def test_markdown_table_ratios_against_the_plain_run_with_the_same_mix() -> None:
    runs = [
        RunResult("plain", False, [9.0, 2.0, 2.0], 1000, 1.0, peak_bytes=100 * 2**20),
        RunResult("lightning", False, [9.0, 2.2, 2.2], 1000, 1.0, peak_bytes=110 * 2**20),
        RunResult("plain", True, [9.0, 4.0], 1000, 1.0),
        RunResult("lightning", True, [9.0, 5.0], 1000, 1.0),
    ]
    rows = markdown_table(runs).splitlines()[2:]
    assert "| 1.000x |" in rows[0]
    assert "| 1.100x |" in rows[1] and "| 110 | 1.100x |" in rows[1]
    assert "| 1.250x |" in rows[3]
    assert runs[1].images_per_s == pytest.approx(1000 / 2.2)
    assert runs[1].first_s == 9.0 and runs[2].steady_s == 4.0


def test_merge_repeats_keeps_one_warm_up_and_every_steady_epoch() -> None:
    runs = [
        RunResult("plain", False, [9.0, 2.0], 100, 1.0, peak_bytes=5),
        RunResult("lightning", False, [8.0, 3.0], 100, 1.0, peak_bytes=6),
        RunResult("plain", False, [7.0, 4.0, 6.0], 100, 0.5, peak_bytes=7),
    ]
    merged = merge_repeats(runs)
    assert [(r.name, r.epoch_s, r.peak_bytes) for r in merged] == [
        ("plain", [9.0, 2.0, 4.0, 6.0], 7),
        ("lightning", [8.0, 3.0], 6),
    ]
    assert merged[0].steady_s == 4.0 and merged[0].final_loss == 0.5
    assert runs[0].epoch_s == [9.0, 2.0]  # inputs untouched


def test_device_dataset_bytes_counts_each_uint8_store_once() -> None:
    from augment.data.loaders import DeviceBatchLoader

    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    loader = DeviceBatchLoader(images, torch.zeros(10, dtype=torch.int64), 4, (0.5,) * 3, (0.5,) * 3, train=True,
                               layout="nchw")
    holder = {"train": loader, "same": images, "float": torch.zeros(2, 3, 4, 4)}
    found = device_dataset_bytes(holder, torch.device("cpu"))
    assert found == {torch.uint8: 10 * 3 * 8 * 8, torch.float32: 2 * 3 * 4 * 4 * 4}


def test_host_sync_audit_names_the_call_site() -> None:
    t = torch.ones(3)
    with HostSyncAudit() as audit:
        t.sum().item()
        bool(t.any())
        t.cpu()
        t.to("cpu")  # already on the host: not counted (on a GPU run this would be a device-to-host copy)
        t.add(1)  # stays a tensor: no sync
    sites = {(site.rsplit(":", 1)[0], name) for site, name in audit.sites}
    assert sites == {("tests/test_train_speed_cpu.py", n) for n in ("item", "__bool__", "cpu")}
    assert sum(audit.sites.values()) == 3


def test_subset_is_the_one_the_datamodule_trains_on(tmp_path: Path) -> None:
    from augment.data import CIFARDataModule

    images, labels = synthetic_cifar(60, seed=1)
    root = write_imagefolder(tmp_path / "data", images, labels, test_per_class=1)
    with pytest.warns(UserWarning, match="val_size is 0"):
        dm = CIFARDataModule(dataset="cifar10", root=str(root), val_size=0, train_subset=20, seed=3, loader="workers")
    dm.setup("fit")
    sub_images, sub_labels = train_subset(images, labels, 20, seed=3)
    dm_images, dm_labels = dm._arrays["train"]
    # the ImageFolder tree is read back grouped by class folder: compare as multisets of (image, label)
    want = sorted((img.tobytes(), int(y)) for img, y in zip(sub_images, sub_labels))
    got = sorted((img.tobytes(), int(y)) for img, y in zip(dm_images[dm.train_indices], dm_labels[dm.train_indices]))
    assert got == want and len(got) == 20


@pytest.mark.slow
def test_smallest_cpu_run_prints_both_loops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.md"
    status = main(["--device", "cpu", "--subset", "64", "--batch-size", "32", "--epochs", "2", "--mix", "on",
                   "--checkpoint", "off", "--table-out", str(out)])
    assert status == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| plain") or line.startswith("| lightning")]
    assert [row.split("|")[1].strip() for row in rows] == ["plain", "lightning"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == "on"
        assert float(cells[3]) > 0 and math.isfinite(float(cells[9]))
        assert cells[8].startswith("uint8")  # the dataset stays uint8 on the device in both loops
    assert "64 train images (synthetic uint8)" in text
    assert "plain mix=on: epochs" in capsys.readouterr().out


@pytest.mark.slow
def test_profile_mode_reports_op_counts_and_host_reads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cpu", "--subset", "64", "--batch-size", "32", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "### torch ops in one epoch (2 steps; Lightning: 2 steps)" in out
    plain_rows = [line for line in out.splitlines() if line.startswith("| plain |")]
    assert plain_rows == [f"| plain | bench/train_speed.py:{_anchor_read_line()} | __float__ | 1 |"]


def _anchor_read_line() -> int:
    """Line of the plain loop's one host read per epoch in profile_steps."""
    import inspect

    import bench.train_speed as ts

    source, start = inspect.getsourcelines(ts.profile_steps)
    return start + next(i for i, line in enumerate(source) if "float(torch.stack(losses).mean())" in line)
