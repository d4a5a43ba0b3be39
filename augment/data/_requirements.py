"""Fail early, in one line, when the training extra is missing (this subpackage needs more than torch)."""

import importlib.util

MISSING = [name for name in ("numpy", "PIL", "pytorch_lightning") if importlib.util.find_spec(name) is None]
if MISSING:
    raise ImportError(
        f'augment.data needs the training extra (missing: {", ".join(MISSING)}): pip install "cifar-aug[train]"'
    )
