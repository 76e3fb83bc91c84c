"""Numerical parity: an artifact's outputs against the reference's, per output, against a tolerance.

Reports numbers, not a boolean: max/mean absolute error, relative error, cosine similarity, SNR in
dB, top-1 agreement for classifier outputs, and accuracy when labels are known.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .targets import Tolerance

# (metric, the Tolerance field that limits it, whether the limit is an upper or lower bound)
OUTPUT_LIMITS = [("max_abs_error", "max_abs_error", "max"), ("max_rel_error", "max_rel_error", "max"),
                 ("cosine", "min_cosine", "min"), ("snr_db", "min_snr_db", "min"),
                 ("top1_agreement", "min_top1_agreement", "min")]


@dataclass
class Check:
    metric: str
    value: float | None
    limit: float
    bound: str  # "max" or "min"
    output: str | None = None

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value <= self.limit if self.bound == "max" else self.value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ParityResult:
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    accuracy: float | None = None  # percent, on the labeled held-out set
    reference_accuracy: float | None = None
    samples: int = 0
    error: str | None = None  # the artifact could not be run or verified at all

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        if self.error:
            return [self.error]
        return [f"{c.metric}{f' ({c.output})' if c.output else ''} = {_show(c.value)}, "
                f"{'at most' if c.bound == 'max' else 'at least'} {_show(c.limit)} allowed"
                for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "samples": self.samples, "outputs": self.outputs,
                "checks": [c.to_dict() for c in self.checks], "accuracy": self.accuracy,
                "reference_accuracy": self.reference_accuracy, "error": self.error}


def is_classifier(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] > 1


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def output_metrics(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = actual.astype(np.float64).reshape(len(actual), -1)
    error = np.abs(out - ref)
    scale = float(np.abs(ref).max()) or 1.0
    noise = float((error ** 2).sum())
    ref_norm, out_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(out, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = (ref * out).sum(axis=1) / (ref_norm * out_norm)
    # Two all-zero samples agree exactly; NaN from a NaN output stays NaN and fails the check.
    cosines[(ref_norm == 0) & (out_norm == 0)] = 1.0
    cosines[(ref_norm == 0) != (out_norm == 0)] = 0.0
    metrics = {
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "max_rel_error": float(error.max()) / scale,
        "cosine": float(cosines.mean()),
        "worst_sample_cosine": float(cosines.min()),
        "snr_db": math.inf if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise)),
    }
    if is_classifier(reference):
        metrics["top1_agreement"] = float((ref.argmax(1) == out.argmax(1)).mean())
    return metrics


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: Tolerance,
            labels: np.ndarray | None = None) -> ParityResult:
    """Compare each output with the reference's output of the same name (runners return the reference's
    names: a TFLite artifact's tensors are paired with them when it is made)."""
    result = ParityResult(samples=len(next(iter(reference.values()))))
    missing = [name for name in reference if name not in actual]
    if missing or len(actual) != len(reference):
        result.error = (f"the artifact's outputs {sorted(actual)} are not the reference's {sorted(reference)}: "
                        f"the manifest's pairing of tensors does not fit this file")
        return result
    for name, ref in reference.items():
        out = actual[name]
        if ref.shape != out.shape:
            result.error = f"output '{name}' has shape {out.shape}, the reference {ref.shape}"
            return result
        metrics = output_metrics(ref, out)
        result.outputs[name] = metrics
        for metric, limit_field, bound in OUTPUT_LIMITS:
            limit = getattr(tolerance, limit_field)
            if limit is not None and metric in metrics:
                result.checks.append(Check(metric, metrics[metric], limit, bound, name))
    first_name, first_ref = next(iter(reference.items()))
    if labels is not None and is_classifier(first_ref):
        result.reference_accuracy = accuracy(first_ref, labels)
        result.accuracy = accuracy(actual[first_name], labels)
        if tolerance.max_accuracy_drop is not None:
            result.checks.append(Check("accuracy_drop", result.reference_accuracy - result.accuracy,
                                       tolerance.max_accuracy_drop, "max", first_name))
    return result


def _show(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"
