"""The device runner (edgekit/device/runner.py): natively, on emulated arm64 (qemu) and in the arm64 image.

The emulated tests build their environment with tools/arm64_rootfs.sh and tools/docker_images.sh
(cached under ~/.cache/edgekit; about a minute cold). They run only a few samples: emulation is ~200x
slower than native and its timings say nothing about a real device.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import CACHE, ROOT

RUNNER = ROOT / "edgekit" / "device" / "runner.py"
BATCH = 2


def load_runner():
    spec = importlib.util.spec_from_file_location("edgekit_device_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_model(path: Path) -> Path:
    """Conv-ReLU-GAP-Gemm with a fixed batch of 2 and two outputs (features, logits)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in
             [("w", (8, 3, 3, 3)), ("b", (8,)), ("fc_w", (8, 5)), ("fc_b", (5,))]]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["features"]),
             helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH, 3, 16, 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [BATCH, 8]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime builds on devices
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small model, 5 samples (the last batch is padded) and onnxruntime's own outputs for them."""
    folder = tmp_path_factory.mktemp("device")
    model = small_model(folder / "model.onnx")
    x = np.random.default_rng(1).normal(size=(5, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "inputs.npz", image=x, y=np.arange(5))  # extra arrays (labels) are ignored
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, x[-1:]])
    outs = [session.run(None, {"image": padded[i:i + BATCH]}) for i in range(0, 6, BATCH)]
    reference = {name: np.concatenate([o[k] for o in outs])[:5] for k, name in enumerate(["features", "logits"])}
    return folder, reference


def run_runner(python: list[str], folder: Path, prefix: str, *extra: str, model_dir: str | None = None):
    """Run the runner with `python` on folder/model.onnx; model_dir: the folder as the runner sees it."""
    where = model_dir or str(folder)
    cmd = [*python, str(RUNNER) if model_dir is None else "/runner.py", f"{where}/model.onnx",
           "--inputs", f"{where}/inputs.npz", "--out", f"{where}/{prefix}.npz", "--json", f"{where}/{prefix}.json",
           "--threads", "1", "--warmup", "1", "--runs", "3", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(folder / f"{prefix}.npz") as out:
        outputs = {k: out[k] for k in out.files}
    return outputs, json.loads((folder / f"{prefix}.json").read_text())


def check_outputs(outputs, reference, atol):
    assert list(outputs) == ["features", "logits"]  # model output order
    for name, ref in reference.items():
        assert outputs[name].dtype == np.float32 and outputs[name].shape == ref.shape
        np.testing.assert_allclose(outputs[name], ref, atol=atol, rtol=1e-4)
    # A broken emulated kernel once returned the same output for every sample: rule that out.
    assert np.ptp(outputs["logits"], axis=0).max() > 1e-3


def check_report(report, machine):
    assert report["runtime"]["name"] == "onnxruntime"
    assert report["runtime"]["used"] == "CPUExecutionProvider"  # no XNNPACK EP in the index wheels
    assert report["samples"] == 5 and report["batch"] == BATCH and report["runs"] == 3
    assert report["load_ms"] > 0 and report["first_run_ms"] > 0 and report["peak_rss_mb"] > 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "mean", "min"}
    assert 0 < report["latency_ms"]["min"] <= report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["machine"]["machine"] == machine
    assert report["machine"]["cpu_model"]


def test_native(artifact):
    folder, reference = artifact
    outputs, report = run_runner([sys.executable], folder, "native")
    check_outputs(outputs, reference, atol=1e-6)
    check_report(report, platform.machine())
    if platform.machine() == "x86_64":
        assert {"avx2", "avx512f", "avx512_vnni"} <= set(report["machine"]["isa"])


def test_unknown_provider_falls_back(artifact):
    folder, _ = artifact
    _, report = run_runner([sys.executable], folder, "fallback", "--providers", "NoSuchProvider")
    assert report["runtime"]["used"] == "CPUExecutionProvider"


