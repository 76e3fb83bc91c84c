"""Which layers INT8 hurts most, and the fewest ONNX nodes to keep in float to meet a budget.

Candidates are built with edgekit's own quantizer (`quantize_int8`, ORT QDQ) and run with ONNX
Runtime's fused integer kernels, as shipped. ORT quantizes a tensor when its producer *or* any
consumer is quantized, so keeping one tensor in float can take several nodes: the greedy plan
below adds nodes in order of sensitivity until the budget is met, then drops any it can spare.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..parity import accuracy, is_classifier, output_metrics
from ..stages import Artifact
from ..stages.quantize import quantize_int8
from ..targets import Quantization


@dataclass
class Score:
    snr_db: float  # of the first output against the float reference
    accuracy: float | None  # percent, when the evaluation data has labels

    def to_dict(self) -> dict:
        return {"snr_db": self.snr_db, "accuracy": self.accuracy}


@dataclass
class Sensitivity:
    node: str
    op_type: str
    score: Score  # the model's output with only this node quantized (or all but this node)


@dataclass
class Budget:
    min_snr_db: float | None = None
    max_accuracy_drop: float | None = None  # percentage points below the float model

    def met(self, score: Score, float_accuracy: float | None) -> bool:
        if self.min_snr_db is not None and not score.snr_db >= self.min_snr_db:
            return False
        if self.max_accuracy_drop is not None and float_accuracy is not None and score.accuracy is not None:
            return float_accuracy - score.accuracy <= self.max_accuracy_drop
        return True


@dataclass
class FallbackPlan:
    float_nodes: list[str]  # ONNX node names for quantize_int8(exclude_nodes=...) / ORT nodes_to_exclude
    score: Score
    full_int8: Score
    float_model: Score
    met: bool
    evaluations: int  # quantize + evaluate runs it took
    ranking: list[Sensitivity] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"float_nodes": self.float_nodes, "met": self.met, "score": self.score.to_dict(),
                "full_int8": self.full_int8.to_dict(), "float_model": self.float_model.to_dict(),
                "evaluations": self.evaluations}


class Evaluator:
    """Quantizes the float model with some nodes kept in float and scores it on held-out data."""

    def __init__(self, fp32: Artifact, scheme: Quantization, calibration: Dataset, evaluation: Dataset):
        import onnx

        self.fp32, self.scheme, self.calibration, self.evaluation = fp32, scheme, calibration, evaluation
        self.model = onnx.load(str(fp32.path))
        self.reference = _run(fp32.path, evaluation)
        self.float_score = self._score(self.reference)
        self.runs = 0

    def score(self, float_nodes: list[str]) -> Score:
        self.runs += 1
        with tempfile.TemporaryDirectory(prefix="edgekit-fallback-") as scratch:
            artifact = quantize_int8(self.fp32, self.scheme, self.calibration, sorted(float_nodes), Path(scratch))
            return self._score(_run(artifact.path, self.evaluation))

    def _score(self, outputs: np.ndarray) -> Score:
        snr = output_metrics(self.reference, outputs)["snr_db"]
        labels = self.evaluation.labels
        acc = accuracy(outputs, labels) if labels is not None and is_classifier(outputs) else None
        return Score(snr, acc)


def quantized_nodes(int8_model) -> list[str]:
    """Nodes of a QDQ graph that run quantized (an input comes from a DequantizeLinear), in order."""
    dq_outputs = {n.output[0] for n in int8_model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in int8_model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)]


def layer_sensitivity(evaluator: Evaluator, nodes: list[str] | None = None, mode: str = "only") -> list[Sensitivity]:
    """Score each node with `mode` "only" (just that node quantized) or "all_but" (everything but that
    node quantized); most harmful first (lowest SNR for "only", highest gain for "all_but")."""
    if mode not in ("only", "all_but"):
        raise ValueError(f"mode must be 'only' or 'all_but', not {mode!r}")
    all_nodes = [n.name for n in evaluator.model.graph.node]
    op_types = {n.name: n.op_type for n in evaluator.model.graph.node}
    if nodes is None:
        nodes = default_candidates(evaluator)
    results = []
    for node in nodes:
        excluded = [n for n in all_nodes if n != node] if mode == "only" else [node]
        results.append(Sensitivity(node, op_types[node], evaluator.score(excluded)))
    results.sort(key=lambda s: s.score.snr_db, reverse=(mode == "all_but"))
    return results


def default_candidates(evaluator: Evaluator) -> list[str]:
    """The nodes the full INT8 model quantizes (the only ones that keeping in float can change)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-fallback-") as scratch:
        import onnx

        artifact = quantize_int8(evaluator.fp32, evaluator.scheme, evaluator.calibration, [], Path(scratch))
        names = set(quantized_nodes(onnx.load(str(artifact.path))))
    return [n.name for n in evaluator.model.graph.node if n.name in names]


def plan_float_fallback(evaluator: Evaluator, budget: Budget, max_float_nodes: int | None = None,
                        ranking: list[Sensitivity] | None = None) -> FallbackPlan:
    """Greedily keep the most sensitive nodes in float until `budget` is met, then drop every kept
    node whose removal still meets it (so the plan holds only what is needed)."""
    float_acc = evaluator.float_score.accuracy
    full = evaluator.score([])
    if budget.met(full, float_acc):
        return FallbackPlan([], full, full, evaluator.float_score, True, evaluator.runs, ranking or [])
    ranking = ranking if ranking is not None else layer_sensitivity(evaluator, mode="only")
    kept: list[str] = []
    score = full
    limit = max_float_nodes or len(ranking)
    for item in ranking[:limit]:
        kept.append(item.node)
        score = evaluator.score(kept)
        if budget.met(score, float_acc):
            break
    if not budget.met(score, float_acc):
        return FallbackPlan(kept, score, full, evaluator.float_score, False, evaluator.runs, ranking)
    for node in reversed(kept[:-1]):  # the last one added was needed to meet the budget
        trial = [n for n in kept if n != node]
        trial_score = evaluator.score(trial)
        if budget.met(trial_score, float_acc):
            kept, score = trial, trial_score
    return FallbackPlan(kept, score, full, evaluator.float_score, True, evaluator.runs, ranking)


def _run(path: Path, data: Dataset) -> np.ndarray:
    from ..runners import run_dataset
    from ..runners.onnxrt import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, ["CPUExecutionProvider"])
    return next(iter(run_dataset(runner, data.inputs).values()))
