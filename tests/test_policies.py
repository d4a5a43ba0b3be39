"""TrivialAugmentWide, RandAugment, AutoAugment: same outputs and same (op, magnitude) distribution as
torchvision's policy classes, per-sample draws, seeding, argument errors.

Distributions are checked with chi-square statistics against the documented tables (uniform ops and bins,
AutoAugment's sub-policy table) and against draws recorded from torchvision's own classes. The bound is
the chi-square quantile at p = 1e-6 (Wilson-Hilferty); seeds are fixed, so the tests are deterministic
and fail only for a sampler whose distribution is off.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from policy_images import assert_matches, load_images, op_share
from torchvision.transforms import v2

from augment.checks import CheckError, field_prefix
from augment.policies import CIFAR10_POLICY, AutoAugment, RandAugment, TrivialAugmentWide, build_policy
from augment.policy_ops import OPS, SIGNED, apply_ops, magnitude_table, op_index

IMAGES, SOURCE = load_images(96)
NO_MAGNITUDE = ("Identity", "AutoContrast", "Equalize", "Invert")


def chi_square_bound(dof: int, z: float = 4.753) -> float:
    """Upper chi-square quantile for ``dof`` degrees of freedom at the normal quantile ``z`` (p = 1e-6)."""
    k = 2.0 / (9.0 * dof)
    return dof * (1.0 - k + z * math.sqrt(k)) ** 3


def chi_square(observed: dict, expected: dict) -> tuple[float, int]:
    """Goodness of fit over the categories of ``expected`` (counts); categories expected < 5 are pooled."""
    assert set(observed) <= set(expected), set(observed) - set(expected)
    big = [k for k, e in expected.items() if e >= 5]
    small = [k for k in expected if k not in big]
    pairs = [(observed.get(k, 0), expected[k]) for k in big]
    if small:
        pairs.append((sum(observed.get(k, 0) for k in small), sum(expected[k] for k in small)))
    stat = sum((o - e) ** 2 / e for o, e in pairs if e > 0)
    return stat, len(pairs) - 1


def homogeneity(a: Counter, b: Counter) -> tuple[float, int]:
    """Two-sample chi-square: do counts ``a`` and ``b`` come from one distribution?"""
    na, nb = sum(a.values()), sum(b.values())
    pooled = a + b
    expected_a = {k: na * v / (na + nb) for k, v in pooled.items()}
    expected_b = {k: nb * v / (na + nb) for k, v in pooled.items()}
    sa, da = chi_square(a, expected_a)
    sb, _ = chi_square(b, expected_b)
    return sa + sb, da


def record_torchvision(policy, n: int, seed: int = 0) -> list[tuple[tuple[str, float], ...]]:
    """The (op, magnitude) steps torchvision's ``policy`` applies to ``n`` images (its op call is recorded)."""
    steps: list = []

    def record(image, transform_id, magnitude, interpolation, fill):
        steps[-1].append((transform_id, round(magnitude, 5)))
        return image

    policy._apply_image_or_video_transform = record
    torch.manual_seed(seed)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    for _ in range(n):
        steps.append([])
        policy(image)
    return [tuple(s) for s in steps]


def our_steps(policy, n: int, seed: int = 0) -> list[tuple[tuple[str, float], ...]]:
    """Our draws as the same per-image sequences (skipped AutoAugment steps are Identity: dropped)."""
    draws = policy.sample(n, 32, 32, generator=torch.Generator().manual_seed(seed))
    per_image: list[list] = [[] for _ in range(n)]
    for ops, mags in draws:
        for i, (o, m) in enumerate(zip(ops.tolist(), mags.tolist())):
            if not (isinstance(policy, AutoAugment) and o == 0):
                per_image[i].append((OPS[o], round(m, 5)))
    return [tuple(s) for s in per_image]


