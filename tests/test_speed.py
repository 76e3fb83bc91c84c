"""Latency in every build, and "is it actually faster?": each artifact timed on the build host, and a
reduced-precision artifact slower than its fp32 sibling said so in words, with what explains it."""
from __future__ import annotations

import copy
import json
import platform

import pytest

from conftest import read_manifest
from edgekit.int8_kernels import PRECISION_OPTION
from edgekit.manifest import Manifest
from edgekit.report import slower_lines, summary_table
from edgekit.speed import MIN_RUNS, RUNS, compare_with_fp32

HOST_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
def test_every_artifact_is_timed_on_the_build_host(example_build, target):
    folder = example_build / target
    for artifact in read_manifest(folder)["artifacts"]:
        (record,) = [b for b in artifact["benchmarks"] if b["runner"] == "build"]
        latency = record["latency_ms"]
        assert record["kind"] == "host" and 0 < latency["min"] <= latency["p50"] <= latency["p90"]
        assert MIN_RUNS <= record["runs"] <= RUNS and record["samples"] == 1 and record["threads"] == 1
        assert record["where"].startswith("build host, ") and record["machine"]["isa"]
        # Timing another architecture's artifact on this machine is labeled as such.
        assert ("not the target device" in record["where"]) == (HOST_ARCH != target)
    page = (folder / "report.html").read_text()
    assert "<figure id='fig-latency'" in page and "Latency not measured" not in page
    assert record["where"] in page  # the latency table says where it was measured


def test_the_dynamic_range_tflite_is_said_slower_and_why(example_build):
    """XNNPACK has no dynamic-range depthwise convolution: the example's dynamic_int8 file runs its three
    depthwise layers on LiteRT's built-in kernels and is slower than fp32, and the build says so."""
    built = {a["file"]: a for a in read_manifest(example_build / "arm64")["artifacts"]}
    (record,) = [b for b in built["model.dynamic_int8.tflite"]["benchmarks"] if b["runner"] == "build"]
    slower = record["slower_than_fp32"]
    assert slower["sibling"] == "model.fp32.tflite" and record["latency_ms"]["p50"] > slower["sibling_p50_ms"]
    assert "XNNPACK delegate leaves DEPTHWISE_CONV_2D x3 to the built-in kernels" in slower["why"]
    assert "model.dynamic_int8.tflite is SLOWER than model.fp32.tflite on the build host" in \
        summary_table(list(built.values()), [])


def _timed(manifest: Manifest, file: str, p50: float, machine: dict, runtime: dict | None = None) -> None:
    entry = next(e for e in manifest.artifacts if e.name == file)
    entry.benchmarks = [{"runner": "ssh://pi@board", "kind": "device", "where": "a board", "machine": machine,
                         "latency_ms": {"p50": p50}, **({"runtime": runtime} if runtime else {})}]


@pytest.mark.parametrize(("machine", "file", "cause"), [
    ({"cpu_model": "old x86", "isa": {"avx2": True, "avx512_vnni": False, "avx_vnni": False}}, "model.int8.onnx",
     "no VNNI"),
    ({"cpu_model": "Cortex-A53", "isa": {"asimd": True, "asimddp": False, "asimdhp": False}}, "model.int8.tflite",
     "no dotprod (asimddp)"),
    ({"cpu_model": "Cortex-A53", "isa": {"asimd": True, "asimddp": False, "asimdhp": False}}, "model.fp16.tflite",
     "no FP16 arithmetic (asimdhp)"),
])
def test_a_case_built_to_be_slower_names_the_missing_cpu_feature(example_build, machine, file, cause):
    document = json.loads((example_build / "arm64" / "manifest.json").read_text())
    manifest = Manifest.from_dict(copy.deepcopy(document), "manifest.json")
    fmt = file.rsplit(".", 1)[1]
    _timed(manifest, f"model.fp32.{fmt}", 1.0, machine)
    _timed(manifest, file, 1.5, machine)
    compare_with_fp32(manifest.artifacts)
    (record,) = next(e for e in manifest.artifacts if e.name == file).benchmarks
    assert record["slower_than_fp32"]["sibling_p50_ms"] == 1.0 and cause in record["slower_than_fp32"]["why"]
    records = [{"file": e.name, **b} for e in manifest.artifacts for b in e.benchmarks]
    text = "\n".join(slower_lines([(r["file"], r) for r in records]))
    assert f"{file} is SLOWER than model.fp32.{fmt} on ssh://pi@board (1.500 ms against 1.000 ms p50" in text
    # a bench runner's comparison is printed under its bench table, not again in the build summary
    assert "on ssh://pi@board" not in summary_table(manifest.to_dict()["artifacts"], [])

    _timed(manifest, file, 0.5, machine)  # faster: nothing to say
    compare_with_fp32(manifest.artifacts)
    assert "slower_than_fp32" not in next(e for e in manifest.artifacts if e.name == file).benchmarks[0]
    _timed(manifest, file, 1.05, machine)  # within timing noise of fp32: nothing to say either
    compare_with_fp32(manifest.artifacts)
    assert "slower_than_fp32" not in next(e for e in manifest.artifacts if e.name == file).benchmarks[0]


