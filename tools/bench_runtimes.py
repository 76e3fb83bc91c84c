"""Latency of one MobileNetV2-sized model across runtimes and precisions at 1 thread, as a table.

PyTorch eager (fp32) against ONNX Runtime, LiteRT and ExecuTorch fp32/INT8, all built by `edgekit build`
and timed natively by edgekit's device runner. Figures hold for this machine's CPU only (printed with
its ISA features): INT8 speed-ups differ from CPU to CPU, so measure on the target before choosing.

    python tools/bench_runtimes.py [--runs 50] [--warmup 10]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit import recipe, targets
from edgekit.bench import bench_folder
from edgekit.device.runner import machine_info
from edgekit.example.model import make_mobilenet_v2
from edgekit.pipeline import build
from edgekit.report import Progress, delegation_text, human_size, verdict

PROFILE = """extends: arm64-pte
description: arm64 ONNX + TFLite + ExecuTorch fp32/INT8, INT8 judged without top-1 (random weights)
tflite: {precisions: [fp32, int8]}
tolerances: {int8: {min_top1_agreement: null, min_cosine: 0.99}}
"""


def torch_eager(runs: int, warmup: int) -> np.ndarray:
    torch.set_num_threads(1)
    model, x = make_mobilenet_v2(), torch.randn(1, 3, 224, 224)
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-runtimes-") as scratch:
        profile = Path(scratch) / "mnv2.yaml"
        profile.write_text(PROFILE)
        made = recipe.make(None, {"model": "edgekit.example.model:make_mobilenet_v2", "targets": [str(profile)],
                                  "input_shape": [1, 3, 224, 224], "out": scratch,
                                  "calibration": {"random": True}})
        (result,) = build(made, Progress(quiet=True))
        records = bench_folder(result.folder, targets.load(str(profile)), "native", args.runs, args.warmup,
                               threads=1, samples=8)
    eager = torch_eager(args.runs, args.warmup)
    rows = [("PyTorch eager", "fp32", float(np.percentile(eager, 50)), float(np.percentile(eager, 90)),
             float(eager.mean()))]
    names = {"onnxruntime": "ONNX Runtime", "ai_edge_litert": "LiteRT", "executorch": "ExecuTorch"}
    for record in records:
        latency = record["latency_ms"]
        runtime = names.get(record["runtime"]["name"], record["runtime"]["name"])
        rows.append((f"{runtime} ({record['runtime']['used']})", record["file"].split(".")[1],
                     latency["p50"], latency["p90"], latency["mean"]))
    machine = machine_info()
    features = ", ".join(k for k, v in machine["isa"].items() if v) or "none of note"
    print(f"MobileNetV2 (3.5 M parameters, 224x224), 1 thread, {args.runs} runs after {args.warmup} warm-up")
    print(f"CPU: {machine['cpu_model']} ({machine['machine']}; {features})\n")
    base = rows[0][2]
    fp32_of = {runtime: p50 for runtime, precision, p50, _, _ in rows if precision == "fp32"}
    header = f"{'runtime':<44} {'precision':<9} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8} {'vs eager':>9} {'vs fp32':>8}"
    print(header + "\n" + "-" * len(header))
    for runtime, precision, p50, p90, mean in rows:
        print(f"{runtime:<44} {precision:<9} {p50:8.2f} {p90:8.2f} {mean:8.2f} {base / p50:8.2f}x "
              f"{fp32_of[runtime] / p50:7.2f}x")
    print("\nvs eager: PyTorch eager p50 / this p50 (higher is faster); vs fp32: the same runtime's fp32 p50 / this.")
    print(f"\n{'artifact':<20} {'size':>9} {'host parity':<11} {'min cosine':>10}  accelerated")
    for entry in result.manifest.artifacts:
        cosine = min(o["cosine"] for o in entry.parity["outputs"].values())
        print(f"{entry.name:<20} {human_size(entry.file.bytes):>9} {verdict(entry.parity['passed']):<11} "
              f"{cosine:10.6f}  {delegation_text(entry.to_dict()) or entry.runtime.get('delegate') or entry.runtime.get('provider')}")


if __name__ == "__main__":
    main()
