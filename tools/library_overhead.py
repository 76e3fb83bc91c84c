"""edgekit's overhead over the libraries it wraps: a cold arm64 build of a MobileNetV2 (3.5 M parameters, 1x3x224x224)
against the same library calls made directly (torch.onnx.export, onnxslim.slim, onnxruntime's quant_pre_process +
quantize_static, onnx2tf.convert), each side in a fresh process, in the same run. Prints a table (goal: edgekit's wall
time at most 1.2x the library calls with their imports).

    python tools/library_overhead.py [--rounds N]

The library script is this file run with --libraries: the arm64 profile's opset, quantization scheme and TFLite
precisions, on the same weights and the same 32 calibration samples (those --random-calib draws).
"""
from __future__ import annotations

# This file is also the model file edgekit builds and the library script; imports that a step needs are made
# inside the step, so that every import is timed where a script would pay it.
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (1, 3, 224, 224)
GOAL = 1.2
# Table rows: (phase, the library script's steps, edgekit's progress steps that start with one of these).
PHASES = [("load model", ["import torch", "load model"], ["load model"]),
          ("calibration data", ["load calibration data"], ["load calibration"]),
          ("float ONNX: export + onnxslim", ["import onnx, onnxslim", "torch.onnx.export", "onnxslim.slim"],
           ["export ONNX"]),
          ("INT8 ONNX: quantize_static", ["import onnxruntime.quantization", "quant_pre_process + quantize_static"],
           ["quantize INT8"]),
          ("TFLite: onnx2tf", ["import onnx2tf (TensorFlow)", "onnx2tf.convert"], ["convert to TFLite"]),
          ("reference outputs", [], ["reference outputs"]),
          ("parity and host latency of each artifact", [], ["parity and host latency of"]),
          ("per-layer SNR", [], ["per-layer SNR"])]
LIBRARY_CALLS = ["torch.onnx.export", "onnxslim.slim", "quant_pre_process + quantize_static", "onnx2tf.convert"]


def mobilenet_v2():
    """The factory edgekit builds (with --weights): MobileNetV2 at ImageNet size."""
    from edgekit.example.model import IMAGENET_SETTINGS, MobileNetV2Style

    return MobileNetV2Style(in_channels=3, num_classes=1000, stem=32, settings=IMAGENET_SETTINGS,
                            last_channels=1280, stem_stride=2, dropout=0.2)


def write_inputs(folder: Path) -> None:
    """Weights (BatchNorm statistics estimated, so activations keep a realistic scale), the calibration data
    --random-calib draws, and the arm64 profile's settings for the library script."""
    import dataclasses

    import numpy as np
    import torch

    from edgekit import targets
    from edgekit.data import RANDOM_CALIB_SAMPLES
    from edgekit.example.model import make_mobilenet_v2

    torch.save(make_mobilenet_v2().state_dict(), folder / "weights.pt")
    calibration = np.random.default_rng(0).standard_normal((RANDOM_CALIB_SAMPLES, *SHAPE[1:])).astype(np.float32)
    np.save(folder / "calib.npy", calibration)
    profile = targets.load("arm64")
    (folder / "settings.json").write_text(json.dumps({"opset": profile.opset,
                                                      "quantization": dataclasses.asdict(profile.quantization),
                                                      "tflite": dataclasses.asdict(profile.tflite)}))


