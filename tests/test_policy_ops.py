"""Per-sample colour and geometric ops against torchvision.transforms.v2.functional, image by image.

Images: real CIFAR-10 under CIFAR10_ROOT, else synthetic (tests/policy_images.py). Integer colour ops,
brightness and nearest warps are compared exactly (torch.equal) for uint8 and float32. Bilinear warps and
the blends (saturation, contrast, sharpness) are compared with ``policy_images.assert_matches``'s stated
tolerance: torch rounds them differently per CPU vector width (on torchvision's side as on ours), so they
are exact on some CPUs only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from policy_images import assert_matches, load_images, op_share
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from augment import color, geometric
from augment.checks import CheckError
from augment.policy_ops import GEOMETRIC, OPS, SIGNED, apply_ops, magnitude_table, op_index

IMAGES, SOURCE = load_images(128)
MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if dtype == torch.uint8 else x.to(dtype) / 255.0


def tv_op(img: torch.Tensor, name: str, mag: float, interpolation: str = "nearest", fill=None) -> torch.Tensor:
    """One image through ``torchvision.transforms.v2.functional``, the AutoAugment meaning of (op, magnitude)."""
    mode = MODES[interpolation]
    affine = dict(scale=1.0, interpolation=mode, fill=fill)
    white = 1.0 if img.is_floating_point() else 255.0
    if name == "ShearX":
        return F.affine(
            img, angle=0.0, translate=[0, 0], shear=[math.degrees(math.atan(mag)), 0.0], center=[0, 0], **affine
        )
    if name == "ShearY":
        return F.affine(
            img, angle=0.0, translate=[0, 0], shear=[0.0, math.degrees(math.atan(mag))], center=[0, 0], **affine
        )
    if name == "TranslateX":
        return F.affine(img, angle=0.0, translate=[int(mag), 0], shear=[0.0, 0.0], **affine)
    if name == "TranslateY":
        return F.affine(img, angle=0.0, translate=[0, int(mag)], shear=[0.0, 0.0], **affine)
    if name == "Rotate":
        return F.rotate(img, angle=mag, interpolation=mode, fill=fill)
    functions = {
        "Identity": lambda: img,
        "Brightness": lambda: F.adjust_brightness(img, 1.0 + mag),
        "Color": lambda: F.adjust_saturation(img, 1.0 + mag),
        "Contrast": lambda: F.adjust_contrast(img, 1.0 + mag),
        "Sharpness": lambda: F.adjust_sharpness(img, 1.0 + mag),
        "Posterize": lambda: F.posterize(img, int(mag)),
        "Solarize": lambda: F.solarize(img, white * mag),
        "AutoContrast": lambda: F.autocontrast(img),
        "Equalize": lambda: F.equalize(img),
        "Invert": lambda: F.invert(img),
    }
    return functions[name]()


def table_magnitudes(name: str) -> torch.Tensor:
    """Every magnitude the policies can give op ``name`` (all three tables, both signs where signed)."""
    values = []
    for space, bins in (("wide", 31), ("standard", 31), ("standard", 10)):
        row = magnitude_table(space, bins, 32, 32)[op_index(name)]
        values.append(row.round() if name == "Posterize" else row)
    mags = torch.cat(values)
    return torch.cat([mags, -mags]) if name in SIGNED else mags


def reference(x: torch.Tensor, names, mags, interpolation="nearest", fill=None) -> torch.Tensor:
    return torch.stack([tv_op(x[i], n, float(m), interpolation, fill) for i, (n, m) in enumerate(zip(names, mags))])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", OPS)
def test_each_op_at_every_table_magnitude_equals_torchvision(name, dtype):
    mags = (
        table_magnitudes(name) if name not in ("Identity", "AutoContrast", "Equalize", "Invert") else torch.zeros(128)
    )
    x = as_dtype(IMAGES[torch.arange(len(mags)) % len(IMAGES)], dtype)
    ops = torch.full((len(mags),), op_index(name))
    out = apply_ops(x, ops, mags)
    assert out.dtype == dtype and out.shape == x.shape
    expected = reference(x, [name] * len(mags), mags)
    assert_matches(out, expected, op_share(name), f"{SOURCE} images, {name}")
    if name != "Identity" and name not in ("Posterize", "Solarize", "Sharpness"):
        assert not torch.equal(out, x)  # the op did something (this also guards the comparison)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("fill", [None, [10, 200, 31]])
def test_mixed_geometric_batch_with_interpolation_and_fill_equals_torchvision(dtype, interpolation, fill):
    gen = torch.Generator().manual_seed(5)
    names = [GEOMETRIC[i] for i in torch.randint(0, len(GEOMETRIC), (len(IMAGES),), generator=gen)]
    mags = torch.stack(
        [table_magnitudes(n)[torch.randint(0, len(table_magnitudes(n)), (), generator=gen)] for n in names]
    )
    x = as_dtype(IMAGES, dtype)
    fill_units = None if fill is None else [v / (1.0 if dtype == torch.uint8 else 255.0) for v in fill]
    out = apply_ops(x, torch.tensor([op_index(n) for n in names]), mags, interpolation, fill_units or 0.0)
    share = torch.tensor([op_share(n, interpolation) for n in names])
    assert_matches(out, reference(x, names, mags, interpolation, fill_units), share)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_colour_functions_with_continuous_parameters_equal_torchvision(dtype):
    gen = torch.Generator().manual_seed(1)
    x = as_dtype(IMAGES, dtype)
    n = len(x)
    factor = torch.rand(n, generator=gen, dtype=torch.float64) * 2
    cases = [
        (color.adjust_brightness, F.adjust_brightness, factor, "Brightness"),
        (color.adjust_saturation, F.adjust_saturation, factor, "Color"),
        (color.adjust_contrast, F.adjust_contrast, factor, "Contrast"),
        (color.adjust_sharpness, F.adjust_sharpness, factor, "Sharpness"),
        (
            color.solarize,
            F.solarize,
            torch.rand(n, generator=gen, dtype=torch.float64) * (1.0 if dtype != torch.uint8 else 255.0),
            "Solarize",
        ),
        (color.posterize, F.posterize, torch.randint(0, 9, (n,), generator=gen), "Posterize"),
    ]
    for ours, theirs, param, name in cases:
        expected = torch.stack([theirs(x[i], param[i].item()) for i in range(n)])
        assert_matches(ours(x, param), expected, op_share(name), ours.__name__)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotate_shear_translate_with_continuous_parameters_equal_torchvision(dtype, interpolation):
    gen = torch.Generator().manual_seed(2)
    x = as_dtype(IMAGES, dtype)
    n, mode = len(x), MODES[interpolation]
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 720 - 360
    factor = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    shift = torch.randint(-40, 41, (n, 2), generator=gen)
    cases = [
        (geometric.rotate(x, angle, interpolation), lambda i: F.rotate(x[i], angle[i].item(), interpolation=mode)),
        (geometric.shear_x(x, factor, interpolation), lambda i: tv_op(x[i], "ShearX", factor[i].item(), interpolation)),
        (geometric.shear_y(x, factor, interpolation), lambda i: tv_op(x[i], "ShearY", factor[i].item(), interpolation)),
        (
            geometric.translate(x, shift[:, 0], shift[:, 1], interpolation),
            lambda i: F.affine(
                x[i], angle=0.0, translate=shift[i].tolist(), scale=1.0, shear=[0.0, 0.0], interpolation=mode
            ),
        ),
    ]
    share = op_share("Rotate", interpolation)  # one rule for every warp
    for out, expected in cases:
        assert_matches(out, torch.stack([expected(i) for i in range(n)]), share)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("fill", [(0.0,), (10.0, 200.5, 31.0), (127.5,)])
def test_nearest_gather_equals_the_float_resampling_path(monkeypatch, dtype, fill):
    gen = torch.Generator().manual_seed(9)
    x = as_dtype(IMAGES[:40], dtype)
    x = x if dtype == torch.uint8 else x.to(dtype)
    values = fill if dtype == torch.uint8 else tuple(v / 255.0 for v in fill)
    matrix = geometric.inverse_affine(
        *(torch.rand(40, generator=gen, dtype=torch.float64) * 60 - 30 for _ in range(5)), *torch.zeros(2, 40).double()
    )
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        gathered = geometric.resample(xl, matrix, "nearest", values)
        monkeypatch.setattr(geometric, "_EXACT_INDICES", 0)  # the float path: grid_sample on the image itself
        floated = geometric.resample(xl, matrix, "nearest", values)
        monkeypatch.undo()
        assert torch.equal(gathered, floated)
        assert gathered.dtype == dtype and gathered.is_contiguous(memory_format=layout)
    other = geometric.resample(x, matrix, "nearest", tuple(v + (3 if dtype == torch.uint8 else 0.5) for v in values))
    assert not torch.equal(other, gathered)  # some pixels come from outside the image: the fill is used


def test_fractional_uint8_fill_rounds_as_torchvision():
    x = IMAGES[:4]
    out = geometric.rotate(x, 30.0, fill=[127.5, 0.5, 254.5])
    expected = torch.stack([F.rotate(img, 30.0, fill=[127.5, 0.5, 254.5]) for img in x])
    assert torch.equal(out, expected)


def test_rotation_by_quarter_turns_moves_pixels_exactly():
    x = IMAGES[:6]
    out = geometric.rotate(x, torch.tensor([90.0, -90.0, 180.0, 270.0, 0.0, 360.0]))
    turns = [1, 3, 2, 3, 0, 0]
    assert all(torch.equal(out[i], torch.rot90(x[i], turns[i], dims=(1, 2))) for i in range(6))


def test_equalize_matches_pillow_on_every_channel():
    from PIL import Image, ImageOps

    out = color.equalize(IMAGES)
    for i in range(0, len(IMAGES), 7):
        for ch in range(3):
            expected = ImageOps.equalize(Image.fromarray(IMAGES[i, ch].numpy()))
            assert torch.equal(out[i, ch], torch.from_numpy(np.array(expected)))


def test_equalize_device_path_counts_as_the_host_path(monkeypatch):
    host = color.equalize(IMAGES)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the scatter that devices and compile take
    assert torch.equal(color.equalize(IMAGES), host)


@pytest.mark.parametrize("name", OPS)
def test_ops_keep_input_dtype_layout_and_leave_input_untouched(name):
    for dtype in (torch.uint8, torch.float32):
        x = as_dtype(IMAGES[:9], dtype).contiguous(memory_format=torch.channels_last)
        before = x.clone()
        mags = table_magnitudes(name)[-9:] if name in SIGNED or name in ("Posterize", "Solarize") else torch.zeros(9)
        out = apply_ops(x, torch.full((9,), op_index(name)), mags)
        assert torch.equal(x, before)
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out.contiguous(), apply_ops(x.contiguous(), torch.full((9,), op_index(name)), mags))


def test_apply_ops_routes_each_sample_to_its_own_op():
    x = IMAGES[: len(OPS) * 2]
    ops = torch.arange(len(OPS)).repeat(2).flip(0)
    mags = torch.tensor(
        [
            table_magnitudes(OPS[i])[3].item()
            if OPS[i] not in ("Identity", "AutoContrast", "Equalize", "Invert")
            else 0.0
            for i in ops
        ]
    )
    out = apply_ops(x, ops, mags)
    assert_matches(out, reference(x, [OPS[i] for i in ops], mags), torch.tensor([op_share(OPS[i]) for i in ops]))


def test_batch_of_one_and_empty_batch():
    x = IMAGES[:1]
    out = apply_ops(x, torch.tensor([op_index("Rotate")]), torch.tensor([45.0]))
    assert torch.equal(out, F.rotate(x, 45.0))
    empty = apply_ops(IMAGES[:0], torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert empty.shape == (0, 3, 32, 32) and empty.dtype == torch.uint8


def test_grayscale_images():
    gray = IMAGES[:20, :1]
    for name in ("Color", "Contrast", "Sharpness", "AutoContrast", "Equalize", "Rotate", "Solarize"):
        mags = table_magnitudes(name)[-20:] if name not in ("AutoContrast", "Equalize") else torch.zeros(20)
        out = apply_ops(gray, torch.full((20,), op_index(name)), mags)
        assert_matches(out, reference(gray, [name] * 20, mags), op_share(name), name)


def test_random_rotation_angles_lie_in_range_and_differ_per_sample():
    # A bright dot 12 px right of the center: after rotation its position gives each sample's angle.
    x = torch.zeros(400, 1, 33, 33, dtype=torch.uint8)
    x[:, 0, 16, 28] = 255
    out = geometric.random_rotation(x, 30, interpolation="bilinear", generator=torch.Generator().manual_seed(0))
    rows, cols = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    w = out[:, 0].double()
    cy, cx = (w * rows).sum((1, 2)) / w.sum((1, 2)), (w * cols).sum((1, 2)) / w.sum((1, 2))
    angle = torch.rad2deg(torch.atan2(16 - cy, cx - 16))  # counter-clockwise, image rows point down
    assert angle.abs().max() <= 31 and angle.min() < -25 and angle.max() > 25
    assert abs(angle.mean().item()) < 3 and abs(angle.std().item() - 30 / math.sqrt(3)) < 2  # uniform(-30, 30)
    fixed = geometric.random_rotation(x[:4], (90, 90), generator=torch.Generator().manual_seed(0))
    assert torch.equal(fixed, torch.rot90(x[:4], 1, dims=(2, 3)))
    same = geometric.random_rotation(IMAGES, 45, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, geometric.random_rotation(IMAGES, 45, generator=torch.Generator().manual_seed(3)))


def test_random_vflip_flips_about_p_of_the_samples():
    x = IMAGES
    assert torch.equal(geometric.random_vflip(x, 0.0), x)
    assert torch.equal(geometric.random_vflip(x, 1.0), F.vertical_flip(x))
    out = geometric.random_vflip(x.repeat(4, 1, 1, 1), 0.5, generator=torch.Generator().manual_seed(0))
    flipped = (out == F.vertical_flip(x.repeat(4, 1, 1, 1))).flatten(1).all(1)
    kept = (out == x.repeat(4, 1, 1, 1)).flatten(1).all(1)
    assert bool((flipped | kept).all())
    share = flipped[~kept].numel() / len(out)  # symmetric images count as both; count flips among the rest
    assert 0.4 < share < 0.6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: color.adjust_brightness(IMAGES, -0.5), "factor must be >= 0, got -0.5"),
        (
            lambda: color.adjust_contrast(IMAGES, torch.tensor([-1.0] * len(IMAGES))),
            "factor must be >= 0 for every sample, got -1.0",
        ),
        (lambda: color.posterize(IMAGES, 9), "bits must be an int in [0, 8], got 9"),
        (lambda: color.solarize(IMAGES, 256.0), "threshold must be <= 255 for torch.uint8, got 256.0"),
        (lambda: color.invert(IMAGES.int()), "x must be uint8 or floating point, got torch.int32"),
        (lambda: color.equalize(IMAGES[0]), "x must be a 4-D batch (B, C, H, W), got shape (3, 32, 32)"),
        (lambda: color.autocontrast(torch.zeros(2, 4, 8, 8)), "x must have 1 or 3 channels, got 4"),
        (
            lambda: geometric.rotate(IMAGES, 10.0, interpolation="bicubic"),
            "interpolation must be one of nearest, bilinear, got 'bicubic'",
        ),
        (lambda: geometric.rotate(IMAGES, 10.0, fill="white"), "fill must be a finite number, got 'white'"),
        (
            lambda: geometric.rotate(IMAGES, 10.0, fill=[1, 2]),
            "fill must be a number or 3 numbers (one per channel), got (1.0, 2.0)",
        ),
        (lambda: geometric.random_rotation(IMAGES, -5), "degrees must be >= 0, got -5"),
        (
            lambda: geometric.random_rotation(IMAGES, (10, -10)),
            "degrees must be a number >= 0 or a pair (low, high) with low <= high, got (10, -10)",
        ),
        (lambda: geometric.random_vflip(IMAGES, 1.5), "p must be in [0, 1], got 1.5"),
        (
            lambda: apply_ops(IMAGES[:2], torch.tensor([0, 15]), torch.zeros(2)),
            "ops must be in [0, 14] for every sample, got (0, 15)",
        ),
        (lambda: apply_ops(IMAGES[:2], torch.tensor([0]), torch.zeros(2)), "ops must be of shape (2,), got (1,)"),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_argument(call, message):
    with pytest.raises(
        CheckError if "4-D" not in message and "uint8 or" not in message and "channels" not in message else ValueError
    ) as err:
        call()
    assert str(err.value) == message
