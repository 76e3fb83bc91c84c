"""The precision plan: which layers stay in float in every INT8 artifact, ONNX QDQ and TFLite alike.

One object, made once per target: from a sensitivity search (`auto`) or from layers the user names
(PyTorch module paths or ONNX node names). Its ONNX node names go to ONNX Runtime's quantizer
(`nodes_to_exclude`) and to the TFLite INT8 conversion (ops kept float), and it is recorded in the
manifest with why each layer is there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .data import Dataset
from .errors import UserError
from .sources import SourceModel
from .stages import Artifact
from .targets import Quantization, Tolerance

DEFAULT_MIN_SNR_DB = 15.0  # when the target's INT8 tolerance sets no SNR floor
MAPPING_SAMPLES = 8


@dataclass
class PrecisionPlan:
    float_nodes: list[str]  # ONNX node names
    how: str  # "auto" or "named"
    modules: dict[str, str] = field(default_factory=dict)  # ONNX node -> PyTorch module path, where known
    search: dict[str, Any] | None = None  # auto: the budget, the scores, evaluations and seconds of the search
    notes: list[str] = field(default_factory=list)  # what the plan changed beyond the float layers

    def to_dict(self) -> dict[str, Any]:
        why = ("the fewest layers that bring INT8 within the budget on calibration samples" if self.how == "auto"
               else "named by the user")
        return {"how": self.how, "why": why, "float_nodes": self.float_nodes,
                "layers": [{"onnx_node": n, "module": self.modules.get(n)} for n in self.float_nodes],
                "search": self.search, "notes": self.notes}


def make_plan(request: str | list[str], source: SourceModel, fp32: Artifact, scheme: Quantization,
              calibration: Dataset, tolerance: Tolerance) -> PrecisionPlan:
    """`request`: "auto", or the layers to keep in float."""
    if request == "auto":
        from .layerwise import Budget, Evaluator, plan_float_fallback
        from .layerwise.fallback import plan_cost
        from .stages.quantize import quantize_int8

        # Scored on a few calibration samples: the held-out data stays untouched for the parity gate.
        budget = Budget(min_snr_db=tolerance.min_snr_db or DEFAULT_MIN_SNR_DB,
                        max_accuracy_drop=tolerance.max_accuracy_drop,
                        min_top1_agreement=tolerance.min_top1_agreement)
        evaluator = Evaluator(fp32, scheme, calibration, calibration, quantize_int8)
        plan = plan_float_fallback(evaluator, budget)
        search = {**plan.to_dict(), "cost": plan_cost(evaluator, plan.float_nodes) if plan.float_nodes else None}
        search.pop("float_nodes")
        modules = _node_modules(source, fp32, calibration) if plan.float_nodes else {}
        return PrecisionPlan(plan.float_nodes, "auto", modules, search)
    modules = _node_modules(source, fp32, calibration)
    return PrecisionPlan(_resolve(request, fp32, modules), "named", modules)


def _node_modules(source: SourceModel, fp32: Artifact, calibration: Dataset) -> dict[str, str]:
    """ONNX node -> the PyTorch module whose output it computes (matched by value on a few samples)."""
    if source.kind != "torch":
        return {}
    import onnx

    from .layerwise import capture_onnx, capture_torch, map_torch_onnx
    from .layerwise.capture import node_outputs

    inputs = {k: v[:MAPPING_SAMPLES] for k, v in calibration.inputs.items()}
    mapping = map_torch_onnx(capture_torch(source.module, inputs, batch=MAPPING_SAMPLES),
                             capture_onnx(fp32.path, inputs))
    tensor_module = {tensor: module for module, tensor in mapping.pairs.items()}
    return {node: tensor_module[tensor] for node, tensor in node_outputs(onnx.load(str(fp32.path))).items()
            if tensor in tensor_module}


def _resolve(names: list[str], fp32: Artifact, modules: dict[str, str]) -> list[str]:
    import onnx

    nodes = [n.name for n in onnx.load(str(fp32.path)).graph.node]
    by_module: dict[str, list[str]] = {}
    for node, module in modules.items():
        by_module.setdefault(module, []).append(node)
    resolved = []
    for name in names:
        found = [name] if name in nodes else by_module.get(name) or [
            node for module, owned in by_module.items() if module.startswith(f"{name}.") for node in owned]
        if not found:
            known = ", ".join(sorted(by_module)[:6]) or "none mapped"
            raise UserError(f"--float-fallback: '{name}' is neither an ONNX node nor a PyTorch module of the "
                            f"model (modules such as: {known}; `edgekit inspect --nodes` lists ONNX nodes)")
        resolved += [n for n in found if n not in resolved]
    return resolved
