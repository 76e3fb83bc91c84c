"""Is it actually faster? Every build times each artifact on the build host, and a reduced-precision artifact
slower than its fp32 sibling on the machine that timed both is said so in words, with what explains it.

The build's timing is in-process, through the runner that just checked parity, on one batch of held-out
inputs: a short run, labeled with the host CPU (and "not the target device" when the target's architecture
differs). `edgekit bench` is the full measurement; its records get the same comparison.
"""
from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from .device.runner import machine_info, percentiles
from .manifest import ArtifactEntry
from .runners import Runner

WARMUP, RUNS, MIN_RUNS, BUDGET_S = 3, 20, 5, 1.0  # at most RUNS, fewer past BUDGET_S (at least MIN_RUNS)
SLOWER = 1.10  # p50 more than 10% above the fp32 sibling's: slower, not timing noise
NOT_THE_TARGET = "host, not the target device"
ARCH_NAMES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


def host_timing(runner: Runner, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """p50/p90/p99/mean/min of the runner's call on the first batch of `inputs`, after a warm-up."""
    batch = runner.inputs[0].shape[0] if runner.inputs[0].shape else 1
    feeds = {name: array[:batch] for name, array in inputs.items()}
    for _ in range(WARMUP):
        runner.run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < RUNS and (len(times) < MIN_RUNS or time.perf_counter() - start < BUDGET_S):
        began = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - began) * 1e3)
    return {"latency_ms": percentiles(np.array(times)), "runs": len(times), "warmup": WARMUP, "samples": batch}


def host_record(timing: dict[str, Any], runtime: dict[str, Any], threads: int, target_arch: str) -> dict[str, Any]:
    """A benchmark record (the shape `edgekit bench` writes) for the build's own timing."""
    machine = machine_info()
    arch = ARCH_NAMES.get(platform.machine().lower(), platform.machine())
    where = f"build host, {machine['cpu_model'] or 'unknown CPU'} ({arch}), in-process"
    if arch != target_arch:
        where += f": {NOT_THE_TARGET} ({target_arch})"
    return {"runner": "build", "kind": "host", "where": where, "machine": machine, "runtime": runtime,
            "threads": threads, **timing}


def compare_with_fp32(entries: list[ArtifactEntry], compression: dict[str, Any] | None = None) -> None:
    """Mark every benchmark record of a reduced-precision artifact that is slower than its format's fp32
    artifact on the same runner (`slower_than_fp32`: the sibling, both p50s, and why). `compression`: the
    manifest's pruning section; with the original model's host timing in it, the compressed model's fp32 ONNX
    is compared with the original's on the build host the same way."""
    fp32 = {e.format: e for e in entries if e.precision == "fp32"}
    original = (compression or {}).get("original_host_latency")
    for entry in entries:
        for record in entry.benchmarks:
            record.pop("slower_than_fp32", None)
        sibling = fp32.get(entry.format)
        if sibling is entry:
            if original and entry.format == "onnx":
                _mark([r for r in entry.benchmarks if r["runner"] == "build"], original,
                      "the original model's fp32 ONNX", lambda r: why_compressed_slower(entry, original, compression))
            continue
        if sibling is not None:
            theirs = {b["runner"]: b for b in sibling.benchmarks}
            for record in entry.benchmarks:
                if record["runner"] in theirs:
                    _mark([record], theirs[record["runner"]], sibling.name,
                          lambda r: why_slower(entry, sibling, r["machine"], session_config(r.get("runtime"))))


def _mark(records: list[dict[str, Any]], other: dict[str, Any], sibling: str, why) -> None:
    for record in records:
        if record["kind"] == "emulated":  # emulated speed says nothing about a CPU: no verdict, no cause
            continue
        if record["latency_ms"]["p50"] > SLOWER * other["latency_ms"]["p50"]:
            record["slower_than_fp32"] = {"sibling": sibling, "sibling_p50_ms": other["latency_ms"]["p50"],
                                          "why": why(record)}


