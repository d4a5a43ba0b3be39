"""albumentations pipelines for DataLoader workers, their seeding, and ArrayDataset."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augment.data.loaders import ArrayDataset
from augment.data.transforms import WorkerSeeder, eval_transform, train_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _image(h=16, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _unnormalize(t):
    """Normalized CHW float tensor -> uint8-valued float CHW tensor (rounded)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return torch.round((t * std + mean) * 255)


def test_eval_transform_is_exact_normalization():
    img = _image()
    out = eval_transform(MEAN, STD)(image=img)["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 16) and out.dtype == torch.float32
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    expected = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_train_crop_matches_torch_reflect_padding_windows():
    img = _image()
    t = train_transform(MEAN, STD, padding=4, flip=True, image_size=16, seed=0)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    win = F.pad(x, (4,) * 4, mode="reflect").unfold(2, 16, 1).unfold(3, 16, 1)[0].permute(1, 2, 0, 3, 4)
    win = win.reshape(81, 3, 16, 16)
    seen_flip = seen_plain = False
    for _ in range(40):
        out = _unnormalize(t(image=img)["image"])
        plain = (win == out).flatten(1).all(1).any().item()
        mirrored = (win.flip(-1) == out).flatten(1).all(1).any().item()
        assert plain or mirrored, "each crop must be a window of the reflect-padded image (same as the GPU path)"
        seen_plain |= plain
        seen_flip |= mirrored and not plain
    assert seen_plain and seen_flip


def test_train_transform_without_crop_flip_equals_eval():
    img = _image()
    a = train_transform(MEAN, STD, padding=0, flip=False, image_size=16)(image=img)["image"]
    b = eval_transform(MEAN, STD)(image=img)["image"]
    torch.testing.assert_close(a, b)


def test_cutout_holes_are_filled_with_zero_after_normalization():
    img = _image(32, 32)
    t = train_transform(MEAN, STD, padding=0, flip=False, cutout_holes=2, cutout_size=5, seed=1)
    for _ in range(5):
        out = t(image=img)["image"]
        zero = (out == 0).all(0)
        assert 25 < int(zero.sum()) <= 50  # two 5x5 holes, possibly overlapping


def test_compose_seed_reproducible():
    img = _image()
    a = train_transform(MEAN, STD, image_size=16, seed=3)
    b = train_transform(MEAN, STD, image_size=16, seed=3)
    outs_a = [a(image=img)["image"] for _ in range(6)]
    outs_b = [b(image=img)["image"] for _ in range(6)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b))
    assert not all(torch.equal(outs_a[0], o) for o in outs_a[1:])


def test_argument_errors():
    with pytest.raises(ValueError, match="^padding must be an int >= 0"):
        train_transform(MEAN, STD, padding=-1)
    with pytest.raises(ValueError, match="^cutout_holes must be an int >= 0"):
        train_transform(MEAN, STD, cutout_holes=-2)
    with pytest.raises(ValueError, match="std must be > 0"):
        eval_transform(MEAN, (0.2, 0.0, 0.2))


def test_missing_albumentations_raises_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)
    with pytest.raises(
        ImportError, match="albumentations is required for the CPU loader path: pip install albumentations"
    ):
        train_transform(MEAN, STD)


# --------------------------------------------------------------------------------------------------
# Worker seeding: different per worker and per epoch, reproducible from the seed


def _worker_loader(persistent, seed=0):
    images = np.repeat(_image()[None], 16, axis=0)  # identical images: outputs differ only by augmentation
    ds = ArrayDataset(images, np.zeros(16, dtype=np.int64), train_transform(MEAN, STD, image_size=16, seed=0))
    return torch.utils.data.DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        shuffle=False,
        worker_init_fn=WorkerSeeder(),
        persistent_workers=persistent,
        generator=torch.Generator().manual_seed(seed),
    )


def _epoch(loader):
    return [x for x, _ in loader]  # 4 batches: workers 0, 1, 0, 1


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True])
def test_workers_and_epochs_differ_and_seed_reproduces(persistent):
    loader = _worker_loader(persistent)
    e1, e2 = _epoch(loader), _epoch(loader)
    assert not torch.equal(e1[0], e1[1]), "worker 0 and worker 1 must not draw the same augmentations"
    assert not torch.equal(torch.stack(e1), torch.stack(e2)), "epoch 2 must not repeat epoch 1"
    again = _worker_loader(persistent)
    assert torch.equal(torch.stack(_epoch(again)), torch.stack(e1)), "the same seed must replay epoch 1"
    other = _worker_loader(persistent, seed=1)
    assert not torch.equal(torch.stack(_epoch(other)), torch.stack(e1))


def test_worker_seeder_folds_in_rank():
    loaders = []
    for rank in (0, 1):
        loader = _worker_loader(False)
        loader.worker_init_fn = WorkerSeeder(rank)
        loaders.append(loader)
    assert not torch.equal(torch.stack(_epoch(loaders[0])), torch.stack(_epoch(loaders[1])))


# --------------------------------------------------------------------------------------------------
# ArrayDataset


def test_array_dataset_without_transform_and_with_indices():
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    labels = np.array([0, 1, 2, 3, 4])
    ds = ArrayDataset(images, labels, indices=np.array([4, 4, 1]))
    assert len(ds) == 3
    x, y = ds[1]
    assert y == 4 and x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(images[4]).permute(2, 0, 1))
    assert len(ArrayDataset(images, labels)) == 5
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset(images, labels[:3])
