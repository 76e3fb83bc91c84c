"""Runtimes behind one interface: load a model, describe its I/O, run named arrays."""
from __future__ import annotations

from pathlib import Path

from ..spec import TensorSpec
from ..targets import Runtime
from .base import Runner, run_dataset


def open_runner(path: Path, artifact_format: str, runtime: Runtime,
                io: tuple[list[TensorSpec], list[TensorSpec]] | None = None) -> Runner:
    """The runner that executes `artifact_format` files, set up as the target profile says.

    `io` (the artifact's inputs and outputs paired with the reference model's, as the build made and
    the manifest records them) lets a runner whose format renames tensors or changes layouts (TFLite)
    take and return arrays exactly like the reference model; without it the artifact's own names and
    layouts are used.
    """
    from ..formats import get

    return get(artifact_format).runner(path, runtime, io)


def runtime_errors() -> tuple[type[BaseException], ...]:
    """What a runtime raises for an artifact it cannot load or run (corrupt, unsupported, mis-described):
    a failed verdict. Anything else is a bug in edgekit and keeps its traceback."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (RuntimeError, ValueError, OSError, state.Fail, state.InvalidGraph, state.InvalidArgument,
            state.InvalidProtobuf, state.NotImplemented, state.NoSuchFile, state.RuntimeException, state.EPFail)


__all__ = ["Runner", "open_runner", "run_dataset", "runtime_errors"]