def why_compressed_slower(entry: ArtifactEntry, original: dict[str, Any], compression: dict[str, Any]) -> str:
    """Why a pruned, weight-shared or distilled model's fp32 ONNX is no faster than the original's."""
    steps = {step["step"] for step in compression.get("steps", [])}
    macs, original_macs = entry.details.get("macs"), original.get("model", {}).get("macs")
    reasons = []
    if not compression["config"].get("student") and steps <= {"sparsity", "cluster"}:
        reasons.append("weight sharing and unstructured sparsity keep every weight tensor dense, so the runtime "
                       "does as many multiply-accumulates as before; what they buy is compressed size")
    elif macs and original_macs:
        nodes, original_nodes = entry.details.get("nodes"), original["model"].get("nodes")
        reasons.append(f"it does {macs / original_macs:.2f}x the original's multiply-accumulates ({macs:,} against "
                       f"{original_macs:,}) in {nodes} operators against {original_nodes}")
    lanes = simd_floats(original["machine"].get("isa", {}))
    multiple = compression["config"].get("round_to")
    # Advice for the target's channel multiple only from a CPU of the target's architecture.
    if "prune" in steps and NOT_THE_TARGET not in original["where"] and lanes and multiple and multiple % lanes:
        reasons.append(f"pruned channel counts are multiples of {multiple}, not of this CPU's {lanes}-float SIMD "
                       f"width, so kernels pad them: prune with round_to {lanes} (or set the target's "
                       f"pruning.channel_multiple to {lanes})")
    return "; ".join(reasons) or "no recorded cause"


def simd_floats(isa: dict[str, bool]) -> int | None:
    """float32 lanes of the CPU's widest vector unit that runtimes use: AVX-512, AVX2 or NEON."""
    if isa.get("avx512f"):
        return 16
    if isa.get("avx2"):
        return 8
    return 4 if isa.get("asimd") else None


def session_config(runtime: Any) -> dict[str, Any]:
    """The ONNX Runtime session entries a timing ran with: the build's (runtime.kernels) or the device runner's."""
    runtime = runtime if isinstance(runtime, dict) else {}
    config = (runtime.get("kernels") or {}).get("session_config", runtime.get("session_config"))
    return config if isinstance(config, dict) else {}


def why_slower(entry: ArtifactEntry, sibling: ArtifactEntry, machine: dict[str, Any],
               config: dict[str, Any] | None = None) -> str:
    """What explains it, from what the build recorded: ops the delegate left out that it took in the fp32
    file, the CPU features reduced precision needs, and kernels chosen to compute INT8 as the target does."""
    from .int8_kernels import PRECISION_OPTION

    reasons = []
    if (config or {}).get(PRECISION_OPTION) == "1":
        reasons.append(f"ONNX Runtime ran it with {PRECISION_OPTION}=1, its slower exact U8U8 kernels, so that "
                       f"this CPU adds INT8 products in int32 as the target's CPUs do")
    delegation = entry.details.get("delegation", {})
    left = delegation.get("fallback_ops", {})
    extra = {op: n for op, n in left.items() if op not in sibling.details.get("delegation", {}).get("fallback_ops", {})}
    if extra:
        ops = ", ".join(f"{op} x{n}" for op, n in extra.items())
        reasons.append(f"{delegation.get('delegate', 'the delegate')} leaves {ops} to the "
                       f"{delegation.get('fallback', 'other kernels')}")
    isa, precision = machine.get("isa", {}), entry.precision
    x86 = "avx2" in isa
    if precision == "int8":  # dynamic-range files too
        if x86 and not (isa.get("avx512_vnni") or isa.get("avx_vnni")):
            reasons.append("this CPU has no VNNI (avx512_vnni / avx_vnni), so INT8 dot products are no faster than "
                           "FP32 while quantizing and dequantizing between layers costs extra")
        elif not x86 and isa and not isa.get("asimddp"):
            reasons.append("this CPU has no dotprod (asimddp), so INT8 dot products are no faster than FP32")
        elif not extra:
            reasons.append("the CPU has INT8 dot-product instructions, so the likely cost is quantizing and "
                           "dequantizing between layers, which a model this small does not earn back")
    elif precision == "fp16":
        if x86 and not isa.get("avx512_fp16"):
            reasons.append("this CPU has no FP16 arithmetic (avx512_fp16): FP16 weights are computed in FP32")
        elif not x86 and isa and not isa.get("asimdhp"):
            reasons.append("this CPU has no FP16 arithmetic (asimdhp): FP16 weights are computed in FP32")
    return "; ".join(reasons) or "no recorded cause"
