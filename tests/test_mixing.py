"""Mixup, CutMix and the switch: target/pixel consistency, per-sample draws, timm cross-check."""

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch

from augment.mixing import (
    CutMix,
    Mixup,
    MixupCutMix,
    centered_boxes,
    cutmix_batch,
    cutmix_box,
    mixup_batch,
    pair_permutation,
    sample_beta,
)
from augment.targets import to_soft

H = W = 16


def source_images(batch, channels=3, dtype=torch.float32):
    """Image i is constant 10 * (i + 1) and has label i, so each pixel names its source image."""
    values = 10.0 * torch.arange(1, batch + 1, dtype=torch.float64)
    x = values.view(-1, 1, 1, 1).expand(batch, channels, H, W).to(dtype).contiguous()
    return x, torch.arange(batch), values


def source_fractions(out, values):
    """(B, B) fraction of each output image's pixels equal to source image k's value."""
    pixels = out[:, 0].reshape(out.shape[0], -1).double()
    return (pixels[:, :, None] == values[None, None, :]).double().mean(1)


def make_ops(batch, generator, **kwargs):
    return {
        "mixup": Mixup(0.4, num_classes=batch, generator=generator, **kwargs),
        "cutmix": CutMix(1.0, num_classes=batch, generator=generator, **kwargs),
        "switch": MixupCutMix(0.4, 1.0, num_classes=batch, generator=generator, **kwargs),
    }


