"""Build options: calibration methods, float nodes, random calibration, keep-going, atomic output, inspect."""
from __future__ import annotations

import json
import time

import onnx
import pytest

from conftest import TESTS, read_manifest, run_cli
from edgekit import example
from edgekit.layerwise import capture as capture_module
from edgekit.layerwise import divergence as divergence_module
from edgekit.layerwise.capture import capture_onnx
from edgekit.stages import quantize as quantize_module


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_keep_int8_accuracy(tmp_path, method):
    out = tmp_path / "out"
    assert run_cli("build", "--calib-method", method, "--target", "x86_64", "--out", out, "--quiet") == 0
    int8 = read_manifest(out / "x86_64")["artifacts"][1]
    assert int8["details"]["scheme"]["calibration"] == method
    assert int8["parity"]["reference_accuracy"] - int8["parity"]["accuracy"] <= 1.0


def test_excluded_node_stays_float(tmp_path, example_build):
    fp32 = onnx.load(str(example_build / "arm64" / "model.fp32.onnx"))
    first_conv = next(n.name for n in fp32.graph.node if n.op_type == "Conv")
    out = tmp_path / "out"
    assert run_cli("build", "--exclude-node", first_conv, "--target", "x86_64", "--out", out, "--quiet") == 0
    graph = onnx.load(str(out / "x86_64" / "model.int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == first_conv)
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in conv.input)
    others = [n for n in graph.node if n.op_type == "Conv" and n.name != first_conv]
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)
    assert read_manifest(out / "x86_64")["artifacts"][1]["details"]["float_nodes"] == [first_conv]


def test_random_calibration_only_when_asked_and_recorded(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", f"{TESTS / 'models.py'}:tiny_resnet", "--input-shape", "1,3,32,32",
                   "--random-calib", "--quantize", "int8", "--target", "x86_64", "--out", out, "--quiet") == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["calibration"]["random"] is True
    assert "random" in manifest["calibration"]["source"] and "random" in manifest["evaluation"]["source"]
    assert manifest["artifacts"][0]["parity"]["accuracy"] is None  # no labels: no accuracy claimed


def test_quantize_none_and_fp16_apply_to_every_format(tmp_path):
    assert run_cli("build", "--quantize", "none", "--out", tmp_path / "a", "--quiet") == 0
    files = [a["file"] for a in read_manifest(tmp_path / "a" / "arm64")["artifacts"]]
    assert files == ["model.fp32.onnx", "model.fp32.tflite", "model.fp32.pte"]
    assert run_cli("build", "--quantize", "fp16", "--out", tmp_path / "b", "--quiet") == 0
    artifacts = read_manifest(tmp_path / "b" / "arm64")["artifacts"]
    # ExecuTorch programs have no fp16 precision here: the format keeps its fp32 program.
    assert [a["file"] for a in artifacts] == ["model.fp32.onnx", "model.fp16.onnx", "model.fp32.tflite",
                                              "model.fp16.tflite", "model.fp32.pte"]
    fp16 = artifacts[1]
    assert fp16["precision"] == "fp16" and fp16["parity"]["passed"]
    assert fp16["inputs"][0]["dtype"] == "float32"  # float32 I/O kept for the app
    assert fp16["parity"]["outputs"]["output"]["top1_agreement"] == 1.0


