"""Per-layer metrics of a candidate capture against a reference capture, in network order."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..parity import cosines_from_sums, snr_db
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


def layer_metrics(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float, float, float]:
    """SNR, median per-channel SNR (axis 1), mean per-sample cosine and max absolute error of one layer.
    A tensor whose range one huge channel sets keeps a high overall SNR when INT8 rounds every other
    channel to zero; its per-channel SNR shows the loss. Channels that are all zero in the reference
    have no signal to lose and are left out. Sums run in float64 over float32 products (one pass each,
    no float64 copy of a layer)."""
    ref, out = reference.astype(np.float32, copy=False), actual.astype(np.float32, copy=False)
    noise = out - ref
    if ref.ndim < 2:
        ref, out, noise = ref[:, None], out[:, None], noise[:, None]
    # einsum reads any memory layout (captures may be channel-first views of channel-last data): no copies
    axes = list(range(ref.ndim))  # sample, channel, the rest
    signal_sums = np.einsum(ref, axes, ref, axes, [0, 1], dtype=np.float64)
    noise_sums = np.einsum(noise, axes, noise, axes, [0, 1], dtype=np.float64)
    snr = snr_db(float(signal_sums.sum()), float(noise_sums.sum()))
    if reference.ndim < 2:
        channel = snr
    else:
        live = (ref != 0).any(axis=tuple(axis for axis in axes if axis != 1))
        channels = [snr_db(signal, noise) for signal, noise in
                    zip(signal_sums.sum(axis=0)[live], noise_sums.sum(axis=0)[live])]
        channel = float(np.median(channels)) if channels else math.inf
    dot = np.einsum(ref, axes, out, axes, [0], dtype=np.float64)
    out_squares = np.einsum(out, axes, out, axes, [0], dtype=np.float64)
    cosine = float(cosines_from_sums(dot, signal_sums.sum(axis=1), out_squares).mean())
    return snr, channel, cosine, float(np.abs(noise).max()) if ref.size else 0.0


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
        rows.append(LayerRow(ref_name, cand_name, reference.kinds.get(ref_name, ""), tuple(ref.shape[1:]),
                             *layer_metrics(ref, out)))
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
