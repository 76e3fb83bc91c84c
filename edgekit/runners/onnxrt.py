"""ONNX Runtime, with execution providers in the target's order of preference."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..spec import TensorSpec, image_layout
from .base import Runner

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def load_error(path: Path) -> str | None:
    """Why ONNX Runtime refuses to load `path` (its first line), or None when it loads."""
    import onnxruntime as ort

    from . import runtime_errors

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except runtime_errors() as err:
        detail = first_line(err)
        # "[...] INVALID_GRAPH : Load model from P failed: ... In Node, ("name", Op, ...) : (...) , Error CAUSE"
        node = re.search(r'In Node, \("([^"]+)", (\w+)', detail)
        cause = detail.rsplit(" Error ", 1)[-1] if " Error " in detail else detail
        return (f"{cause.strip()} (node '{node.group(1)}', {node.group(2)})" if node else cause.strip())[:400]
    return None


class OnnxRuntimeRunner(Runner):
    """`session_config`: ONNX Runtime session entries (int8_kernels.session_config: how the target's CPUs
    compute INT8), recorded with the kernel path in `describe()`."""

    def __init__(self, path: Path, providers: list[str], threads: int = 1, session_config: dict[str, str] | None = None):
        import onnxruntime as ort

        installed = ort.get_available_providers()
        chosen = [p for p in providers if p in installed] or ["CPUExecutionProvider"]
        self.path, self.chosen = path, chosen
        self.session, self.options, self.session_config, self.config_refused = exact_session(
            lambda: _options(threads), session_config or {}, lambda o: ort.InferenceSession(str(path), o, providers=chosen))
        self.sample: dict[str, np.ndarray] | None = None  # the first batch run, for delegation()
        self.requested = list(providers)
        self.threads = threads
        self.version = ort.__version__
        self.inputs = [_spec(v) for v in self.session.get_inputs()]
        self.outputs = [_spec(v) for v in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, feeds)
        if self.sample is None:
            self.sample = feeds
        return {spec.name: value for spec, value in zip(self.outputs, values)}

    def describe(self) -> dict[str, Any]:
        from ..int8_kernels import onnxruntime_kernels

        return {"engine": "onnxruntime", "version": self.version, "provider": self.session.get_providers()[0],
                "requested_providers": self.requested, "threads": self.threads,
                "kernels": {**onnxruntime_kernels(self.session_config),
                            **({"session_config_refused": self.config_refused} if self.config_refused else {})}}

    def delegation(self) -> dict[str, Any] | None:
        """Nodes per execution provider: the first batch again, in a session of its own that profiles it (each
        node's kernel event names its provider). The profile is written in a private folder, then removed."""
        import onnxruntime as ort

        if self.sample is None:
            return None
        with tempfile.TemporaryDirectory(prefix="edgekit-ort-profile-") as folder:
            self.options.enable_profiling = True
            self.options.profile_file_prefix = os.path.join(folder, "profile")
            try:
                profiled = ort.InferenceSession(str(self.path), self.options, providers=self.chosen)
                profiled.run(None, self.sample)
                events = json.loads(Path(profiled.end_profiling()).read_text())
                del profiled
            finally:
                self.options.enable_profiling = False
        return _placement(events, self.session.get_providers()[0])


def _options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def exact_session(make_options, config: dict[str, str], open_session):
    """A session opened with `config` (int8_kernels.session_config), or, where ONNX Runtime refuses the graph
    under it (its S8-to-U8 weight rewrite fails on some graphs, e.g. weights shared between nodes), without it:
    (session, its options, the entries it has, why the others were refused or None)."""
    from . import runtime_errors

    if config:
        options = make_options()
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        try:
            return open_session(options), options, dict(config), None
        except runtime_errors() as err:
            refused = f"{', '.join(f'{k}={v}' for k, v in config.items())} refused: {first_line(err)[:200]}"
    else:
        refused = None
    options = make_options()
    return open_session(options), options, {}, refused


def _placement(events: list[dict[str, Any]], preferred: str) -> dict[str, Any]:
    """The preferred provider's node count, and what the others ran, by op type."""
    nodes = [e["args"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    left: dict[str, int] = {}
    for args in nodes:
        if args["provider"] != preferred:
            key = f"{args['op_name']} ({args['provider']})"
            left[key] = left.get(key, 0) + 1
    return {"delegate": preferred, "delegated_nodes": len(nodes) - sum(left.values()), "partitions": None,
            "fallback": "other execution providers", "fallback_ops": left}


def _spec(value) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else 1 for d in value.shape)
    return TensorSpec(value.name, shape, ORT_TYPES.get(value.type, value.type), image_layout(shape))
