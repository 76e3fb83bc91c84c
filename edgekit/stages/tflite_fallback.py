"""Stage: float32 ONNX -> full-integer TFLite with chosen ONNX nodes kept in float (a FallbackPlan for TFLite).

The layerwise fallback plan names ONNX nodes (ORT `nodes_to_exclude`). To apply it to the TFLite INT8
artifact, onnx2tf writes its TensorFlow saved_model (no quantization), the TFLite converter calibrates
that saved_model on our calibration data (a float .tflite carrying min/max statistics), and the MLIR
quantizer then quantizes it with `denylisted_nodes`: those ops stay float32, with DEQUANTIZE before
and QUANTIZE after them, everything else int8. With no nodes to keep in float this is the same
calibrate + quantize the converter runs inside onnx2tf for `model_full_integer_quant.tflite`.

The quantizer matches a denylisted node by the op's location, i.e. the op's full output tensor name in
the calibrated model, fused parts and constants included
(`model_7/tf.math.add_23/Add;model_7/tf.nn.convolution_11/convolution;Const_111`); a name it does not
know is ignored silently, so every denylisted op is checked to be float in the result. ONNX nodes are
placed on TFLite ops by value (`layerwise.match_by_value`, calibrated float .tflite against the float
ONNX graph on calibration samples): a node's op is the one whose output equals the node's output; a
node fused into another op (Conv + Clip become one CONV_2D with a fused RELU6) keeps that whole op in
float; ops with no ONNX counterpart that only feed one kept node's op (the PAD onnx2tf puts before a
strided convolution) are part of that node's lowering and stay float with it.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import UserError, first_line
from ..layerwise.capture import capture_onnx, capture_tflite, tflite_key
from ..layerwise.mapping import match_by_value
from ..runners.litert import silenced
from . import Artifact
from .tflite import IO_TYPES, ReferenceIO, _check_operators, _inside, _scheme, _tail, run_onnx2tf

# ONNX ops the converter folds into the op before them (fused activation, bias / scale folded into a
# convolution's constants): keeping such a node in float keeps the op it was folded into in float.
FOLDABLE = ("Clip", "Relu", "Tanh", "Add", "Sub", "Mul", "Div", "BatchNormalization")
MAPPING_SAMPLES = 8  # calibration samples run through both float models to match tensors
SIGNATURE_KEY = "serving_default"


def convert_tflite_int8_with_float_ops(fp32: Artifact, float_onnx_nodes: list[str], calibration: Dataset,
                                       io_type: str, workdir: Path,
                                       filename: str = "model.int8.tflite") -> Artifact:
    """Full-integer TFLite of `fp32` in which the ops lowered from `float_onnx_nodes` run in float32.

    `io_type`: the model's input/output type (int8, uint8 or float32), as for `convert_tflite`.
    Artifact.metadata["float_fallback"] lists the TFLite ops kept in float, the ONNX nodes each
    stands for and why, and the requested nodes that have no op of their own in the .tflite.
    """
    import onnx

    if io_type not in IO_TYPES:
        raise UserError(f"The integer I/O type must be one of {', '.join(IO_TYPES)} (got {io_type})")
    model = onnx.load(str(fp32.path))
    _check_operators(model)
    known = {node.name for node in model.graph.node}
    missing = [name for name in float_onnx_nodes if name not in known]
    if missing:
        raise UserError(f"The float fallback names nodes the ONNX model does not have: {', '.join(missing)}")
    scratch = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=workdir)).resolve()
    log = scratch / "onnx2tf.log"
    try:
        with silenced(log):
            return _convert(fp32, model, list(dict.fromkeys(float_onnx_nodes)), calibration, io_type,
                            workdir / filename, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _convert(fp32: Artifact, model, float_nodes: list[str], calibration: Dataset, io_type: str, path: Path,
             scratch: Path, log: Path) -> Artifact:
    # The saved_model only (as onnx2tf writes it for its own INT8 step); it is quantized below.
    calib = run_onnx2tf(fp32, model, calibration, scratch, log, output_signaturedefs=True)
    reference = ReferenceIO(fp32, calibration)
    with _inside(scratch), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (scratch / "out" / "saved_model.pb").is_file():
            raise UserError(f"onnx2tf wrote no TensorFlow saved_model: {_tail(log)}")
        try:
            calibrated = _calibrate(scratch / "out", calib)
        except Exception as err:  # the converter raises ConverterError and others
            raise UserError(f"The TFLite converter could not calibrate the model: "
                            f"{first_line(err)}") \
                from None
        (scratch / "calibrated.tflite").write_bytes(calibrated)
        ops = _ops(scratch / "calibrated.tflite")
        placed, unplaced = (_place(model, float_nodes, ops, scratch / "calibrated.tflite", calibration,
                                   reference.bind(scratch / "calibrated.tflite")) if float_nodes else ({}, []))
        quantized = _quantize(calibrated, io_type, sorted(placed))
        (scratch / "quantized.tflite").write_bytes(quantized)
        float_now = _float_ops(scratch / "quantized.tflite")
        not_float = [name for name in placed if not any(_same_op(name, now) for now in float_now)]
        if not_float:
            raise UserError(f"The TFLite quantizer did not keep {len(not_float)} denylisted op(s) in float "
                            f"(first: '{not_float[0]}'); the float fallback cannot be applied to TFLite")
    path.write_bytes(quantized)
    made_by = (f"onnx2tf {metadata.version('onnx2tf')} (saved_model), TensorFlow Lite converter "
               f"{metadata.version('tensorflow')} (calibrate, then MLIR quantizer with denylisted_nodes)")
    float_ops = [{"tflite_op": name, "op_type": ops[name]["op_type"], **why} for name, why in placed.items()]
    float_ops.sort(key=lambda item: ops[item["tflite_op"]]["position"])
    fallback = {"float_onnx_nodes": float_nodes, "float_ops": float_ops, "unplaced_onnx_nodes": unplaced,
                "tflite_ops": len(ops), "int8_ops": len(ops) - len(float_ops)}
    scheme = {**_scheme("int8", io_type, calibration), "float_ops": len(float_ops)}
    return Artifact(path, "tflite", "int8", {"made_by": made_by, "scheme": scheme, "float_fallback": fallback},
                    reference.bind(path))


def _calibrate(saved_model: Path, calib: list[list]) -> bytes:
    """The converter's calibration step on the saved_model, set up as onnx2tf sets up its INT8 converter:
    a float .tflite holding each tensor's min/max over the calibration data."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures[SIGNATURE_KEY]
    specs = signature.structured_input_signature[1]
    data = {name: (np.load(file), mean, std) for name, file, mean, std in calib}
    if set(data) != set(specs):
        raise UserError(f"The saved_model's inputs ({', '.join(specs)}) are not the calibration inputs "
                        f"({', '.join(data)})")
    batch = next(iter(specs.values())).shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else 1
    count = min(len(array) for array, _, _ in data.values())

    def representative_dataset():
        for start in range(0, count - count % batch or batch, batch):
            yield {name: tf.constant(((array[start:start + batch] - mean) / std).astype(np.float32))
                   for name, (array, mean, std) in data.items()}

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
    converter._experimental_disable_per_channel = False  # per-channel, as convert_tflite asks onnx2tf
    converter.representative_dataset = representative_dataset
    converter._experimental_calibrate_only = True  # what QuantizationDebugger does
    return converter.convert()


