"""A reduced-precision artifact's error, split between its format's conversion and its precision.

A float16 or INT8 file of a format is made from, or beside, that format's float32 lowering (the TFLite files
from one onnx2tf graph, the ORT files from the ONNX ones). Judged against the reference alone under its looser
limits, it would carry a broken lowering through the gate. So each one is judged by its format's float32 file
as well: when that file fails, this one fails too, and its record splits every output's error into the
conversion's share (the float32 file against the reference) and the precision's (this file against the
float32 file), both as SNR in dB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

from .parity import Check, ParityResult, snr_db

Item = TypeVar("Item")


@dataclass
class Float32File:
    """A format's float32 artifact as verified: its name, verdict and outputs on the held-out inputs."""
    file: str
    parity: ParityResult
    outputs: dict[str, np.ndarray]


def float32_first(items: Iterable[Item], precision: Callable[[Item], str]) -> list[Item]:
    """`items` in the order to verify them: each format's float32 file before the files judged by it."""
    return sorted(items, key=lambda item: precision(item) != "fp32")


class ConversionJudge:
    """Given every artifact's verdict in `float32_first` order: keeps each format's float32 file and judges the
    format's reduced-precision files by it as they come."""

    def __init__(self):
        self.float32: dict[str, Float32File] = {}

    def add(self, file: str, artifact_format: str, precision: str, parity: ParityResult,
            outputs: dict[str, np.ndarray]) -> None:
        if precision == "fp32":
            self.float32[artifact_format] = Float32File(file, parity, outputs)
        else:
            judge(parity, outputs, artifact_format, precision, self.float32.get(artifact_format))


def judge(parity: ParityResult, outputs: dict[str, np.ndarray], artifact_format: str, precision: str,
          float32: Float32File | None) -> None:
    """Add the conversion's verdict and the error split to a reduced-precision artifact's `parity`."""
    if parity.error:
        return
    if float32 is None:
        parity.error_split = {"float32_file": None,
                              "why": f"no float32 {artifact_format} file in this build to measure its conversion by"}
        return
    parity.error_split = {"float32_file": float32.file,
                          "outputs": {name: _shares(name, values, float32) for name, values in outputs.items()}}
    problems = float32.parity.failures()
    detail = (f"{float32.file}, this format's float32 conversion, fails ({problems[0]}): the conversion adds that "
              f"error, not the {precision} precision, and this file inherits it; fix the lowering "
              f"(`edgekit debug` on {float32.file} names the first layer that diverges)") if problems else None
    parity.checks.append(Check("conversion_failures", float(len(problems)), 0.0, "max", None, detail))


def _shares(name: str, values: np.ndarray, float32: Float32File) -> dict[str, Any]:
    conversion = float32.parity.outputs.get(name, {}).get("snr_db")
    base = float32.outputs.get(name)
    if base is None or base.shape != values.shape:
        return {"conversion_snr_db": conversion, "precision_snr_db": None}
    base, values = base.astype(np.float64), values.astype(np.float64)
    return {"conversion_snr_db": conversion,
            "precision_snr_db": snr_db(float((base ** 2).sum()), float(((values - base) ** 2).sum()))}
