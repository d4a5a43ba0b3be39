"""augment.dropin: timm's Mixup and torchvision's v2 MixUp / CutMix by the same constructors and calls.

For the same lambdas and boxes (replayed from timm's numpy draws and torchvision's torch draws, then
handed to our op in place of its own draws) the outputs equal timm's and torchvision's: CutMix pixels
exactly (copies), Mixup pixels and all targets to float32 rounding (timm and torchvision blend with
``mul_`` / ``add_``, we with ``lerp``).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch
from torchvision.transforms import v2

from augment import dropin
from augment.checks import CheckError
from augment.mixing import BatchDraw, MixupCutMix, SampleDraw, pair_permutation

H, W = 16, 12


def batch_of(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, 3, H, W, generator=torch.Generator().manual_seed(seed))
    return x, torch.randint(0, 10, (size,), generator=torch.Generator().manual_seed(seed + 100))


def replay(monkeypatch, draw) -> None:
    """Our ops draw ``draw`` instead of their own (the drop-in's own step, e.g. pair mirroring, still runs)."""
    monkeypatch.setattr(MixupCutMix, "sample", lambda self, *args, **kwargs: draw)


def timm_batch_draw(op, shape, seed: int) -> BatchDraw:
    """timm's per-batch lambda and box for numpy seed ``seed``, as our draw (partner: the flipped batch)."""
    np.random.seed(seed)
    lam, use_cutmix = op._params_per_batch()
    box = None
    if use_cutmix and lam != 1.0:
        box, _ = timm_mixup.cutmix_bbox_and_lam(shape, lam, ratio_minmax=op.cutmix_minmax, correct_lam=op.correct_lam)
        box = tuple(int(v) for v in box)
    return BatchDraw(lam != 1.0, lam, box, pair_permutation(shape[0], "flip"))


def timm_sample_draw(op, shape, seed: int) -> SampleDraw:
    """timm's per-element (or per-pair) lambdas and boxes for numpy seed ``seed``, in timm's draw order."""
    batch = shape[0]
    count = batch // 2 if op.mode == "pair" else batch
    np.random.seed(seed)
    lams, use_cutmix = op._params_per_elem(count)
    boxes = torch.zeros(batch, 4, dtype=torch.long)
    pixel = torch.ones(batch, dtype=torch.float64)
    target = torch.ones(batch, dtype=torch.float64)
    for i in range(count):
        lam = float(lams[i])
        if lam == 1.0:
            continue
        if use_cutmix[i]:
            box, lam = timm_mixup.cutmix_bbox_and_lam(
                shape[1:], lam, ratio_minmax=op.cutmix_minmax, correct_lam=op.correct_lam
            )
            boxes[i] = torch.tensor([int(v) for v in box])
            target[i] = lam
        else:
            pixel[i] = target[i] = lam
    return SampleDraw(boxes, pixel, target, pair_permutation(batch, "flip"))


TIMM_CASES = [
    dict(mixup_alpha=0.8, cutmix_alpha=0.0),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False),
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8),
    dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8)),
    dict(mixup_alpha=0.5, cutmix_minmax=(0.3, 0.9), label_smoothing=0.0, num_classes=10),
]


@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
@pytest.mark.parametrize("kwargs", TIMM_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_timm_mixup_drop_in_equals_timm_for_the_same_draws(monkeypatch, kwargs, mode):
    kwargs = {"num_classes": 10, **kwargs}
    theirs, ours = timm_mixup.Mixup(mode=mode, **kwargs), dropin.Mixup(mode=mode, **kwargs)
    for seed in range(4):
        x, y = batch_of(8, seed)
        np.random.seed(seed)
        out_t, targets_t = theirs(x.clone(), y)
        draw = (timm_batch_draw if mode == "batch" else timm_sample_draw)(theirs, x.shape, seed)
        replay(monkeypatch, draw)
        x_in = x.clone()
        out, targets = ours(x_in, y)
        assert out is x_in  # mixed in place and returned, as timm does
        assert targets.shape == (8, 10) and targets.dtype == targets_t.dtype
        if kwargs["mixup_alpha"] == 0.0:
            assert torch.equal(out, out_t)  # CutMix only: pixel copies
        torch.testing.assert_close(out, out_t)
        torch.testing.assert_close(targets, targets_t)


def test_timm_defaults_and_keywords_are_timms():
    import inspect

    ours = inspect.signature(dropin.Mixup).parameters
    theirs = inspect.signature(timm_mixup.Mixup).parameters
    for name, param in theirs.items():
        assert name in ours and ours[name].default == param.default, name
    assert [n for n in ours if n in theirs] == list(theirs)  # same positional order
    op = dropin.Mixup(cutmix_minmax=(0.2, 0.8))
    assert op.cutmix_alpha == 1.0 and op.num_classes == 1000 and op.smoothing == 0.1


@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
def test_timm_drop_in_takes_odd_batches_that_timm_refuses(mode):
    x, y = batch_of(7, 0)
    with pytest.raises(AssertionError):
        timm_mixup.Mixup(mode=mode, num_classes=10)(x.clone(), y)
    op = dropin.Mixup(mixup_alpha=0.5, cutmix_alpha=1.0, mode=mode, num_classes=10)
    op.generator = torch.Generator().manual_seed(0)
    out, targets = op(x.clone(), y)
    assert out.shape == x.shape and targets.shape == (7, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(7))
    if mode == "pair":  # the middle sample pairs with itself
        assert torch.equal(out[3], x[3])


def test_timm_pair_mode_partners_share_one_draw():
    x, y = batch_of(8, 1)
    op = dropin.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="pair", num_classes=10)
    op.generator = torch.Generator().manual_seed(2)
    out, targets = op(x.clone(), y)
    for i in range(4):
        j = 7 - i
        pasted_i, pasted_j = out[i] != x[i], out[j] != x[j]
        assert torch.equal(pasted_i, pasted_j)  # the same box in both partners ...
        assert torch.equal(out[i][pasted_i], x[j][pasted_i]) and torch.equal(out[j][pasted_j], x[i][pasted_j])
        assert torch.isclose(targets[i, y[i]], targets[j, y[j]])  # ... and the same kept share


