"""data.policy in the pipeline: the device loader applies the policy per sample after crop/flip and before
normalization (replayable from the seed), the workers loader runs torchvision's own class, config errors
name data.policy.*, and the variant overlay reaches the datamodule through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from augment.checks import CheckError
from augment.data import CIFARDataModule
from augment.data.loaders import DeviceBatchLoader, _seeded_generator
from augment.data.transforms import torchvision_policy, train_transform
from augment.policies import RandAugment, TrivialAugmentWide, build_policy

REPO = Path(__file__).resolve().parents[1]


def _dm(root: Path, **kw) -> CIFARDataModule:
    args = dict(dataset="imagefolder", root=str(root), val_size=24, batch_size=16, loader="device", num_workers=0)
    args.update(kw)
    dm = CIFARDataModule(**args)
    dm.setup("fit")
    return dm


def _to_uint8(x: torch.Tensor, dm: CIFARDataModule) -> torch.Tensor:
    """Undo the loader's normalization: float (B, C, H, W) -> the uint8 batch it came from."""
    mean, std = torch.tensor(dm.mean).view(1, -1, 1, 1), torch.tensor(dm.std).view(1, -1, 1, 1)
    return (x * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def test_device_loader_applies_the_policy_per_sample_between_crop_flip_and_normalize(tiny_data):
    plain = _dm(tiny_data)
    policy = {"name": "randaugment", "num_ops": 2, "magnitude": 12}
    augmented = _dm(tiny_data, policy=policy)
    batches = list(zip(plain.train_dataloader(), augmented.train_dataloader()))
    assert len(batches) == 4
    for k, ((x0, y0), (x1, y1)) in enumerate(batches):
        assert x1.dtype == torch.float32 and x1.shape == x0.shape == (16, 3, 32, 32)
        assert torch.equal(y0, y1)  # same order, same crops and flips: only the policy differs
        assert not torch.equal(x0, x1)
        # Replay: the cropped/flipped uint8 batch through the policy with batch k's draws, then normalized.
        draws = RandAugment(2, 12).sample(16, 32, 32, generator=_seeded_generator(0, 0, 0, 2, k))
        expected = build_policy(policy).apply(_to_uint8(x0, plain), draws)
        assert torch.equal(_to_uint8(x1, augmented), expected)
    for (v0, _), (v1, _) in zip(plain.val_dataloader(), augmented.val_dataloader()):
        assert torch.equal(v0, v1)  # evaluation batches are never augmented


def test_device_loader_policy_draws_replay_per_epoch_and_after_a_resume():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(40) % 4

    def loader(**kw):
        return DeviceBatchLoader(
            images, labels, 8, (0.5,) * 3, (0.25,) * 3, train=True, seed=3, policy=TrivialAugmentWide(), **kw
        )

    first = [x for x, _ in loader()]
    again = loader()
    again.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, (x for x, _ in again)))
    second_epoch = loader()
    second_epoch.set_epoch(1)
    assert not torch.equal(first[0], next(iter(second_epoch))[0])
    resumed = [x for x, _ in loader(resume_offset=lambda: 2)]  # two batches of epoch 0 already trained
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(first[2:], resumed))


def test_workers_loader_runs_torchvisions_own_class(tiny_data):
    plain = _dm(tiny_data, loader="workers")
    augmented = _dm(tiny_data, loader="workers", policy="trivialaugment")
    (x0, _), (x1, _) = next(iter(plain.train_dataloader())), next(iter(augmented.train_dataloader()))
    assert x1.dtype == torch.float32 and x1.shape == x0.shape == (16, 3, 32, 32)
    assert not torch.equal(x0, x1)
    assert isinstance(torchvision_policy("trivialaugment"), v2.TrivialAugmentWide)
    assert isinstance(torchvision_policy({"name": "autoaugment"}), v2.AutoAugment)
    ra = torchvision_policy({"name": "randaugment", "num_ops": 3, "magnitude": 5, "interpolation": "bilinear"})
    assert (type(ra), ra.num_ops, ra.magnitude, ra.interpolation) == (
        v2.RandAugment,
        3,
        5,
        v2.InterpolationMode.BILINEAR,
    )
    assert torchvision_policy("none") is None


def test_workers_transform_equals_torchvision_then_normalize():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    transform = train_transform(mean, std, padding=0, flip=False, policy={"name": "autoaugment"}, seed=0)
    reference = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(image=image)["image"]
        torch.manual_seed(seed)
        chw = reference(torch.from_numpy(image).permute(2, 0, 1)).float() / 255
        expected = (chw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert out.shape == (3, 32, 32) and torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"name": "randaugment", "magnitude": 31}, "data.policy.magnitude must be an int in [0, 30], got 31"),
        ("trivial", "data.policy must be one of none, trivialaugment, randaugment, autoaugment, got 'trivial'"),
        (
            {"name": "trivialaugment", "num_magnitude_bins": 1},
            "data.policy.num_magnitude_bins must be an int >= 2, got 1",
        ),
    ],
)
def test_config_errors_name_data_policy(tiny_data, policy, message):
    with pytest.raises(CheckError) as err:
        CIFARDataModule(dataset="imagefolder", root=str(tiny_data), policy=policy)
    assert str(err.value) == message


def test_magnitude_std_is_refused_on_the_workers_loader(tiny_data):
    dm = _dm(tiny_data, loader="workers", policy={"name": "randaugment", "magnitude_std": 0.5})
    with pytest.raises(CheckError) as err:
        dm.train_dataloader()
    assert str(err.value) == (
        "data.policy.magnitude_std must be 0 on the workers loader (torchvision's RandAugment has no magnitude std), "
        "got 0.5"
    )


def test_variant_overlay_and_command_line_reach_the_datamodule(tmp_path, in_tmp_cwd):
    from models.run.cli import CifarCLI

    base = [
        "--config",
        str(REPO / "configs/cifar10_resnet18.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "32-true",
        "--data.root",
        str(tmp_path),
        "--data.download",
        "false",
        "--model.backbone",
        "test_resnet",
    ]
    cli = CifarCLI([*base, "--config", str(REPO / "configs/variants/trivialaugment.yaml")])
    assert cli.datamodule.policy == {"name": "trivialaugment", "num_magnitude_bins": 31}
    assert isinstance(build_policy(cli.datamodule.policy), TrivialAugmentWide)
    cli = CifarCLI([*base, "--data.policy", "autoaugment"])
    assert cli.datamodule.policy == "autoaugment"
