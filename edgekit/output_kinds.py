"""What kind of value each model output holds, read from the graph, so parity judges it with fitting metrics.

- probability: a final Sigmoid (masks, heat maps, detection scores): per-element values in [0, 1], judged
  by mean absolute error and the IoU of the maps thresholded at 0.5, not by the largest relative error;
- distribution: a final Softmax (class probabilities, CTC character distributions): top-1 agreement over
  the Softmax axis at every position;
- logits: any other 2-D output with several columns: top-1 agreement over the columns, unless the model also
  has a Softmax or Sigmoid head, beside which a plain 2-D output is a regression (MTCNN's boxes and landmarks);
- values: everything else (boxes, landmarks, embeddings, feature maps): cosine and SNR.

Ops that only move or reshape values (Reshape, Transpose, Flatten...) are looked through, so a Sigmoid
followed by a Reshape is still a probability.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")
RULES = {
    "probability": "final Sigmoid: mean abs error and IoU of the map thresholded at 0.5",
    "distribution": "final Softmax: top-1 agreement over the Softmax axis at every position",
    "logits": "2-D scores: top-1 agreement over the columns",
    "values": "cosine and SNR",
}


@dataclass(frozen=True)
class OutputKind:
    kind: str  # probability | distribution | logits | values
    class_axis: int | None = None  # the axis top-1 agreement is taken over (distribution, logits)
    why: str = ""  # what in the graph told it

    @property
    def rule(self) -> str:
        return RULES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OutputKind":
        return cls(data["kind"], data.get("class_axis"), data.get("why", ""))


def detect(model) -> dict[str, OutputKind]:
    """The kind of every graph output of an ONNX model."""
    producer = {out: node for node in model.graph.node for out in node.output}
    kinds = {}
    for output in model.graph.output:
        rank = len(output.type.tensor_type.shape.dim)
        kinds[output.name] = _kind(output.name, rank, producer, _dims(output))
    heads = [name for name, kind in kinds.items() if kind.kind in ("distribution", "probability")]
    if heads:  # beside a Softmax or Sigmoid head, a plain 2-D output regresses (boxes, landmarks): no top-1
        kinds = {name: OutputKind("values", None, f"2-D output beside the {kinds[heads[0]].kind} head "
                                                  f"'{heads[0]}': a regression head (boxes, landmarks)")
                 if kind.kind == "logits" else kind for name, kind in kinds.items()}
    return kinds


def by_shape(shape: tuple[int, ...]) -> OutputKind:
    """The kind of an output known only by its shape (no graph to read)."""
    if len(shape) == 2 and shape[1] > 1:
        return OutputKind("logits", 1, "2-D output with several columns")
    return OutputKind("values", None, "no final Sigmoid or Softmax")


def _dims(output) -> tuple[int, ...]:
    return tuple(d.dim_value for d in output.type.tensor_type.shape.dim)


def _kind(name: str, rank: int, producer: dict, dims: tuple[int, ...]) -> OutputKind:
    node, moved = producer.get(name), False
    while node is not None and node.op_type in LAYOUT_OPS:
        moved = True
        node = producer.get(node.input[0])
    if node is not None and node.op_type in ("Sigmoid", "HardSigmoid"):
        return OutputKind("probability", None, f"produced by {node.op_type} node '{node.name}'")
    if node is not None and node.op_type == "Softmax" and not moved:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return OutputKind("distribution", axis % rank if rank else None,
                          f"produced by Softmax node '{node.name}' (axis {axis})")
    return by_shape(dims)
