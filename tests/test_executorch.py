"""ExecuTorch programs (.pte): made from the PyTorch model, XNNPACK-delegated, under the same gate as ONNX and
TFLite (the default arm64 and x86_64 profiles list them; any profile may)."""
from __future__ import annotations


import pytest

from conftest import TESTS, read_manifest, run_cli
from edgekit import example

pytest.importorskip("executorch")


def artifacts(folder) -> dict:
    return {a["file"]: a for a in read_manifest(folder)["artifacts"]}


def test_the_example_ships_fp32_and_int8_programs_that_pass_parity(example_build):
    built = artifacts(example_build / "arm64")
    fp32, int8 = built["model.fp32.pte"], built["model.int8.pte"]
    assert fp32["parity"]["passed"] and int8["parity"]["passed"]
    assert fp32["parity"]["outputs"]["output"]["max_abs_error"] < 1e-4
    assert int8["parity"]["accuracy"] >= fp32["parity"]["accuracy"] - 1.0
    assert int8["bytes"] < 0.5 * fp32["bytes"]  # int8 weights
    for entry in (fp32, int8):
        delegation = entry["details"]["delegation"]
        # The example is convolutions, activations, pooling and a linear layer: XNNPACK takes all of it.
        assert delegation["delegate"] == "XnnpackBackend" and delegation["partitions"] == 1
        assert delegation["delegated_nodes"] > 20 and delegation["fallback_ops"] == {}
        assert entry["runtime"]["engine"] == "executorch" and entry["details"]["method"] == "forward"
        assert [s["name"] for s in entry["inputs"]] == ["input"] and entry["inputs"][0]["shape"] == [1, 1, 32, 32]
    assert int8["details"]["layers"]["int8"] >= 8 and int8["details"]["layers"]["fp32"] == 0


def test_a_float_fallback_plan_keeps_its_layers_float_in_the_program(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", "--target", "x86_64", "--quantize", "int8", "--float-fallback",
                   "features.3", "--out", out) == 0
    int8 = artifacts(out / "x86_64")["model.int8.pte"]
    kept = int8["details"]["float_layers"]
    assert kept["modules"] == ["features.3"]
    # features.3's three convolutions, read back from the lowered program, are float; the rest stays int8.
    assert kept["layers"]["features.3"] == ["features.3.block.0.0", "features.3.block.1.0", "features.3.block.2.0"]
    assert int8["details"]["layers"]["fp32"] == 3 and int8["details"]["layers"]["int8"] >= 8
    assert int8["parity"]["passed"]
    assert "model.int8.pte: XnnpackBackend took" in capsys.readouterr().err  # the delegation line


def test_an_onnx_model_skips_the_format_with_its_reason(example_build, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", example_build / "x86_64" / "model.fp32.onnx", "--target", "x86_64",
                   "--random-calib", "--out", out) == 0
    manifest = read_manifest(out / "x86_64")
    assert [a["file"] for a in manifest["artifacts"]] == ["model.fp32.onnx", "model.int8.onnx"]
    assert manifest["skipped"] == [{"format": "pte", "reason": "ExecuTorch programs are made from the PyTorch model "
                                    "by torch.export, and this build's source is ONNX"}]
    assert "pte not made: ExecuTorch programs are made from the PyTorch model" in capsys.readouterr().err


def test_without_executorch_installed_the_default_profiles_skip_the_format_with_its_reason(tmp_path, capsys,
                                                                                           monkeypatch):
    from edgekit.stages import executorch

    real = executorch.importlib.util.find_spec
    monkeypatch.setattr(executorch.importlib.util, "find_spec", lambda name, *a: None if name == "executorch"
                        else real(name, *a))
    out = tmp_path / "out"
    assert run_cli("build", "--target", "x86_64", "--quantize", "int8", "--out", out) == 0
    manifest = read_manifest(out / "x86_64")
    assert [a["file"] for a in manifest["artifacts"]] == ["model.fp32.onnx", "model.int8.onnx"]
    assert manifest["skipped"] == [{"format": "pte", "reason": "ExecuTorch programs need the executorch package, "
                                    "which is not installed: pip install 'edgekit[pte]'"}]
    assert "pte not made: ExecuTorch programs need the executorch package" in capsys.readouterr().err


def test_convert_to_pte_ships_only_the_program(tmp_path):
    assert run_cli("convert", "--to", "pte", "--precision", "fp32", "--out", tmp_path, "--quiet") == 0
    built = artifacts(tmp_path / "arm64-pte")
    assert list(built) == ["model.fp32.pte"] and built["model.fp32.pte"]["parity"]["passed"]


def test_an_auto_plan_rescues_the_int8_program_of_a_model_with_a_planted_fragile_layer(tmp_path):
    """The plan names the BatchNorm whose output the planted channel blows up (an ONNX Conv with it folded in);
    its block, convolution included, stays float in the program, and the INT8 program passes the gate."""
    out = tmp_path / "out"
    assert run_cli("build", f"{TESTS / 'models.py'}:planted_digits", "--input-shape", "1,1,32,32", "--calib",
                   example.CALIB, "--eval", example.TEST, "--target", "x86_64", "--float-fallback", "auto",
                   "--out", out, "--quiet") == 0
    int8 = artifacts(out / "x86_64")["model.int8.pte"]
    assert "features.7.block.2" in int8["details"]["float_layers"]["modules"]
    assert int8["details"]["layers"]["fp32"] >= 4
    assert int8["parity"]["passed"] and int8["parity"]["accuracy"] >= 99.0
