"""docs/extending.md's worked example runs as written: a toy batch op and a toy policy, registered, then
built from config dicts. The registries are restored afterwards, so no other test sees the toys."""

from __future__ import annotations

import re
import sys
import types

import pytest

from augment import pipeline, policies
from helpers import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "extending.md").read_text(), flags=re.S)


def test_extending_example_registers_and_builds_a_batch_op_and_a_policy():
    assert len(BLOCKS) == 2
    saved = (dict(pipeline.SECTIONS), list(pipeline.BATCH_OPS), dict(policies.POLICIES))
    try:
        module = sys.modules["extending_example"] = types.ModuleType("extending_example")  # for its dataclass
        exec(compile(BLOCKS[0], "docs/extending.md python block", "exec"), module.__dict__)
        assert "brighten" in pipeline.SECTIONS and "invertsome" in policies.POLICIES
    finally:
        sys.modules.pop("extending_example", None)
        for registry, before in zip((pipeline.SECTIONS, pipeline.BATCH_OPS, policies.POLICIES), saved):
            registry.clear()
            if isinstance(registry, dict):
                registry.update(before)
            else:
                registry.extend(before)
    assert "brighten" not in pipeline.SECTIONS and "invertsome" not in policies.POLICIES


@pytest.mark.slow
def test_extending_example_adds_a_config_check_and_a_callback_that_trains(tmp_path, tiny_data):
    """The second block: the check's one line names the YAML key; the callback runs in a real CLI fit."""
    from helpers import run_cli, tiny_args

    module = sys.modules["extending_callbacks"] = types.ModuleType("extending_callbacks")
    try:
        exec(compile(BLOCKS[1], "docs/extending.md second python block", "exec"), module.__dict__)
        counted = []
        module.EpochCounter.on_fit_end = lambda self, trainer, pl_module: counted.append(self.epochs)
        run_cli(tiny_args(tiny_data, tmp_path, "--trainer.callbacks+=extending_callbacks.EpochCounter",
                          "--run_test", "false", max_epochs=2))
    finally:
        sys.modules.pop("extending_callbacks", None)
    assert counted == [2]
