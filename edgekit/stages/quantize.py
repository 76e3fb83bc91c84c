"""Stages: float32 ONNX -> INT8 QDQ ONNX (ONNX Runtime static quantization) and -> float16 ONNX."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from pathlib import Path


from ..data import Dataset
from ..errors import UserError
from ..graph_stats import graph_stats
from ..targets import Float16, Quantization
from . import Artifact


# What to change, in order, when ONNX Runtime refuses to load the quantizer's graph:
# (why, changes to the scheme, extra quantizer options).
REMEDIES = [(None, {}, {}),
            ("bias kept in float32", {"quantize_bias": False}, {}),
            ("one QuantizeLinear/DequantizeLinear pair per consumer", {}, {"DedicatedQDQPair": True}),
            ("per-tensor weight scales", {"per_channel": False}, {})]
PER_CHANNEL_OPSET = 13  # DequantizeLinear has an `axis` from opset 13 on
HISTOGRAM_BATCHES = 8  # batches whose tensors an entropy / percentile calibrator holds at once


def quantize_int8(fp32: Artifact, scheme: Quantization, calibration: Dataset,
                  exclude_nodes: list[str], workdir: Path) -> Artifact:
    """INT8 QDQ ONNX in the target's scheme. The result is loaded by ONNX Runtime before it is returned;
    a graph it refuses is re-made with the known remedies (REMEDIES), and the manifest says which one
    was needed. An artifact that no remedy makes loadable is a stage failure naming the cause."""
    import onnx

    from ..runners.onnxrt import load_error
    from .export_onnx import model_opset

    model = onnx.load(str(fp32.path))
    excluded = _excluded_nodes(model, scheme, exclude_nodes)
    output = workdir / "model.int8.onnx"
    notes = []
    if scheme.per_channel and model_opset(model) < PER_CHANNEL_OPSET:
        scheme = dataclasses.replace(scheme, per_channel=False)
        notes.append(f"per-tensor weight scales: the graph is at opset {model_opset(model)}, where "
                     f"DequantizeLinear has no per-channel axis (opset {PER_CHANNEL_OPSET})")
    errors = []
    for remedy, changes, options in REMEDIES:
        tried = dataclasses.replace(scheme, **changes)
        if remedy and tried == scheme and not options:
            continue  # the scheme is like that already
        _quantize_static(fp32, model, tried, calibration, excluded, output, options)
        error = load_error(output)
        if error is None:
            break
        errors.append(error)
    else:
        output.unlink()
        raise UserError(f"ONNX Runtime cannot load the INT8 model its quantizer wrote ({errors[0]}), even with "
                        f"{', '.join(r for r, _, _ in REMEDIES if r)}: exclude the node it names with "
                        f"--exclude-node, or ship without INT8 ONNX (--quantize none)")
    if remedy:
        notes.append(f"{remedy}: ONNX Runtime refused the first INT8 graph ({errors[0][:300]})")
    quantized = onnx.load(str(output))
    return Artifact(output, "onnx", "int8", {
        "made_by": f"onnxruntime.quantization {_ort_version()} quantize_static",
        "scheme": {"format": "QDQ", "activation_type": tried.activation_type,
                   "weight_type": tried.weight_type, "per_channel": tried.per_channel,
                   "activation_symmetric": tried.activation_symmetric,
                   "weight_symmetric": tried.weight_symmetric, "reduce_range": tried.reduce_range,
                   "op_types": tried.op_types or "onnxruntime default", "quantize_bias": tried.quantize_bias,
                   "calibration": tried.calibration, "calibration_samples": len(calibration)},
        "notes": notes, "float_nodes": excluded, **graph_stats(quantized)})


def _quantize_static(fp32: Artifact, model, scheme: Quantization, calibration: Dataset, excluded: list[str],
                     output: Path, options: dict) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        """Calibration batches; `set_range` lets the histogram calibrators take them a few at a time."""

        def __init__(self):
            self.size = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
            self.count = len(calibration) // self.size
            self.set_range(0, self.count)

        def __len__(self):
            return self.count

        def set_range(self, start_index: int, end_index: int):
            self.batches = iter(range(start_index, end_index))

        def get_next(self):
            index = next(self.batches, None)
            if index is None:
                return None
            return {k: v[index * self.size:(index + 1) * self.size] for k, v in calibration.inputs.items()}

    prepared = output.parent / "prepared.onnx"
    extra = {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": scheme.weight_symmetric,
             "QuantizeBias": scheme.quantize_bias, **options}
    if scheme.calibration == "percentile":
        extra["CalibPercentile"] = scheme.percentile
    if scheme.calibration != "minmax":
        # Histogram calibrators hold every tensor of the batches they are given: give them a few at a time.
        count = len(calibration) // (model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1)
        extra["CalibStridedMinMax"] = max(d for d in range(1, min(count, HISTOGRAM_BATCHES) + 1) if count % d == 0)
    logging.getLogger("root").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=scheme.per_channel,
                            reduce_range=scheme.reduce_range,
                            activation_type=types[scheme.activation_type], weight_type=types[scheme.weight_type],
                            calibrate_method=methods[scheme.calibration], nodes_to_exclude=excluded,
                            op_types_to_quantize=scheme.op_types or None, extra_options=extra)
    finally:
        prepared.unlink(missing_ok=True)


def convert_fp16(fp32: Artifact, settings: Float16, workdir: Path) -> Artifact:
    """float16 weights and compute, except the operators that overflow or lose accuracy in float16."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from ..runners.onnxrt import load_error

    kept = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(settings.keep_float_ops))
    model = convert_float_to_float16(onnx.load(str(fp32.path)), keep_io_types=settings.keep_io_types,
                                     op_block_list=kept)
    output = workdir / "model.fp16.onnx"
    onnx.save(model, str(output))
    error = load_error(output)
    if error:
        output.unlink()
        raise UserError(f"ONNX Runtime cannot load the float16 model its converter wrote ({error}): add the "
                        f"operator it names to the profile's float16.keep_float_ops")
    present = sorted({n.op_type for n in model.graph.node} & set(kept))
    return Artifact(output, "onnx", "fp16", {
        "made_by": f"onnxruntime.transformers.float16 {_ort_version()}",
        "scheme": {"io_types": "float32" if settings.keep_io_types else "float16",
                   "float32_ops_in_graph": present, "float32_op_list": kept}, **graph_stats(model)})


def check_excluded_nodes(fp32: Artifact, scheme: Quantization, requested: list[str]) -> None:
    """Bad input, found before any stage runs: a node to keep in float that the graph does not have."""
    import onnx

    _excluded_nodes(onnx.load(str(fp32.path)), scheme, requested)


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
