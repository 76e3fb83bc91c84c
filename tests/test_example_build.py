"""The bundled example, built for arm64 and x86_64: the spine's acceptance numbers."""
from __future__ import annotations

import hashlib
import shutil
import tarfile

import onnx
import pytest

from conftest import read_manifest, run_cli


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
def test_fp32_parity_and_int8_accuracy(example_build, target):
    manifest = read_manifest(example_build / target)
    by_precision = {a["precision"]: a for a in manifest["artifacts"]}
    assert set(by_precision) == {"fp32", "int8"}
    fp32 = by_precision["fp32"]["parity"]
    assert fp32["passed"]
    assert fp32["outputs"]["output"]["max_abs_error"] <= 1e-4
    assert fp32["samples"] == 360  # the held-out test split, not the calibration samples
    int8 = by_precision["int8"]["parity"]
    assert int8["passed"]
    assert int8["reference_accuracy"] >= 99.0
    assert int8["reference_accuracy"] - int8["accuracy"] <= 1.0
    assert manifest["reference"]["engine"] == "pytorch"
    assert manifest["calibration"]["random"] is False


def test_manifest_checksums_sizes_and_io(example_build):
    folder = example_build / "arm64"
    manifest = read_manifest(folder)
    for artifact in manifest["artifacts"]:
        data = (folder / artifact["file"]).read_bytes()
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
        assert artifact["bytes"] == len(data)
        assert artifact["inputs"] == [{"name": "input", "shape": [1, 1, 32, 32], "dtype": "float32",
                                       "layout": "NCHW"}]
        assert artifact["outputs"][0]["shape"] == [1, 10]
        assert artifact["runtime"]["engine"] == "onnxruntime"
        assert artifact["runtime"]["provider"] == "CPUExecutionProvider"  # no XNNPACK EP in PyPI wheels
        assert artifact["runtime"]["requested_providers"][0] == "XnnpackExecutionProvider"
    fp32, int8 = manifest["artifacts"]
    assert int8["bytes"] < 0.6 * fp32["bytes"]
    assert fp32["details"]["opset"] == 18
    assert fp32["details"]["macs"] > 5_000_000
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["preprocessing"]["mean"] == [0.5]
    for package in ("edgekit", "torch", "onnx", "onnxruntime"):
        assert manifest["versions"][package]
    assert len(manifest["source_model"]["sha256"]) == 64


def test_quantization_scheme_follows_the_target(example_build):
    """arm64 quantizes activations to int8 (S8S8), x86_64 to uint8 (U8S8), weights per channel."""
    expected = {"arm64": onnx.TensorProto.INT8, "x86_64": onnx.TensorProto.UINT8}
    for target, activation_type in expected.items():
        graph = onnx.load(str(example_build / target / "model.int8.onnx")).graph
        initializers = {i.name: i for i in graph.initializer}
        quantize_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert quantize_nodes
        for node in quantize_nodes:
            assert initializers[node.input[2]].data_type == activation_type
        weight_scales = [initializers[n.input[1]] for n in graph.node
                         if n.op_type == "DequantizeLinear" and initializers.get(n.input[0]) is not None
                         and initializers[n.input[0]].data_type == onnx.TensorProto.INT8
                         and len(initializers[n.input[0]].dims) == 4]
        assert weight_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)


def test_archive_and_report(example_build):
    with tarfile.open(example_build / "arm64.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"arm64/manifest.json", "arm64/model.fp32.onnx", "arm64/model.int8.onnx",
            "arm64/parity/inputs.npz", "arm64/parity/reference.npz", "arm64/report.json"} <= names
    assert not [p for p in example_build.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_check_passes_then_fails_after_one_byte_changes(example_build, tmp_path, capsys):
    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    assert run_cli("check", folder) == 0
    artifact = folder / "model.int8.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli("check", folder) == 1
    assert "sha256 differs" in capsys.readouterr().out


def test_check_recomputes_parity(example_build, tmp_path, capsys):
    """Tightening a tolerance in the manifest makes check fail: the verdict is computed, not read back."""
    import json

    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    manifest = read_manifest(folder)
    manifest["artifacts"][1]["tolerance"]["min_cosine"] = 0.9999999
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("check", folder) == 1
    assert "cosine (output)" in capsys.readouterr().out


def test_check_rejects_changed_parity_data(example_build, tmp_path):
    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    (folder / "parity" / "reference.npz").write_bytes(b"tampered")
    assert run_cli("check", folder) == 1
