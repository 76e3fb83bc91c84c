"""TFLite inside `edgekit build` and `edgekit convert`: failures reported, ONNX still shipped on request."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import read_manifest, run_cli
from edgekit import example

pytest.importorskip("onnx2tf")


def castlike_model(path):
    """ONNX Runtime runs CastLike; onnx2tf has no conversion for it."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
         helper.make_node("CastLike", ["c", "half"], ["h"], name="to_half"),
         helper.make_node("Relu", ["h"], ["r"], name="relu_half"),
         helper.make_node("Cast", ["r"], ["f"], name="to_float", to=TensorProto.FLOAT),
         helper.make_node("GlobalAveragePool", ["f"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["y"], name="flat")],
        "castlike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros((1,), np.float16), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_fails_the_build_naming_operator_and_node(tmp_path, capsys):
    out = tmp_path / "out"
    model = castlike_model(tmp_path / "castlike.onnx")
    assert run_cli("build", model, "--random-calib", "--quantize", "none", "--out", out) == 1
    err = capsys.readouterr().err
    assert "operator CastLike (node 'to_half')" in err and "--keep-going" in err
    assert list(out.iterdir()) == []


def test_keep_going_ships_the_onnx_artifacts_and_records_the_failure(tmp_path):
    out = tmp_path / "out"
    model = castlike_model(tmp_path / "castlike.onnx")
    assert run_cli("build", model, "--random-calib", "--quantize", "none", "--out", out, "--keep-going",
                   "--quiet") == 0
    manifest = read_manifest(out / "arm64")
    assert [a["file"] for a in manifest["artifacts"]] == ["model.fp32.onnx"]
    assert manifest["artifacts"][0]["parity"]["passed"]
    (failure,) = manifest["failures"]
    assert failure["format"] == "tflite" and "CastLike (node 'to_half')" in failure["error"]
    assert run_cli("check", out / "arm64") == 1  # a release missing a format does not pass


def test_convert_subcommand_only_lowers(tmp_path, example_build):
    out = tmp_path / "out"
    assert run_cli("convert", example_build / "arm64" / "model.fp32.onnx", "--to", "tflite", "--precision",
                   "fp32,int8", "--calib", example.CALIB, "--eval", example.TEST, "--out", out, "--quiet") == 0
    folder = out / "arm64-tflite"
    manifest = read_manifest(folder)
    assert [a["file"] for a in manifest["artifacts"]] == ["model.fp32.tflite", "model.int8.tflite"]
    assert sorted(p.name for p in folder.glob("*.onnx")) == []  # the float ONNX hub is not shipped
    fp32, int8 = manifest["artifacts"]
    assert fp32["parity"]["outputs"]["output"]["max_abs_error"] <= 1e-4
    assert int8["parity"]["reference_accuracy"] - int8["parity"]["accuracy"] <= 1.0
    assert manifest["reference"]["engine"] == "onnxruntime"
    assert run_cli("check", folder) == 0


def test_convert_rejects_an_unknown_precision(tmp_path, capsys):
    code = run_cli("convert", "--to", "tflite", "--precision", "fp32,int4", "--out", tmp_path / "out")
    assert code == 2
    assert "'int4'" in capsys.readouterr().err
