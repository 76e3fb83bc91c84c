"""Numerical parity: an artifact's outputs against the reference's, per output, against a tolerance.

Reports numbers, not a boolean: max/mean absolute error, relative error, cosine similarity, SNR in
dB, top-1 agreement for classifier outputs, and accuracy when labels are known.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .output_kinds import OutputKind, by_shape
from .targets import Tolerance

# (metric, the Tolerance field that limits it, whether the limit is an upper or lower bound)
OUTPUT_LIMITS = [("max_abs_error", "max_abs_error", "max"), ("max_rel_error", "max_rel_error", "max"),
                 ("mean_abs_error", "max_mean_abs_error", "max"), ("cosine", "min_cosine", "min"),
                 ("snr_db", "min_snr_db", "min"), ("worst_sample_snr_db", "min_worst_sample_snr_db", "min"),
                 ("top1_agreement", "min_top1_agreement", "min"), ("iou", "min_iou", "min"),
                 ("worst_sample_iou", "min_worst_sample_iou", "min")]
PROBABILITY_THRESHOLD = 0.5
# A sample whose own reference is nearly silent is judged against this fraction of the mean sample's power:
# its SNR against its own (near-zero) power would fail any correct file on rounding noise.
SILENT_SAMPLE_POWER = 1e-3
# A sample's map enters the worst-sample IoU when the union of its two thresholded maps has at least this
# many elements: on fewer, one flipped element moves its IoU by more than 6 %.
MIN_IOU_AREA = 16


@dataclass
class Check:
    metric: str
    value: float | None
    limit: float
    bound: str  # "max" or "min"
    output: str | None = None
    detail: str | None = None  # what a failure means and how to fix it, where the number alone does not say

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
    # A reduced-precision file's error, split between its format's conversion and its precision (error_split)
    error_split: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        if self.error:
            return [self.error]
        return [f"{c.metric}{f' ({c.output})' if c.output else ''} = {_show(c.value)}, "
                f"{'at most' if c.bound == 'max' else 'at least'} {_show(c.limit)} allowed"
                f"{f': {c.detail}' if c.detail else ''}"
                for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "samples": self.samples, "outputs": self.outputs,
                "checks": [c.to_dict() for c in self.checks], "accuracy": self.accuracy,
                "reference_accuracy": self.reference_accuracy, "error": self.error,
                **({"error_split": self.error_split} if self.error_split else {})}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def sample_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (rows of two float64 arrays of shape N x features)."""
    return cosines_from_sums((ref * out).sum(axis=1), (ref * ref).sum(axis=1), (out * out).sum(axis=1))