AVX2 = {"cpu_model": "x86 with AVX2", "isa": {"avx2": True, "avx512f": False}}


@pytest.mark.parametrize(("steps", "config", "causes"), [
    (["cluster"], {"cluster": {"clusters": 16}}, ["keep every weight tensor dense", "compressed size"]),
    (["prune"], {"ratio": 0.5, "round_to": 4}, ["0.50x the original's multiply-accumulates (1,000 against 2,000) "
                                                 "in 20 operators against 40",
                                                 "multiples of 4, not of this CPU's 8-float SIMD width"]),
])
def test_a_compressed_model_slower_than_the_original_is_said_so_and_why(example_build, steps, config, causes):
    """A pruned or weight-shared model's fp32 ONNX is timed against the original model's fp32 ONNX on the
    build host; a case built to be slower names what explains it."""
    manifest = Manifest.from_dict(read_manifest(example_build / "x86_64"), "manifest.json")
    fp32 = next(e for e in manifest.artifacts if e.name == "model.fp32.onnx")
    fp32.details.update(macs=1000, nodes=20)
    fp32.benchmarks = [{"runner": "build", "kind": "host", "where": "build host", "machine": AVX2, "runs": 20,
                        "warmup": 3, "latency_ms": {"p50": 1.5}}]
    original = {"runner": "build", "kind": "host", "where": "build host", "machine": AVX2, "latency_ms": {"p50": 1.0},
                "model": {"macs": 2000, "nodes": 40}}
    compression = {"steps": [{"step": step} for step in steps], "config": config, "original_host_latency": original}
    compare_with_fp32(manifest.artifacts, compression)
    slower = fp32.benchmarks[0]["slower_than_fp32"]
    assert slower["sibling"] == "the original model's fp32 ONNX" and slower["sibling_p50_ms"] == 1.0
    for cause in causes:
        assert cause in slower["why"]
    assert ("model.fp32.onnx is SLOWER than the original model's fp32 ONNX on the build host (1.500 ms against "
            "1.000 ms p50") in summary_table(manifest.to_dict()["artifacts"], [])

    fp32.benchmarks[0]["latency_ms"]["p50"] = 0.6  # faster: nothing to say
    compare_with_fp32(manifest.artifacts, compression)
    assert "slower_than_fp32" not in fp32.benchmarks[0]


def test_an_int8_file_timed_with_the_exact_kernels_says_so(example_build):
    """On an x86 host without VNNI an arm64 INT8 ONNX file runs with ONNX Runtime's exact U8U8 kernels (as ARM adds
    in int32): that is slower than the default kernels, and its record says so instead of blaming INT8."""
    document = json.loads((example_build / "arm64" / "manifest.json").read_text())
    manifest = Manifest.from_dict(copy.deepcopy(document), "manifest.json")
    machine = {"cpu_model": "old x86", "isa": {"avx2": True, "avx512_vnni": False, "avx_vnni": False}}
    _timed(manifest, "model.fp32.onnx", 1.0, machine)
    _timed(manifest, "model.int8.onnx", 1.5, machine, {"kernels": {"session_config": {PRECISION_OPTION: "1"}}})
    compare_with_fp32(manifest.artifacts)
    (record,) = next(e for e in manifest.artifacts if e.name == "model.int8.onnx").benchmarks
    assert record["slower_than_fp32"]["why"].startswith(f"ONNX Runtime ran it with {PRECISION_OPTION}=1")
