"""Stages: float32 ONNX -> INT8 QDQ ONNX (ONNX Runtime static quantization) and -> float16 ONNX."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import UserError
from ..graph_stats import graph_stats
from ..targets import Float16, Quantization
from . import Artifact


def quantize_int8(fp32: Artifact, scheme: Quantization, calibration: Dataset,
                  exclude_nodes: list[str], workdir: Path) -> Artifact:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    model = onnx.load(str(fp32.path))
    excluded = _excluded_nodes(model, scheme, exclude_nodes)

    class Reader(CalibrationDataReader):
        def __init__(self):
            batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
            count = len(calibration)
            self.batches = iter([{k: v[i:i + batch] for k, v in calibration.inputs.items()}
                                 for i in range(0, count - count % batch, batch)])

        def get_next(self):
            return next(self.batches, None)

    prepared = workdir / "prepared.onnx"
    output = workdir / "model.int8.onnx"
    extra = {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": scheme.weight_symmetric,
             "QuantizeBias": scheme.quantize_bias}
    if scheme.calibration == "percentile":
        extra["CalibPercentile"] = scheme.percentile
    logging.getLogger("root").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                        activation_type=types[scheme.activation_type], weight_type=types[scheme.weight_type],
                        calibrate_method=methods[scheme.calibration], nodes_to_exclude=excluded,
                        op_types_to_quantize=scheme.op_types or None, extra_options=extra)
    prepared.unlink()
    quantized = onnx.load(str(output))
    return Artifact(output, "onnx", "int8", {
        "made_by": f"onnxruntime.quantization {_ort_version()} quantize_static",
        "scheme": {"format": "QDQ", "activation_type": scheme.activation_type,
                   "weight_type": scheme.weight_type, "per_channel": scheme.per_channel,
                   "activation_symmetric": scheme.activation_symmetric,
                   "weight_symmetric": scheme.weight_symmetric, "reduce_range": scheme.reduce_range,
                   "op_types": scheme.op_types or "onnxruntime default", "quantize_bias": scheme.quantize_bias,
                   "calibration": scheme.calibration, "calibration_samples": len(calibration)},
        "float_nodes": excluded, **graph_stats(quantized)})


def convert_fp16(fp32: Artifact, settings: Float16, workdir: Path) -> Artifact:
    """float16 weights and compute, except the operators that overflow or lose accuracy in float16."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    kept = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(settings.keep_float_ops))
    model = convert_float_to_float16(onnx.load(str(fp32.path)), keep_io_types=settings.keep_io_types,
                                     op_block_list=kept)
    output = workdir / "model.fp16.onnx"
    onnx.save(model, str(output))
    present = sorted({n.op_type for n in model.graph.node} & set(kept))
    return Artifact(output, "onnx", "fp16", {
        "made_by": f"onnxruntime.transformers.float16 {_ort_version()}",
        "scheme": {"io_types": "float32" if settings.keep_io_types else "float16",
                   "float32_ops_in_graph": present, "float32_op_list": kept}, **graph_stats(model)})


def _excluded_nodes(model, scheme: Quantization, requested: list[str]) -> list[str]:
    names = {n.name for n in model.graph.node}
    unknown = [n for n in requested + scheme.exclude_nodes if n not in names]
    if unknown:
        sample = ", ".join(sorted(names)[:8])
        raise UserError(f"cannot keep node '{unknown[0]}' in float: the ONNX graph has no node of that name "
                        f"(some of its nodes: {sample}; `edgekit inspect --nodes` lists all)")
    by_type = [n.name for n in model.graph.node if n.op_type in scheme.exclude_op_types]
    return sorted(set(requested) | set(scheme.exclude_nodes) | set(by_type))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
