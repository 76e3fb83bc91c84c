"""`edgekit bench`: latency and on-target parity of build artifacts, wherever the device runner runs.

Each artifact is run by edgekit/device/runner.py on the chosen host with the build's held-out inputs;
its outputs are compared with the reference exactly like host parity, and its timings are recorded
with where they were measured. Emulated timings are labeled so wherever they appear.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import formats, package
from ..errors import UserError, first_line
from ..gpu import trtexec_command
from ..manifest import ArtifactEntry
from ..parity import compare
from ..speed import compare_with_fp32
from ..check import judged_by
from ..targets import Target
from .hosts import DEVICE_FILES, Host, SshHost, make_host


def bench_folder(folder: Path, target: Target, runner: str | None, runs: int | None, warmup: int | None,
                 threads: int | None, samples: int | None, only: str | None = None,
                 energy: bool = False) -> list[dict[str, Any]]:
    """Bench every artifact of a build folder (or only the file named `only`); results go into its manifest,
    its report.html and its archive. `energy`: also measure joules per inference where power can be read."""
    from ..html_report import write_report  # matplotlib: only when a folder is benched

    manifest = package.read_manifest(folder)
    host = make_host(runner or target.bench.runner, target.bench)
    inputs, labels, reference = package.read_parity_data(folder, manifest.input_names)
    count = min(samples or len(labels if labels is not None else next(iter(inputs.values()))),
                len(next(iter(inputs.values()))))
    inputs = {k: v[:count] for k, v in inputs.items()}
    reference = {k: v[:count] for k, v in reference.items()}
    labels = None if labels is None else labels[:count]
    entries = [e for e in manifest.artifacts if only in (None, e.name)]
    if not entries:
        raise UserError(f"{folder} has no artifact named {only} in its manifest")
    settings = _settings(host, target, runs, warmup, threads, energy)
    benched = []
    for entry in entries:
        artifact = package.inside(folder, entry.name, "artifacts[].file")
        report, outputs = _run(host, artifact, inputs, settings, entry)
        parity = compare(reference, outputs, judged_by(manifest, entry, target), labels, manifest.output_kinds)
        record = _record(host, report, settings, {**parity.to_dict(), "failures": parity.failures()})
        if energy:
            record["energy"] = _energy(host, report, artifact, entry.format, target, settings["threads"],
                                       (entry.inputs, entry.outputs), inputs)
        if isinstance(host, SshHost) and target.gpu and formats.get(entry.format).tensorrt:
            command = trtexec_command(target, entry)["command"]  # this target's trtexec, on this device
            record["tensorrt"] = host.trtexec(artifact, command, timeout=1800)
        entry.record_benchmark(record)
        benched.append((entry, record))
    compare_with_fp32(manifest.artifacts, manifest.pruning)
    package.write_manifest(folder, manifest)
    package.refresh_archive(folder, lambda written: write_report(written, manifest))
    return [{"file": entry.name, "host_parity": entry.parity, **record} for entry, record in benched]


def bench_file(path: Path, target: Target, runner: str | None, runs: int | None, warmup: int | None,
               threads: int | None, energy: bool = False) -> list[dict[str, Any]]:
    """Latency of a lone artifact on random inputs; parity needs a build folder's reference outputs."""
    from ..runners import open_runner, runtime_errors

    try:
        specs = open_runner(path, formats.by_suffix(path).name, target.runtime).inputs
    except runtime_errors() as err:
        raise UserError(f"cannot load {path}: {first_line(err)}") from None
    rng = np.random.default_rng(0)
    inputs = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in specs}
    host = make_host(runner or target.bench.runner, target.bench)
    settings = _settings(host, target, runs, warmup, threads, energy)
    report, _ = _run(host, path, inputs, settings)
    parity = {"passed": None, "error": "not computed: bench a build folder for on-target parity"}
    record = _record(host, report, settings, parity)
    if energy:
        record["energy"] = _energy(host, report, path, formats.by_suffix(path).name, target, settings["threads"],
                                   None, inputs)
    return [{"file": path.name, "host_parity": None, **record}]


