"""The JSON Schema of manifest.json: what `check`, `bench` and `debug` read from a build folder, with types.

A build folder may come from anywhere; a manifest that does not match is refused with the key named
before any of its values is used.
"""
from __future__ import annotations

from typing import Any

from .errors import UserError
from .formats import FORMATS

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# A path inside the build folder, written with forward slashes; `package.inside` also refuses links out.
RELATIVE_PATH = {"type": "string", "pattern": r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\\\x00]+$"}
FILE_RECORD = {"type": "object", "required": ["file", "sha256", "bytes"],
               "properties": {"file": RELATIVE_PATH, "sha256": SHA256, "bytes": {"type": "integer", "minimum": 0}}}
LIMIT = {"type": ["number", "null"]}
TOLERANCE = {"type": "object", "additionalProperties": False,
             "properties": {key: LIMIT for key in ("max_abs_error", "max_rel_error", "max_mean_abs_error", "min_cosine",
                                                   "min_snr_db", "min_worst_sample_snr_db", "min_top1_agreement",
                                                   "min_iou", "min_worst_sample_iou", "max_accuracy_drop")}}
TENSOR = {"type": "object", "required": ["name", "shape"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "minLength": 1},
                         "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                         "dtype": {"enum": ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64",
                                                   "bool"]},
                         "layout": {"type": "string"},
                         "quantization": {"type": "object", "required": ["scale", "zero_point"],
                                          "properties": {"scale": {"type": "number"},
                                                         "zero_point": {"type": "integer"}}},
                         "transpose": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                         "runtime_name": {"type": "string"},
                         "kind": {"type": "object", "required": ["kind"],
                                  "properties": {"kind": {"enum": ["probability", "distribution", "logits",
                                                                   "values"]},
                                                 "class_axis": {"type": ["integer", "null"]}}}}}
NUMBER = {"type": "number"}
COUNT = {"type": "integer", "minimum": 0}
# What bench, build and the reports read back from an artifact's benchmark records and details.
BENCHMARK = {"type": "object", "required": ["runner", "kind", "where", "latency_ms", "machine"],
             "properties": {"runner": {"type": "string"}, "kind": {"enum": ["host", "native", "emulated", "device"]},
                            "where": {"type": "string"}, "machine": {"type": "object"},
                            "latency_ms": {"type": "object", "required": ["p50", "p90", "p99", "mean", "min"],
                                           "additionalProperties": NUMBER},
                            "energy": {"type": "object", "required": ["measured"],
                                       "if": {"properties": {"measured": {"const": True}}},
                                       "then": {"required": ["joules_per_inference", "window_s", "inferences",
                                                             "idle_watts", "active_watts", "source"]},
                                       "else": {"required": ["why"]}},
                            "slower_than_fp32": {"type": "object", "required": ["sibling", "sibling_p50_ms", "why"],
                                                 "properties": {"sibling": {"type": "string"},
                                                                "sibling_p50_ms": NUMBER, "why": {"type": "string"}}}}}
DETAILS = {"type": "object",
           "properties": {"delegation": {"type": "object",
                                         "properties": {"delegate": {"type": "string"}, "delegated_nodes": COUNT,
                                                        "partitions": {"type": ["integer", "null"]},
                                                        "fallback": {"type": "string"},
                                                        "fallback_ops": {"type": "object",
                                                                         "additionalProperties": COUNT}}},
                          "energy_estimate": {"type": "object", "required": ["microjoules"],
                                              "properties": {"microjoules": NUMBER}},
                          "compressed_bytes": {"type": "object", "required": ["zstd", "zip"],
                                               "properties": {"zstd": COUNT, "zip": COUNT}},
                          "macs": COUNT, "nodes": COUNT}}
ARTIFACT = {"type": "object",
            "required": ["file", "sha256", "bytes", "format", "precision", "inputs", "outputs", "tolerance", "parity"],
            "properties": {**FILE_RECORD["properties"],
                           "format": {"enum": list(FORMATS)},
                           "precision": {"enum": sorted({p for f in FORMATS.values() for p in f.precisions})},
                           "inputs": {"type": "array", "minItems": 1, "items": TENSOR},
                           "outputs": {"type": "array", "minItems": 1, "items": TENSOR},
                           "tolerance": TOLERANCE,
                           "output_tolerances": {"type": "object", "additionalProperties": TOLERANCE},
                           "parity": {"type": "object", "required": ["passed"],
                                      "properties": {"passed": {"type": ["boolean", "null"]}}},
                           "details": DETAILS,
                           "benchmarks": {"type": "array", "items": BENCHMARK}}}
# What bench reads back from a compressed build: how it was compressed, and the original model's host timing.
PRUNING = {"type": ["object", "null"], "required": ["config", "steps"],
           "properties": {"config": {"type": "object",
                                     "properties": {"student": {"type": ["string", "null"]},
                                                    "round_to": {"type": ["integer", "null"], "minimum": 1}}},
                          "steps": {"type": "array", "items": {"type": "object", "required": ["step"],
                                                               "properties": {"step": {"type": "string"}}}},
                          "original_host_latency": {"anyOf": [
                              {"type": "null"},
                              {**BENCHMARK, "required": [*BENCHMARK["required"], "model"],
                               "properties": {**BENCHMARK["properties"],
                                              "model": {"type": "object", "required": ["macs", "nodes"],
                                                        "properties": {"macs": COUNT, "nodes": COUNT}}}}]}}}
MANIFEST = {
    "type": "object",
    "required": ["schema", "target", "source_model", "model_io", "evaluation", "artifacts", "failures", "versions"],
    "properties": {
        "schema": {"const": 1},
        "target": {"type": "object", "required": ["name", "profile"],
                   "properties": {"name": {"type": "string"}, "builtin": {"type": ["string", "null"]},
                                  "profile": {"type": "object"}}},
        "source_model": {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["torch", "onnx"]}}},
        "model_io": {"type": "object", "required": ["inputs", "outputs"],
                     "properties": {"inputs": {"type": "array", "minItems": 1, "items": TENSOR},
                                    "outputs": {"type": "array", "minItems": 1, "items": TENSOR}}},
        "evaluation": {"type": "object", "required": ["inputs", "reference_outputs"],
                       "properties": {"inputs": FILE_RECORD, "reference_outputs": FILE_RECORD}},
        "artifacts": {"type": "array", "items": ARTIFACT},
        "pruning": PRUNING,
        "failures": {"type": "array", "items": {"type": "object", "required": ["stage", "format", "error"],
                                                "properties": {k: {"type": "string"}
                                                               for k in ("stage", "format", "error")}}},
        "versions": {"type": "object", "required": ["edgekit"], "properties": {"edgekit": {"type": "string"}}},
    },
}


def validate(manifest: Any, where: str) -> None:
    """Raise a UserError naming the first key of `manifest` that is missing or of the wrong type."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MANIFEST).iter_errors(manifest))
    if error is None:
        return
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")
    message = f"{error.instance!r} is not a path inside the build folder" if error.schema is RELATIVE_PATH \
        else error.message if len(error.message) < 160 else error.message[:160] + "..."
    raise UserError(f"{where} is not a valid edgekit manifest: {f'key {key!r}: ' if key else ''}{message}: "
                    f"rebuild the folder with `edgekit build`")
