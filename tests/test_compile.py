"""torch.compile(op, fullgraph=True) on CPU tensors: every batch op and Compose trace into one graph
(no graph break: no value read on the host while compiling) and give eager's output for the same seed.

Dynamo cannot trace a ``torch.Generator``, so compiled ops draw from torch's global generator
(``torch.manual_seed``); ``fallback_random`` makes inductor use the same random kernels as eager. Every
op goes through dynamo with the ``aot_eager`` backend (fast: tracing is what finds graph breaks); three
representative ones also through inductor, the default backend (slow: it compiles C++).
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config

from augment import CutMix, Cutout, GaussianNoise, Mixup, MixupCutMix, build_batch_augment, dropin

K = 4


def _ops() -> dict:
    compose = {
        "cutout": {"n_holes": 1, "size": 3},
        "mixup": {"alpha": 0.3},
        "cutmix": {"alpha": 1.0},
        "mixing": {"per_sample": True},
        "input_noise": {"std": 0.1},
    }
    return {
        "mixup-batch": Mixup(0.4, num_classes=K),
        "cutmix-batch": CutMix(1.0, num_classes=K, label_smoothing=0.1),
        "switch-batch": MixupCutMix(0.4, 1.0, num_classes=K),
        "switch-per-sample": MixupCutMix(0.4, 1.0, per_sample=True, num_classes=K, pairing="random"),
        "cutmix-minmax": MixupCutMix(0.0, 1.0, cutmix_minmax=(0.2, 0.8), per_sample=True, num_classes=K),
        "cutout": Cutout(2, 3, p=0.7),
        "noise": GaussianNoise(0.1, p=0.5, clamp=(0.0, 1.0)),
        "compose": build_batch_augment(compose, num_classes=K, label_smoothing=0.1),
        "timm-pair": dropin.Mixup(0.4, 1.0, mode="pair", num_classes=K),
        "torchvision-cutmix": dropin.CutMix(num_classes=K),
    }


INDUCTOR = ("switch-batch", "switch-per-sample", "compose")


def _same_as_eager(name: str, backend: str) -> None:
    torch._dynamo.reset()
    op = _ops()[name]
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % K
    compiled = torch.compile(op, fullgraph=True, backend=backend)
    for seed in range(2):  # the second call runs the compiled graph again, with new draws
        torch.manual_seed(seed)
        with inductor_config.patch(fallback_random=True):
            out, targets = compiled(x.clone(), y)
        torch.manual_seed(seed)
        expected, expected_targets = op(x.clone(), y)
        torch.testing.assert_close(out, expected, msg=f"{name}: images")
        torch.testing.assert_close(targets, expected_targets, msg=f"{name}: targets")
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(_ops()))
def test_every_batch_op_compiles_to_one_graph_with_eager_output(name):
    _same_as_eager(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", INDUCTOR)
def test_inductor_compiles_representative_ops_with_eager_output(name):
    _same_as_eager(name, "inductor")
