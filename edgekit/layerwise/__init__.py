"""Per-layer divergence across PyTorch, ONNX and TFLite, and float fallback for INT8.

capture (every intermediate tensor) -> mapping (which tensor is which across formats) -> compare
(per-layer metrics, first divergence); fallback (the fewest float nodes for a budget, bounded search);
placement (which TFLite ops compute those nodes, for the TFLite float fallback).
"""
from .capture import Capture, capture_onnx, capture_tflite, capture_torch
from .compare import LayerRow, compare_layers, compose, first_divergence, largest_drop
from .fallback import (Budget, Evaluator, FallbackPlan, Score, Sensitivity, layer_sensitivity, plan_float_fallback,
                       quantized_nodes)
from .mapping import Mapping, map_torch_onnx, match_by_value, module_scopes, node_coverage

__all__ = ["Budget", "Capture", "Evaluator", "FallbackPlan", "LayerRow", "Mapping", "Score", "Sensitivity",
           "capture_onnx",
           "capture_tflite", "capture_torch", "compare_layers", "compose", "first_divergence", "largest_drop",
           "layer_sensitivity", "map_torch_onnx", "match_by_value", "module_scopes", "node_coverage",
           "plan_float_fallback", "quantized_nodes"]
