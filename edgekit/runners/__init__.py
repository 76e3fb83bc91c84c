"""Runtimes behind one interface: load a model, describe its I/O, run named arrays."""
from __future__ import annotations

from pathlib import Path

from ..spec import TensorSpec
from ..targets import Runtime
from .base import Runner, run_dataset


def open_runner(path: Path, artifact_format: str, runtime: Runtime,
                reference_io: tuple[list[TensorSpec], list[TensorSpec]] | None = None) -> Runner:
    """The runner that executes `artifact_format` files, set up as the target profile says.

    `reference_io` (the reference model's inputs and outputs) lets a runner whose format changes
    names or layouts (TFLite) take and return arrays exactly like the reference model; without it the
    artifact's own names and layouts are used.
    """
    if artifact_format == "onnx":
        from .onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, runtime.onnxruntime_providers, runtime.threads)
    if artifact_format == "tflite":
        from .litert import LiteRTRunner

        return LiteRTRunner(path, runtime.threads, *(reference_io or (None, None)))
    raise ValueError(f"no runner for artifact format '{artifact_format}'")


__all__ = ["Runner", "open_runner", "run_dataset"]
