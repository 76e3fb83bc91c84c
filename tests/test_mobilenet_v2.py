"""A MobileNetV2-sized model (3.5 M parameters, 224x224) through the whole arm64 build, ONNX and TFLite."""
from __future__ import annotations

import pytest

from conftest import TESTS, read_manifest, run_cli


@pytest.mark.slow
def test_mobilenet_v2_builds_for_arm64_with_parity(tmp_path):
    # Random weights give near-flat logits over 1000 classes, so top-1 agreement is noise there:
    # this profile judges INT8 on cosine and SNR only.
    target = tmp_path / "arm64-random-weights.yaml"
    target.write_text("extends: arm64\ndescription: arm64, INT8 judged without top-1 (random weights)\n"
                      "formats: [onnx, tflite]\ntflite: {precisions: [fp32, int8]}\n"
                      "tolerances: {int8: {min_top1_agreement: null, min_cosine: 0.99}}\n")
    out = tmp_path / "out"
    assert run_cli("build", f"{TESTS / 'models.py'}:mobilenet_v2", "--input-shape", "1,3,224,224",
                   "--random-calib", "--target", target, "--out", out, "--quiet") == 0
    artifacts = read_manifest(out / target.stem)["artifacts"]
    assert [a["file"] for a in artifacts] == ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite",
                                              "model.int8.tflite"]
    assert 3_400_000 <= artifacts[0]["details"]["parameters"] <= 3_600_000
    assert 290_000_000 <= artifacts[0]["details"]["macs"] <= 320_000_000
    for fp32, int8 in zip(artifacts[0::2], artifacts[1::2]):
        assert fp32["parity"]["passed"] and fp32["parity"]["outputs"]["output"]["snr_db"] >= 60
        assert int8["parity"]["passed"] and int8["parity"]["outputs"]["output"]["cosine"] >= 0.99
        assert int8["bytes"] < 0.3 * fp32["bytes"]