def tv_space_table(cls, num_bins: int, height: int, width: int) -> torch.Tensor:
    """torchvision's magnitude table of ``cls`` in our layout (Posterize rounded as torchvision does)."""
    table = torch.zeros(len(OPS), num_bins)
    for name, (fn, _) in cls._AUGMENTATION_SPACE.items():
        values = fn(num_bins, height, width)
        if values is not None:
            table[op_index(name)] = values.float()
    return table


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_magnitude_tables_equal_torchvision(height, width):
    for space, cls, bins in (
        ("wide", v2.TrivialAugmentWide, 31),
        ("standard", v2.RandAugment, 31),
        ("standard", v2.AutoAugment, 10),
        ("wide", v2.TrivialAugmentWide, 7),
    ):
        ours = magnitude_table(space, bins, height, width)
        ours[op_index("Posterize")] = ours[op_index("Posterize")].round()
        assert torch.equal(ours, tv_space_table(cls, bins, height, width)), (space, bins)
    assert {name for name, (_, signed) in v2.RandAugment._AUGMENTATION_SPACE.items() if signed} == set(SIGNED)


def test_cifar10_policy_table_equals_torchvision():
    tv = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    assert [tuple(step) for step in CIFAR10_POLICY] == [tuple(step) for step in tv._policies]


def _torchvision_step(tv, x, ops, mags):
    """One step of ``tv``'s own op calls, image by image, for the ops and magnitudes of a draw."""
    return torch.stack(
        [
            tv._apply_image_or_video_transform(x[i], OPS[o], float(m), interpolation=tv.interpolation, fill=tv._fill)
            for i, (o, m) in enumerate(zip(ops.tolist(), mags.tolist()))
        ]
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: TrivialAugmentWide(), lambda: v2.TrivialAugmentWide()),
        (lambda: RandAugment(num_ops=2, magnitude=20), lambda: v2.RandAugment(num_ops=2, magnitude=20)),
        (lambda: RandAugment(num_ops=3, magnitude=9, magnitude_std=2.0), lambda: v2.RandAugment(num_ops=3)),
        (
            lambda: AutoAugment(interpolation="bilinear", fill=[0.2, 0.5, 0.7]),
            lambda: v2.AutoAugment(
                v2.AutoAugmentPolicy.CIFAR10, interpolation=v2.InterpolationMode.BILINEAR, fill=[0.2, 0.5, 0.7]
            ),
        ),
    ],
    ids=["trivialaugment", "randaugment", "randaugment-std", "autoaugment-bilinear-fill"],
)
def test_policy_output_equals_torchvision_ops_for_the_same_draws(ours, theirs, dtype):
    policy, tv = ours(), theirs()
    x = IMAGES if dtype == torch.uint8 else IMAGES.float() / 255.0
    if policy.fill != 0.0 and dtype == torch.uint8:  # fill is in the image's units
        policy, tv = (
            AutoAugment(interpolation="bilinear", fill=[51, 128, 179]),
            v2.AutoAugment(
                v2.AutoAugmentPolicy.CIFAR10, interpolation=v2.InterpolationMode.BILINEAR, fill=[51, 128, 179]
            ),
        )
    draws = policy.sample(len(x), 32, 32, generator=torch.Generator().manual_seed(7))
    out = policy.apply(x, draws)
    assert out.dtype == dtype and out.shape == x.shape
    # Step by step from the same input: a tolerated 1-level difference must not be amplified by the next
    # op (a posterize or solarize threshold, an equalize table) into a difference the ops do not have.
    step_input = x
    for step, (ops, mags) in enumerate(draws):
        ours_step = apply_ops(step_input, ops, mags, policy.interpolation, policy.fill)
        share = torch.tensor([op_share(OPS[o], policy.interpolation) for o in ops.tolist()])
        assert_matches(ours_step, _torchvision_step(tv, step_input, ops, mags), share, f"{SOURCE} images, step {step}")
        step_input = ours_step
    assert torch.equal(out, step_input)  # the policy is its steps, in order


