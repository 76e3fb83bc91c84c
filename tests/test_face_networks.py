"""The MTCNN R-Net pattern (PReLU, ceil-mode max pools, permute + view, a box head and a Softmax head) on ONNX and
TFLite: lowered exactly, and judged on its format's conversion as well as on its precision.

Its TFLite files come from one onnx2tf graph; that graph once padded the ceil-mode pools with 0 (as onnx2tf does
when it also makes a full-integer file) where the ONNX graph leaves the border out, and every TFLite file,
quantized ones too, carried the error. A reduced-precision file now fails when its format's float32 file fails,
and every record splits the error between the conversion and the precision.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import zoo
from conftest import read_manifest, run_cli

pytestmark = pytest.mark.slow
PROFILE = ("extends: arm64\ndescription: R-Net on ONNX and TFLite\nformats: [onnx, tflite]\n"
           "onnx: {precisions: [fp32, int8]}\ntflite: {precisions: [fp32, dynamic_int8, int8]}\n")


@pytest.fixture(scope="module")
def rnet_build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rnet")
    model = zoo.rnet()
    source = folder / "rnet.onnx"
    torch.onnx.export(model, (torch.zeros(model.input_shape),), str(source), input_names=["input"],
                      output_names=["boxes", "faces"], opset_version=17, dynamo=False)
    for name, seed, count in (("calib", 0, 128), ("eval", 1, 64)):
        np.savez(folder / f"{name}.npz", input=zoo.images(model.input_shape, count, seed))
    (folder / "rnet.yaml").write_text(PROFILE)
    code = run_cli("build", source, "--calib", folder / "calib.npz", "--eval", folder / "eval.npz",
                   "--target", folder / "rnet.yaml", "--out", folder / "out", "--quiet")
    return code, folder


def test_ceil_mode_pools_lower_exactly_and_stay_on_the_delegate(rnet_build):
    code, folder = rnet_build
    artifacts = {a["file"]: a for a in read_manifest(folder / "out" / "rnet")["artifacts"]}
    assert code == 0
    float32 = artifacts["model.fp32.tflite"]
    assert all(output["snr_db"] > 100 for output in float32["parity"]["outputs"].values())
    rewrites = [line.split("': ")[1] for line in float32["details"]["lowering_rewrites"]]
    assert rewrites == ["padding written as SAME", "padding no window reaches dropped"]  # 22 -> 11, 9 -> 4
    delegation = float32["details"]["delegation"]
    assert delegation["partitions"] == 1 and delegation["fallback_ops"] == {}  # no PAD left off the delegate


def test_every_reduced_file_records_whose_error_is_whose(rnet_build):
    code, folder = rnet_build
    artifacts = {a["file"]: a for a in read_manifest(folder / "out" / "rnet")["artifacts"]}
    assert code == 0 and all(a["parity"]["passed"] for a in artifacts.values())
    for reduced, float32 in (("model.int8.onnx", "model.fp32.onnx"), ("model.dynamic_int8.tflite", "model.fp32.tflite")):
        split = artifacts[reduced]["parity"]["error_split"]
        assert split["float32_file"] == float32
        for name, shares in split["outputs"].items():
            # the conversion's share is the float32 file's own SNR; the precision's is this file against it
            assert shares["conversion_snr_db"] == artifacts[float32]["parity"]["outputs"][name]["snr_db"]
            assert 15 < shares["precision_snr_db"] < 90
            total = artifacts[reduced]["parity"]["outputs"][name]["snr_db"]
            assert total == pytest.approx(shares["precision_snr_db"], abs=1.0)  # float32 error is negligible here
        check = next(c for c in artifacts[reduced]["parity"]["checks"] if c["metric"] == "conversion_failures")
        assert check["passed"] and check["value"] == 0
    assert "error_split" not in artifacts["model.fp32.tflite"]["parity"]


def test_a_failing_float32_conversion_fails_the_quantized_file_made_from_it(rnet_build, tmp_path, capsys):
    """Judged by a profile that holds the float32 boxes to 300 dB: the float32 ONNX (the source graph itself, in
    the same runtime) is exact and passes; the float32 TFLite file (onnx2tf's lowering, about 130 dB) fails, and
    so does the dynamic-range file made from that lowering, though its own error is within the INT8 limits."""
    _, folder = rnet_build
    strict = tmp_path / "strict.yaml"
    strict.write_text(PROFILE + "output_tolerances: {boxes: {fp32: {min_snr_db: 300.0}}}\n")
    capsys.readouterr()
    assert run_cli("check", folder / "out" / "rnet", "--target", strict, "--json") == 1
    records = {r["file"]: r["parity"] for r in json.loads(capsys.readouterr().out)["artifacts"]}
    assert math.isinf(records["model.fp32.onnx"]["outputs"]["boxes"]["snr_db"])
    assert records["model.fp32.onnx"]["passed"] and records["model.int8.onnx"]["passed"]
    assert not records["model.fp32.tflite"]["passed"]
    quantized = records["model.dynamic_int8.tflite"]
    assert not quantized["passed"]
    (failure,) = quantized["failures"]
    assert failure.startswith("conversion_failures = 1") and "model.fp32.tflite" in failure
    assert "snr_db (boxes)" in failure and "the conversion adds that error" in failure


def test_debug_names_the_layer_a_wrong_lowering_breaks(rnet_build, tmp_path):
    """onnx2tf as it lowers the graph unrewritten when it also makes a full-integer file: its float32 TFLite file
    pads the first ceil-mode pool with 0. Values match nothing after that layer, so the structure maps the rest:
    at least 90 % of the ONNX nodes are mapped, and the pool is the first layer under the float32 limit."""
    import onnx

    from edgekit.data import Dataset
    from edgekit.layerwise.capture import capture_onnx, capture_tflite
    from edgekit.layerwise.compare import compare_layers, first_divergence
    from edgekit.layerwise.mapping import map_tflite_onnx, node_coverage
    from edgekit.stages import Artifact
    from edgekit.stages.tflite import ReferenceIO, onnx2tf_scratch, run_onnx2tf

    _, folder = rnet_build
    hub = Artifact(folder / "out" / "rnet" / "model.fp32.onnx", "onnx", "fp32", {}, None)
    graph = onnx.load(str(hub.path))
    with np.load(folder / "calib.npz") as calib:
        calibration = Dataset({"input": calib["input"]}, None, "calib.npz")
    with onnx2tf_scratch(tmp_path) as (scratch, log):
        run_onnx2tf(hub, graph, calibration, scratch, log, output_integer_quantized_tflite=True,
                    quant_type="per-channel", input_quant_dtype="int8", output_quant_dtype="int8")
        broken = tmp_path / "broken.tflite"
        broken.write_bytes((scratch / "out" / "model_float32.tflite").read_bytes())
    x = {"input": calibration.inputs["input"][:16]}
    reference = capture_onnx(graph, x)
    candidate = capture_tflite(broken, x, ReferenceIO(hub, calibration).bind(broken))
    mapping = map_tflite_onnx(reference, candidate)
    assert mapping.method == "values and structure"
    assert node_coverage(graph, set(mapping.pairs), fusable=("Clip", "Relu"))["fraction"] >= 0.9
    rows = compare_layers(reference, candidate, mapping.pairs)
    first = first_divergence(rows, 60.0)
    pool = next(i for i, row in enumerate(rows) if row.kind == "MaxPool")
    assert first is not None and first.reference == rows[pool].reference
    assert [row.kind for row in rows[:pool]] == ["input", "Conv", "PRelu"]
    assert all(row.snr_db > 100 for row in rows[:pool])  # exact before it


def test_executorch_lowers_the_prelu_after_a_linear_layer(tmp_path):
    """XNNPACK's channels-last pass refused R-Net's PReLU on the 2-D output of its Linear layer; written as
    relu(x) + w * (x - relu(x)), both programs are made and wholly delegated, and the float one is exact. (The
    INT8 program's verdict on these untrained face logits is not the point here: --keep-going.)"""
    model = zoo.rnet()
    np.savez(tmp_path / "calib.npz", input=zoo.images(model.input_shape, 64, 0))
    np.savez(tmp_path / "eval.npz", input=zoo.images(model.input_shape, 32, 1))
    (tmp_path / "pte.yaml").write_text("extends: arm64\ndescription: R-Net as ExecuTorch programs\n"
                                       "formats: [onnx, pte]\nonnx: {precisions: [fp32]}\n")
    assert run_cli("build", f"{zoo.__file__}:rnet", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                   "--target", tmp_path / "pte.yaml", "--out", tmp_path / "out", "--quiet", "--keep-going") == 0
    manifest = read_manifest(tmp_path / "out" / "pte")
    assert manifest["failures"] == []
    artifacts = {a["file"]: a for a in manifest["artifacts"]}
    for file in ("model.fp32.pte", "model.int8.pte"):
        details = artifacts[file]["details"]
        (rewrite,) = details["lowering_rewrites"]  # the PReLU after the Linear layer; the others are on images
        assert rewrite.startswith("PReLU '") and rewrite.endswith("' on a 2-D input written as relu(x) + w * (x - relu(x))")
        assert details["delegation"]["partitions"] == 1 and not details["delegation"]["fallback_ops"]
    assert artifacts["model.fp32.pte"]["parity"]["passed"]
    assert all(o["snr_db"] > 100 for o in artifacts["model.fp32.pte"]["parity"]["outputs"].values())