def test_timm_mixup_enabled_false_and_multi_label():
    x, y = batch_of(6, 3)
    op = dropin.Mixup(num_classes=10)
    op.mixup_enabled = False
    theirs = timm_mixup.Mixup(num_classes=10)
    theirs.mixup_enabled = False
    out, targets = op(x.clone(), y)
    out_t, targets_t = theirs(x.clone(), y)
    assert torch.equal(out, x) and torch.equal(out_t, x)
    torch.testing.assert_close(targets, targets_t)

    dense = (torch.rand(6, 10, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    ours = dropin.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, multi_label=True, num_classes=10)
    theirs = timm_mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, multi_label=True, num_classes=10)
    ours.mixup_enabled = theirs.mixup_enabled = False
    torch.testing.assert_close(ours(x.clone(), dense)[1], theirs(x.clone(), dense)[1])
    with pytest.raises(CheckError, match="target must be dense multi-label targets of shape"):
        ours(x.clone(), y)


@pytest.mark.parametrize("seed", range(5))
def test_torchvision_mixup_drop_in_equals_torchvision(monkeypatch, seed):
    x, y = batch_of(7, seed)
    theirs, ours = v2.MixUp(alpha=0.6, num_classes=10), dropin.MixUp(alpha=0.6, num_classes=10)
    torch.manual_seed(seed)
    out_t, targets_t = theirs(x, y)
    torch.manual_seed(seed)
    lam = float(theirs._dist.sample(()))
    replay(monkeypatch, BatchDraw(True, lam, None, pair_permutation(7, "roll")))
    out, targets = ours(x, y)
    torch.testing.assert_close(out, out_t)
    torch.testing.assert_close(targets, targets_t)
    out_pair, targets_pair = ours((x, y))  # one (images, labels) pair, as torchvision also takes
    assert torch.equal(out_pair, out) and torch.equal(targets_pair, targets)


@pytest.mark.parametrize("seed", range(8))
def test_torchvision_cutmix_drop_in_equals_torchvision(monkeypatch, seed):
    x, y = batch_of(5, seed)
    theirs, ours = v2.CutMix(alpha=1.0, num_classes=10), dropin.CutMix(alpha=1.0, num_classes=10)
    torch.manual_seed(seed)
    out_t, targets_t = theirs(x, y)
    torch.manual_seed(seed)
    lam = float(theirs._dist.sample(()))
    r_x, r_y = torch.randint(W, size=(1,)), torch.randint(H, size=(1,))
    box = tuple(ours.boxes(torch.tensor([lam], dtype=torch.float64), r_y, r_x, H, W)[0].tolist())
    torch.manual_seed(seed)
    x1, y1, x2, y2 = theirs.make_params([x])["box"]
    assert box == (y1, y2, x1, x2)  # torchvision's box rule for the same lambda and center
    replay(monkeypatch, BatchDraw(True, lam, box, pair_permutation(5, "roll")))
    out, targets = ours(x, y)
    assert torch.equal(out, out_t)
    torch.testing.assert_close(targets, targets_t)


def test_torchvision_drop_ins_are_keyword_only_and_refuse_other_labels_getters():
    with pytest.raises(TypeError):
        dropin.MixUp(1.0)
    with pytest.raises(CheckError, match="labels_getter must be 'default' here"):
        dropin.CutMix(labels_getter=lambda inputs: inputs[1])
    with pytest.raises(CheckError, match=r"MixUp inputs must be \(images, labels\) tensors"):
        dropin.MixUp(num_classes=10)(torch.zeros(2, 3, 4, 4))
    with pytest.raises(CheckError, match="mode must be one of batch, pair, elem"):
        dropin.Mixup(mode="element")


@pytest.mark.parametrize("per_sample", [False, True])
def test_cutmix_minmax_boxes_lie_inside_with_sides_in_range(per_sample):
    op = MixupCutMix(0.0, 1.0, per_sample=per_sample, cutmix_minmax=(0.25, 0.75), num_classes=4)
    op.generator = torch.Generator().manual_seed(0)
    sides_h, sides_w = set(), set()
    for _ in range(40 if per_sample else 400):
        draw = op.sample(16, H, W, torch.device("cpu"))
        boxes = draw.boxes if per_sample else torch.tensor([draw.box])
        y0, y1, x0, x1 = boxes.unbind(1)
        assert bool(((y0 >= 0) & (y1 <= H) & (x0 >= 0) & (x1 <= W)).all())
        sides_h.update((y1 - y0).tolist())
        sides_w.update((x1 - x0).tolist())
    assert sides_h == set(range(4, 12)) and sides_w == set(range(3, 9))  # [int(0.25 s), int(0.75 s))
    with pytest.raises(CheckError, match=r"cutmix_minmax must be null or \(low, high\)"):
        MixupCutMix(cutmix_minmax=(0.8, 0.2))
