"""Refuse, before any data is read, a build that cannot fit: input tensors too large for a runtime to index,
or inputs and weights that would not fit in the memory this machine has free.

The memory figure is an estimate, a floor: the inputs of every calibration and held-out sample are held at
once, in a few copies, beside several copies of the float model's weights; activations come on top.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from .data import HELD_OUT_FRACTION, RANDOM_CALIB_SAMPLES, RANDOM_EVAL_SAMPLES
from .errors import UserError
from .recipe import Recipe
from .sources import SourceModel

MAX_ELEMENTS = 2**31 - 1  # ONNX Runtime, TFLite and TensorRT index a tensor's elements with int32
INPUT_COPIES = 3  # each sample as read, as cast to the model's dtype, and as batched for a runtime
WEIGHT_COPIES = 6  # the float model, its ONNX export, and the reduced-precision and converted formats
# Bytes a target's folder, its archive and its converter scratch take, in float weights: about four artifacts'
# worth of weights (fp32, fp16, INT8 in two formats), as much again compressed in the archive, and onnx2tf's
# saved model. The held-out inputs are written twice (parity data and archive).
DISK_COPIES = 8


def check(source: SourceModel | None, recipe: Recipe, out: Path) -> None:
    """Refuse a build this machine cannot hold. Called with `source` None before the model is loaded (a
    PyTorch model is run once on the input shape while loading), then with the loaded model."""
    shapes = [(spec.name, spec.shape, spec.dtype) for spec in source.inputs] if source else \
        [("input", tuple(recipe.input_shape), "float32")] if recipe.input_shape else []
    for name, shape, _ in shapes:
        problem = oversized(shape)
        if problem:
            raise UserError(f"input '{name}' of shape {','.join(map(str, shape))} {problem}: lower the input shape")
    sample = sum(math.prod(shape[1:]) * np.dtype(dtype).itemsize for _, shape, dtype in shapes)
    weights = _weight_bytes(source) if source else 0
    available = available_bytes()
    needed = INPUT_COPIES * _samples(recipe) * sample + WEIGHT_COPIES * weights
    if available is not None and needed > available:
        raise UserError(f"the build needs about {needed / 1e9:.1f} GB of memory for its inputs and weights, "
                        f"{available / 1e9:.1f} GB available: lower --calib-samples or the input shape")
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    written = DISK_COPIES * weights + 2 * math.ceil(_samples(recipe) * HELD_OUT_FRACTION) * sample
    if written > free:
        raise UserError(f"{out} has {free / 1e6:.1f} MB free and this build writes about {written / 1e6:.1f} MB "
                        f"per target: free some space or choose another --out")


def oversized(shape) -> str | None:
    """Why no runtime can hold a tensor of this shape (a dimension of 2^31 makes it so too), or None."""
    elements = math.prod(shape)
    if elements <= MAX_ELEMENTS:
        return None
    return f"has {elements} elements, more than the {MAX_ELEMENTS} a runtime can index with 32-bit integers"


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where there is no such reading."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    kilobytes = [int(line.split()[1]) for line in lines if line.startswith("MemAvailable:")]
    return kilobytes[0] * 1024 if kilobytes else None


def _samples(recipe: Recipe) -> int:
    """Calibration plus held-out samples, before the data is read: --calib-samples and a fifth more."""
    if recipe.calibration.data is None:
        return RANDOM_CALIB_SAMPLES + RANDOM_EVAL_SAMPLES
    return math.ceil(recipe.calibration.samples * (1 + HELD_OUT_FRACTION))


def _weight_bytes(source: SourceModel) -> int:
    """The float model's parameters and buffers; for a model known only as a file (ONNX, .pt2), the file."""
    if source.kind == "torch":
        import torch

        if isinstance(source.module, torch.nn.Module):
            return sum(t.numel() * t.element_size() for t in source.module.state_dict().values())
    return sum(Path(f).stat().st_size for f in source.files)
