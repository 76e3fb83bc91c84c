"""Which tensor of one format is which tensor of another.

ONNX <-> PyTorch: the dynamo exporter records each node's module path in its metadata
(`pkg.torch.onnx.name_scopes`); where the graph still has it, a tensor maps to the innermost module
whose last node made it. onnxslim drops all metadata, so for a simplified graph (edgekit's
model.fp32.onnx) tensors are matched by value instead: the float graphs compute the same numbers up
to rounding (BatchNorm folded into Conv, ReLU6 as Clip), so each ONNX tensor is paired with the
PyTorch module output of the same shape that it equals within a relative tolerance.

TFLite <-> ONNX: onnx2tf names TFLite tensors after its TensorFlow ops (`tf.nn.convolution_3`), not
after ONNX nodes, and the converter fuses Conv + activation, so tensors are matched by value between
the float .tflite and the float ONNX graph. A float file that diverges (a wrong lowering) matches nothing by
value after its first wrong layer, so what values leave is then paired by structure: in network order between
two value matches, with the ONNX op type the TFLite op lowers and the same shape. The integer .tflite shares
the float one's tensor keys (see `capture.tflite_key`), so the same mapping applies to it.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np

from .capture import Capture

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
VALUE_TOLERANCE = 1e-3  # relative L2 error for two float tensors to count as the same tensor
# The ONNX op types each TFLite op is lowered from (onnx2tf), for pairing tensors by structure.
LOWERED_FROM = {
    "CONV_2D": ("Conv",), "DEPTHWISE_CONV_2D": ("Conv",), "TRANSPOSE_CONV": ("ConvTranspose",),
    "FULLY_CONNECTED": ("Gemm", "MatMul"), "BATCH_MATMUL": ("MatMul",), "MAX_POOL_2D": ("MaxPool",),
    "AVERAGE_POOL_2D": ("AveragePool", "GlobalAveragePool"), "MEAN": ("GlobalAveragePool", "ReduceMean"),
    "PRELU": ("PRelu",), "LEAKY_RELU": ("LeakyRelu",), "RELU": ("Relu",), "RELU6": ("Clip",), "RELU_0_TO_1": ("Clip",),
    "LOGISTIC": ("Sigmoid",), "TANH": ("Tanh",), "HARD_SWISH": ("HardSwish",), "SOFTMAX": ("Softmax",),
    "RESHAPE": ("Reshape", "Flatten", "Squeeze", "Unsqueeze"), "TRANSPOSE": ("Transpose",),
    "CONCATENATION": ("Concat",), "ADD": ("Add",), "SUB": ("Sub",), "MUL": ("Mul",), "DIV": ("Div",),
    "RESIZE_BILINEAR": ("Resize",), "RESIZE_NEAREST_NEIGHBOR": ("Resize",), "GELU": ("Gelu",)}
FUSED_ACTIVATIONS = ("Relu", "Clip")  # the TFLite converter folds these into the op before them


@dataclass
class Mapping:
    """reference name -> candidate name, in the reference's execution order."""
    pairs: dict[str, str]
    method: str  # "metadata", "values", or "values and structure"
    unmatched: list[str] = field(default_factory=list)  # candidate tensors with no reference partner

    def inverse(self) -> dict[str, str]:
        return {c: r for r, c in self.pairs.items()}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    norm = _norm(a)
    difference = a.astype(np.float32, copy=False) - b
    return float(_norm(difference) / norm) if norm else (0.0 if not np.any(b) else np.inf)


def match_by_value(reference: Capture, candidate: Capture, tolerance: float = VALUE_TOLERANCE,
                   samples: int = 8) -> Mapping:
    """Pair each candidate tensor with the equal (same shape, within `tolerance`) reference tensor.

    Both captures must come from float models run on the same inputs (the first `samples` of them
    are compared). Where several reference
    tensors are equal (an identity module, a ReLU that clipped nothing) the earliest one not yet
    taken after the previous match wins, which keeps the pairing in network order.
    """
    ref_names = list(reference.tensors)
    position = {name: i for i, name in enumerate(ref_names)}
    norms = {name: _norm(reference.tensors[name][:samples]) for name in ref_names}
    taken: set[str] = set()
    pairs: dict[str, str] = {}
    unmatched = []
    last = -1
    for name, value in candidate.tensors.items():
        norm = _norm(value[:samples])
        # |norm(a) - norm(b)| <= norm(a - b): a pair whose norms differ by more than the tolerance cannot match,
        # so most same-shaped tensors are set aside without the full comparison.
        close = [(relative_error(reference.tensors[r][:samples], value[:samples]), r) for r in ref_names
                 if r not in taken and reference.tensors[r].shape == value.shape
                 and abs(norms[r] - norm) <= tolerance * norms[r] * 1.0001]
        close = [(e, r) for e, r in close if e <= tolerance]
        if not close:
            unmatched.append(name)
            continue
        best = min(e for e, _ in close)
        tied = [r for e, r in close if e <= max(best * 1.01, 1e-7)]
        after = [r for r in tied if position[r] > last]
        chosen = min(after or tied, key=position.get)
        pairs[chosen] = name
        taken.add(chosen)
        last = position[chosen]
    ordered = {r: pairs[r] for r in ref_names if r in pairs}
    return Mapping(ordered, "values", unmatched)


