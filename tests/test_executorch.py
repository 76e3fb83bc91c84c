"""ExecuTorch programs (.pte): made from the PyTorch model, XNNPACK-delegated, under the same gate as ONNX and
TFLite."""
from __future__ import annotations

import shutil

import pytest

from conftest import read_manifest, run_cli

pytest.importorskip("executorch")


def artifacts(folder) -> dict:
    return {a["file"]: a for a in read_manifest(folder)["artifacts"]}


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
def test_the_example_ships_fp32_and_int8_programs_that_pass_parity(example_build, target):
    built = artifacts(example_build / target)
    fp32, int8 = built["model.fp32.pte"], built["model.int8.pte"]
    assert fp32["parity"]["passed"] and int8["parity"]["passed"]
    assert fp32["parity"]["outputs"]["output"]["max_abs_error"] < 1e-4
    assert int8["parity"]["accuracy"] >= fp32["parity"]["accuracy"] - 1.0
    assert int8["bytes"] < 0.5 * fp32["bytes"]  # int8 weights
    for entry in (fp32, int8):
        delegation = entry["details"]["delegation"]
        # The example is convolutions, activations, pooling and a linear layer: XNNPACK takes all of it.
        assert delegation["delegate"] == "XnnpackBackend" and delegation["subgraphs"] == 1
        assert delegation["delegated_nodes"] > 20 and delegation["portable_nodes"] == 0
        assert entry["runtime"]["engine"] == "executorch" and entry["details"]["method"] == "forward"
        assert [s["name"] for s in entry["inputs"]] == ["input"] and entry["inputs"][0]["shape"] == [1, 1, 32, 32]
    assert int8["details"]["layers"]["int8"] >= 8 and int8["details"]["layers"]["fp32"] == 0


def test_a_float_fallback_plan_keeps_its_layers_float_in_the_program(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--target", "x86_64", "--quantize", "int8", "--float-fallback", "features.3",
                   "--out", out, "--quiet") == 0
    int8 = artifacts(out / "x86_64")["model.int8.pte"]
    kept = int8["details"]["float_layers"]
    assert kept["modules"] == ["features.3"]
    # features.3's three convolutions, read back from the lowered program, are float; the rest stays int8.
    assert kept["layers"]["features.3"] == ["features.3.block.0.0", "features.3.block.1.0", "features.3.block.2.0"]
    assert int8["details"]["layers"]["fp32"] == 3 and int8["details"]["layers"]["int8"] >= 8
    assert int8["parity"]["passed"]


def test_check_catches_a_changed_byte_in_a_program(example_build, tmp_path):
    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    program = folder / "model.int8.pte"
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0x01
    program.write_bytes(data)
    assert run_cli("check", folder) == 1
    assert run_cli("check", example_build / "arm64") == 0


def test_an_onnx_model_skips_the_format_with_its_reason(example_build, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", example_build / "x86_64" / "model.fp32.onnx", "--target", "x86_64", "--random-calib",
                   "--out", out) == 0
    manifest = read_manifest(out / "x86_64")
    assert [a["file"] for a in manifest["artifacts"]] == ["model.fp32.onnx", "model.int8.onnx"]
    assert manifest["skipped"] == [{"format": "pte", "reason": "ExecuTorch programs are made from the PyTorch model "
                                    "by torch.export, and this build's source is ONNX"}]
    assert "pte not made: ExecuTorch programs are made from the PyTorch model" in capsys.readouterr().err


def test_convert_to_pte_ships_only_the_program(tmp_path):
    assert run_cli("convert", "--to", "pte", "--precision", "fp32", "--out", tmp_path, "--quiet") == 0
    built = artifacts(tmp_path / "arm64-pte")
    assert list(built) == ["model.fp32.pte"] and built["model.fp32.pte"]["parity"]["passed"]