def strict_target(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text("extends: x86_64\ndescription: x86_64 with an INT8 limit no quantizer meets\n"
                    "tolerances: {int8: {min_cosine: 0.9999999}}\n")
    return path


def test_failed_parity_fails_the_build_and_publishes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", "--target", strict_target(tmp_path), "--out", out) == 1
    err = capsys.readouterr().err
    assert "not packaged" in err and "FAIL" in err and "cosine (output)" in err
    assert list(out.iterdir()) == []


def test_keep_going_packages_a_failing_build_that_check_then_rejects(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--target", strict_target(tmp_path), "--out", out, "--keep-going", "--quiet") == 0
    manifest = read_manifest(out / "strict")
    assert [a["parity"]["passed"] for a in manifest["artifacts"]] == [True, False, True, False]  # onnx, pte
    assert run_cli("check", out / "strict", "--target", strict_target(tmp_path)) == 1


def test_interrupted_build_leaves_the_previous_output_untouched(tmp_path, monkeypatch, fresh_stages):
    out = tmp_path / "out"
    assert run_cli("build", "--quantize", "none", "--target", "x86_64", "--out", out, "--quiet") == 0
    before = (out / "x86_64" / "manifest.json").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize_module, "quantize_int8", interrupted)
    assert run_cli("build", "--target", "x86_64", "--out", out, "--quiet") == 130
    assert sorted(p.name for p in out.iterdir()) == ["x86_64", "x86_64.tar.gz"]  # no staging folder left
    assert (out / "x86_64" / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_an_interrupt_beside_a_converting_child_stops_the_child(tmp_path, monkeypatch, capsys, fresh_stages):
    """onnx2tf converts in a child process while this process quantizes (the two stages overlap); Ctrl-C during
    the quantization ends the child too, and nothing is published."""
    psutil = pytest.importorskip("psutil")
    converting = []

    def interrupted(*args, **kwargs):
        assert "convert to TFLite (fp32, fp16, dynamic_int8, int8) ..." in capsys.readouterr().err  # started first
        converting.extend(child for child in psutil.Process().children(recursive=True)
                          if "spawn_main" in " ".join(child.cmdline()))
        time.sleep(1)  # the conversion is under way
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize_module, "quantize_int8", interrupted)
    out = tmp_path / "out"
    assert run_cli("build", "--target", "arm64", "--out", out) == 130
    assert converting
    _, alive = psutil.wait_procs(converting, timeout=10)
    assert alive == []
    assert list(out.iterdir()) == []


def test_the_onnx_files_are_captured_for_the_per_layer_snr_while_tflite_converts(tmp_path, monkeypatch,
                                                                                  example_build, fresh_stages):
    """This process has nothing to do while onnx2tf converts in its child: it captures the float and INT8 ONNX
    files' layers then, once each, and the per-layer numbers are those the full step makes. (Without ExecuTorch,
    whose lowering in this process can outlast the conversion.)"""
    psutil = pytest.importorskip("psutil")
    captured = []

    def capture(model, inputs):
        # onnx2tf's child (joined when its conversion ends) is the only child started by spawn.
        converting = any("spawn_main" in " ".join(child.cmdline()) for child in psutil.Process().children())
        captured.append((model.name if hasattr(model, "name") else "graph", converting))
        return capture_onnx(model, inputs)

    monkeypatch.setattr(capture_module, "capture_onnx", capture)
    monkeypatch.setattr(divergence_module, "capture_onnx", capture)
    target = tmp_path / "mobile.yaml"
    target.write_text("extends: arm64\ndescription: arm64's ONNX and TFLite files\nformats: [onnx, tflite]\n")
    out = tmp_path / "out"
    assert run_cli("build", "--target", target, "--out", out) == 0
    assert captured == [("model.fp32.onnx", True), ("model.int8.onnx", True)]
    built = {a["file"]: a.get("layers") for a in read_manifest(out / "mobile")["artifacts"]}
    shared = {a["file"]: a.get("layers") for a in read_manifest(example_build / "arm64")["artifacts"]}
    assert built == {name: layers for name, layers in shared.items() if name in built}
    assert len(built) == 6 and len(built["model.int8.onnx"]) >= 10


def test_inspect_reports_io_parameters_macs_and_operators(capsys, example_build):
    assert run_cli("inspect", example.FACTORY, "--weights", example.WEIGHTS, "--input-shape", "1,1,32,32",
                   "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 86_634  # PyTorch's own count, BatchNorm included
    assert info["macs"] == 6_092_032
    assert info["inputs"][0]["shape"] == [1, 1, 32, 32] and info["outputs"][0]["shape"] == [1, 10]
    assert info["operators"]["Conv"] == 22
    assert run_cli("inspect", example_build / "arm64" / "model.int8.onnx", "--nodes") == 0
    text = capsys.readouterr().out
    assert "MACs        6,092,032" in text and "QuantizeLinear" in text and "(Conv)" in text