def cosines_from_sums(dot: np.ndarray, ref_squares: np.ndarray, out_squares: np.ndarray) -> np.ndarray:
    """Per-sample cosines from each sample's dot product and sums of squares."""
    ref_norm, out_norm = np.sqrt(ref_squares), np.sqrt(np.maximum(out_squares, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = dot / (ref_norm * out_norm)
    # Two all-zero samples agree exactly; NaN from a NaN output stays NaN and fails the check.
    cosines[(ref_norm == 0) & (out_norm == 0)] = 1.0
    cosines[(ref_norm == 0) != (out_norm == 0)] = 0.0
    return cosines


def output_metrics(reference: np.ndarray, actual: np.ndarray, kind: OutputKind | None = None) -> dict[str, float]:
    kind = kind or by_shape(reference.shape)
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = actual.astype(np.float64).reshape(len(actual), -1)
    error = np.abs(out - ref)
    scale = float(np.abs(ref).max()) or 1.0
    cosines = sample_cosines(ref, out)
    signal, noise = (ref ** 2).sum(axis=1), ((out - ref) ** 2).sum(axis=1)
    metrics = {
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "max_rel_error": float(error.max()) / scale,
        "cosine": float(cosines.mean()),
        "worst_sample_cosine": float(cosines.min()),
        "snr_db": snr_db(signal.sum(), noise.sum()),
        "worst_sample_snr_db": min(snr_db(power, sample_noise) for power, sample_noise
                                   in zip(np.maximum(signal, SILENT_SAMPLE_POWER * signal.mean()), noise)),
    }
    if kind.class_axis is not None and reference.shape[kind.class_axis] > 1:
        metrics["top1_agreement"] = float((reference.argmax(kind.class_axis) == actual.argmax(kind.class_axis)).mean())
    if kind.kind == "probability":
        ref_on, out_on = ref > PROBABILITY_THRESHOLD, out > PROBABILITY_THRESHOLD
        union, overlap = (ref_on | out_on).sum(axis=1), (ref_on & out_on).sum(axis=1)
        metrics["iou"] = float(overlap.sum() / union.sum()) if union.sum() else 1.0
        judged = union >= MIN_IOU_AREA
        metrics["worst_sample_iou"] = float((overlap[judged] / union[judged]).min()) if judged.any() else 1.0
    return metrics


def snr_db(signal: float, noise: float) -> float:
    """Signal over noise power in dB; noise that overflows (an fp16 layer out of range) or drowns the signal is
    -inf, a NaN output stays NaN (and fails its check)."""
    if noise == 0:
        return math.inf
    ratio = float(signal / noise)
    if ratio > 0:
        return 10 * math.log10(ratio)
    return ratio if math.isnan(ratio) else -math.inf


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            tolerance: Tolerance | dict[str, Tolerance], labels: np.ndarray | None = None,
            kinds: dict[str, OutputKind] | None = None) -> ParityResult:
    """Compare each output with the reference's output of the same name (runners return the reference's
    names: a TFLite artifact's tensors are paired with them when it is made). `tolerance`: one for every
    output, or one per output name; `kinds`: what each output holds (default: guessed from its shape)."""
    result = ParityResult(samples=len(next(iter(reference.values()))))
    missing = [name for name in reference if name not in actual]
    if missing or len(actual) != len(reference):
        result.error = (f"the artifact's outputs {sorted(actual)} are not the reference's {sorted(reference)}: "
                        f"the manifest's pairing of tensors does not fit this file")
        return result
    kinds = kinds or {}
    for name, ref in reference.items():
        out = actual[name]
        if ref.shape != out.shape:
            result.error = f"output '{name}' has shape {out.shape}, the reference {ref.shape}"
            return result
        metrics = output_metrics(ref, out, kinds.get(name))
        result.outputs[name] = metrics
        limits = tolerance[name] if isinstance(tolerance, dict) else tolerance
        for metric, limit_field, bound in OUTPUT_LIMITS:
            limit = getattr(limits, limit_field)
            if limit is not None and metric in metrics:
                result.checks.append(Check(metric, metrics[metric], limit, bound, name))
    classifier = classifier_output(reference, kinds)
    if labels is not None and classifier:
        result.reference_accuracy = accuracy(reference[classifier], labels)
        result.accuracy = accuracy(actual[classifier], labels)
        limits = tolerance[classifier] if isinstance(tolerance, dict) else tolerance
        if limits.max_accuracy_drop is not None:
            result.checks.append(Check("accuracy_drop", result.reference_accuracy - result.accuracy,
                                       limits.max_accuracy_drop, "max", classifier))
    return result


def classifier_output(outputs: dict[str, np.ndarray], kinds: dict[str, OutputKind] | None = None) -> str | None:
    """The output labels are class indices of: the first 2-D one with classes along axis 1."""
    kinds = kinds or {}
    for name, value in outputs.items():
        kind = kinds.get(name) or by_shape(value.shape)
        if value.ndim == 2 and kind.class_axis == 1 and value.shape[1] > 1:
            return name
    return None


MIN_INTEGER_LEVELS = 16


def range_problems(reference: dict[str, np.ndarray], outputs: list, precision: str) -> list[str]:
    """Outputs whose reference values the artifact's number format cannot represent, each with the fix:
    integer outputs spanning too few steps of their scale, float16 values below its smallest normal number.
    `outputs`: the artifact's output TensorSpecs."""
    problems = []
    tiny = float(np.finfo(np.float16).tiny)
    for name, values in reference.items():
        largest = float(np.abs(values).max())
        if precision == "fp16" and largest < tiny:
            problems.append(f"output '{name}' never exceeds {largest:.3g} in magnitude, below float16's smallest "
                            f"normal number {tiny:.3g}: float16 flushes it to zero (untrained or degenerate "
                            f"weights?); judge this model on trained weights or ship it in float32")
    for spec in outputs:
        if not spec.quantization or spec.name not in reference:
            continue
        values, scale = reference[spec.name], spec.quantization["scale"]
        levels = float(values.max() - values.min()) / scale
        if levels < MIN_INTEGER_LEVELS:
            problems.append(f"output '{spec.name}' spans [{values.min():.3g}, {values.max():.3g}], only {levels:.1f} "
                            f"steps of its {spec.dtype} scale {scale:.3g}: the integer output cannot represent it "
                            f"(untrained or degenerate weights?); set 'tflite: {{io_type: float32}}' in the target "
                            f"profile to keep float model outputs")
    return problems


def _show(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.6g}"  # enough digits that a limit of 0.99999 does not print as 1