def test_trivialaugment_ops_bins_and_signs_follow_the_documented_distribution():
    n, policy = 70_000, TrivialAugmentWide()
    ((ops, mags),) = policy.sample(n, 32, 32, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ops, minlength=len(OPS))
    assert counts[op_index("Invert")] == 0  # not in TrivialAugment's space
    stat, dof = chi_square(dict(enumerate(counts[:14].tolist())), {k: n / 14 for k in range(14)})
    assert stat < chi_square_bound(dof)
    table = magnitude_table("wide", 31, 32, 32)
    bins, signs = [], []
    for name in OPS[:14]:
        if name in NO_MAGNITUDE:
            continue
        m = mags[ops == op_index(name)]
        row = table[op_index(name)].round() if name == "Posterize" else table[op_index(name)]
        hits = m.abs()[:, None] == row[None, :]
        assert bool(hits.any(1).all()), name  # every magnitude is a table value
        if name not in ("Posterize", "Solarize"):  # distinct values: the bin is recoverable
            bins.append(hits.float().argmax(1))
        if name in SIGNED:
            signs.append(m[m != 0] < 0)
        else:
            assert bool((m >= 0).all()), name
    bins = torch.cat(bins)
    stat, dof = chi_square(
        dict(enumerate(torch.bincount(bins, minlength=31).tolist())), {k: len(bins) / 31 for k in range(31)}
    )
    assert stat < chi_square_bound(dof)
    neg = torch.cat(signs).double()
    assert abs(neg.mean().item() - 0.5) < 4.75 * 0.5 / math.sqrt(len(neg))


def test_randaugment_ops_are_uniform_and_independent_between_steps_at_the_fixed_magnitude():
    n, policy = 49_000, RandAugment(num_ops=2, magnitude=13)
    draws = policy.sample(n, 32, 32, generator=torch.Generator().manual_seed(1))
    assert len(draws) == 2
    joint = Counter(zip(draws[0][0].tolist(), draws[1][0].tolist()))
    stat, dof = chi_square(joint, {(a, b): n / 14**2 for a in range(14) for b in range(14)})
    assert stat < chi_square_bound(dof)
    table = magnitude_table("standard", 31, 32, 32)[:, 13]
    for ops, mags in draws:
        expected = table[ops]
        expected = torch.where(ops == op_index("Posterize"), expected.round(), expected)
        assert torch.equal(mags.abs(), expected)


def test_randaugment_magnitude_std_spreads_the_bin_around_the_magnitude():
    policy = RandAugment(num_ops=1, magnitude=9, magnitude_std=3.0)
    ((ops, mags),) = policy.sample(140_000, 32, 32, generator=torch.Generator().manual_seed(2))
    bins = mags[ops == op_index("Rotate")].abs().double()  # Rotate: 1 degree per bin (30 degrees, 31 bins)
    standard_error = 3 / math.sqrt(len(bins))  # clipping at 0 (3 std below 9) moves the mean by < 0.001
    assert abs(bins.mean().item() - 9) < 4.75 * standard_error and abs(bins.std().item() - 3) < 4.75 * standard_error
    assert bins.min() >= 0 and len(bins.unique()) > 1000  # continuous, between bins
    capped = RandAugment(num_ops=1, magnitude=30, magnitude_std=5.0).sample(
        20_000, 32, 32, torch.Generator().manual_seed(3)
    )
    rot = capped[0][1][capped[0][0] == op_index("Rotate")].abs()
    assert rot.max() == 30.0 and (rot == 30.0).float().mean() > 0.4  # clipped at the last bin