def run_libraries(folder: Path) -> None:
    """The library script: every step timed into folder/timings.json. Runs with `folder` as working directory."""
    timings = {}

    @contextlib.contextmanager
    def step(name: str):
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start

    settings = json.loads((folder / "settings.json").read_text())
    scheme, tflite = settings["quantization"], settings["tflite"]
    with step("import torch"):
        import torch
    with step("load model"):
        model = mobilenet_v2()
        model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        model.eval()
    with step("load calibration data"):
        import numpy as np

        calibration = np.load(folder / "calib.npy")
    with step("import onnx, onnxslim"):
        import onnx
        import onnxslim
    with step("torch.onnx.export"):
        torch.onnx.export(model, (torch.zeros(SHAPE),), "exported.onnx", dynamo=True, opset_version=settings["opset"],
                          input_names=["input"], output_names=["output"], external_data=False)
    with step("onnxslim.slim"):
        slimmed = onnxslim.slim(onnx.load("exported.onnx"), input_shapes=[f"input:{','.join(map(str, SHAPE))}"])
        onnx.save(slimmed, "model.fp32.onnx")
    with step("import onnxruntime.quantization"):
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quant_pre_process, quantize_static)
    with step("quant_pre_process + quantize_static"):
        class Samples(CalibrationDataReader):
            def __init__(self):
                self.samples = iter(calibration)

            def get_next(self):
                sample = next(self.samples, None)
                return None if sample is None else {"input": sample[None]}

        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        quant_pre_process("model.fp32.onnx", "prepared.onnx", skip_symbolic_shape=True)
        quantize_static("prepared.onnx", "model.int8.onnx", Samples(), quant_format=QuantFormat.QDQ,
                        per_channel=scheme["per_channel"], reduce_range=scheme["reduce_range"],
                        activation_type=types[scheme["activation_type"]], weight_type=types[scheme["weight_type"]],
                        calibrate_method={"minmax": CalibrationMethod.MinMax}[scheme["calibration"]],
                        op_types_to_quantize=scheme["op_types"] or None,
                        extra_options={"ActivationSymmetric": scheme["activation_symmetric"],
                                       "WeightSymmetric": scheme["weight_symmetric"],
                                       "QuantizeBias": scheme["quantize_bias"]})
    with step("import onnx2tf (TensorFlow)"):
        import onnx2tf
    with step("onnx2tf.convert"):
        np.save("calib_nhwc.npy", calibration.transpose(0, 2, 3, 1))
        # onnx2tf downloads this sample-image file for its shape checks unless it is in the working directory.
        np.save("calibration_image_sample_data_20x128x128x3_float32.npy",
                np.ascontiguousarray(calibration[:20, :, :128, :128].transpose(0, 2, 3, 1)))
        onnx2tf.convert(input_onnx_file_path="model.fp32.onnx", output_folder_path="tflite", not_use_onnxsim=True,
                        output_dynamic_range_quantized_tflite="dynamic_int8" in tflite["precisions"],
                        output_integer_quantized_tflite="int8" in tflite["precisions"], quant_type="per-channel",
                        input_quant_dtype=tflite["io_type"], output_quant_dtype=tflite["io_type"],
                        custom_input_op_name_np_data_path=[["input", "calib_nhwc.npy", 0.0, 1.0]], non_verbose=True)
    (folder / "timings.json").write_text(json.dumps(timings))


def timed_run(command: list[str], env: dict[str, str], cwd: Path, succeeded: tuple[int, ...]) -> tuple[float, str]:
    """Wall seconds of `command` and its stderr; exits with that stderr when its exit code is not `succeeded`."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in succeeded:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def edgekit_steps(stderr: str) -> dict[str, float]:
    """The build's progress lines, `  [target] step done in 1.2 s`, as {step: seconds}, target label dropped."""
    return {re.sub(r"^\[[^]]+\] ", "", label): float(seconds)
            for label, seconds in re.findall(r"^  (.+) done in ([\d.]+) s$", stderr, re.MULTILINE)}


