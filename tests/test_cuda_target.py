"""The cuda and jetson-orin targets: fp16 and TensorRT-ready INT8 ONNX verified on CPU; GPU steps skip visibly."""
from __future__ import annotations

import shutil
import sys

import onnx
import pytest
from onnx import numpy_helper

from conftest import read_manifest, run_cli
from edgekit import targets
from edgekit.gpu import gpu_status, parse_trtexec, trtexec_command
from edgekit.manifest import ArtifactEntry, FileRecord
from edgekit.spec import TensorSpec
from edgekit.runners import open_runner

CUDA = targets.load("cuda")
STATUS = gpu_status(CUDA)
NO_GPU = STATUS["status"] != "available"
needs_gpu = pytest.mark.skipif(NO_GPU, reason=f"no usable GPU here: {STATUS.get('reason')}")
without_gpu = pytest.mark.skipif(not NO_GPU, reason="a GPU is available: the skip path cannot be seen")


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda")
    assert run_cli("build", "--target", "cuda", "--out", out, "--quiet") == 0
    return out / "cuda"


def test_fp16_and_int8_parity_against_pytorch(cuda_build):
    artifacts = {a["precision"]: a for a in read_manifest(cuda_build)["artifacts"]}
    assert list(artifacts) == ["fp32", "fp16", "int8"]
    fp16 = artifacts["fp16"]["parity"]
    assert fp16["passed"] and fp16["outputs"]["output"]["top1_agreement"] == 1.0
    assert fp16["outputs"]["output"]["cosine"] >= 0.9999
    assert artifacts["fp16"]["inputs"][0]["dtype"] == "float32"  # float32 I/O kept
    int8 = artifacts["int8"]["parity"]
    assert int8["passed"] and artifacts["fp32"]["parity"]["accuracy"] - int8["accuracy"] <= 1.0


