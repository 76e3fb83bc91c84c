"""INT8 schemes for x86 CPUs without VNNI: accuracy and speed of each way to avoid ONNX Runtime's saturation.

Builds the bundled example's INT8 ONNX three ways (U8S8 with full-range weights, U8S8 with 7-bit weights
(`reduce_range`), U8U8) and runs each file in ONNX Runtime's default session and with
`session.x64quantprecision` (U8U8 kernels), 1 thread, on this machine. SNR is against the float model on the
360 held-out images. The figures hold for this CPU only: the table names it and its flags.

    python tools/x86_int8_schemes.py [--runs 200]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.device.cpu import cpu_info
from edgekit.int8_kernels import PRECISION_OPTION

SCHEMES = {
    "U8S8, 8-bit weights": "{activation_type: uint8, weight_type: int8, reduce_range: false}",
    "U8S8, 7-bit weights (reduce_range)": "{activation_type: uint8, weight_type: int8, reduce_range: true}",
    "U8U8": "{activation_type: uint8, weight_type: uint8, weight_symmetric: false, reduce_range: false}",
}


def build(folder: Path, name: str, quantization: str) -> Path:
    profile = folder / f"{name}.yaml"
    # The floor is VNNI so that the gate does not refuse the full-range file: this table is what decides.
    profile.write_text(f"extends: x86_64\ndescription: {name}\nformats: [onnx]\nquantization: {quantization}\n"
                       f"runtime: {{cpu_floor: avx512_vnni}}\n")
    subprocess.run([sys.executable, "-m", "edgekit", "build", "--target", str(profile), "--out", str(folder),
                    "--quantize", "int8", "--keep-going", "--no-cache"], check=True, capture_output=True)
    return folder / name


def measure(path: Path, inputs: np.ndarray, reference: np.ndarray, precise: bool, runs: int) -> tuple[float, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    if precise:
        options.add_session_config_entry(PRECISION_OPTION, "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: inputs[i:i + 1]})[0] for i in range(len(inputs))])
    error = outputs.astype(np.float64) - reference
    snr = 10 * np.log10((reference ** 2).sum() / max((error ** 2).sum(), 1e-30))
    for _ in range(20):
        session.run(None, {name: inputs[:1]})
    times = []
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, {name: inputs[i % len(inputs):i % len(inputs) + 1]})
        times.append((time.perf_counter() - start) * 1e3)
    return float(snr), float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"{cpu['cpu_model']} ({', '.join(k for k, v in cpu['isa'].items() if v) or 'no listed flags'}), "
          f"ONNX Runtime, 1 thread, p50 of {args.runs} runs of one image")
    print(f"{'scheme':38} {'session':26} {'SNR dB':>7} {'p50 ms':>7}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        fp32 = None
        for i, (label, quantization) in enumerate(SCHEMES.items()):
            out = build(folder, f"scheme{i}", quantization)
            with np.load(out / "parity" / "inputs.npz") as data:
                inputs = data[data.files[0]]
            with np.load(out / "parity" / "reference.npz") as data:
                reference = data[data.files[0]].astype(np.float64)
            if fp32 is None:
                fp32 = measure(out / "model.fp32.onnx", inputs, reference, False, args.runs)
                print(f"{'fp32':38} {'default':26} {fp32[0]:7.1f} {fp32[1]:7.3f}")
            for precise in (False, True):
                snr, p50 = measure(out / "model.int8.onnx", inputs, reference, precise, args.runs)
                session = f"{PRECISION_OPTION}=1" if precise else "default"
                print(f"{label:38} {session:26} {snr:7.1f} {p50:7.3f}")


if __name__ == "__main__":
    main()
