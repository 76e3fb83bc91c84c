"""I/O conformance: the host runners and the device runner give identical outputs on every artifact.

A build verifies each artifact on the host (edgekit.runners: ONNX Runtime, ExecuTorch, or LiteRT fed through
the manifest's per-tensor entries) and `edgekit bench` runs it with edgekit/device/runner.py, a separate
script with its own copy of nothing but the I/O adapter. Same runtime, one thread, same held-out inputs:
the outputs must be bit-identical, under the reference model's names and shapes. The models are chosen
so that tensors cannot be told apart by shape: C == H == W and C == W inputs and outputs, several inputs,
several outputs, a BiLSTM sequence model, and full-integer TFLite files whose I/O is quantized int8.
"""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from conftest import TESTS, read_manifest, run_cli
from edgekit import package, targets
from edgekit.bench import _record, _run, _settings
from edgekit.bench.hosts import NativeHost
from edgekit.runners import open_runner, run_dataset

pytestmark = pytest.mark.slow  # four arm64 builds

ALL = ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.fp16.tflite", "model.dynamic_int8.tflite",
       "model.int8.tflite", "model.fp32.pte", "model.int8.pte"]
MODELS = {  # model -> the artifacts of its arm64 build
    "same_size_io": ALL,  # image (1,8,8,8) + sequence (1,8,8) -> (1,8,8,8), (1,8,8), (1,4): tests/io_models.py
    "face_detector": ALL,  # (1,3,64,64) -> scores (1,160), boxes (1,160,4), landmarks (1,160,10)
    "two_input": ALL,  # image (1,3,32,32) + vector (1,8) -> logits (1,10)
    # BiLSTM, (1,1,32,128) -> (1,32,37); TensorFlow's calibrator crashes on it: no int8.tflite (test_zoo KNOWN_LIMITS).
    # Built without ExecuTorch, whose lowering of the unrolled LSTM takes over a minute (the zoo builds it).
    "text_recognizer_lstm": ALL[:5],
}
NO_PTE = {"text_recognizer_lstm"}
CASES = [(name, file) for name, files in MODELS.items() for file in files]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each model built for arm64 once, on first use: name -> build folder."""
    folders = {}

    def build(name: str):
        if name not in folders:
            folder = tmp_path_factory.mktemp(name)
            if name == "same_size_io":
                source, data = f"{TESTS / 'io_models.py'}:same_size_io", ["--random-calib"]  # 8 held-out samples
            else:
                family = zoo.FAMILIES[name]
                source = family.source(folder)
                for kind, count, seed in (("calib", 32, 0), ("eval", 16, 1)):
                    np.savez(folder / f"{kind}.npz", **family.data(count, seed))
                data = ["--calib", folder / "calib.npz", "--eval", folder / "eval.npz"]
            target = folder / "mobile.yaml"  # arm64, or arm64 without ExecuTorch
            target.write_text("extends: arm64\ndescription: arm64's formats\n"
                              + ("formats: [onnx, tflite]\n" if name in NO_PTE else ""))
            # --keep-going: the LSTM's INT8 misses the gate and its int8.tflite crashes; conformance still holds
            assert run_cli("build", source, *data, "--target", target, "--out", folder / "out", "--keep-going",
                           "--quiet") == 0
            folders[name] = folder / "out" / "mobile"
        return folders[name]

    return build


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", MODELS)
def test_builds_make_every_artifact(built, name):
    assert [a["file"] for a in read_manifest(built(name))["artifacts"]] == MODELS[name]


def test_tensors_cannot_be_told_apart_by_shape(built):
    """What the conformance cases rest on: layouts the runner could only get right from the manifest."""
    manifest = read_manifest(built("same_size_io"))
    assert [(s["name"], s["shape"]) for s in manifest["model_io"]["inputs"]] == \
        [("image", [1, 8, 8, 8]), ("sequence", [1, 8, 8])]
    assert [s["shape"] for s in manifest["model_io"]["outputs"]] == [[1, 8, 8, 8], [1, 8, 8], [1, 4]]
    int8 = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.tflite")
    assert [e["transpose"] for e in int8["inputs"]] == [[0, 2, 3, 1], [0, 2, 1]]  # onnx2tf: channel-last
    assert [e.get("transpose") for e in int8["outputs"]] == [[0, 3, 1, 2], [0, 2, 1], None]
    for entry in int8["inputs"] + int8["outputs"]:  # full-integer I/O: every tensor int8 with its own scale
        assert entry["dtype"] == "int8" and entry["quantization"]["scale"] > 0, entry


@pytest.mark.parametrize("name,file", CASES)
def test_host_and_device_outputs_are_identical(built, name, file):
    folder = built(name)
    manifest = package.read_manifest(folder)
    entry = manifest.artifact(file)
    inputs, _, reference = package.read_parity_data(folder, manifest.input_names)
    target = targets.for_build(None, str(folder.parent.parent / "mobile.yaml"), str(folder))
    assert target.runtime.threads == 1  # the host runner's threads; the device runner gets the same below
    path = folder / file

    host = run_dataset(open_runner(path, entry.format, target.runtime, (entry.inputs, entry.outputs)), inputs)
    settings = _settings(NativeHost(), target, 1, 1, 1, False)  # INT8 computed as the host runner does it
    report, device = _run(NativeHost(), path, inputs, settings, entry)

    assert list(host) == list(device) == list(reference)  # the reference's names, in its order
    for output, expected in reference.items():
        assert host[output].dtype == device[output].dtype == np.float32
        assert host[output].shape == device[output].shape == expected.shape
        diff = np.abs(host[output].astype(np.float64) - device[output]).max()
        assert np.array_equal(host[output], device[output]), f"{output}: max abs diff {diff:.3g}"
        # Identical and right: a transposed or misbound tensor would be far from the reference.
        assert cosine(device[output], expected) > 0.99, output
    # The numpy adaptation (transpose, quantize) is timed apart from the runtime call, and recorded apart.
    assert report["samples"] == len(next(iter(inputs.values()))) and report["runs"] == 1
    assert report["adaptation_ms"] > 0 and set(report["latency_ms"]) == {"p50", "p90", "p99", "mean", "min"}
    record = _record(NativeHost(), report, settings, {})
    assert record["adaptation_ms"] == report["adaptation_ms"] and record["latency_ms"] == report["latency_ms"]
