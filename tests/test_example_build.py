"""The bundled example, built for arm64 and x86_64: the spine's acceptance numbers."""
from __future__ import annotations

import hashlib
import shutil
import tarfile

import onnx
import pytest

from conftest import read_manifest, run_cli


EXPECTED = {"arm64": ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.fp16.tflite",
                      "model.dynamic_int8.tflite", "model.int8.tflite", "model.fp32.pte", "model.int8.pte"],
            "x86_64": ["model.fp32.onnx", "model.int8.onnx", "model.fp32.pte", "model.int8.pte"]}


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
def test_every_artifact_passes_with_the_acceptance_numbers(example_build, target):
    manifest = read_manifest(example_build / target)
    assert [a["file"] for a in manifest["artifacts"]] == EXPECTED[target]
    assert manifest["failures"] == []
    assert manifest["reference"]["engine"] == "pytorch" and manifest["reference"]["accuracy"] >= 99.0
    assert manifest["calibration"]["random"] is False
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        assert parity["passed"], artifact["file"]
        assert parity["samples"] == 360  # the held-out test split, not the calibration samples
        if artifact["precision"] == "fp32":
            assert parity["outputs"]["output"]["max_abs_error"] <= 1e-4
        if artifact["precision"] == "int8":  # within 1 point of the original's test accuracy
            assert parity["reference_accuracy"] - parity["accuracy"] <= 1.0


def test_manifest_checksums_sizes_and_io(example_build):
    folder = example_build / "arm64"
    manifest = read_manifest(folder)
    for artifact in manifest["artifacts"]:
        data = (folder / artifact["file"]).read_bytes()
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
        assert artifact["bytes"] == len(data)
        assert artifact["outputs"][0]["shape"] == [1, 10]
    onnx_fp32, onnx_int8 = manifest["artifacts"][:2]
    for artifact in (onnx_fp32, onnx_int8):
        assert artifact["inputs"] == [{"name": "input", "shape": [1, 1, 32, 32], "dtype": "float32",
                                       "layout": "NCHW"}]
        assert artifact["runtime"]["engine"] == "onnxruntime"
        assert artifact["runtime"]["provider"] == "CPUExecutionProvider"  # no XNNPACK EP in PyPI wheels
        assert artifact["runtime"]["requested_providers"][0] == "XnnpackExecutionProvider"
    assert onnx_int8["bytes"] < 0.6 * onnx_fp32["bytes"]
    assert onnx_fp32["details"]["opset"] == 18
    assert onnx_fp32["details"]["macs"] > 5_000_000
    assert manifest["model_io"]["inputs"][0]["shape"] == [1, 1, 32, 32]
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["preprocessing"]["mean"] == [0.5]
    for package in ("edgekit", "torch", "onnx", "onnxruntime"):
        assert manifest["versions"][package]
    assert len(manifest["source_model"]["sha256"]) == 64


def test_every_artifact_says_what_its_delegate_or_provider_took(example_build, capsys):
    """Per artifact, the nodes its accelerator ran and the ops left out: ONNX Runtime's nodes per execution
    provider (a profiled run), LiteRT's XNNPACK partitions. XNNPACK has no kernel for a dynamic-range
    depthwise convolution, so the dynamic_int8 file's three depthwise layers split it into four partitions."""
    built = {a["file"]: a["details"]["delegation"] for a in read_manifest(example_build / "arm64")["artifacts"]}
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        assert built[name]["delegate"] == "CPUExecutionProvider" and built[name]["fallback_ops"] == {}
        assert built[name]["delegated_nodes"] >= 8  # 4 conv, 3 pool, 1 linear at least
    whole = built["model.int8.tflite"]
    assert whole["delegate"] == "XNNPACK delegate" and whole["partitions"] == 1 and whole["fallback_ops"] == {}
    assert built["model.fp32.tflite"]["delegated_nodes"] == whole["delegated_nodes"]
    split = built["model.dynamic_int8.tflite"]
    assert split["fallback_ops"] == {"DEPTHWISE_CONV_2D": 3} and split["partitions"] == 4
    assert split["delegated_nodes"] + 3 == whole["delegated_nodes"]
    assert run_cli("check", example_build / "arm64") == 0  # details are part of the sealed manifest
    page = (example_build / "arm64" / "report.html").read_text()
    assert f"took {split['delegated_nodes']} nodes in 4 partitions; on built-in kernels: DEPTHWISE_CONV_2D x3" in page