def test_sample_beta_moments_and_determinism():
    draws = sample_beta(0.4, 20000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float64 and draws.min() >= 0 and draws.max() <= 1
    assert abs(draws.mean().item() - 0.5) < 0.01
    assert abs(draws.var().item() - 1 / (4 * (2 * 0.4 + 1))) < 0.005  # Beta(a, a) variance
    again = sample_beta(0.4, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("batch", [1, 7, 16])
@pytest.mark.parametrize("kind", ["mixup", "cutmix", "switch"])
def test_image_mean_equals_target_weighted_sources(kind, batch, per_sample):
    gen = torch.Generator().manual_seed(batch)
    op = make_ops(batch, gen, per_sample=per_sample)[kind]
    x, y, values = source_images(batch)
    for _ in range(3):
        out, targets = op(x, y)
        assert targets.shape == (batch, batch)
        torch.testing.assert_close(targets.sum(1), torch.ones(batch))
        means = out.double().mean((1, 2, 3))
        torch.testing.assert_close(means, targets.double() @ values, rtol=1e-5, atol=1e-4)
        assert torch.equal(x, source_images(batch)[0])  # input untouched


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("batch", [5, 16])
def test_cutmix_target_is_exact_pixel_fraction_per_source(batch, per_sample):
    op = CutMix(1.0, per_sample=per_sample, num_classes=batch, generator=torch.Generator().manual_seed(3))
    x, y, values = source_images(batch)
    pasted_seen = False
    for _ in range(10):
        out, targets = op(x, y)
        fractions = source_fractions(out, values)
        torch.testing.assert_close(fractions, targets.double(), rtol=0, atol=1e-6)
        areas = (fractions < 1).sum()
        pasted_seen |= bool(areas > 0)
    assert pasted_seen


def test_cutmix_correct_lam_false_keeps_drawn_lambda():
    batch = 64
    op = CutMix(1.0, per_sample=True, correct_lam=False, num_classes=batch, generator=torch.Generator().manual_seed(1))
    x, y, values = source_images(batch)
    out, targets = op(x, y)
    own = targets[torch.arange(batch), y].double()
    pasted = 1 - source_fractions(out, values)[torch.arange(batch), y]
    # The box (floored and clipped) never exceeds (1 - lam) of the image, and clipping makes it smaller.
    assert torch.all(pasted <= 1 - own + 1e-6)
    assert torch.any(pasted < 1 - own - 0.05)


def test_per_sample_lambdas_differ_across_batch():
    batch = 32
    for kind, op in make_ops(batch, torch.Generator().manual_seed(0), per_sample=True).items():
        x, y, _ = source_images(batch)
        _, targets = op(x, y)
        own = targets[torch.arange(batch), y]
        assert own.unique().numel() > batch // 2, kind


def test_switch_per_sample_uses_both_ops_in_one_batch():
    batch = 64
    op = MixupCutMix(0.4, 1.0, per_sample=True, num_classes=batch, generator=torch.Generator().manual_seed(0))
    x, y, values = source_images(batch)
    out, _ = op(x, y)
    flat = out[:, 0].reshape(batch, -1)
    is_cutmix = (flat[:, :, None] == values.float()[None, None]).any(-1).all(1)  # every pixel from a source
    is_constant = flat.amax(1) == flat.amin(1)
    mixup_rows = is_constant & ~(flat[:, :1] == values.float()[None]).any(1)
    assert is_cutmix.any() and mixup_rows.any()


def test_batch_mode_uses_one_lambda():
    batch = 16
    op = Mixup(0.4, num_classes=batch, generator=torch.Generator().manual_seed(0))
    x, y, _ = source_images(batch)
    _, targets = op(x, y)
    assert targets[torch.arange(batch), y].unique().numel() == 1


def test_batch_of_one_is_left_unchanged():
    x, y, _ = source_images(1)
    for op in make_ops(1, torch.Generator().manual_seed(0), per_sample=True).values():
        out, targets = op(x, y)
        assert torch.equal(out, x) and torch.equal(targets, torch.ones(1, 1))


@pytest.mark.parametrize("per_sample", [False, True])
def test_prob_zero_and_per_sample_prob(per_sample):
    batch = 64
    x, y, _ = source_images(batch)
    op = MixupCutMix(0.4, 1.0, prob=0.0, per_sample=per_sample, num_classes=batch)
    out, targets = op(x, y)
    assert torch.equal(out, x) and torch.equal(targets, torch.eye(batch))
    if per_sample:
        gen = torch.Generator().manual_seed(0)
        op = MixupCutMix(0.4, 1.0, prob=0.5, per_sample=True, num_classes=batch, generator=gen)
        out, targets = op(x, y)
        unmixed = targets[torch.arange(batch), y] == 1
        assert 10 < unmixed.sum() < 54
        assert torch.equal(out[unmixed], x[unmixed])


@pytest.mark.parametrize("per_sample", [False, True])
def test_same_seed_same_output_different_seed_differs(per_sample):
    x = torch.randn(8, 3, H, W)
    y = torch.randint(0, 5, (8,))

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        op = MixupCutMix(0.4, 1.0, per_sample=per_sample, num_classes=5, pairing="random", generator=gen)
        return [op(x, y) for _ in range(4)]

    first, again, other = run(0), run(0), run(1)
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert any(not torch.equal(a, c) for (a, _), (c, _) in zip(first, other))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_dtype_and_channels_last_preserved(dtype, per_sample):
    x = torch.randn(6, 3, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (6,))
    for kind, op in make_ops(4, torch.Generator().manual_seed(0), per_sample=per_sample).items():
        out, targets = op(x, y)
        assert out.dtype == dtype, kind
        assert out.is_contiguous(memory_format=torch.channels_last), kind
        assert targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_low_precision_mixup_targets_match_rounded_pixel_weight():
    x, y, values = source_images(4, dtype=torch.bfloat16)
    op = Mixup(0.4, per_sample=True, num_classes=4, generator=torch.Generator().manual_seed(0))
    out, targets = op(x, y)
    expected = (targets.double() @ values).to(torch.bfloat16)
    torch.testing.assert_close(out[:, 0, 0, 0], expected, rtol=0, atol=0)


def test_soft_targets_in_and_label_smoothing():
    batch, k = 6, 4
    y = torch.randint(0, k, (batch,))
    op = Mixup(0.4, num_classes=k, label_smoothing=0.2, generator=torch.Generator().manual_seed(0))
    _, targets = op(torch.randn(batch, 3, H, W), y)
    assert targets.min() >= 0.2 / k - 1e-7
    soft = torch.softmax(torch.randn(batch, k), 1)
    _, mixed = Mixup(0.4, generator=torch.Generator().manual_seed(0))(torch.randn(batch, 3, H, W), soft)
    torch.testing.assert_close(mixed.sum(1), torch.ones(batch))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MixupCutMix(mixup_alpha=-1.0), r"mixup_alpha must be >= 0, got -1"),
        (lambda: MixupCutMix(cutmix_alpha=-0.5), r"cutmix_alpha must be >= 0"),
        (lambda: MixupCutMix(0.0, 0.0), r"mixup_alpha or cutmix_alpha must be > 0"),
        (lambda: Mixup(alpha=0.0), r"alpha must be > 0, got 0"),
        (lambda: CutMix(alpha=-1.0), r"alpha must be > 0"),
        (lambda: Mixup(prob=1.5), r"prob must be in \[0, 1\], got 1.5"),
        (lambda: MixupCutMix(switch_prob=-0.1), r"switch_prob must be in \[0, 1\]"),
        (lambda: Mixup(label_smoothing=2.0), r"label_smoothing must be in \[0, 1\), got 2.0"),
        (lambda: Mixup(label_smoothing=0.9, num_classes=10), r"label_smoothing must be >= 0 and < 0.9 for 10 classes"),
        (lambda: Mixup(pairing="shift"), r"pairing must be one of"),
        (lambda: Mixup(num_classes=0), r"num_classes must be"),
    ],
)
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_label_errors_at_call():
    x = torch.randn(3, 3, H, W)
    with pytest.raises(ValueError, match="num_classes"):
        Mixup()(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"num_classes=3.*label 3"):
        CutMix(num_classes=3)(x, torch.tensor([0, 3, 2]))


