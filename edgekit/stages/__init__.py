"""Build stages: each takes the artifacts made so far and returns new ones."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Artifact:
    path: Path
    format: str  # "onnx"
    precision: str  # "fp32", "fp16", "int8"
    metadata: dict[str, Any] = field(default_factory=dict)  # how it was made: opset, scheme, ...
