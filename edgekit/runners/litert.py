"""LiteRT (TensorFlow Lite) interpreter, fed the same NCHW float arrays as the ONNX model.

A .tflite made by onnx2tf is channel-last and may have integer I/O. This runner does what an app
must do: transpose each input to the TFLite layout, quantize it with the tensor's scale and zero
point, then dequantize and transpose each output back to the reference layout.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..spec import TensorSpec
from .base import Runner

# (module, attribute path, distribution) in order of preference: the same Interpreter class in all three.
INTERPRETERS = [("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
                ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
                ("tensorflow", "lite.Interpreter", "tensorflow")]


class LiteRTRunner(Runner):
    def __init__(self, path: Path, threads: int = 1, reference_inputs: list[TensorSpec] | None = None,
                 reference_outputs: list[TensorSpec] | None = None):
        """`reference_*`: the source model's I/O, matched to the TFLite tensors by position. Without
        them, names and layouts are the .tflite file's own and no transpose is applied."""
        interpreter_class, self.package, self.version = _interpreter_class()
        # The default op resolver applies the XNNPACK delegate, as LiteRT does on devices.
        with silenced():  # the delegate announces itself on the native stderr
            self.interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.threads = threads
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.input_transposes = _transposes(self._in, reference_inputs, "input")
        self.output_transposes = _transposes(self._out, reference_outputs, "output")
        self.inputs = _specs(self._in, reference_inputs, self.input_transposes)
        self.outputs = _specs(self._out, reference_outputs, [inverse(p) if p else None
                                                             for p in self.output_transposes])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(feeds) != len(self._in):
            raise ValueError(f"the model has {len(self._in)} inputs, got {len(feeds)} arrays")
        for detail, perm, value in zip(self._in, self.input_transposes, feeds.values()):
            value = np.transpose(value, perm) if perm else value
            self.interpreter.set_tensor(detail["index"], quantize(value, detail))
        self.interpreter.invoke()
        results = {}
        for spec, detail, perm in zip(self.outputs, self._out, self.output_transposes):
            value = dequantize(self.interpreter.get_tensor(detail["index"]), detail)
            results[spec.name] = np.transpose(value, inverse(perm)) if perm else value
        return results

    def describe(self) -> dict[str, Any]:
        return {"engine": "litert", "interpreter": self.package, "version": self.version,
                "delegate": self.delegate(), "threads": self.threads}

    def delegate(self) -> str:
        """'XNNPACK' when the default delegate took over part of the graph (it shows as DELEGATE nodes)."""
        try:
            ops = self.interpreter._get_ops_details()  # no public API tells which delegate ran
        except AttributeError:
            return "unknown"
        delegated = sum(op["op_name"] == "DELEGATE" for op in ops)
        return f"XNNPACK ({delegated} partition{'s' * (delegated != 1)})" if delegated else "none (built-in kernels)"


def quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not scale:
        return value.astype(dtype, copy=False)
    limits = np.iinfo(dtype)
    return np.clip(np.round(value / scale) + zero_point, limits.min, limits.max).astype(dtype)


def dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return value.astype(np.float32, copy=False)
    return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)


def channels_last(rank: int) -> list[int]:
    """The perm that takes a channel-first array (NCHW, NCW, NCDHW) to channel-last."""
    return [0, *range(2, rank), 1]


def inverse(perm: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def layout_name(rank: int, channel_last: bool) -> str | None:
    spatial = {3: "W", 4: "HW", 5: "DHW"}.get(rank)
    if spatial is None:
        return None
    return f"N{spatial}C" if channel_last else f"NC{spatial}"


@contextlib.contextmanager
def silenced(log: Path | None = None) -> Iterator[None]:
    """Send stdout and stderr, Python's and native code's (TensorFlow, LiteRT), to `log` or nowhere."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log or os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _transposes(details: list[dict], reference: list[TensorSpec] | None, kind: str) -> list[list[int] | None]:
    """Per tensor, the perm from the reference layout to the TFLite one (None: same layout).

    onnx2tf makes every 3-D to 5-D input channel-last; where a shape cannot tell (C == H == W), the
    channel-last perm is assumed, which is what onnx2tf does.
    """
    if reference is None:
        return [None] * len(details)
    if len(reference) != len(details):
        raise ValueError(f"the .tflite has {len(details)} {kind}s, the reference model {len(reference)}")
    perms = []
    for detail, spec in zip(details, reference):
        shape, want = tuple(spec.shape), tuple(int(d) for d in detail["shape"])
        perm = channels_last(len(shape)) if len(shape) >= 3 else None
        if perm and tuple(shape[i] for i in perm) == want:
            perms.append(perm)
        elif shape == want:
            perms.append(None)
        else:
            raise ValueError(f"{kind} '{spec.name}' {shape} matches neither the TFLite tensor "
                             f"'{detail['name']}' {want} nor its transpose")
    return perms


def _specs(details: list[dict], reference: list[TensorSpec] | None,
           perms: list[list[int] | None]) -> list[TensorSpec]:
    """The tensors as an app sees them, named like the reference's, with the transpose to apply."""
    specs = []
    for position, (detail, perm) in enumerate(zip(details, perms)):
        shape = tuple(int(d) for d in detail["shape"])
        scale, zero_point = detail["quantization"]
        reference_layout = reference[position].layout if reference else None
        layout = layout_name(len(shape), True) if perm else reference_layout
        specs.append(TensorSpec(reference[position].name if reference else detail["name"], shape,
                                np.dtype(detail["dtype"]).name, layout,
                                {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
                                perm, detail["name"]))
    return specs


def _interpreter_class():
    for module_name, attribute, distribution in INTERPRETERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        interpreter = module
        for part in attribute.split("."):
            interpreter = getattr(interpreter, part)
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = getattr(module, "__version__", "unknown")
        return interpreter, distribution, version
    raise ImportError("running .tflite files needs a LiteRT interpreter: pip install ai-edge-litert")
