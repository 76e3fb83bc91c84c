"""What pruning buys on the bundled example: size, accuracy and native latency per channel ratio, as a table.

Each ratio is pruned (Torch-Pruning, L1, channels rounded to 8), recovered (batch-norm recalibration and
distillation on the 128 unlabeled calibration images) and scored on the 360 labeled test images. Latency
is ONNX Runtime on this machine's CPU, 1 thread, on the fp32 ONNX that `edgekit build` would export.

    python tools/prune_table.py [--ratios 0.3 0.5 0.7] [--steps 300] [--runs 200]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.example import CALIB, INPUT_SHAPE, TEST, WEIGHTS
from edgekit.example.model import make_model
from edgekit.sources import SourceModel
from edgekit.spec import TensorSpec
from edgekit.stages.export_onnx import export_onnx
from edgekit.stages.prune import PruneConfig, count_macs, prune


def onnx_latency_ms(module, workdir: Path, runs: int, warmup: int) -> float:
    import onnxruntime as ort

    source = SourceModel("torch", "edgekit example", hashlib.sha256(b"example").hexdigest(),
                         [TensorSpec("input", INPUT_SHAPE, "float32", "NCHW")], [TensorSpec("output", (1, 10))],
                         module=module)
    artifact = export_onnx(source, 18, workdir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
    x = {"input": np.zeros(INPUT_SHAPE, np.float32)}
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--steps", type=int, default=300, help="distillation steps per ratio")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    torch.set_num_threads(1)  # training with two threads on a busy 2-core host is many times slower
    model = make_model()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.eval()
    test = np.load(TEST)
    calib, evaluation = np.load(CALIB)["x"], (test["x"], test["y"])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in [0.0, *args.ratios]:
            start = time.perf_counter()
            if ratio == 0:
                pruned, accuracy = model, None
            else:
                result = prune(model, INPUT_SHAPE, PruneConfig(ratio=ratio, round_to=8, recover_steps=args.steps),
                               calib, evaluation)
                pruned, accuracy = result.module, result.report["final"]["accuracy"]
                if rows[0]["accuracy"] is None:
                    rows[0]["accuracy"] = result.report["original"]["accuracy"]
            seconds = time.perf_counter() - start
            workdir = Path(tmp) / f"r{ratio}"
            workdir.mkdir()
            params = sum(p.numel() for p in pruned.parameters())
            rows.append({"ratio": ratio, "macs": count_macs(pruned, INPUT_SHAPE), "params": params,
                         "kib": 4 * params / 1024, "accuracy": accuracy, "seconds": seconds,
                         "latency": onnx_latency_ms(pruned, workdir, args.runs, args.warmup)})

    base = rows[0]
    print(f"edgekit example, ONNX Runtime {_version('onnxruntime')} CPU EP, 1 thread, median of {args.runs}; "
          f"L1 channel pruning, round_to 8, BN recalibration + {args.steps} distillation steps\n")
    print("| ratio | MACs | x | parameters | fp32 KiB | test accuracy | ORT latency ms | x | prune+recover s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.2f}%"
        print(f"| {row['ratio']:.1f} | {row['macs']:,} | {row['macs'] / base['macs']:.2f} | {row['params']:,} | "
              f"{row['kib']:.0f} | {accuracy} | {row['latency']:.3f} | {row['latency'] / base['latency']:.2f} | "
              f"{row['seconds']:.0f} |")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
