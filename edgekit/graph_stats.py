"""What is inside an ONNX graph: parameters, MACs, operator histogram, opset, I/O."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def graph_stats(model) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = _known_shapes(inferred)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                   onnx.TensorProto.UINT8}
    # Quantization scales and zero points are not parameters of the network.
    qparams = {name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for name in n.input[1:]}
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer
                 if i.data_type in float_types and i.dims and i.name not in qparams)
    macs = sum(macs for _, macs in _macs_by_node(inferred, shapes))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "parameters": params,
        "macs": macs,
        "operators": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "nodes": len(model.graph.node),
        "initializer_bytes": sum(len(numpy_helper.to_array(i).tobytes()) for i in model.graph.initializer),
        # Every intermediate tensor of one sample as float32: what capturing all of them costs per sample.
        "activation_bytes": 4 * sum(int(np.prod(shapes[out])) for node in inferred.graph.node
                                    for out in node.output if out in shapes),
    }


def node_macs(model) -> dict[str, int]:
    """Multiply-accumulates of each compute-heavy node of an ONNX graph, by node name (the rest: 0)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    return dict(_macs_by_node(inferred, _known_shapes(inferred)))


def _macs_by_node(inferred, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    return [(node.name, _node_macs(node, shapes)) for node in inferred.graph.node]


def _known_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _node_macs(node, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of the compute-heavy operators; the rest are comparatively free."""
    if node.op_type in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
        weight = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        out = shapes.get(node.output[0])
        if not weight or not out:
            return 0
        if node.op_type == "ConvTranspose":
            return int(np.prod(shapes.get(node.input[0], (0,)))) * int(np.prod(weight[1:]))
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            return 0
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return int(np.prod(out)) * (a[-2] if trans_a else a[-1])
    return 0
