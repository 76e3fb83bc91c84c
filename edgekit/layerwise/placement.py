"""Which TFLite ops compute which ONNX nodes: where a float fallback plan's nodes land in a .tflite.

The TFLite quantizer knows an op by its full output tensor name in the calibrated model, fused parts and
constants included (`model_7/tf.math.add_23/Add;model_7/tf.nn.convolution_11/convolution;Const_111`).
ONNX nodes are placed on those ops by value (`match_by_value`, calibrated float .tflite against the float
ONNX graph on calibration samples): a node's op is the one whose output equals the node's output; a
node fused into another op (Conv + Clip become one CONV_2D with a fused RELU6) keeps that whole op in
float; ops with no ONNX counterpart that only feed one kept node's op (the PAD onnx2tf puts before a
strided convolution) are part of that node's lowering and stay float with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..runners.litert import builtin_interpreter, ops_details
from .capture import capture_onnx, capture_tflite, tflite_key
from .mapping import match_by_value

# ONNX ops the converter folds into the op before them (fused activation, bias / scale folded into a
# convolution's constants): keeping such a node in float keeps the op it was folded into in float.
FOLDABLE = ("Clip", "Relu", "Tanh", "Add", "Sub", "Mul", "Div", "BatchNormalization")
MAPPING_SAMPLES = 8  # calibration samples run through both float models to match tensors


def tflite_ops(path: Path) -> dict[str, dict[str, Any]]:
    """The .tflite's ops by full output tensor name (the quantizer's node name), in execution order."""
    interpreter = builtin_interpreter(path)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    ops: dict[str, dict[str, Any]] = {}
    for position, op in enumerate(ops_details(interpreter)):
        outputs = [names[i] for i in op["outputs"] if i >= 0]
        if outputs:
            ops[outputs[0]] = {"op_type": op["op_name"], "position": position,
                               "inputs": [names[i] for i in op["inputs"] if i >= 0], "outputs": outputs}
    return ops


def float_ops(path: Path) -> set[str]:
    """Names of the ops of a quantized .tflite that compute in float32 (float output)."""
    interpreter = builtin_interpreter(path)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = set()
    for op in ops_details(interpreter):
        outputs = [details[i] for i in op["outputs"] if i >= 0]
        if outputs and op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and outputs[0]["dtype"] == np.float32:
            found.add(outputs[0]["name"])
    return found


def same_op(name: str, quantized_name: str) -> bool:
    """Whether an op of the quantized model is the calibrated model's op `name`: where a QUANTIZE after
    a float op takes over a graph output's name, the float op's output gets a digit appended."""
    return quantized_name == name or (quantized_name.startswith(name) and quantized_name[len(name):].isdigit())


def place_float_nodes(model, float_nodes: list[str], ops: dict[str, dict[str, Any]], calibrated: Path,
                      calibration: Dataset, io) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """TFLite ops of `calibrated` (`tflite_ops`) to keep in float ({op name: {onnx_nodes, reason}}), and the
    nodes with no op of their own; `io`: the .tflite's inputs and outputs as paired with the ONNX model's."""
    tensor_op = _tensor_ops(model, ops, calibrated, calibration, io)
    nodes = {node.name: node for node in model.graph.node}
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name for i in model.graph.initializer} | \
        {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}

    def foldable(node) -> bool:  # an elementwise op whose other inputs are constants
        return node.op_type in FOLDABLE and all(i in constants for i in node.input[1:] if i)

    placed: dict[str, dict[str, Any]] = {}
    unplaced = []

    def keep(op: str, node: str, reason: str) -> None:
        entry = placed.setdefault(op, {"onnx_nodes": [], "reason": reason})
        if node not in entry["onnx_nodes"]:
            entry["onnx_nodes"].append(node)

    for name in float_nodes:
        node = nodes[name]
        op = tensor_op.get(node.output[0]) if node.output else None
        if op:
            keep(op, name, "computes the output of the ONNX node(s)")
            continue
        # folded forward: Conv -> Clip become one op whose output is the Clip's
        current, hops = node, 0
        while op is None and hops < 3 and current.output and len(consumers.get(current.output[0], [])) == 1:
            after = consumers[current.output[0]][0]
            if not foldable(after):
                break
            current, hops = after, hops + 1
            op = tensor_op.get(after.output[0])
        if op:
            keep(op, name, f"fused into the op of ONNX node {current.name}")
            continue
        # folded backward: a Clip / bias Add fused into the op of the node before it
        data = node.input[0] if node.input else None
        before = producer.get(data) if foldable(node) and data else None
        if before is not None and len(consumers.get(data, [])) == 1 and tensor_op.get(data):
            keep(tensor_op[data], name, f"fused into the op of ONNX node {before.name}")
            continue
        unplaced.append({"onnx_node": name, "op_type": node.op_type,
                         "reason": "no TFLite op computes its output (elided or not matched by value)"})
    _add_lowering_ops(placed, ops, {op for op in tensor_op.values() if op})
    return placed, unplaced


def _tensor_ops(model, ops: dict[str, dict[str, Any]], calibrated: Path, calibration: Dataset,
                io) -> dict[str, str | None]:
    """ONNX tensor -> the TFLite op computing it, matched by value on a few calibration samples."""
    inputs = {name: array[:MAPPING_SAMPLES] for name, array in calibration.inputs.items()}
    pairs = match_by_value(capture_onnx(model, inputs), capture_tflite(calibrated, inputs, io)).pairs
    # capture_tflite keys a tensor by tflite_key(name), the graph's outputs by the ONNX output names
    by_key = {tflite_key(name): name for name in ops}
    for spec in io[1]:
        by_key[spec.name] = next((op for op, info in ops.items() if spec.runtime_name in info["outputs"]), None)
    return {onnx_name: by_key.get(key) for onnx_name, key in pairs.items()}


def _add_lowering_ops(placed: dict[str, dict[str, Any]], ops: dict[str, dict[str, Any]],
                      mapped_ops: set[str]) -> None:
    """Ops no ONNX tensor matches that only feed one kept op are part of that node's lowering."""
    readers: dict[str, list[str]] = {}
    for op, info in ops.items():
        for tensor in info["inputs"]:
            readers.setdefault(tensor, []).append(op)
    for op in sorted(ops, key=lambda o: -ops[o]["position"]):
        if op in placed or op in mapped_ops:
            continue
        users = {user for out in ops[op]["outputs"] for user in readers.get(out, [])}
        owners = {tuple(placed[user]["onnx_nodes"]) for user in users if user in placed}
        if users and all(user in placed for user in users) and len(owners) == 1:
            placed[op] = {"onnx_nodes": list(next(iter(owners))),
                          "reason": "part of the lowering of the ONNX node(s) (no ONNX tensor of its own)"}