def map_tflite_onnx(onnx_capture: Capture, tflite_capture: Capture) -> Mapping:
    """ONNX tensor -> float TFLite tensor: by value, then by structure for what values leave (see above)."""
    by_value = match_by_value(onnx_capture, tflite_capture)
    names, candidates = list(onnx_capture.tensors), list(tflite_capture.tensors)
    position = {name: i for i, name in enumerate(names)}
    pairs, unmatched = dict(by_value.pairs), []
    partner = {c: r for r, c in pairs.items()}
    last = -1
    for index, name in enumerate(candidates):
        if name in partner:
            last = position[partner[name]]
            continue
        bound = next((position[partner[c]] for c in candidates[index + 1:] if c in partner), len(names))
        chosen = _structural_partner(onnx_capture, names[last + 1:bound], set(pairs), tflite_capture, name)
        if chosen is None:
            unmatched.append(name)
            continue
        pairs[chosen] = name
        last = position[chosen]
    method = "values and structure" if len(pairs) > len(by_value.pairs) else "values"
    return Mapping({r: pairs[r] for r in names if r in pairs}, method, unmatched)


def _structural_partner(onnx_capture: Capture, window: list[str], taken: set[str], tflite_capture: Capture,
                        name: str) -> str | None:
    """The first free ONNX tensor in `window` lowered to TFLite tensor `name`'s op, of its shape; or the fused
    activation right after it, where that one is closer in value (the converter fused it)."""
    value, types = tflite_capture.tensors[name], LOWERED_FROM.get(tflite_capture.kinds.get(name, ""), ())
    for i, reference in enumerate(window):
        if reference in taken or onnx_capture.kinds.get(reference) not in types \
                or onnx_capture.tensors[reference].shape != value.shape:
            continue
        after = window[i + 1] if i + 1 < len(window) else None
        if after and after not in taken and onnx_capture.kinds.get(after) in FUSED_ACTIVATIONS \
                and onnx_capture.tensors[after].shape == value.shape \
                and relative_error(onnx_capture.tensors[after], value) < relative_error(onnx_capture.tensors[reference], value):
            return after
        return reference
    return None


def _norm(tensor: np.ndarray) -> float:
    """L2 norm in float64 over any memory layout, without a flattened copy."""
    axes = list(range(tensor.ndim))
    return math.sqrt(float(np.einsum(tensor, axes, tensor, axes, [], dtype=np.float64)))


def module_scopes(model) -> dict[str, str]:
    """ONNX tensor -> PyTorch module path, from the exporter's metadata ({} when it was stripped).

    A module's output is the output of its last node; a tensor that is the output of nested
    modules (a Sequential ending in a BatchNorm) goes to the innermost one.
    """
    last_node: dict[str, tuple[int, str]] = {}  # module path -> (depth, tensor) of the last node in it
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPES_KEY not in meta or not node.output:
            continue
        scopes = [s for s in ast.literal_eval(meta[SCOPES_KEY])[:-1] if s]  # last entry: the op itself
        for depth, scope in enumerate(scopes):
            last_node[scope] = (depth, node.output[0])
    owner: dict[str, tuple[int, str]] = {}
    for scope, (depth, tensor) in last_node.items():
        if tensor not in owner or depth > owner[tensor][0]:
            owner[tensor] = (depth, scope)
    return {tensor: scope for tensor, (_, scope) in owner.items()}


def map_torch_onnx(torch_capture: Capture, onnx_capture: Capture, onnx_model=None) -> Mapping:
    """PyTorch module path -> ONNX tensor name, in network order."""
    scopes = module_scopes(onnx_model) if onnx_model is not None else {}
    if not scopes:
        return match_by_value(torch_capture, onnx_capture)
    known = set(torch_capture.tensors)
    for tensor, scope in list(scopes.items()):
        if scope not in known:  # a container: the leaf whose output it aliases
            leaf = next((leaf for leaf, outer in torch_capture.aliases.items() if scope in outer), None)
            scopes[tensor] = leaf
    inputs = {n: n for n, k in torch_capture.kinds.items() if k == "input" and n in onnx_capture.tensors}
    pairs = {**inputs, **{scope: tensor for tensor, scope in scopes.items() if scope and tensor in onnx_capture.tensors}}
    # What the metadata cannot place (an op called in a forward() outside any submodule, such as
    # torch.flatten) is matched by value among the tensors left on both sides.
    rest = match_by_value(
        Capture({r: v for r, v in torch_capture.tensors.items() if r not in pairs}),
        Capture({t: v for t, v in onnx_capture.tensors.items() if t not in set(pairs.values())}))
    pairs.update(rest.pairs)
    ordered = {r: pairs[r] for r in torch_capture.tensors if r in pairs}
    return Mapping(ordered, "metadata", rest.unmatched)


def node_coverage(model, mapped_tensors: set[str], fusable: tuple[str, ...] = ()) -> dict[str, object]:
    """How many ONNX nodes (Q/DQ and Constant aside) have their output among `mapped_tensors`.

    `fusable` op types (e.g. Clip, Relu for TFLite, where the converter fuses them into the
    preceding Conv) also cover their producer when that producer has no other consumer: the fused
    op's output is the only tensor the candidate has for both nodes.
    """
    nodes = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")]
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    covered, fused = set(), set()
    for node in nodes:
        if node.output and node.output[0] in mapped_tensors:
            covered.add(node.name)
    for node in nodes:
        users = consumers.get(node.output[0], []) if node.output else []
        if node.name not in covered and len(users) == 1 and users[0].op_type in fusable \
                and users[0].name in covered:
            fused.add(node.name)
    return {"nodes": len(nodes), "mapped": len(covered), "fused": len(fused),
            "fraction": (len(covered) + len(fused)) / len(nodes) if nodes else 1.0,
            "unmapped": [n.name for n in nodes if n.name not in covered | fused]}