def test_autoaugment_steps_follow_the_cifar10_table():
    n, policy = 50_000, AutoAugment()
    draws = policy.sample(n, 32, 32, generator=torch.Generator().manual_seed(4))
    tv_policies = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    expected: Counter = Counter()
    for (a, pa, _), (b, pb, _) in tv_policies:  # joint law of (step 1 op or Identity, step 2 op or Identity)
        for first, p1 in ((a, pa), ("Identity", 1 - pa)):
            for second, p2 in ((b, pb), ("Identity", 1 - pb)):
                expected[(first, second)] += n * p1 * p2 / len(tv_policies)
    observed = Counter(zip((OPS[o] for o in draws[0][0].tolist()), (OPS[o] for o in draws[1][0].tolist())))
    stat, dof = chi_square(observed, {k: v for k, v in expected.items() if v > 0})
    assert stat < chi_square_bound(dof)
    table = magnitude_table("standard", 10, 32, 32)
    allowed: dict[str, set] = {}
    for pair in tv_policies:
        for name, _, bin_ in pair:
            allowed.setdefault(name, set()).add(0.0 if bin_ is None else round(float(table[op_index(name), bin_]), 5))
    allowed["Posterize"] = {round(v) for v in allowed["Posterize"]}
    for ops, mags in draws:
        for o, m in zip(ops.tolist(), mags.tolist()):
            if o:
                assert round(abs(m), 5) in allowed[OPS[o]], (OPS[o], m)


@pytest.mark.parametrize(
    "ours, theirs, n",
    [
        (TrivialAugmentWide(), v2.TrivialAugmentWide(), 6000),
        (RandAugment(num_ops=2, magnitude=20), v2.RandAugment(num_ops=2, magnitude=20), 4000),
        (AutoAugment(), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10), 6000),
    ],
    ids=["trivialaugment", "randaugment", "autoaugment"],
)
def test_step_distribution_matches_draws_recorded_from_torchvision(ours, theirs, n):
    tv_steps, our = Counter(record_torchvision(theirs, n)), Counter(our_steps(ours, 4 * n))
    assert set(tv_steps) <= set(our) | {k for k, v in tv_steps.items() if v <= 2}  # same support
    ops_tv = Counter(name for seq in tv_steps.elements() for name, _ in seq)
    ops_ours = Counter(name for seq in our.elements() for name, _ in seq)
    for a, b in ((tv_steps, our), (ops_tv, ops_ours)):
        stat, dof = homogeneity(a, b)
        assert stat < chi_square_bound(dof), (stat, dof)


def test_each_sample_gets_its_own_op():
    x = IMAGES[2:3].expand(96, -1, -1, -1).contiguous()
    out = TrivialAugmentWide(generator=torch.Generator().manual_seed(0))(x)
    distinct = {bytes(img.numpy().tobytes()) for img in out}
    assert len(distinct) > 50  # torchvision on a batch tensor gives one op to the whole batch
    whole = v2.TrivialAugmentWide()(x)
    assert len({bytes(img.numpy().tobytes()) for img in whole}) == 1


@pytest.mark.parametrize("policy_cls", [TrivialAugmentWide, RandAugment, AutoAugment])
def test_seeded_by_generator_any_batch_size_and_layout(policy_cls):
    def run(seed, x):
        return policy_cls(generator=torch.Generator().manual_seed(seed))(x)

    x = IMAGES[:7]
    assert torch.equal(run(3, x), run(3, x))
    assert not torch.equal(run(3, IMAGES), run(4, IMAGES))
    before = IMAGES.clone()
    run(3, IMAGES)
    assert torch.equal(IMAGES, before)
    one = run(5, IMAGES[:1])
    assert one.shape == (1, 3, 32, 32) and one.dtype == torch.uint8
    cl = IMAGES.contiguous(memory_format=torch.channels_last)
    out = run(6, cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, run(6, IMAGES))
    floats = run(6, IMAGES.float() / 255)
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    torch.manual_seed(11)
    a = policy_cls()(IMAGES)
    torch.manual_seed(11)
    assert torch.equal(a, policy_cls()(IMAGES))  # no generator: torch's default one


