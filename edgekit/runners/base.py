"""The runner interface that parity (and later benchmarks) are written against."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator

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

    def delegation(self) -> dict[str, Any] | None:
        """What the runtime's delegate or preferred execution provider took of the graph and what it left
        ({delegate, delegated_nodes, partitions, fallback, fallback_ops}), once the runner has run; None
        where the runtime cannot say (an ExecuTorch program's report is made when it is lowered)."""
        return None


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


_SILENCING = threading.RLock()  # file descriptors 1 and 2 belong to the process: one thread redirects at a time


@contextlib.contextmanager
def silenced(log: Path | None = None) -> Iterator[None]:
    """Send stdout and stderr, Python's and native code's (TensorFlow, LiteRT), to `log` or nowhere."""
    with _SILENCING:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(log or os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
