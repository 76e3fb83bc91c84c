"""Run one artifact on the held-out inputs and judge it against the reference outputs.

Used by `edgekit build` right after an artifact is made and by `edgekit check` on a finished folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import first_line
from .formats import get
from .int8_kernels import host_record, saturation_check
from .output_kinds import OutputKind
from .parity import ParityResult, compare
from .runners import open_runner, run_dataset, runtime_errors
from .spec import TensorSpec
from .speed import host_timing
from .targets import Runtime, Tolerance


@dataclass
class Verification:
    parity: ParityResult
    runtime: dict[str, Any] = field(default_factory=dict)  # what actually ran it
    inputs: list[TensorSpec] = field(default_factory=list)  # the artifact's I/O as its runtime sees it
    outputs: list[TensorSpec] = field(default_factory=list)
    delegation: dict[str, Any] | None = None  # what its delegate or execution provider took (Runner.delegation)
    timing: dict[str, Any] | None = None  # host latency of one batch (speed.host_timing), when asked for
    values: dict[str, np.ndarray] = field(default_factory=dict)  # its outputs on the held-out inputs


def verify(path: Path, artifact_format: str, runtime: Runtime, io: tuple[list[TensorSpec], list[TensorSpec]] | None,
           inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           tolerance: Tolerance | dict[str, Tolerance], labels: np.ndarray | None,
           kinds: dict[str, OutputKind] | None = None, timed: bool = False) -> Verification:
    """`timed`: also time the runner on one batch, in-process (the build's host latency)."""
    try:
        runner = open_runner(path, artifact_format, runtime, io)
        outputs = run_dataset(runner, inputs)
    except runtime_errors() as err:  # a corrupt or unrunnable artifact is a failed verdict, not a crash
        detail = first_line(err)
        return Verification(ParityResult(samples=len(next(iter(inputs.values()))), error=f"could not run: {detail}"))
    parity = compare(reference, outputs, tolerance, labels, kinds)
    saturation = saturation_check(path, runtime.cpu_floor) if get(artifact_format).onnx_graph else None
    if saturation:
        parity.checks.append(saturation)
    described = runner.describe()
    checked = Verification(parity, {**described, "kernels": described.get("kernels") or host_record()},
                           runner.inputs, runner.outputs, values=outputs)
    try:  # measurements beside the verdict: when one fails, the artifact keeps its verdict and goes without it
        checked.delegation = runner.delegation()
        checked.timing = host_timing(runner, inputs) if timed else None
    except runtime_errors():
        pass
    return checked