def test_pairings_are_permutations():
    for pairing in ("roll", "flip", "random"):
        perm = pair_permutation(7, pairing, torch.Generator().manual_seed(0))
        assert torch.equal(perm.sort().values, torch.arange(7)), pairing
    assert torch.equal(pair_permutation(5, "flip"), torch.tensor([4, 3, 2, 1, 0]))
    assert torch.equal(pair_permutation(4, "roll"), torch.tensor([3, 0, 1, 2]))


# --- cross-check against timm.data.Mixup (batch mode pairs x with x.flip(0)) ---


def timm_reference(batch, seed, **kwargs):
    """timm's output and its drawn lambda / box for the same numpy seed."""
    x = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(seed))
    op = timm_mixup.Mixup(mode="batch", num_classes=10, label_smoothing=0.1, **kwargs)
    np.random.seed(seed)
    out, targets = op(x.clone(), y)
    np.random.seed(seed)
    lam, use_cutmix = op._params_per_batch()
    box = None
    if use_cutmix:
        box, lam = timm_mixup.cutmix_bbox_and_lam(x.shape, lam, correct_lam=op.correct_lam)
    return x, y, out, targets, lam, box


@pytest.mark.parametrize("seed", range(4))
def test_mixup_core_matches_timm(seed):
    x, y, out_t, targets_t, lam, _ = timm_reference(8, seed, mixup_alpha=0.8, cutmix_alpha=0.0)
    out, targets = mixup_batch(x, to_soft(y, 10, 0.1), lam, pair_permutation(8, "flip"))
    torch.testing.assert_close(out, out_t)
    torch.testing.assert_close(targets, targets_t)


@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_cutmix_core_matches_timm(seed, correct_lam):
    reference = timm_reference(8, seed, mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=correct_lam)
    x, y, out_t, targets_t, lam, box = reference
    perm, soft = pair_permutation(8, "flip"), to_soft(y, 10, 0.1)
    out, targets = cutmix_batch(x, soft, box, perm, lam=None if correct_lam else lam)
    assert torch.equal(out, out_t)
    torch.testing.assert_close(targets, targets_t)
    per_sample_box = torch.tensor(box).expand(8, 4)  # the per-sample path with one shared box
    out_ps, targets_ps = cutmix_batch(x, soft, per_sample_box, perm, lam=None if correct_lam else lam)
    assert torch.equal(out_ps, out_t)
    torch.testing.assert_close(targets_ps, targets_t)


def test_box_geometry_matches_timm_rand_bbox():
    lams = np.random.default_rng(0).uniform(0, 1, size=100)
    for height, width in ((16, 17), (15, 15)):
        np.random.seed(1)
        expected = [timm_mixup.rand_bbox((3, height, width), lam) for lam in lams]
        np.random.seed(1)
        centers = np.array([(np.random.randint(0, height), np.random.randint(0, width)) for _ in lams])
        ratio = torch.sqrt(1 - torch.from_numpy(lams))
        cy, cx = torch.from_numpy(centers).long().unbind(1)
        cuts_h, cuts_w = torch.floor(height * ratio).long(), torch.floor(width * ratio).long()
        boxes = centered_boxes(cy, cx, cuts_h, cuts_w, height, width)
        assert boxes.tolist() == [[int(v) for v in box] for box in expected]
        python_boxes = [cutmix_box(lam, int(cy_), int(cx_), height, width) for lam, (cy_, cx_) in zip(lams, centers)]
        assert [list(box) for box in python_boxes] == boxes.tolist()


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("weight_shape", ["per_pixel", "per_row", "number"])
def test_rolled_partners_equal_the_gathered_ones(batch, layout, weight_shape):
    from augment.mixing import lerp_partners

    gen = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 3, 8, 8, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = {"per_pixel": torch.rand(batch, 1, 8, 8, generator=gen).round(),  # CutMix-like 0/1 weights
              "per_row": torch.rand(batch, 1, 1, 1, generator=gen), "number": 0.3}[weight_shape]
    perm = pair_permutation(batch, "roll")
    rolled, gathered = lerp_partners(x, perm, weight, rolled=True), lerp_partners(x, perm, weight)
    reference = torch.lerp(x.double()[perm], x.double(), torch.as_tensor(weight, dtype=torch.float64))
    assert rolled.stride() == gathered.stride()
    if layout == "channels_last":
        assert rolled.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(rolled, gathered, rtol=0, atol=1e-6)
    torch.testing.assert_close(rolled.double(), reference, rtol=0, atol=1e-6)
    if weight_shape == "per_pixel":  # 0/1 weights copy pixels: exact on every CPU
        assert torch.equal(rolled, gathered)


def test_roll_pairing_draws_are_marked_rolled_and_others_are_not():
    for per_sample in (False, True):
        for pairing, rolled in (("roll", True), ("flip", False), ("random", False)):
            op = MixupCutMix(1.0, 1.0, per_sample=per_sample, num_classes=4, pairing=pairing)
            assert op.sample(6, 8, 8, torch.device("cpu")).rolled is rolled