def _quantize(calibrated: bytes, io_type: str, denylisted: list[str]) -> bytes:
    """The converter's own quantization step (TFLiteConverter._quantize -> mlir_quantize), plus the
    denylist that tf.lite.experimental.QuantizationDebugger passes to the same function."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    dtype = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_type]
    return convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=dtype,
                                 output_data_type=dtype, denylisted_nodes=denylisted or None)


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with silenced():
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    return interpreter


def _ops(path: Path) -> dict[str, dict[str, Any]]:
    """The .tflite's ops by full output tensor name (the quantizer's node name), in execution order."""
    interpreter = _interpreter(path)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    ops: dict[str, dict[str, Any]] = {}
    for position, op in enumerate(interpreter._get_ops_details()):
        outputs = [names[i] for i in op["outputs"] if i >= 0]
        if outputs:
            ops[outputs[0]] = {"op_type": op["op_name"], "position": position,
                               "inputs": [names[i] for i in op["inputs"] if i >= 0], "outputs": outputs}
    return ops


def _float_ops(path: Path) -> set[str]:
    """Names of the ops of a quantized .tflite that compute in float32 (float output)."""
    interpreter = _interpreter(path)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = set()
    for op in interpreter._get_ops_details():
        outputs = [details[i] for i in op["outputs"] if i >= 0]
        if outputs and op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and outputs[0]["dtype"] == np.float32:
            found.add(outputs[0]["name"])
    return found


def _same_op(name: str, quantized_name: str) -> bool:
    """Whether an op of the quantized model is the calibrated model's op `name`: where a QUANTIZE after
    a float op takes over a graph output's name, the float op's output gets a digit appended."""
    return quantized_name == name or (quantized_name.startswith(name) and quantized_name[len(name):].isdigit())


def _place(model, float_nodes: list[str], ops: dict[str, dict[str, Any]], calibrated: Path,
           calibration: Dataset, io) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """TFLite ops to keep in float ({op name: {onnx_nodes, reason}}) and the nodes with no op of their own."""
    inputs = {name: array[:MAPPING_SAMPLES] for name, array in calibration.inputs.items()}
    reference = capture_onnx(model, inputs)
    candidate = capture_tflite(calibrated, inputs, io)
    pairs = match_by_value(reference, candidate).pairs  # ONNX tensor -> TFLite key
    # capture_tflite keys a tensor by tflite_key(name), the graph's outputs by the ONNX output names
    by_key = {tflite_key(name): name for name in ops}
    for spec in io[1]:
        by_key[spec.name] = next((op for op, info in ops.items() if spec.runtime_name in info["outputs"]), None)
    tensor_op = {onnx_name: by_key.get(key) for onnx_name, key in pairs.items()}
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

    # Ops no ONNX tensor matches that only feed one kept op are part of that node's lowering.
    mapped_ops = {op for op in tensor_op.values() if op}
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
    return placed, unplaced



