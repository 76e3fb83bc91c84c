"""`edgekit inspect`: inputs, outputs, parameters, MACs, operators and file size of a model."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from . import sources
from .stages.export_onnx import export_onnx

INSPECT_OPSET = 18


def inspect_model(model: str, weights: str | None, input_shape: list[int] | None) -> dict[str, Any]:
    """Torch models are exported to a temporary ONNX graph first, so every kind is counted the same way."""
    import onnx

    from .graph_stats import graph_stats

    source = sources.load(model, weights, input_shape)
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-") as workdir:
        onnx_path = export_onnx(source, INSPECT_OPSET, Path(workdir)).path if source.kind == "torch" else source.onnx_path
        graph = onnx.load(str(onnx_path))
        stats = graph_stats(graph)
        nodes = [{"name": n.name, "op": n.op_type} for n in graph.graph.node]
    outputs = source.outputs
    if source.kind == "torch":
        stats["parameters"] = sum(p.numel() for p in _torch_parameters(source.module))
    return {
        "model": source.reference, "kind": source.kind, "sha256": source.sha256,
        "file_bytes": sum(Path(f).stat().st_size for f in source.files),
        "inputs": [s.to_dict() for s in source.inputs], "outputs": [s.to_dict() for s in outputs],
        **stats, "node_list": nodes,
    }


def _torch_parameters(module):
    if hasattr(module, "graph_signature"):  # torch.export program
        return list(module.state_dict.values())
    return list(module.parameters())


def format_inspection(info: dict[str, Any], with_nodes: bool) -> str:
    lines = [f"model       {info['model']} ({info['kind']}, {info['file_bytes']:,} bytes)",
             f"sha256      {info['sha256']}"]
    for kind in ("inputs", "outputs"):
        for spec in info[kind]:
            layout = f" {spec['layout']}" if spec.get("layout") else ""
            shape = "x".join("?" if d < 0 else str(d) for d in spec["shape"]) or "scalar"
            lines.append(f"{kind[:-1]:<11} {spec['name']}: {spec['dtype']} {shape}{layout}")
    lines += [f"parameters  {info['parameters']:,}", f"MACs        {info['macs']:,}",
              f"opset       {info['opset']}", f"nodes       {info['nodes']}",
              "operators   " + ", ".join(f"{op} {count}" for op, count in info["operators"].items())]
    if with_nodes:
        lines += [f"  {node['name']}  ({node['op']})" for node in info["node_list"]]
    return "\n".join(lines)
