"""Export a trained member's evaluated network (EMA weights when the run used EMA) to ONNX or TorchScript.

The exported model takes what an image file decodes to and does its own normalization:

- input ``images``: uint8 (B, 3, H, W), RGB, at the member's image size (B free: dynamic batch axis);
- output ``logits``: float32 (B, K), classes in the order of ``class_names`` in the sidecar JSON.

Inside: ``x.float() * (1 / (255 std)) - mean / std``, the same arithmetic as the training app's
validation loader (`augment.crop.to_normalized_float`), then the network. Next to the model file,
``<file>.json`` records class_names, image_size, mean, std, the input layout, the opset and the check.

ONNX: torch's `torch.export`-based exporter (``dynamo=True``, needs onnxscript) at opset 18 unless asked
otherwise; below opset 18 (where that exporter only converts down, often failing), or when it fails on a
network, the TorchScript-based exporter is used and named in the sidecar. TorchScript:
``torch.jit.trace`` (deprecated by torch in favour of torch.export, still the format most C++ and mobile
runtimes load). After writing, the file is loaded back (onnxruntime on the CPU
for ONNX) and its logits are compared with PyTorch's on a batch of images of a batch size other than the
traced one; the file is kept only if the max abs difference is within ``tolerance * max(1, max |logit|)``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from augment.crop import to_normalized_float
from models.run.predict import Member

__all__ = [
    "DEFAULT_OPSET",
    "TOLERANCE",
    "EXPORT_EXTRA",
    "ExportCheckError",
    "ExportedClassifier",
    "ExportResult",
    "export_member",
    "export_onnx",
    "export_torchscript",
]

DEFAULT_OPSET = 18
TOLERANCE = 1e-4
EXPORT_EXTRA = 'pip install "cifar-aug[export]"'
FORMATS = ("onnx", "torchscript")


class ExportCheckError(RuntimeError):
    """The exported model's logits differ from PyTorch's by more than the bound (the file is not kept)."""


class ExportedClassifier(nn.Module):
    """uint8 images (B, 3, H, W) RGB -> logits (B, K): normalization, then the network."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.float() * self.scale - self.shift)


@dataclass
class ExportResult:
    """Where the model went, how it was made, and the check's result."""

    path: Path
    format: str
    exporter: str
    opset: int | None
    max_abs_diff: float
    bound: float
    check_batch: int


def _need_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"--format onnx needs onnx and onnxruntime ({err.name} is missing): {EXPORT_EXTRA}") from None
    return onnx, onnxruntime


def _opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    onnx, _ = _need_onnx()
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int = DEFAULT_OPSET) -> str:
    """Write ``wrapper`` as ONNX with a dynamic batch axis at ``opset``; return the exporter used.

    torch's `torch.export`-based exporter (``dynamo``) from opset 18; below 18, or when it fails or writes
    another opset, the TorchScript-based exporter (``torchscript``).
    """
    _need_onnx()
    names = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)  # the new exporter logs a failure at length before raising it
        try:
            if opset < 18:
                raise ValueError("the torch.export-based exporter writes opset 18 and later")
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: batch},), **names)
            if _opset_of(path) == opset:
                return "dynamo"
        except ImportError as err:
            raise ImportError(f"--format onnx needs onnxscript ({err}): {EXPORT_EXTRA}") from None
        except Exception:  # noqa: BLE001 - any failure of the new exporter: the older one may still work
            pass
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **names)
        return "torchscript"


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``wrapper`` traced as TorchScript; return the exporter name (trace)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        torch.jit.save(traced, str(path))
    return "trace"


def _exported_logits(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        _, ort = _need_onnx()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"images": images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(images).numpy()


def reference_logits(member: Member, images: torch.Tensor) -> np.ndarray:
    """PyTorch's logits for uint8 (B, 3, H, W): the prediction path (normalize as validation did, network)."""
    x = to_normalized_float(images, member.mean, member.std, layout="nchw")
    with torch.inference_mode():
        return member.network.cpu()(x).float().numpy()


def _sidecar(result: ExportResult, member: Member) -> dict[str, Any]:
    h, w = member.image_size
    return {
        "format": result.format,
        "exporter": result.exporter,
        "opset": result.opset,
        "checkpoint": str(member.path),
        "ema_weights": member.ema,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", 3, h, w], "layout": "NCHW, RGB, 0-255"},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(member.class_names)]},
        "class_names": member.class_names,
        "image_size": [h, w],
        "mean": list(member.mean),
        "std": list(member.std),
        "normalization": "inside the model: x / 255 - mean, / std",
        "check": {"batch": result.check_batch, "max_abs_diff": result.max_abs_diff, "bound": result.bound},
    }


def export_member(
    member: Member,
    fmt: str,
    output: str | Path,
    images: np.ndarray,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export ``member`` to ``output`` (+ ``output.json``) and check it on ``images`` uint8 (N, H, W, 3).

    The model is written to a temporary file beside ``output`` and moved there only after the check
    passes; raises ExportCheckError (nothing kept) when it does not.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = Path(output)
    network = member.network.cpu().eval()
    wrapper = ExportedClassifier(network, member.mean, member.std).eval()
    check = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    example = check[:2] if len(check) != 2 else check[:1]  # the check runs at another batch size
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            exporter = export_onnx(wrapper, example, tmp, opset)
        else:
            exporter = export_torchscript(wrapper, example, tmp)
        got = _exported_logits(tmp, fmt, check)
        want = reference_logits(member, check)
        diff = float(np.abs(got.astype(np.float64) - want).max())
        bound = tolerance * max(1.0, float(np.abs(want).max()))
        if not diff <= bound:
            raise ExportCheckError(
                f"export check failed: the {fmt} model's logits differ from PyTorch's by {diff:.3g} "
                f"(bound {bound:.3g}) on {len(check)} images; nothing written")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    result = ExportResult(output, fmt, exporter, opset if fmt == "onnx" else None, diff, bound, len(check))
    side = output.with_name(output.name + ".json")
    side.write_text(json.dumps(_sidecar(result, member), indent=1) + "\n")
    return result