def test_tflite_artifacts_record_layout_and_integer_io(example_build):
    """What an Android/embedded app needs: NHWC input, the transpose from NCHW, int8 scale/zero point."""
    manifest = read_manifest(example_build / "arm64")
    tflite = {a["file"]: a for a in manifest["artifacts"] if a["format"] == "tflite"}
    for artifact in tflite.values():
        (entry,) = artifact["inputs"]
        assert entry["layout"] == "NHWC" and entry["shape"] == [1, 32, 32, 1]
        assert entry["transpose"] == [0, 2, 3, 1]
        assert artifact["runtime"]["engine"] == "litert"
        assert artifact["runtime"]["delegate"].startswith("XNNPACK")
    full = tflite["model.int8.tflite"]
    assert full["details"]["scheme"]["mode"] == "full_integer"
    for entry in full["inputs"] + full["outputs"]:
        assert entry["dtype"] == "int8" and entry["quantization"]["scale"] > 0
        assert -128 <= entry["quantization"]["zero_point"] <= 127
    # Inputs span [-1, 1] after the example's preprocessing, so int8 steps are 2/255.
    assert full["inputs"][0]["quantization"]["scale"] == pytest.approx(2 / 255, rel=1e-3)
    assert "quantization" not in tflite["model.fp32.tflite"]["inputs"][0]
    assert tflite["model.fp16.tflite"]["bytes"] < 0.6 * tflite["model.fp32.tflite"]["bytes"]


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
    folder = example_build / "arm64"
    with tarfile.open(example_build / "arm64.tar.gz") as tar:
        names = set(tar.getnames())
        report = tar.extractfile("arm64/report.html").read()  # written while the rest was compressed
    assert names == {"arm64"} | {f"arm64/{path.relative_to(folder)}" for path in folder.rglob("*")}
    assert report == (folder / "report.html").read_bytes()
    assert {f"arm64/{name}" for name in EXPECTED["arm64"]} <= names
    assert {"arm64/manifest.json", "arm64/parity/inputs.npz", "arm64/parity/reference.npz",
            "arm64/report.json", "arm64/report.html", "arm64/report/size.png"} <= names
    assert not [p for p in example_build.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_check_passes_then_fails_after_one_byte_changes(example_build, tmp_path, capsys):
    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    assert run_cli("check", folder) == 0
    for name in ("model.int8.onnx", "model.int8.tflite"):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        artifact = copy / name
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0x01
        artifact.write_bytes(bytes(data))
        capsys.readouterr()
        assert run_cli("check", copy) == 1
        assert f"{name}: its sha256 differs" in capsys.readouterr().out


def test_check_recomputes_parity_with_the_named_profiles_limits(example_build, tmp_path, capsys):
    """The verdict is computed, not read back, and by the profile's limits: a tolerance edited in the folder
    counts only when asked for (--recorded-tolerances), and a tighter profile file fails the same artifact."""
    import json

    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    manifest = read_manifest(folder)
    manifest["artifacts"][1]["output_tolerances"]["output"]["min_cosine"] = 0.9999999
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("check", folder) == 0
    assert run_cli("check", folder, "--recorded-tolerances") == 1
    assert "cosine (output)" in capsys.readouterr().out
    strict = tmp_path / "strict.yaml"
    strict.write_text("extends: arm64\ndescription: strict\ntolerances: {int8: {min_cosine: 0.9999999}}\n")
    assert run_cli("check", folder, "--target", strict) == 1
    assert "cosine (output)" in capsys.readouterr().out


def test_check_rejects_changed_parity_data(example_build, tmp_path):
    folder = tmp_path / "arm64"
    shutil.copytree(example_build / "arm64", folder)
    (folder / "parity" / "reference.npz").write_bytes(b"tampered")
    assert run_cli("check", folder) == 1
