"""ExecuTorch programs (.pte), run through the device runner's PteModel: the same code runs them on a host and
on a device. A .pte has no tensor names: its inputs and outputs are the model's, in forward()'s order."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..device.runner import PteModel
from ..errors import UserError
from ..spec import TensorSpec
from .base import Runner, silenced


class ExecuTorchRunner(Runner):
    def __init__(self, path: Path, threads: int = 1, io: tuple[list[TensorSpec], list[TensorSpec]] | None = None):
        if not any(importlib.util.find_spec(name) for name in ("executorch", "executorch_numpy_runtime")):
            raise UserError(f"running {path.name} needs ExecuTorch's runtime: pip install 'edgekit[pte]' (with torch)")
        entries = io and {"inputs": [s.to_dict() for s in io[0]], "outputs": [s.to_dict() for s in io[1]]}
        with silenced():  # the runtime reports its CPU probing on the native stderr
            self.model = PteModel(str(path), threads, entries)
        self.threads = threads
        own_inputs = [TensorSpec(name, tuple(shape)) for name, shape in zip(self.model.input_names,
                                                                             self.model.input_shapes)]
        self.inputs, self.outputs = io or (own_inputs, [TensorSpec(name, ()) for name in self.model.output_names])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = self.model.prepare([feeds[name] for name in self.model.input_names])
        return dict(zip(self.model.output_names, self.model.finish(self.model.invoke(tensors))))

    def describe(self) -> dict[str, Any]:
        runtime = self.model.runtime
        return {"engine": runtime["name"], "version": runtime["version"], "delegate": runtime["used"],
                "threads": self.threads}