def print_tables(libraries: dict[str, float], library_wall: float, edgekit: dict[str, float], edgekit_wall: float,
                 verdict: str) -> None:
    print("library script, one fresh process")
    for name, seconds in libraries.items():
        print(f"  {name:<50} {seconds:7.1f}")
    calls = sum(libraries[name] for name in LIBRARY_CALLS)
    imports = sum(seconds for name, seconds in libraries.items() if name.startswith("import "))
    print(f"  {'library calls (export, slim, quantize, onnx2tf)':<50} {calls:7.1f}")
    print(f"  {'library calls + their imports':<50} {calls + imports:7.1f}")
    print(f"  {'script wall (interpreter start to exit)':<50} {library_wall:7.1f}")

    print(f"\n{'phase':<40} {'libraries':>9} {'edgekit':>8} {'extra':>7}")
    unmatched = dict(edgekit)
    rows = []
    for phase, library_steps, prefixes in PHASES:
        ours = [name for name in edgekit if name.startswith(tuple(prefixes))]
        library_seconds = sum(libraries[name] for name in library_steps) if library_steps else None
        rows.append((phase, library_seconds, sum(edgekit[name] for name in ours)))
        for name in ours:
            unmatched.pop(name)
    rows.append(("other edgekit steps", None, sum(unmatched.values())))
    rows.append(("outside the steps: start, exit, packaging",
                 library_wall - sum(libraries.values()), edgekit_wall - sum(edgekit.values())))
    rows.append(("wall", library_wall, edgekit_wall))
    for phase, library_seconds, edgekit_seconds in rows:
        shown = "-" if library_seconds is None else f"{library_seconds:.1f}"
        print(f"{phase:<40} {shown:>9} {edgekit_seconds:8.1f} {edgekit_seconds - (library_seconds or 0):+7.1f}")
    print("(edgekit quantizes INT8 while onnx2tf converts in its child process, so its phases add up to more than "
          "its wall;\n 'outside the steps' is the wall less their sum, under-counted by that overlap)")

    print(f"\nedgekit build steps ({verdict})")
    for name, seconds in edgekit.items():
        print(f"  {name:<72} {seconds:5.1f}")
    ratio = edgekit_wall / (calls + imports)
    print(f"\nedgekit wall / (library calls + imports): {ratio:.2f}x (goal <= {GOAL}x: "
          f"{'met' if ratio <= GOAL else 'NOT met'}); / library calls alone: {edgekit_wall / calls:.2f}x; "
          f"/ library script wall: {edgekit_wall / library_wall:.2f}x")


def measure(folder: Path, env: dict[str, str]) -> tuple[tuple[float, dict], tuple[float, dict, dict]]:
    """One round: the library script, then the edgekit build; (wall, steps) of each and edgekit's report.json."""
    library_wall, _ = timed_run([sys.executable, str(Path(__file__).resolve()), "--libraries", str(folder)],
                                env, folder, (0,))
    libraries = json.loads((folder / "timings.json").read_text())
    out = folder / "build"
    edgekit_wall, stderr = timed_run(
        [sys.executable, "-m", "edgekit", "build", f"{Path(__file__).resolve()}:mobilenet_v2", "--weights",
         str(folder / "weights.pt"), "--input-shape", ",".join(map(str, SHAPE)), "--random-calib",
         "--target", "arm64", "--out", str(out), "--no-cache", "--keep-going"],
        env, folder, (0, 1))  # 1: the parity gate failed; the build still did all its work (--keep-going)
    report = json.loads((out / "arm64" / "report.json").read_text())
    return (library_wall, libraries), (edgekit_wall, edgekit_steps(stderr), report)


def gate(report: dict) -> str:
    failures = [f"{a['file']}: {'; '.join(a['parity']['failures'])}" for a in report["artifacts"]
                if not a["parity"]["passed"]] + [f"{f['stage']}: {f['error']}" for f in report["failures"]]
    return f"{len(report['artifacts'])} artifacts, parity " + (f"FAIL ({' | '.join(failures)})" if failures
                                                                else "pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the two this many times and keep each one's fastest (default 1)")
    parser.add_argument("--libraries", type=Path, metavar="DIR", help="(internal) run the library script in DIR")
    args = parser.parse_args()
    if args.libraries:
        run_libraries(args.libraries)
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-library-overhead-") as scratch:
        folder = Path(scratch)
        write_inputs(folder)
        env = {**os.environ, "EDGEKIT_STAGE_CACHE": "off"}
        rounds = [measure(folder, env) for _ in range(args.rounds)]
    library_wall, libraries = min((library for library, _ in rounds), key=lambda run: run[0])
    edgekit_wall, edgekit, report = min((edgekit for _, edgekit in rounds), key=lambda run: run[0])
    print(f"each side's fastest of {args.rounds} round(s)\n")
    print_tables(libraries, library_wall, edgekit, edgekit_wall, gate(report))


if __name__ == "__main__":
    main()
