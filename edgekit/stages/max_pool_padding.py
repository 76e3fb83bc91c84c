"""MaxPool padding rewritten before onnx2tf, so that every TFLite file pools what the ONNX graph pools.

onnx2tf lowers a MaxPool whose padding TensorFlow's SAME does not reproduce (ceil mode's extra end row, or
explicit pads) as PAD + VALID max-pool, and when it also makes a full-integer model it pads with 0 instead of
the float minimum (a range the quantizer could not hold). Every TFLite file of that graph then takes 0 for the
border the ONNX graph leaves out: wrong wherever the pooled values can be negative (after PReLU, as in the
MTCNN face networks, whose boxes moved by 5.8 px). Rewritten exactly, per node:
- padding no window reaches (ceil mode with nothing left over): dropped;
- padding that is TensorFlow's SAME: auto_pad SAME_UPPER, which TFLite's MAX_POOL_2D does itself, ignoring the
  padded elements, as one delegated op;
- other padding of values that can be negative: an edge-replicating Pad before an unpadded pool. A window that
  reaches a replicated border element also holds the element it copies, so its maximum is unchanged.
"""
from __future__ import annotations

import math

import numpy as np

# Producers whose outputs are never negative: a zero border cannot raise a maximum of theirs.
NON_NEGATIVE = ("Relu", "Sigmoid", "HardSigmoid", "Softmax")


def rewrite_max_pools(model) -> tuple[object, list[str]]:
    """A copy of `model` with its MaxPool padding rewritten as above, and one line per node rewritten."""
    import onnx

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    producer = {out: node for node in model.graph.node for out in node.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes, notes = [], []
    for node in rewritten.graph.node:
        pads = _effective_pads(node, dims) if node.op_type == "MaxPool" and len(node.output) == 1 else None
        if pads is None:
            nodes.append(node)
            continue
        begin, end, same = pads
        source = producer.get(node.input[0])
        if not any(begin) and not any(end):
            _set_padding(node, auto_pad=None)
            notes.append(f"MaxPool '{node.name}': padding no window reaches dropped")
        elif same:
            _set_padding(node, auto_pad="SAME_UPPER")
            notes.append(f"MaxPool '{node.name}': padding written as SAME")
        elif (source is None or source.op_type not in NON_NEGATIVE) and opset >= 11:
            padded = f"{node.input[0]}_edge_padded"
            amounts = f"{node.name}_edge_pads"
            rewritten.graph.initializer.append(onnx.numpy_helper.from_array(
                np.array([0, 0, *begin, 0, 0, *end], np.int64), amounts))
            nodes.append(onnx.helper.make_node("Pad", [node.input[0], amounts], [padded], mode="edge",
                                               name=f"{node.name}_edge_pad"))
            node.input[0] = padded
            _set_padding(node, auto_pad=None)
            notes.append(f"MaxPool '{node.name}': border padded by edge replication")
        nodes.append(node)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    return rewritten, notes


def _effective_pads(node, dims: dict[str, list[int]]) -> tuple[list[int], list[int], bool] | None:
    """The begin and end padding a MaxPool's windows really reach, per spatial axis, and whether it is
    TensorFlow's SAME; None where nothing needs rewriting or the shapes are unknown."""
    attrs = {a.name: a for a in node.attribute}
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    kernel = list(attrs["kernel_shape"].ints)
    axes = len(kernel)
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * 2 * axes
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * axes
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * axes
    ceil = "ceil_mode" in attrs and attrs["ceil_mode"].i == 1
    if auto_pad != "NOTSET" or set(dilations) != {1} or not (ceil or any(pads)):
        return None
    sizes, outputs = dims.get(node.input[0], [])[2:], dims.get(node.output[0], [])[2:]
    if len(sizes) != axes or len(outputs) != axes or 0 in sizes or 0 in outputs:
        return None
    begin = pads[:axes]
    end = [max((out - 1) * stride + k - size - before, 0)
           for out, stride, k, size, before in zip(outputs, strides, kernel, sizes, begin)]
    totals = [max((out - 1) * stride + k - size, 0) for out, stride, k, size in zip(outputs, strides, kernel, sizes)]
    same = all(out == math.ceil(size / stride) and before == total // 2 and after == total - total // 2
               for out, size, stride, before, after, total in zip(outputs, sizes, strides, begin, end, totals))
    return begin, end, same


def _set_padding(node, auto_pad: str | None) -> None:
    """Clear a MaxPool's pads and ceil mode; `auto_pad`: the padding mode it takes instead (None: none)."""
    import onnx

    kept = [a for a in node.attribute if a.name not in ("pads", "ceil_mode", "auto_pad")]
    del node.attribute[:]
    node.attribute.extend(kept)
    if auto_pad:
        node.attribute.append(onnx.helper.make_attribute("auto_pad", auto_pad))
