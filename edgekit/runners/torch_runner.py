"""The PyTorch source model (nn.Module, ExportedProgram or ScriptModule) as a runner: the reference."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..spec import TensorSpec
from .base import Runner


class TorchRunner(Runner):
    def __init__(self, module, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        import torch

        self.module = module.module() if hasattr(module, "graph_signature") else module
        self.inputs, self.outputs = inputs, outputs
        self.version = torch.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            result = self.module(*[torch.from_numpy(feeds[spec.name]) for spec in self.inputs])
        values = result if isinstance(result, (tuple, list)) else [result]
        return {spec.name: v.detach().cpu().numpy() for spec, v in zip(self.outputs, values)}

    def describe(self) -> dict[str, Any]:
        return {"engine": "pytorch", "version": self.version, "provider": "eager CPU", "threads": None}
