"""An artifact: one file a build made, what it is, how it was made, and how its tensors pair with the model's.

Stages make artifacts, runners and checks read them, the per-layer tools compare them: it is its own module
so that none of those depends on another for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import TensorSpec


@dataclass
class Artifact:
    path: Path
    format: str  # a name in edgekit.formats.FORMATS
    precision: str  # "fp32", "fp16", "int8", "dynamic_int8"
    metadata: dict[str, Any] = field(default_factory=dict)  # how it was made: opset, scheme, ...
    # The artifact's inputs and outputs paired with the reference model's, where its runtime renames or
    # re-lays them out (TFLite); None where they are the reference's own (ONNX).
    io: tuple[list[TensorSpec], list[TensorSpec]] | None = None

    @property
    def variant(self) -> str:
        """What was made, as a stage's `makes` names it: the precision, or a variant judged as one
        (model.dynamic_int8.tflite is judged as int8)."""
        return self.path.name.split(".")[1]

    @property
    def key(self) -> str:
        return f"{self.format}:{self.variant}"