def _settings(host: Host, target: Target, runs: int | None, warmup: int | None, threads: int | None,
              energy: bool) -> dict[str, Any]:
    """How the device runner runs each artifact. On this machine's own CPU (native, or Docker x86_64), ONNX Runtime
    computes INT8 as the target's CPUs do (int8_kernels.session_config); elsewhere the CPU is the target's."""
    from ..int8_kernels import session_config

    return {"runs": runs or target.bench.runs, "warmup": warmup or target.bench.warmup,
            "threads": threads or target.runtime.threads, "providers": target.runtime.onnxruntime_providers,
            "energy": energy, "session_config": session_config(target.runtime.cpu_floor) if host.kind == "native" else {}}


def _energy(host: Host, report: dict[str, Any], path: Path, artifact_format: str, target: Target, threads: int,
            io, inputs: dict[str, np.ndarray]):
    """Joules per call (one batch): measured on a device by its runner (`report`), on this machine in this
    process over a window (device/meter.measure), or why not."""
    import dataclasses

    from ..device.meter import energy
    from ..power import power_reader
    from ..runners import open_runner

    if host.kind == "device":
        return report["energy"]
    if host.kind != "native":
        return {"measured": False, "why": f"energy is not measured under emulation (the {host.name} runner): the "
                                          f"power drawn is this machine's, spent emulating another CPU"}
    runner = open_runner(path, artifact_format, dataclasses.replace(target.runtime, threads=threads), io)
    batch = runner.inputs[0].shape[0] if runner.inputs[0].shape else 1
    feeds = {name: array[:batch] for name, array in inputs.items()}
    # The GPU's energy only where the runtime really took the GPU (ONNX Runtime falls back to the CPU).
    on_gpu = target.gpu is not None and runner.describe().get("provider") in target.gpu.providers
    return energy(power_reader(gpu=on_gpu), lambda: runner.run(feeds))


def _run(host: Host, artifact: Path, inputs: dict[str, np.ndarray], settings: dict[str, Any],
         entry: ArtifactEntry | None = None):
    """Run the device runner on `artifact`; `entry`: its manifest record, whose inputs/outputs tell the
    runner which tensor is which (without it, the artifact's own names and layout)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        workdir = Path(scratch)
        for source in DEVICE_FILES:
            shutil.copyfile(source, workdir / source.name)
        shutil.copyfile(artifact, workdir / artifact.name)
        np.savez(workdir / "inputs.npz", **inputs)
        args = [artifact.name, "--inputs", "inputs.npz", "--out", "result.npz", "--json", "result.json",
                "--threads", str(settings["threads"]), "--warmup", str(settings["warmup"]),
                "--runs", str(settings["runs"]), "--providers", ",".join(settings["providers"]),
                "--runtime", formats.by_suffix(artifact).device,
                *[a for key, value in settings["session_config"].items() for a in ("--session-config", f"{key}={value}")]]
        if entry is not None:
            (workdir / "io.json").write_text(json.dumps({"inputs": [s.to_dict() for s in entry.inputs],
                                                         "outputs": [s.to_dict() for s in entry.outputs]}))
            args += ["--io", "io.json"]
        if settings["energy"] and host.kind == "device":  # measured there; natively, in this process
            args += ["--energy"]
        # Emulation is two to three orders of magnitude slower than native: allow for it.
        host.run(workdir, args, timeout=1800)
        report = json.loads((workdir / "result.json").read_text())
        with np.load(workdir / "result.npz") as archive:
            outputs = {name: archive[name] for name in archive.files}
    return report, outputs


def _record(host: Host, report: dict[str, Any], settings: dict[str, Any], parity: dict[str, Any]) -> dict[str, Any]:
    from ..device.runner import machine_info

    return {"runner": host.name, "kind": host.kind, "where": host.label(machine_info()["cpu_model"] or "unknown CPU"),
            "machine": report["machine"], "runtime": report["runtime"], "threads": settings["threads"],
            "warmup": settings["warmup"], "runs": settings["runs"], "samples": report["samples"],
            "latency_ms": report["latency_ms"], "load_ms": report["load_ms"],
            "first_run_ms": report["first_run_ms"], "adaptation_ms": report["adaptation_ms"],
            "peak_rss_mb": report["peak_rss_mb"], "parity": parity}
