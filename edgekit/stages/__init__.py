"""Build stages: each takes the artifacts made so far and returns new ones."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import TensorSpec


@dataclass
class Artifact:
    path: Path
    format: str  # "onnx"
    precision: str  # "fp32", "fp16", "int8"
    metadata: dict[str, Any] = field(default_factory=dict)  # how it was made: opset, scheme, ...
    # The artifact's inputs and outputs paired with the reference model's, where its runtime renames or
    # re-lays them out (TFLite); None where they are the reference's own (ONNX).
    io: tuple[list[TensorSpec], list[TensorSpec]] | None = None
