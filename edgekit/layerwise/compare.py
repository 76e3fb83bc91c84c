"""Per-layer metrics of a candidate capture against a reference capture, in network order."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..parity import output_metrics
from .capture import Capture


@dataclass
class LayerRow:
    reference: str  # the reference's tensor name (a PyTorch module path, an ONNX tensor)
    candidate: str  # the candidate's tensor name
    kind: str  # what produced it in the reference (module class / op type)
    shape: tuple[int, ...]  # one sample, channel-first
    snr_db: float
    channel_snr_db: float  # median over channels of each channel's SNR
    cosine: float
    max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @property
    def worst_snr_db(self) -> float:
        return min(self.snr_db, self.channel_snr_db)


def channel_snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Median per-channel SNR (axis 1). A tensor whose range one huge channel sets keeps a high overall
    SNR when INT8 rounds every other channel to zero; its per-channel SNR shows the loss."""
    if reference.ndim < 2:
        return _snr(reference, actual)
    ref = np.moveaxis(reference, 1, 0).reshape(reference.shape[1], -1).astype(np.float64)
    out = np.moveaxis(actual, 1, 0).reshape(actual.shape[1], -1).astype(np.float64)
    values = [_snr(r, o) for r, o in zip(ref, out) if np.any(r)]
    return float(np.median(values)) if values else math.inf


def _snr(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = float(((actual.astype(np.float64) - reference) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    return math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal else -math.inf)


def compare_layers(reference: Capture, candidate: Capture, mapping: dict[str, str]) -> list[LayerRow]:
    """One row per mapped pair (reference name -> candidate name) present in both captures, in the
    reference's execution order."""
    rows = []
    for ref_name in reference.tensors:
        cand_name = mapping.get(ref_name)
        if cand_name is None or cand_name not in candidate.tensors:
            continue
        ref, out = reference.tensors[ref_name], candidate.tensors[cand_name]
        if ref.shape != out.shape:
            raise ValueError(f"'{ref_name}' {ref.shape} and '{cand_name}' {out.shape} differ in shape: "
                             f"the mapping pairs different tensors")
        metrics = output_metrics(ref, out)
        rows.append(LayerRow(ref_name, cand_name, reference.kinds.get(ref_name, ""), tuple(ref.shape[1:]),
                             metrics["snr_db"], channel_snr_db(ref, out), metrics["cosine"],
                             metrics["max_abs_error"]))
    return rows


def first_divergence(rows: list[LayerRow], snr_threshold: float, per_channel: bool = True) -> LayerRow | None:
    """The first layer whose SNR (with `per_channel`, the lower of overall and median per-channel
    SNR) falls below `snr_threshold` dB."""
    for row in rows:
        if (row.worst_snr_db if per_channel else row.snr_db) < snr_threshold:
            return row
    return None


def largest_drop(rows: list[LayerRow], per_channel: bool = True) -> LayerRow | None:
    """The layer whose SNR falls the most below its predecessor's (the first layer counts from its own)."""
    best, best_drop, previous = None, -math.inf, None
    for row in rows:
        value = row.worst_snr_db if per_channel else row.snr_db
        if previous is not None and math.isfinite(previous) and math.isfinite(value):
            if previous - value > best_drop:
                best, best_drop = row, previous - value
        previous = value
    return best


def compose(first: dict[str, str], second: dict[str, str]) -> dict[str, str]:
    """a -> c from a -> b and b -> c (e.g. module path -> ONNX tensor -> TFLite tensor)."""
    return {a: second[b] for a, b in first.items() if b in second}