def test_draws_live_on_the_generator_device_and_apply_on_the_image_device():
    policy = RandAugment(generator=torch.Generator(device="cpu").manual_seed(0))
    draws = policy.sample(5, 32, 32)
    assert all(
        ops.device.type == "cpu" and ops.dtype == torch.int64 and mags.dtype == torch.float32 for ops, mags in draws
    )
    assert [tuple(ops.shape) for ops, _ in draws] == [(5,), (5,)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RandAugment(magnitude=31), "magnitude must be an int in [0, 30], got 31"),
        (lambda: RandAugment(num_ops=-1), "num_ops must be an int >= 0, got -1"),
        (lambda: RandAugment(magnitude_std=-0.5), "magnitude_std must be >= 0, got -0.5"),
        (lambda: TrivialAugmentWide(num_magnitude_bins=1), "num_magnitude_bins must be an int >= 2, got 1"),
        (
            lambda: TrivialAugmentWide(interpolation="bicubic"),
            "interpolation must be one of nearest, bilinear, got 'bicubic'",
        ),
        (lambda: AutoAugment(policy="imagenet"), "policy must be one of cifar10, got 'imagenet'"),
        (
            lambda: AutoAugment(fill=[1, "a"]),
            "fill must be a number or a list of numbers (one per channel), got [1, 'a']",
        ),
        (lambda: TrivialAugmentWide()(torch.zeros(2, 4, 8, 8)), "x must have 1 or 3 channels, got 4"),
        (
            lambda: build_policy("rand"),
            "policy must be one of none, trivialaugment, randaugment, autoaugment, got 'rand'",
        ),
        (
            lambda: build_policy({"name": "randaugment", "magnitude": 31}),
            "policy.magnitude must be an int in [0, 30], got 31",
        ),
        (
            lambda: build_policy({"name": "randaugment", "num_magnitude_bins": 10, "magnitude": 10}),
            "policy.magnitude must be an int in [0, 9], got 10",
        ),
        (
            lambda: build_policy({"name": "trivialaugment", "num_ops": 2}),
            "policy.num_ops must be a trivialaugment parameter (num_magnitude_bins, interpolation, fill), got 2",
        ),
        (
            lambda: build_policy({"name": "none", "magnitude": 3}),
            "policy.magnitude must be unset when the policy is none, got 3",
        ),
        (
            lambda: build_policy({"magnitude": 3, "name": "auto"}),
            "policy.name must be one of none, trivialaugment, randaugment, autoaugment, got 'auto'",
        ),
        (
            lambda: build_policy(3),
            "policy must be a name (none, trivialaugment, randaugment, autoaugment) or a mapping with a name, got 3",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_field(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message and "\n" not in message


def test_config_layer_prefixes_the_yaml_path():
    with pytest.raises(CheckError, match=r"^data\.policy\.magnitude must be an int in \[0, 30\], got 31$"):
        with field_prefix("data"):
            build_policy({"name": "randaugment", "magnitude": 31})


def test_build_policy_from_names_and_mappings():
    assert build_policy(None) is None and build_policy("none") is None and build_policy({"name": "none"}) is None
    assert isinstance(build_policy("trivialaugment"), TrivialAugmentWide)
    policy = build_policy({"name": "randaugment", "num_ops": 3, "magnitude": 5, "magnitude_std": 0.5})
    assert isinstance(policy, RandAugment) and (policy.num_ops, policy.magnitude, policy.magnitude_std) == (3, 5, 0.5)
    gen = torch.Generator().manual_seed(0)
    auto = build_policy({"name": "autoaugment", "interpolation": "bilinear"}, generator=gen)
    assert isinstance(auto, AutoAugment) and auto.interpolation == "bilinear" and auto.generator is gen


def test_build_policy_returns_a_built_policy_as_it_is():
    policy = build_policy({"name": "randaugment", "num_ops": 3})
    assert build_policy(policy) is policy and policy.num_ops == 3
