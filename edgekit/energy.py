"""Energy per inference (one call of the model with its input shape, so one batch), estimated from what an
artifact does: its multiply-accumulates by precision and the
bytes of weights and activations it moves, priced with the 45 nm figures of M. Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014.

An estimate to compare the artifacts of one model with each other, not a measurement of any device: real
chips differ in process, voltage and memory system. `edgekit bench --energy` measures where a machine
exposes power readings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .manifest import ArtifactEntry

# picojoules at 45 nm, 0.9 V (Horowitz, ISSCC 2014)
MAC_PJ = {"int8": 0.2 + 0.1,  # 8-bit multiply, 32-bit accumulate
          "fp16": 1.1 + 0.4,  # 16-bit float multiply and add
          "fp32": 3.7 + 0.9}  # 32-bit float multiply and add
DRAM_PJ_PER_BYTE = 1950 / 8  # a 64-bit DRAM access: 1.3-2.6 nJ, the middle of the range
CACHE_PJ_PER_BYTE = 100 / 8  # a 64-bit access to a 1 MB SRAM cache
BASIS = ("estimate from MACs by precision and bytes moved, 45 nm figures of Horowitz (ISSCC 2014): MAC int8 "
         "0.3 pJ, fp16 1.5 pJ, fp32 4.6 pJ; weights read once from DRAM at 244 pJ/byte; activations written and "
         "read once through a 1 MB cache at 12.5 pJ/byte. Relative between artifacts, not a device measurement")


def numerics(entry: ArtifactEntry) -> tuple[int, str, int]:
    """(bytes per weight, precision of the arithmetic, bytes per activation) of an artifact."""
    scheme = entry.details.get("scheme", {})
    if scheme.get("mode") == "dynamic_range":  # int8 weights and products; activations float between layers
        return 1, "int8", 4
    if entry.precision == "int8":
        return 1, "int8", 1
    if entry.precision == "fp16":
        # float16 weights only (TFLite's weights-only fp16): dequantized to float32 before the arithmetic
        weights_only = scheme.get("mode") == "float" and scheme.get("weights") == "float16"
        return (2, "fp32", 4) if weights_only else (2, "fp16", 2)
    return 4, "fp32", 4


def estimate(entry: ArtifactEntry, hub: dict[str, Any], float_macs: int) -> dict[str, Any]:
    """Microjoules per sample of `entry`: `hub` is the float ONNX's details (macs, parameters, activation_bytes,
    per sample), `float_macs` the MACs of the layers a precision plan keeps float (INT8 artifacts only)."""
    weight_bytes, arithmetic, activation_bytes = numerics(entry)
    kept = float_macs if arithmetic == "int8" else 0
    macs = {arithmetic: hub["macs"] - kept, **({"fp32": kept} if kept else {})}
    activations = hub["activation_bytes"] // 4 * activation_bytes
    parts_pj = {"arithmetic": sum(MAC_PJ[p] * n for p, n in macs.items()),
                "weights": hub["parameters"] * weight_bytes * DRAM_PJ_PER_BYTE,
                "activations": 2 * activations * CACHE_PJ_PER_BYTE}
    return {"kind": "estimate", "microjoules": round(sum(parts_pj.values()) / 1e6, 3),
            "parts_microjoules": {k: round(v / 1e6, 3) for k, v in parts_pj.items()},
            "macs": macs, "weight_bytes": hub["parameters"] * weight_bytes, "activation_bytes": activations,
            "basis": BASIS}


def estimate_all(entries: list[ArtifactEntry], folder: Path, plan_nodes: list[str]) -> None:
    """Put the estimate in every artifact's details (`energy_estimate`), from the float ONNX graph the build
    made; without one, there is nothing to count and no estimate."""
    import onnx

    from .graph_stats import node_macs

    hub = next((e for e in entries if e.format == "onnx" and e.precision == "fp32"), None)
    if hub is None or "macs" not in hub.details:
        return
    per_node = node_macs(onnx.load(str(folder / hub.name)))
    for entry in entries:
        kept = set(plan_nodes) | set(entry.details.get("float_nodes", []))
        entry.details["energy_estimate"] = estimate(entry, hub.details, sum(per_node.get(n, 0) for n in kept))
