"""Runtimes behind one interface: load a model, describe its I/O, run named arrays."""
from __future__ import annotations

from pathlib import Path

from ..targets import Runtime
from .base import Runner, run_dataset


def open_runner(path: Path, artifact_format: str, runtime: Runtime) -> Runner:
    """The runner that executes `artifact_format` files, set up as the target profile says."""
    if artifact_format == "onnx":
        from .onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, runtime.onnxruntime_providers, runtime.threads)
    raise ValueError(f"no runner for artifact format '{artifact_format}'")


__all__ = ["Runner", "open_runner", "run_dataset"]
