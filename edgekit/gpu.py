"""NVIDIA GPU targets: is a GPU usable here, and the trtexec command that builds each engine on the device.

TensorRT engines are tied to the GPU and the TensorRT version, so edgekit ships portable ONNX plus the
exact command to build the engine where it will run. Without a GPU stack the GPU steps are skipped
visibly: the reason and the install command go to the terminal, the report and the manifest.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from typing import Any

from .errors import UserError
from .manifest import ArtifactEntry
from .targets import Target

PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


def gpu_status(target: Target) -> dict[str, Any] | None:
    """None for a target without a GPU; else whether its GPU providers can run here, and why not."""
    if target.gpu is None:
        return None
    import onnxruntime as ort

    installed = ort.get_available_providers()
    usable = [p for p in target.gpu.providers if p in installed]
    if not usable:
        return {"status": "skipped", "install": target.gpu.install,
                "reason": f"onnxruntime {ort.__version__} has no {' or '.join(target.gpu.providers)} "
                          f"(installed: {', '.join(installed)})"}
    name = gpu_name()
    if name is None:
        return {"status": "skipped", "install": "install the NVIDIA driver (nvidia-smi must list a GPU)",
                "reason": f"{', '.join(usable)} installed, but no NVIDIA GPU is visible (nvidia-smi lists none)"}
    return {"status": "available", "providers": usable, "gpu": name}


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True)
    names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    return names[0] if listed.returncode == 0 and names else None


def require_gpu(target: Target) -> None:
    status = gpu_status(target)
    if status is None:
        raise UserError(f"--require-gpu: target '{target.name}' is not a GPU target (its profile has no 'gpu')")
    if status["status"] != "available":
        raise UserError(f"--require-gpu: {status['reason']}; fix: {status['install']}")


def trtexec_command(target: Target, artifact: ArtifactEntry) -> dict[str, Any]:
    """The command that builds and times this ONNX artifact's TensorRT engine on the device."""
    settings = target.gpu.trtexec
    engine = artifact.name.removesuffix(".onnx") + ".engine"
    command = [settings.path, f"--onnx={artifact.name}", f"--saveEngine={engine}",
               *PRECISION_FLAGS[artifact.precision], f"--timingCacheFile={settings.timing_cache}"]
    if settings.workspace_mb:
        command.append(f"--memPoolSize=workspace:{settings.workspace_mb}M")
    command += settings.extra_flags
    # edgekit's ONNX has fixed input shapes, and trtexec refuses --shapes for those: they are recorded instead.
    return {"command": shlex.join(command), "engine": engine,
            "input_shapes": {s.name: list(s.shape) for s in artifact.inputs},
            "note": "run on the device: an engine is tied to its GPU and TensorRT version"
                    + ("; the INT8 QDQ graph carries its own scales (explicit quantization), --fp16 lets "
                       "unquantized layers run in half precision" if artifact.precision == "int8" else "")}


def parse_trtexec(output: str) -> dict[str, Any]:
    """TensorRT version, GPU, throughput and GPU compute time percentiles from trtexec's log."""
    def find(pattern: str) -> str | None:
        match = re.search(pattern, output)
        return match.group(1).strip() if match else None

    timing = find(r"GPU Compute Time: (.*)")
    compute = {}
    for key, value in re.findall(r"([\w()%]+) = ([\d.]+) ms", timing or ""):
        compute[{"median": "p50", "percentile(90%)": "p90", "percentile(99%)": "p99"}.get(key, key)] = float(value)
    throughput = find(r"Throughput: ([\d.]+) qps")
    return {"tensorrt_version": find(r"TensorRT version: (\S+)"), "gpu": find(r"Selected Device: (.+)"),
            "throughput_qps": float(throughput) if throughput else None, "gpu_compute_ms": compute}


def verified_on(runtime: dict[str, Any], precision: str, status: dict[str, Any] | None) -> str:
    """Where an artifact's numbers were computed, in words for the manifest."""
    if runtime.get("engine") == "onnxruntime":
        provider = runtime["provider"]
        where = f"ONNX Runtime {runtime['version']} {provider}"
        if status and status.get("status") == "available" and provider in status["providers"]:
            return f"{where} on {status['gpu']}"
        return where + (", fp16 kernels" if precision == "fp16" and provider == "CPUExecutionProvider" else "")
    if runtime.get("engine") == "litert":
        return f"LiteRT ({runtime['interpreter']} {runtime['version']}), {runtime['delegate']}"
    return runtime.get("engine", "not run")
