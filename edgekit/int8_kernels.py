"""Which INT8 kernels compute a verdict, and whether they add up products the way the target's device does.

ONNX Runtime's x86 kernels for 8-bit matrix products (Conv, MatMul, Gemm; S8S8 QDQ is run as U8S8) use
VPMADDUBSW on CPUs without VNNI or AMX: it adds each pair of u8 x s8 products into a saturating int16, which
overflows where two weights' magnitudes add up to more than 128 (255 x 128 = 32640 is the largest sum that
fits). VNNI and AMX x86 CPUs, ARM CPUs and NVIDIA GPUs add every product in int32. A target profile names
the CPUs its artifacts ship to (`runtime.cpu_floor`); a build host whose kernels saturate where the floor's
do not computes with ONNX Runtime's precise U8U8 kernels instead (`session.x64quantprecision`), and an
artifact that would saturate on its own floor is refused by a check of its weights, on every host alike.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

# cpu_floor -> (the architecture it belongs to, whether ONNX Runtime's INT8 kernels saturate there)
FLOORS: dict[str, tuple[str | None, bool]] = {
    "avx2": ("x86_64", True), "avx512": ("x86_64", True),  # AVX-512 without VNNI (Skylake-SP) saturates too
    "avx_vnni": ("x86_64", False), "avx512_vnni": ("x86_64", False), "amx": ("x86_64", False),
    "armv8": ("arm64", False), "dotprod": ("arm64", False), "i8mm": ("arm64", False),
    "gpu": (None, False),
}
PRECISION_OPTION = "session.x64quantprecision"
PAIR_LIMIT = 128  # two weights' magnitudes may add up to this much before 255 x (|w0| + |w1|) leaves int16
SATURATING = "int16 pairs (saturating: x86 without VNNI)"
EXACT = "int32"
_MATRIX_OPS = {"Conv": 1, "MatMul": 1, "Gemm": 1, "ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3,
               "QLinearMatMul": 3}  # op type -> the input holding the weights


def default_floor(arch: str, gpu: bool) -> str:
    """The floor of a profile that names none: its GPU, else the common CPU of its architecture."""
    return "gpu" if gpu else "armv8" if arch == "arm64" else "avx2"


@functools.lru_cache(maxsize=1)
def host_cpu() -> dict[str, Any]:
    from .device.cpu import cpu_info

    return cpu_info()


def saturates(cpu: dict[str, Any]) -> bool:
    """Whether ONNX Runtime's U8S8 kernels saturate on this CPU (an x86 one without VNNI or AMX)."""
    if cpu.get("machine", "").lower() not in ("x86_64", "amd64"):
        return False
    isa = cpu.get("isa") or {}
    return not (isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8"))


def floor_saturates(floor: str) -> bool:
    return FLOORS[floor][1]


def session_config(floor: str) -> dict[str, str]:
    """ONNX Runtime session entries under which this host computes INT8 as the floor's CPUs do."""
    return {} if floor_saturates(floor) else exact_session_config()


def exact_session_config() -> dict[str, str]:
    """Session entries under which this host adds INT8 products in int32: what the per-layer diagnostics and the
    float fallback search run with, so that they rank a layer by its quantization, not by the host's kernels."""
    return {PRECISION_OPTION: "1"} if saturates(host_cpu()) else {}


def host_record() -> dict[str, Any]:
    """The CPU that computed a verdict on this host, and the flags that decide its INT8 kernels."""
    cpu = host_cpu()
    return {"cpu_model": cpu["cpu_model"] or "unknown CPU", "machine": cpu["machine"],
            "isa": sorted(name for name, present in cpu["isa"].items() if present), "isa_source": cpu["isa_source"]}


def onnxruntime_kernels(config: dict[str, str]) -> dict[str, Any]:
    """host_record, with how ONNX Runtime adds INT8 products there under these session entries."""
    exact = not saturates(host_cpu()) or config.get(PRECISION_OPTION) == "1"
    return {**host_record(), "int8_accumulation": EXACT if exact else SATURATING, "session_config": dict(config)}


def saturation_check(path: Path, floor: str):
    """A parity check that fails when the floor's CPUs saturate in some int8 layer of this ONNX file (None
    where the floor does not saturate or the file has no int8 matrix product): the same on every host."""
    from .parity import Check

    if not floor_saturates(floor):
        return None
    pairs = int8_layers(path)
    if not pairs:
        return None
    over = [name for name, pair in pairs.items() if pair > PAIR_LIMIT]
    shown = ", ".join(over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
    detail = (f"on x86 CPUs without VNNI (this target's cpu_floor {floor}) ONNX Runtime adds the int8 products "
              f"of {shown} in saturating int16; set quantization.reduce_range: true (7-bit weights) or a VNNI "
              f"runtime.cpu_floor") if over else None
    return Check("saturating_layers", float(len(over)), 0.0, "max", detail=detail)


def int8_layers(path: Path) -> dict[str, int]:
    """Each matrix product of an ONNX file with int8 weights (a depthwise convolution has a kernel of its own
    and is left out), and the largest sum of two weight magnitudes one of its outputs adds up: above 128 it
    can saturate ONNX Runtime's x86 kernels without VNNI."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    pairs = {}
    for node in graph.node:
        index = _MATRIX_OPS.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        weight = _int8_weight(node.input[index], initializers, producers, numpy_helper)
        if weight is not None and not _depthwise(node, weight):
            pairs[node.name or node.output[0]] = _largest_pair(node.op_type, node, weight)
    return pairs


def _int8_weight(name: str, initializers, producers, numpy_helper) -> np.ndarray | None:
    """The int8 array behind a weight input: an initializer, or one a DequantizeLinear reads (QDQ form)."""
    producer = producers.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        name = producer.input[0]
    if name not in initializers:
        return None
    array = numpy_helper.to_array(initializers[name])
    return array if array.dtype == np.int8 else None


def _depthwise(node, weight: np.ndarray) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type.endswith("Conv") and group > 1 and weight.shape[1] == 1


def _largest_pair(op_type: str, node, weight: np.ndarray) -> int:
    """The largest sum of two weight magnitudes that one output adds up (along the reduced dimension)."""
    magnitudes = np.abs(weight.astype(np.int16))
    if op_type.endswith("Conv"):
        rows = magnitudes.reshape(magnitudes.shape[0], -1)  # output channels x (input channels x kernel)
    else:
        trans_b = op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        matrix = magnitudes.reshape(-1, magnitudes.shape[-1]) if magnitudes.ndim > 1 else magnitudes[:, None]
        rows = matrix if trans_b else matrix.T  # outputs x reduced dimension
    if rows.shape[1] < 2:
        return int(rows.max(initial=0))
    top_two = np.partition(rows, rows.shape[1] - 2, axis=1)[:, -2:]
    return int(top_two.sum(axis=1).max(initial=0))
