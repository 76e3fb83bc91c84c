"""Descriptions of model inputs and outputs, shared by loaders, runners and the manifest."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy dtype name
    layout: str | None = None  # NCHW / NHWC for image tensors
    quantization: dict[str, Any] | None = field(default=None)  # integer I/O: scale, zero_point
    # Inputs: the perm an app applies to a reference-layout array before feeding (e.g. NCHW->NHWC);
    # outputs: the perm that takes the runtime's array back to the reference layout.
    transpose: list[int] | None = None
    runtime_name: str | None = None  # the runtime's own tensor name, where it differs from the reference's

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(**{**data, "shape": tuple(data["shape"])})


def image_layout(shape: tuple[int, ...]) -> str | None:
    """NCHW for a 4-D tensor whose second dimension looks like channels (1, 3 or 4)."""
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return "NCHW"
    return None
