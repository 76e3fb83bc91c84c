"""Stage: float32 ONNX -> full-integer TFLite with chosen ONNX nodes kept in float (a FallbackPlan for TFLite).

The layerwise fallback plan names ONNX nodes (ORT `nodes_to_exclude`). To apply it to the TFLite INT8
artifact, onnx2tf writes its TensorFlow saved_model (no quantization), the TFLite converter calibrates
that saved_model on our calibration data (a float .tflite carrying min/max statistics), and the MLIR
quantizer then quantizes it with `denylisted_nodes`: those ops stay float32, with DEQUANTIZE before
and QUANTIZE after them, everything else int8. With no nodes to keep in float this is the same
calibrate + quantize the converter runs inside onnx2tf for `model_full_integer_quant.tflite`.

Which TFLite ops stand for the ONNX nodes is `layerwise.placement`'s to say. The quantizer ignores a
denylisted name it does not know, silently, so every denylisted op is checked to be float in the result.
"""
from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UserError, first_line
from ..layerwise.placement import float_ops, place_float_nodes, same_op, tflite_ops
from . import Artifact
from .tflite import (IO_TYPES, ReferenceIO, check_operators, describe_scheme, inside, log_tail, lowered,
                     onnx2tf_scratch, run_onnx2tf)

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
    check_operators(model)
    known = {node.name for node in model.graph.node}
    missing = [name for name in float_onnx_nodes if name not in known]
    if missing:
        raise UserError(f"The float fallback names nodes the ONNX model does not have: {', '.join(missing)}")
    with onnx2tf_scratch(workdir) as (scratch, log):
        return _convert(fp32, model, list(dict.fromkeys(float_onnx_nodes)), calibration, io_type,
                        workdir / filename, scratch, log)


def _convert(fp32: Artifact, model, float_nodes: list[str], calibration: Dataset, io_type: str, path: Path,
             scratch: Path, log: Path) -> Artifact:
    # The saved_model only (as onnx2tf writes it for its own INT8 step); it is quantized below.
    calib = run_onnx2tf(fp32, lowered(model)[0], calibration, scratch, log, output_signaturedefs=True)
    reference = ReferenceIO(fp32, calibration)
    with inside(scratch), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (scratch / "out" / "saved_model.pb").is_file():
            raise UserError(f"onnx2tf wrote no TensorFlow saved_model: {log_tail(log)}")
        try:
            calibrated = _calibrate(scratch / "out", calib)
        except Exception as err:  # the converter raises ConverterError and others
            raise UserError(f"The TFLite converter could not calibrate the model: {first_line(err)}") from None
        (scratch / "calibrated.tflite").write_bytes(calibrated)
        ops = tflite_ops(scratch / "calibrated.tflite")
        placed, unplaced = (place_float_nodes(model, float_nodes, ops, scratch / "calibrated.tflite", calibration,
                                              reference.bind(scratch / "calibrated.tflite"))
                            if float_nodes else ({}, []))
        quantized = quantize_calibrated(calibrated, io_type, sorted(placed))
        (scratch / "quantized.tflite").write_bytes(quantized)
        float_now = float_ops(scratch / "quantized.tflite")
        not_float = [name for name in placed if not any(same_op(name, now) for now in float_now)]
        if not_float:
            raise UserError(f"The TFLite quantizer did not keep {len(not_float)} denylisted op(s) in float "
                            f"(first: '{not_float[0]}'); the float fallback cannot be applied to TFLite")
    path.write_bytes(quantized)
    made_by = (f"onnx2tf {metadata.version('onnx2tf')} (saved_model), TensorFlow Lite converter "
               f"{metadata.version('tensorflow')} (calibrate, then MLIR quantizer with denylisted_nodes)")
    kept = [{"tflite_op": name, "op_type": ops[name]["op_type"], **why} for name, why in placed.items()]
    kept.sort(key=lambda item: ops[item["tflite_op"]]["position"])
    fallback = {"float_onnx_nodes": float_nodes, "float_ops": kept, "unplaced_onnx_nodes": unplaced,
                "tflite_ops": len(ops), "int8_ops": len(ops) - len(kept)}
    scheme = {**describe_scheme("int8", io_type, calibration), "float_ops": len(kept)}
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
    converter.representative_dataset = representative_dataset
    return calibrate_only(converter)


def calibrate_only(converter) -> bytes:
    """The converter's calibration step alone: a float .tflite holding each tensor's min/max over its
    representative dataset. TensorFlow has no public switch for it; `_experimental_calibrate_only` is the one
    tf.lite.experimental.QuantizationDebugger sets (tests/test_library_contracts.py checks that these private
    attributes still exist)."""
    converter._experimental_disable_per_channel = False  # per-channel, as convert_tflite asks onnx2tf
    converter._experimental_calibrate_only = True
    return converter.convert()


def quantize_calibrated(calibrated: bytes, io_type: str, denylisted: list[str]) -> bytes:
    """The converter's own quantization step on a `calibrate_only` model (TFLiteConverter._quantize calls the
    private tensorflow.lite.python.convert.mlir_quantize), with the denylist that
    tf.lite.experimental.QuantizationDebugger passes to the same function: those ops stay float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    dtype = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_type]
    return convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=dtype,
                                 output_data_type=dtype, denylisted_nodes=denylisted or None)