def test_int8_graph_follows_tensorrt_conventions(cuda_build):
    graph = onnx.load(str(cuda_build / "model.int8.onnx")).graph
    initializers = {i.name: i for i in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        assert zero_point.dtype.name == "int8" and not zero_point.any()  # symmetric: every zero point is 0
    producers = {out: node for node in graph.node for out in node.output}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        assert initializers[weight_dq.input[0]].data_type == onnx.TensorProto.INT8
        scales = initializers[weight_dq.input[1]]
        assert len(scales.dims) == 1 and scales.dims[0] == initializers[weight_dq.input[0]].dims[0]  # per channel
        if len(conv.input) > 2:  # TensorRT adds the bias in float
            assert conv.input[2] in initializers and initializers[conv.input[2]].data_type == onnx.TensorProto.FLOAT


def test_manifest_carries_trtexec_commands_and_where_verified(cuda_build):
    manifest = read_manifest(cuda_build)
    commands = {a["precision"]: a["trtexec"]["command"] for a in manifest["artifacts"]}
    assert commands["fp32"] == ("trtexec --onnx=model.fp32.onnx --saveEngine=model.fp32.engine "
                                "--timingCacheFile=timing.cache")
    assert "--fp16" in commands["fp16"] and "--int8" in commands["int8"]
    assert all("--shapes" not in c for c in commands.values())  # static shapes: trtexec refuses --shapes
    assert manifest["artifacts"][0]["trtexec"]["input_shapes"] == {"input": [1, 1, 32, 32]}


@without_gpu
def test_gpu_steps_are_reported_skipped_with_reason_and_install(cuda_build, tmp_path, capsys):
    manifest = read_manifest(cuda_build)
    gpu = manifest["gpu"]
    assert gpu["status"] == "skipped" and "CUDAExecutionProvider" in gpu["reason"]
    assert "onnxruntime-gpu" in gpu["install"]
    verified = {a["precision"]: a["verified_on"] for a in manifest["artifacts"]}
    assert verified["fp16"].endswith("CPUExecutionProvider, fp16 kernels")
    assert "CPUExecutionProvider" in verified["int8"]
    run_cli("build", "--target", "cuda", "--quantize", "none", "--out", tmp_path / "out")
    assert "GPU steps skipped: onnxruntime" in capsys.readouterr().err


@without_gpu
def test_require_gpu_fails_in_one_line_before_any_work(tmp_path, capsys):
    assert run_cli("build", "--target", "cuda", "--require-gpu", "--out", tmp_path / "out", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--require-gpu" in err and "onnxruntime-gpu" in err
    assert not (tmp_path / "out").exists()


def test_require_gpu_on_a_cpu_target_is_an_error(tmp_path, capsys):
    assert run_cli("build", "--target", "x86_64", "--require-gpu", "--out", tmp_path / "out") == 2
    assert "not a GPU target" in capsys.readouterr().err


def test_providers_come_from_the_profile_in_order(cuda_build):
    runner = open_runner(cuda_build / "model.fp16.onnx", "onnx", CUDA.runtime)
    description = runner.describe()
    assert description["requested_providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                  "CPUExecutionProvider"]
    expected = "CPUExecutionProvider" if NO_GPU else STATUS["providers"][0]
    assert description["provider"] == expected


def test_jetson_profile_extends_cuda():
    jetson = targets.load("jetson-orin")
    assert jetson.quantization == CUDA.quantization and jetson.onnx == CUDA.onnx
    assert jetson.bench.runner.startswith("ssh://") and jetson.bench.arch == "arm64"
    int8 = ArtifactEntry(FileRecord("model.int8.onnx", "0" * 64, 1), "onnx", "int8",
                         [TensorSpec("input", (1, 3, 224, 224))], [TensorSpec("output", (1, 1000))], {}, {})
    command = trtexec_command(jetson, int8)["command"]
    assert command.startswith("/usr/src/tensorrt/bin/trtexec --onnx=model.int8.onnx")
    assert "--memPoolSize=workspace:2048M" in command


TRTEXEC_LOG = """\
[11/20/2026-09:12:01] [I] === Device Information ===
[11/20/2026-09:12:01] [I] Available Devices:
[11/20/2026-09:12:01] [I]   Device 0: "Orin" UUID: GPU-5bd3b1f4
[11/20/2026-09:12:01] [I] Selected Device: Orin
[11/20/2026-09:12:01] [I] TensorRT version: 10.3.0
[11/20/2026-09:12:44] [I] === Performance summary ===
[11/20/2026-09:12:44] [I] Throughput: 2413.7 qps
[11/20/2026-09:12:44] [I] Latency: min = 0.431 ms, max = 0.702 ms, mean = 0.447 ms, median = 0.444 ms, \
percentile(90%) = 0.455 ms, percentile(95%) = 0.461 ms, percentile(99%) = 0.498 ms
[11/20/2026-09:12:44] [I] GPU Compute Time: min = 0.398 ms, max = 0.655 ms, mean = 0.409 ms, median = 0.406 ms, \
percentile(90%) = 0.415 ms, percentile(95%) = 0.421 ms, percentile(99%) = 0.452 ms
"""


def test_trtexec_log_is_read_for_version_gpu_and_timings():
    parsed = parse_trtexec(TRTEXEC_LOG)
    assert parsed["tensorrt_version"] == "10.3.0" and parsed["gpu"] == "Orin"
    assert parsed["throughput_qps"] == 2413.7
    assert parsed["gpu_compute_ms"] == {"min": 0.398, "max": 0.655, "mean": 0.409, "p50": 0.406, "p90": 0.415,
                                        "percentile(95%)": 0.421, "p99": 0.452}


def test_ssh_bench_reports_trtexec_missing_on_the_device(cuda_build, tmp_path, capsys, ssh_device):
    import json

    profile = tmp_path / "board.yaml"
    profile.write_text(f"extends: cuda\ndescription: a GPU board over SSH\n"
                       f"bench: {{runner: '{ssh_device}', remote_python: '{sys.executable}', runs: 3}}\n"
                       "gpu: {trtexec: {path: /opt/no-tensorrt/trtexec}}\n")
    folder = tmp_path / "cuda"
    shutil.copytree(cuda_build, folder)
    capsys.readouterr()
    assert run_cli("bench", folder / "model.int8.onnx", "--target", profile, "--samples", "8", "--json") == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["tensorrt"]["status"] == "skipped"
    assert "/opt/no-tensorrt/trtexec not found" in record["tensorrt"]["reason"]
    assert record["parity"]["passed"]


@needs_gpu
def test_cuda_build_runs_on_the_gpu(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--target", "cuda", "--require-gpu", "--out", out, "--quiet") == 0
    manifest = read_manifest(out / "cuda")
    assert manifest["gpu"]["status"] == "available"
    for artifact in manifest["artifacts"]:
        assert artifact["runtime"]["provider"] in STATUS["providers"]
        assert artifact["verified_on"].endswith(f"on {STATUS['gpu']}") and artifact["parity"]["passed"]
