"""Device-side crop / flip / normalize ops and the device-resident batch loader."""

import pytest
import torch
import torch.nn.functional as F

from augment.crop import (
    normalize,
    random_crop,
    random_crop_flip,
    random_flip,
    shift_crop,
    to_float_nchw,
    to_normalized_float,
)
from augment.data.loaders import DeviceBatchLoader, shard_indices

PAD = 4


def _images(b=16, c=3, h=8, w=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype)


def _windows(x, padding, mode):
    """All crops of the padded batch: (B, nY, nX, C, H, W)."""
    h, w = x.shape[-2:]
    pad_mode = {"reflect": "reflect", "replicate": "replicate", "constant": "constant"}[mode]
    xp = F.pad(x.float(), (padding,) * 4, mode=pad_mode)
    return xp.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 1, 4, 5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_shift_crop_equals_window_of_padded_input(mode, dtype):
    x = _images(dtype=dtype)
    b = x.shape[0]
    top = torch.arange(b) % (2 * PAD + 1)
    left = (torch.arange(b) * 3) % (2 * PAD + 1)
    out = shift_crop(x, top, left, padding=PAD, mode=mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    win = _windows(x, PAD, mode)
    expected = win[torch.arange(b), top, left]
    assert torch.equal(out.float(), expected)


def test_shift_crop_with_flip_is_mirrored_window():
    x = _images()
    b = x.shape[0]
    top, left = torch.full((b,), 1), torch.full((b,), 7)
    flip = torch.arange(b) % 2 == 0
    out = shift_crop(x, top, left, flip, padding=PAD)
    window = _windows(x, PAD, "reflect")[:, 1, 7]
    expected = torch.where(flip.view(-1, 1, 1, 1), window.flip(3), window)
    assert torch.equal(out, expected)


def test_random_crop_each_output_is_a_window_and_all_offsets_occur():
    x = _images(b=400, h=6, w=5)
    g = torch.Generator().manual_seed(3)
    out = random_crop(x, padding=2, generator=g)
    win = _windows(x, 2, "reflect").flatten(1, 2)  # (B, 25, C, H, W)
    match = (win == out[:, None]).flatten(2).all(-1)  # (B, 25)
    assert match.any(1).all(), "every output must equal one window of the reflect-padded input"
    # Some images could match two windows by chance; the first match is the offset for almost all.
    offsets = match.float().argmax(1)
    assert set(offsets.tolist()) == set(range(25))


def test_random_crop_padding_zero_is_identity_and_batch_of_one():
    x = _images(b=1)
    assert torch.equal(random_crop(x, padding=0), x)
    assert random_crop(x, padding=PAD).shape == x.shape


def test_random_crop_generator_determinism():
    x = _images(b=64)
    a = random_crop(x, generator=torch.Generator().manual_seed(5))
    b = random_crop(x, generator=torch.Generator().manual_seed(5))
    c = random_crop(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_flip_exact_per_sample_and_probability():
    x = _images(b=2000, h=4, w=4)
    out = random_flip(x, p=0.3, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    frac = (flipped & ~same).float().mean().item()
    assert 0.25 < frac < 0.35
    assert torch.equal(random_flip(x, p=0.0), x)
    assert torch.equal(random_flip(x, p=1.0), x.flip(3))


def test_random_crop_flip_is_window_or_mirrored_window():
    x = _images(b=200, h=5, w=7)
    out = random_crop_flip(x, padding=2, flip_p=0.5, generator=torch.Generator().manual_seed(1))
    win = _windows(x, 2, "reflect").flatten(1, 2)
    plain = (win == out[:, None]).flatten(2).all(-1).any(1)
    mirrored = (win.flip(-1) == out[:, None]).flatten(2).all(-1).any(1)
    assert (plain | mirrored).all()
    assert mirrored.float().mean() > 0.3 and plain.float().mean() > 0.3


def test_ops_keep_channels_last():
    x = _images(b=4, h=8, w=8).contiguous(memory_format=torch.channels_last)
    for out in (random_crop(x), random_flip(x), random_crop_flip(x), normalize(x, [1, 2, 3], [1, 1, 1])):
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(random_crop(x, generator=torch.Generator().manual_seed(0)),
                       random_crop(x.contiguous(), generator=torch.Generator().manual_seed(0)))


def test_crop_argument_errors():
    x = _images(h=4, w=4)
    with pytest.raises(ValueError, match="padding must be < the image size 4"):
        random_crop(x, padding=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        random_crop(x, padding=1, mode="wrap")
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        random_crop(x, padding=-1)
    with pytest.raises(ValueError, match="4-D batch"):
        random_crop(x[0])
    assert random_crop(x, padding=4, mode="constant").shape == x.shape


def test_normalize_exact_and_errors():
    x = torch.rand(3, 3, 4, 4)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), expected)
    assert normalize(x.double(), mean, std).dtype == torch.float64
    with pytest.raises(ValueError, match="std must be > 0"):
        normalize(x, mean, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mean must have 1 or 3 values"):
        normalize(x, [0.1, 0.2], std)


def test_to_float_nchw_layouts_dtype_and_format():
    nhwc = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()
    a, b = to_float_nchw(nhwc), to_float_nchw(nchw)
    assert a.shape == (2, 3, 5, 6) and a.dtype == torch.float32 and a.is_contiguous()
    assert torch.equal(a, b) and torch.equal(a, nchw.float() / 255)
    assert a.min() >= 0 and a.max() <= 1
    c = to_float_nchw(nhwc, channels_last=True, dtype=torch.bfloat16)
    assert c.dtype == torch.bfloat16 and c.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(c.float(), a, atol=4e-3, rtol=0)


def test_to_normalized_float_matches_two_step():
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    torch.testing.assert_close(to_normalized_float(x, mean, std), normalize(to_float_nchw(x), mean, std))


# --------------------------------------------------------------------------------------------------
# DeviceBatchLoader


def _loader(n=100, train=True, **kw):
    images = torch.arange(n * 8 * 8 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 8, 8, 3)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # sample id in a corner pixel
    labels = torch.arange(n) % 10
    args = dict(batch_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), train=train, padding=0, flip=False)
    args.update(kw)
    return DeviceBatchLoader(images, labels, **args), images, labels


def _ids(loader):
    """Sample ids of one epoch, read back from the corner pixel (valid when padding=0, flip=False)."""
    return torch.cat([torch.round(x[:, 0, 0, 0] * 255).long() for x, _ in loader])


def test_loader_batches_shapes_and_labels():
    loader, images, labels = _loader(train=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    ids = _ids(loader)
    assert torch.equal(ids, torch.arange(100))  # eval: natural order
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    torch.testing.assert_close(x, images[:16].permute(0, 3, 1, 2).float() / 255)


def test_loader_epochs_differ_and_are_reproducible():
    loader, _, _ = _loader()
    e0, e1 = _ids(loader), _ids(loader)  # the epoch advances per pass
    assert not torch.equal(e0, e1)
    assert torch.equal(e0.sort().values, torch.arange(100)) and torch.equal(e1.sort().values, torch.arange(100))
    loader.set_epoch(0)
    assert torch.equal(_ids(loader), e0)
    other, _, _ = _loader(seed=1)
    assert not torch.equal(_ids(other), e0)


def test_loader_ranks_disjoint_cover_and_equal_length():
    n, world = 103, 4
    parts = [_loader(n=n, rank=r, world_size=world)[0] for r in range(world)]
    ids = [_ids(p) for p in parts]
    assert len({len(p) for p in parts}) == 1 and all(len(i) == 26 for i in ids)
    together = torch.cat(ids)
    assert set(together.tolist()) == set(range(n))  # cover
    assert len(together) - len(set(together.tolist())) == 26 * world - n  # only the wrap-around pad repeats
    # Without padding the shards are disjoint: check on a divisible size.
    ids4 = [_ids(_loader(n=96, rank=r, world_size=world)[0]) for r in range(world)]
    assert len(set(torch.cat(ids4).tolist())) == 96


def test_shard_indices_matches_distributed_sampler_padding():
    order = torch.arange(10)
    shards = [shard_indices(order, r, 4) for r in range(4)]
    assert [s.tolist() for s in shards] == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]


def test_loader_drop_last_and_indices_subset():
    loader, _, _ = _loader(drop_last=True, indices=torch.tensor([5, 5, 7, 9] * 10))
    assert len(loader) == 2 and all(x.shape[0] == 16 for x, _ in loader)
    assert set(_ids(loader).tolist()) <= {5, 7, 9}


def test_loader_train_augments_with_crops_and_flips():
    loader, images, _ = _loader(train=True, padding=2, flip=True)
    x, _ = next(iter(loader))
    assert x.shape == (16, 3, 8, 8)
    loader.set_epoch(0)
    x2, _ = next(iter(loader))
    assert torch.equal(x, x2)  # the same epoch replays exactly
    plain, _, _ = _loader(train=True, padding=0, flip=False)
    assert not torch.equal(x, next(iter(plain))[0])


def test_loader_channels_last_and_dtype():
    loader, _, _ = _loader(channels_last=True, dtype=torch.bfloat16, padding=2)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_loader_exposes_sampler_set_epoch_for_lightning():
    loader, _, _ = _loader()
    loader.sampler.set_epoch(7)
    assert loader.epoch == 7


def test_loader_errors():
    with pytest.raises(ValueError, match="^batch_size must be an int >= 1"):
        _loader(batch_size=0)
    with pytest.raises(ValueError, match="rank must be in"):
        _loader(rank=2, world_size=2)
    with pytest.raises(ValueError, match="padding must be < the image size"):
        _loader(padding=8)
    assert len(_loader(padding=8, train=False)[0]) == 7  # eval loaders never crop: no constraint


def test_library_imports_torch_only_and_data_imports_albumentations_lazily():
    """``import augment`` pulls in no Lightning, timm, torchvision, Pillow or albumentations; the data
    subpackage imports Lightning (its DataModule) but albumentations only when a worker pipeline is built."""
    import subprocess
    import sys

    heavy = "('pytorch_lightning', 'lightning', 'albumentations', 'timm', 'torchvision', 'PIL')"
    code = (
        "import sys, augment; "
        "import augment.crop, augment.mixing, augment.erasing, augment.noise, augment.pipeline, augment.targets; "
        f"bad = [m for m in {heavy} if m in sys.modules]; assert not bad, bad; "
        "import augment.data; assert 'pytorch_lightning' in sys.modules; "
        "assert 'albumentations' not in sys.modules, 'albumentations imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_loader_resumes_mid_epoch_at_the_trained_batch():
    """resume_offset k > 0 (right after a mid-epoch checkpoint): the pass starts at batch k of the same
    epoch's order and draws; the following passes are whole again."""
    full, _, _ = _loader(train=True, padding=2, flip=True, seed=3)
    full.set_epoch(4)
    expected = [(x.clone(), y.clone()) for x, y in full]
    offsets = iter([2, 0])
    resumed, _, _ = _loader(train=True, padding=2, flip=True, seed=3, resume_offset=lambda: next(offsets))
    resumed.set_epoch(4)
    got = list(resumed)
    assert len(got) == len(expected) - 2
    for (x, y), (ex, ey) in zip(got, expected[2:]):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert resumed.state_dict() == {"epoch": 4}
    assert len(list(resumed)) == len(expected)  # next epoch: offset 0, whole pass
