"""The runner interface that parity (and later benchmarks) are written against."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..spec import TensorSpec


class Runner(ABC):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; arrays keyed by input / output name."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Which engine ran, its version and how (e.g. the execution provider actually used)."""


def run_dataset(runner: Runner, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every sample of `inputs` (N samples per input) in batches of the model's batch size."""
    batch = runner.inputs[0].shape[0] if runner.inputs[0].shape else 1
    count = len(next(iter(inputs.values())))
    if count % batch:
        raise ValueError(f"{count} samples do not fill batches of {batch}")
    results: dict[str, list[np.ndarray]] = {o.name: [] for o in runner.outputs}
    for start in range(0, count, batch):
        outputs = runner.run({name: array[start:start + batch] for name, array in inputs.items()})
        for name, value in outputs.items():
            results[name].append(value)
    return {name: np.concatenate(parts) for name, parts in results.items()}
