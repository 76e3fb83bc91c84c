"""ONNX Runtime's ORT format: saved from the ONNX artifact of the same precision, shipped and judged on its own."""
from __future__ import annotations

import pytest

from conftest import read_manifest, run_cli
from edgekit.errors import UserError
from edgekit.stages.ort_format import save_ort


def artifacts(folder) -> dict:
    return {a["file"]: a for a in read_manifest(folder)["artifacts"]}


def test_convert_to_ort_ships_only_the_ort_files(example_build, tmp_path):
    assert run_cli("convert", "--to", "ort", "--out", tmp_path, "--quiet") == 0
    folder = tmp_path / "arm64-ort"
    built = artifacts(folder)
    assert list(built) == ["model.fp32.ort", "model.int8.ort"]
    assert sorted(p.name for p in folder.glob("model.*")) == ["model.fp32.ort", "model.int8.ort"]
    int8 = built["model.int8.ort"]
    assert int8["parity"]["passed"] and int8["parity"]["outputs"]["output"]["cosine"] > 0.999
    details = int8["details"]
    assert details["saved_from"] == "model.int8.onnx" and details["scheme"]["format"] == "QDQ"
    # ONNX Runtime fused the QDQ pairs into its own quantized kernels, which a reduced-size build must include.
    assert any(line.startswith("com.microsoft;1;") and "QLinearConv" in line for line in details["required_operators"])
    assert not any("QLinearConv" in line for line in built["model.fp32.ort"]["details"]["required_operators"])


def test_a_profile_may_list_ort_before_onnx_and_precisions_onnx_does_not_ship(example_build,
                                                                              tmp_path):
    profile = tmp_path / "phone.yaml"
    profile.write_text("extends: arm64\ndescription: float ONNX, INT8 ORT format\nformats: [ort, onnx]\n"
                       "onnx: {precisions: [fp32]}\nort: {precisions: [int8], optimization: basic}\n")
    assert run_cli("build", "--target", profile, "--out", tmp_path / "out", "--quiet") == 0
    built = artifacts(tmp_path / "out" / "phone")
    assert list(built) == ["model.fp32.onnx", "model.int8.ort"]
    assert not (tmp_path / "out" / "phone" / "model.int8.onnx").exists()
    assert "'basic' graph optimizations" in built["model.int8.ort"]["details"]["saved_by"]
    assert built["model.int8.ort"]["parity"]["passed"]


def test_an_unknown_optimization_level_is_refused(tmp_path, capsys):
    profile = tmp_path / "phone.yaml"
    profile.write_text("extends: arm64\ndescription: x\nformats: [onnx, ort]\nort: {optimization: fastest}\n")
    assert run_cli("build", "--target", profile, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "ort.optimization" in err and "basic" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_ort_file_whose_onnx_file_was_not_made_is_a_failure_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"model.int8.ort is saved from model.int8.onnx, which this build could not"):
        save_ort(None, "int8", "all", True, tmp_path)
    assert not list(tmp_path.iterdir())
