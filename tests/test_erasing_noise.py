"""Cutout and Gaussian input noise: exact hole areas, per-sample application, dtype, errors."""

import pytest
import torch

from augment.erasing import Cutout, hole_side
from augment.noise import GaussianNoise

FILL = -5.0


def expected_mask(boxes, height, width):
    """Independent reference: paint each (y0, y1, x0, x1) box with slices."""
    mask = torch.zeros(boxes.shape[0], height, width, dtype=torch.bool)
    for i, holes in enumerate(boxes.tolist()):
        for y0, y1, x0, x1 in holes:
            mask[i, y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("n_holes", [1, 3])
@pytest.mark.parametrize("batch", [1, 9])
def test_cutout_fills_exactly_the_clipped_boxes(n_holes, batch):
    height, width, size = 12, 10, 6
    x = torch.rand(batch, 3, height, width)
    y = torch.arange(batch)
    op = Cutout(n_holes, size, fill=FILL, generator=torch.Generator().manual_seed(0))
    out, targets = op(x, y)
    assert targets is y
    op.generator.manual_seed(0)
    boxes = op.sample_boxes(batch, height, width, "cpu")
    mask = expected_mask(boxes, height, width)
    filled = out == FILL
    assert torch.equal(filled, mask[:, None].expand_as(out))
    assert torch.equal(out[~filled], x[~filled])
    if n_holes == 1:
        areas = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
        assert torch.equal(filled[:, 0].sum((1, 2)), areas[:, 0])


def test_cutout_holes_have_full_side_inside_and_are_clipped_at_borders():
    op = Cutout(1, 8, generator=torch.Generator().manual_seed(1))
    boxes = op.sample_boxes(2000, 32, 32, "cpu")[:, 0]
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    interior = (boxes[:, 0] > 0) & (boxes[:, 1] < 32)
    assert torch.all(heights[interior] == 8)
    assert torch.all(heights <= 8) and torch.all(widths <= 8)
    assert (heights < 8).any() and (widths < 8).any()  # centers near the border clip the hole
    assert boxes[:, 0].min() == 0 and boxes[:, 1].max() == 32


def test_cutout_size_fraction_and_float_pixels():
    assert hole_side(0.5, 32, 24) == 12
    assert hole_side(1.0, 32, 32) == 32
    assert hole_side(16, 32, 32) == 16
    assert Cutout(1, 16.0).size == 16  # 16.0 from a float-typed config means 16 pixels
    out, _ = Cutout(1, 1.0, fill=FILL, generator=torch.Generator().manual_seed(0))(torch.rand(64, 3, 8, 8), None)
    filled = (out[:, 0] == FILL).sum((1, 2))
    assert filled.min() >= 16 and filled.max() > 36  # an 8-px hole keeps >= 4 px per side in the image


def test_cutout_per_sample_probability():
    x = torch.rand(200, 1, 8, 8)
    out, _ = Cutout(1, 4, fill=FILL, p=0.5, generator=torch.Generator().manual_seed(0))(x, torch.zeros(200))
    holed = (out == FILL).flatten(1).any(1)
    assert 70 < holed.sum() < 130
    assert torch.equal(out[~holed], x[~holed])
    same, _ = Cutout(1, 4, p=0.0)(x, torch.zeros(200))
    assert torch.equal(same, x)


def test_cutout_determinism():
    x = torch.rand(8, 3, 16, 16)
    a, _ = Cutout(2, 5, generator=torch.Generator().manual_seed(3))(x, None)
    b, _ = Cutout(2, 5, generator=torch.Generator().manual_seed(3))(x, None)
    c, _ = Cutout(2, 5, generator=torch.Generator().manual_seed(4))(x, None)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_channels_last_preserved(dtype):
    x = torch.rand(4, 3, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    for op in (Cutout(1, 4, generator=gen), GaussianNoise(0.1, generator=gen)):
        out, _ = op(x, torch.zeros(4))
        assert out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert not torch.equal(out, x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Cutout(n_holes=-1), r"n_holes must be an int >= 0, got -1"),
        (lambda: Cutout(size=-2), r"size must be >= 0.*got -2"),
        (lambda: Cutout(size=2.5), r"size must be .*got 2.5"),
        (lambda: Cutout(p=1.5), r"p must be in \[0, 1\], got 1.5"),
        (lambda: GaussianNoise(std=-0.1), r"std must be >= 0, got -0.1"),
        (lambda: GaussianNoise(0.1, p=-1), r"p must be in \[0, 1\]"),
        (lambda: GaussianNoise(0.1, clamp=(1.0, 0.0)), r"clamp must be"),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_noise_std_and_per_sample_probability():
    x = torch.zeros(400, 1, 16, 16)
    out, y = GaussianNoise(0.5, p=0.5, generator=torch.Generator().manual_seed(0))(x, torch.arange(400))
    noisy = out.flatten(1).ne(0).any(1)
    assert 150 < noisy.sum() < 250
    assert torch.equal(out[~noisy], x[~noisy])
    assert abs(out[noisy].std().item() - 0.5) < 0.01
    assert abs(out[noisy].mean().item()) < 0.01
    assert torch.equal(y, torch.arange(400))


def test_noise_clamp_and_determinism():
    x = torch.rand(8, 3, 8, 8)
    op = GaussianNoise(1.0, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    out, _ = op(x, None)
    assert out.min() == 0.0 and out.max() == 1.0
    again, _ = GaussianNoise(1.0, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(0))(x, None)
    other, _ = GaussianNoise(1.0, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(1))(x, None)
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_noise_zero_std_is_identity():
    x = torch.rand(2, 3, 4, 4)
    assert GaussianNoise(0.0)(x, None)[0] is x
