"""When INT8 breaks: a planted fragile layer, found by `edgekit debug` in ONNX and TFLite, fixed by one plan."""
from __future__ import annotations

import json

import pytest

from conftest import TESTS, read_manifest, run_cli
from edgekit import example

PLANTED = f"{TESTS / 'models.py'}:planted_digits"
DATA = ["--input-shape", "1,1,32,32", "--calib", example.CALIB, "--eval", example.TEST]
INT8 = ["model.int8.onnx", "model.int8.tflite"]


def profile(tmp_path):
    """arm64 with the TFLite precisions a precision plan applies to (dynamic-range cannot keep layers float)."""
    path = tmp_path / "arm64-int8.yaml"
    path.write_text("extends: arm64\ndescription: arm64, fp32 and full-integer INT8 TFLite\n"
                    "tflite: {precisions: [fp32, int8]}\n")
    return path


def accuracies(folder) -> dict[str, float]:
    return {a["file"]: a["parity"]["accuracy"] for a in read_manifest(folder)["artifacts"]}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The planted model under full INT8 (packaged with --keep-going to look at it)."""
    tmp = tmp_path_factory.mktemp("broken")
    assert run_cli("build", PLANTED, *DATA, "--target", profile(tmp), "--out", tmp / "out", "--keep-going",
                   "--quiet") == 0
    return tmp / "out" / "arm64-int8"


@pytest.mark.slow
def test_full_int8_collapses_in_both_formats(broken):
    acc = accuracies(broken)
    assert acc["model.fp32.onnx"] == pytest.approx(99.72, abs=0.01)
    for name in INT8:
        assert acc["model.fp32.onnx"] - acc[name] > 5, name
    assert run_cli("check", broken, "--target", "arm64") == 1


@pytest.mark.slow
def test_debug_names_the_planted_layer_first_in_onnx_and_tflite(broken, capsys):
    capsys.readouterr()
    assert run_cli("debug", broken, "--model", PLANTED, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reference"] == "torch"
    for name in INT8:
        assert result["artifacts"][name]["first_divergence"]["reference"] == "features.6.block.2.1", name
    coverage = result["coverage"]
    assert coverage["onnx_nodes_to_pytorch_modules"]["fraction"] >= 0.9
    assert coverage["onnx_nodes_to_tflite_tensors"]["fraction"] >= 0.9
    assert run_cli("debug", broken / "model.int8.tflite", "--reference", "onnx") == 0
    text = capsys.readouterr().out
    assert "model.int8.tflite" in text and "first divergence: getitem_51" in text and "model.int8.onnx" not in text


@pytest.mark.slow
def test_auto_plan_keeps_only_what_is_needed_in_float_in_both_formats(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", PLANTED, *DATA, "--target", profile(tmp_path), "--float-fallback", "auto",
                   "--out", out, "--quiet") == 0
    folder = out / "arm64-int8"
    acc = accuracies(folder)
    for name in INT8:
        assert acc["model.fp32.onnx"] - acc[name] <= 1.0, name
    manifest = read_manifest(folder)
    plan = manifest["precision_plan"]
    assert plan["how"] == "auto" and 1 <= len(plan["float_nodes"]) <= 6
    assert "features.6.block.2.1" in {layer["module"] for layer in plan["layers"]}
    search = plan["search"]
    assert search["full_int8"]["snr_db"] < 15 <= search["score"]["snr_db"] and search["met"]
    assert search["nodes"]["float"] == len(plan["float_nodes"]) < search["nodes"]["quantized"]
    assert search["evaluations"] <= 16 and search["samples"] == 128  # scored on a subset of the calibration data
    by_file = {a["file"]: a for a in manifest["artifacts"]}
    assert by_file["model.int8.onnx"]["details"]["float_nodes"] == sorted(plan["float_nodes"])
    kept = by_file["model.int8.tflite"]["details"]["float_fallback"]
    assert kept["float_onnx_nodes"] == plan["float_nodes"] and kept["float_ops"]
    assert run_cli("check", folder, "--target", "arm64") == 0


@pytest.mark.slow
def test_layers_named_by_module_path(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", PLANTED, *DATA, "--target", profile(tmp_path), "--quantize", "int8", "--float-fallback",
                   "features.6.block.2,features.7.block.2.1,features.8", "--out", out, "--keep-going",
                   "--quiet") == 0
    plan = read_manifest(out / "arm64-int8")["precision_plan"]
    assert plan["how"] == "named"
    modules = {layer["module"] for layer in plan["layers"]}
    assert {"features.6.block.2.1", "features.7.block.2.1"} <= modules  # a container names its layers
    assert any(m.startswith("features.8.") for m in modules)
    int8 = {a["file"]: a for a in read_manifest(out / "arm64-int8")["artifacts"]}["model.int8.onnx"]
    assert int8["details"]["float_nodes"] == sorted(plan["float_nodes"])


def test_unknown_layer_name_is_a_clear_error(tmp_path, capsys):
    code = run_cli("build", "--quantize", "int8", "--target", "x86_64", "--float-fallback", "features.99.conv",
                   "--out", tmp_path / "out", "--quiet")
    assert code == 2
    err = capsys.readouterr().err
    assert "'features.99.conv' is neither an ONNX node nor a PyTorch module" in err


def test_example_maps_over_ninety_percent_of_onnx_nodes(example_build, capsys):
    capsys.readouterr()
    assert run_cli("debug", example_build / "arm64", "--model", example.FACTORY, "--weights", example.WEIGHTS,
                   "--samples", "16") == 0
    text = capsys.readouterr().out
    print(text.splitlines()[1:3])
    for line in text.splitlines()[1:3]:
        mapped, total = line.split(": ")[1].split(" ")[0].split("/")
        assert int(mapped) / int(total) >= 0.9, line
    assert "first divergence: none" in text  # the healthy example: no layer under the threshold