def test_the_runtime_a_caller_names_runs_a_file_whatever_its_suffix(artifact):
    """bench names the runtime from the format registry, so a new format on a known runtime needs no change here."""
    folder, reference = artifact
    (folder / "model.bin").write_bytes((folder / "model.onnx").read_bytes())
    command = [sys.executable, str(RUNNER), str(folder / "model.bin"), "--inputs", str(folder / "inputs.npz"),
               "--out", str(folder / "bin.npz"), "--json", str(folder / "bin.json"), "--runs", "1"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "unsupported artifact" in refused.stderr and "--runtime" in refused.stderr
    done = subprocess.run([*command, "--runtime", "onnxruntime"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with np.load(folder / "bin.npz") as out:
        check_outputs({k: out[k] for k in out.files}, reference, atol=1e-6)


def test_tflite_tensor_adapter():
    """A reference-layout float array becomes the runtime tensor and back exactly as the manifest entry says:
    transposed, quantized with the entry's scale/zero point, and nothing is guessed from shapes (C == H == W)."""
    runner = load_runner()
    entry = {"name": "x", "transpose": [0, 2, 3, 1], "quantization": {"scale": 0.5, "zero_point": -3}}
    x = np.linspace(-80, 80, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    q = runner.to_runtime(x, entry, np.int8)
    expected = np.clip(np.round(x.transpose(0, 2, 3, 1) / 0.5 - 3), -128, 127)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, expected)
    back = runner.from_runtime(q, {**entry, "transpose": [0, 3, 1, 2]})
    np.testing.assert_allclose(back, np.clip(x, (-128 + 3) * 0.5, (127 + 3) * 0.5), atol=0.25)
    with pytest.raises(ValueError, match="no positive quantization scale"):
        runner.to_runtime(x, {**entry, "quantization": {"scale": 0.0, "zero_point": 0}}, np.int8)


def test_tflite_binding_by_name():
    """Tensors are found by runtime name, never by position: a reordered output list binds the same."""
    runner = load_runner()
    details = [{"name": "PartitionedCall:1", "index": 7}, {"name": "PartitionedCall:0", "index": 5}]
    entries = [{"name": "boxes", "runtime_name": "PartitionedCall:0"},
               {"name": "scores", "runtime_name": "PartitionedCall:1"}]
    assert [d["index"] for d in runner.bind(details, entries, "output")] == [5, 7]
    with pytest.raises(ValueError, match="no output tensor named 'Identity_2'"):
        runner.bind(details, [{"name": "boxes", "runtime_name": "Identity_2"}, entries[1]], "output")


def test_batches_pad_last():
    runner = load_runner()
    chunks = list(runner.batches([np.arange(5)], 2))
    assert [real for _, real in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(chunks[-1][0][0], [4, 4])


@pytest.mark.emulated
@pytest.mark.slow
def test_qemu_arm64(artifact, arm64_python):
    folder, reference = artifact
    outputs, report = run_runner(arm64_python, folder, "qemu")
    check_outputs(outputs, reference, atol=1e-4)
    check_report(report, "aarch64")
    assert report["machine"]["isa"]["asimd"] and report["machine"]["isa"]["asimddp"]


@pytest.mark.emulated
@pytest.mark.slow
def test_docker_arm64(artifact, arm64_image):
    folder, reference = artifact
    cpuinfo = CACHE / "arm64" / "rootfs" / "proc" / "cpuinfo"
    docker = ["docker", "run", "--rm", "--pull", "never", "--platform", "linux/arm64",
              "-v", f"{cpuinfo}:/proc/cpuinfo:ro", "-v", f"{folder}:/data", arm64_image, "python3"]
    outputs, report = run_runner(docker, folder, "docker", model_dir="/data")
    check_outputs(outputs, reference, atol=1e-4)
    check_report(report, "aarch64")
