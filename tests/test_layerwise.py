"""Per-layer divergence (PyTorch / ONNX / TFLite) and INT8 float fallback, on the bundled example and on
the example with a planted fragile layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.data import Dataset
from edgekit.example.model import make_model
from edgekit.layerwise import (Budget, Evaluator, capture_onnx, capture_tflite, capture_torch, compare_layers,
                               compose, first_divergence, largest_drop, map_torch_onnx, match_by_value,
                               node_coverage, plan_float_fallback)
from edgekit.sources import load
from edgekit.stages.export_onnx import export_onnx
from edgekit.stages.quantize import quantize_int8
from edgekit.targets import Quantization

EXAMPLE = Path(__file__).resolve().parents[1] / "edgekit" / "example"
PLANTED_SCALE = 1000.0
# features.6 ends in a projection (Conv+BN, no activation) whose output features.7 adds to its own
# projection; features.8.0 reads the sum. Channel 0 is scaled up through that path, and scaled back
# down where it is read, so the float model computes the same function.
PLANTED_MODULE = "features.6.block.2.1"


def plant_outlier_channel(model: torch.nn.Module, scale: float = PLANTED_SCALE, channel: int = 0) -> torch.nn.Module:
    f = model.features
    with torch.no_grad():
        for bn in (f[6].block[2][1], f[7].block[2][1]):  # BN output channel * scale
            bn.weight[channel] *= scale
            bn.bias[channel] *= scale
        for conv in (f[7].block[0][0], f[8][0]):  # readers of the scaled tensors: input channel / scale
            conv.weight[:, channel] /= scale
    return model


def example_model() -> torch.nn.Module:
    model = make_model()
    model.load_state_dict(torch.load(EXAMPLE / "weights.pt", weights_only=True))
    return model.eval()


def digits() -> tuple[Dataset, Dataset]:
    with np.load(EXAMPLE / "calib.npz") as calib, np.load(EXAMPLE / "test.npz") as test:
        return (Dataset({"input": calib["x"]}, None, "calib.npz"),
                Dataset({"input": test["x"]}, test["y"], "test.npz"))


def export(model: torch.nn.Module, folder: Path):
    weights = folder / "weights.pt"
    torch.save(model.state_dict(), weights)
    source = load("edgekit.example.model:make_model", str(weights), [1, 1, 32, 32])
    return source, export_onnx(source, 18, folder)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    model = plant_outlier_channel(example_model())
    source, fp32 = export(model, folder)
    calibration, evaluation = digits()
    int8 = quantize_int8(fp32, Quantization(), calibration, [], folder)
    return {"folder": folder, "model": model, "fp32": fp32, "int8": int8, "calibration": calibration,
            "evaluation": evaluation}


def test_planting_keeps_the_float_function():
    x = torch.from_numpy(digits()[1].inputs["input"][:64])
    with torch.no_grad():
        before, after = example_model()(x), plant_outlier_channel(example_model())(x)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def example_captures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    model = example_model()
    _, fp32 = export(model, folder)
    import onnx

    x = {"input": digits()[1].inputs["input"][:32]}
    graph = onnx.load(str(fp32.path))
    return {"graph": graph, "fp32": fp32, "folder": folder, "x": x,
            "torch": capture_torch(model, x), "onnx": capture_onnx(graph, x)}


def test_torch_capture_names_modules_and_keeps_in_place_activations_apart(example_captures):
    captured = example_captures["torch"]
    assert {"input", "features.0.1", "features.0.2", "features.1", "classifier.1"} <= set(captured.tensors)
    # ReLU6(inplace=True) writes into the BatchNorm output; both must keep their own values
    bn, relu = captured.tensors["features.0.1"], captured.tensors["features.0.2"]
    assert bn.min() < 0 and relu.min() >= 0 and relu.max() <= 6
    assert "features.0" in captured.aliases["features.0.2"]  # a Sequential is its last leaf


def test_onnx_nodes_map_to_torch_modules(example_captures):
    graph, captured = example_captures["graph"], example_captures["onnx"]
    mapping = map_torch_onnx(example_captures["torch"], captured, graph)
    assert mapping.method == "values"  # onnxslim strips the exporter's metadata
    assert mapping.pairs["features.0.1"] == "getitem"  # Conv with BN folded -> the BN module
    assert mapping.pairs["features.0.2"] == "hardtanh"  # Clip -> ReLU6
    assert mapping.pairs["features.1"] == "add"  # residual add -> the InvertedResidual block
    coverage = node_coverage(graph, set(mapping.pairs.values()))
    assert coverage["fraction"] >= 0.9, coverage


def test_exporter_metadata_gives_the_same_mapping(example_captures, tmp_path):
    import onnx

    model = example_model()
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), str(raw), dynamo=True, opset_version=18,
                      input_names=["input"], output_names=["output"], external_data=False, verbose=False)
    graph = onnx.load(str(raw))
    captured = capture_onnx(graph, example_captures["x"])
    from_metadata = map_torch_onnx(example_captures["torch"], captured, graph)
    by_value = map_torch_onnx(example_captures["torch"], captured)
    assert from_metadata.method == "metadata"
    assert from_metadata.pairs == by_value.pairs
    assert node_coverage(graph, set(from_metadata.pairs.values()))["fraction"] >= 0.9


def test_example_int8_onnx_has_no_divergence(example_captures):
    calibration, _ = digits()
    int8 = quantize_int8(example_captures["fp32"], Quantization(), calibration, [], example_captures["folder"])
    mapping = map_torch_onnx(example_captures["torch"], example_captures["onnx"])
    rows = compare_layers(example_captures["torch"], capture_onnx(int8.path, example_captures["x"]), mapping.pairs)
    assert len(rows) >= 25
    assert [r.reference for r in rows][:2] == ["input", "features.0.2"]  # network order
    assert first_divergence(rows, 20.0) is None
    assert all(r.cosine > 0.99 for r in rows)


@pytest.mark.slow
def test_example_tflite_maps_to_onnx(example_captures, tmp_path):
    from edgekit.stages.tflite import convert_tflite

    calibration, _ = digits()
    tflite = {a.precision: a for a in convert_tflite(example_captures["fp32"], ["fp32", "fp16", "int8"],
                                                          calibration, "int8", tmp_path)}
    x = example_captures["x"]
    float_capture = capture_tflite(tflite["fp32"].path, x, tflite["fp32"].io)
    mapping = match_by_value(example_captures["onnx"], float_capture)
    coverage = node_coverage(example_captures["graph"], set(mapping.pairs), fusable=("Clip", "Relu"))
    assert coverage["fraction"] >= 0.9, coverage
    int8_capture = capture_tflite(tflite["int8"].path, x, tflite["int8"].io)
    assert set(mapping.pairs.values()) <= set(int8_capture.tensors)  # the float mapping fits the int8 model
    # The fp16 file dequantizes its weights as it runs: those are weights, not layers, and are not captured.
    fp16_capture = capture_tflite(tflite["fp16"].path, x, tflite["fp16"].io)
    assert "DEQUANTIZE" not in fp16_capture.kinds.values()
    assert list(fp16_capture.kinds.values()) == list(float_capture.kinds.values())
    to_module = map_torch_onnx(example_captures["torch"], example_captures["onnx"]).pairs
    rows = compare_layers(example_captures["torch"], int8_capture, compose(to_module, mapping.pairs))
    assert len(rows) >= 25 and first_divergence(rows, 20.0) is None


def test_planted_layer_is_the_first_divergence_in_onnx_int8(planted):
    import onnx

    x = {"input": planted["evaluation"].inputs["input"][:32]}
    graph = onnx.load(str(planted["fp32"].path))
    reference = capture_torch(planted["model"], x)
    mapping = map_torch_onnx(reference, capture_onnx(graph, x))
    rows = compare_layers(reference, capture_onnx(planted["int8"].path, x), mapping.pairs)
    planted_row = next(r for r in rows if r.reference == PLANTED_MODULE)
    assert planted_row.snr_db > 20  # the huge channel carries the energy: overall SNR hides the loss
    assert planted_row.channel_snr_db < 3
    assert first_divergence(rows, 15.0).reference == PLANTED_MODULE
    assert first_divergence(rows, 15.0, per_channel=False).reference != PLANTED_MODULE  # one layer late
    assert largest_drop(rows).reference == PLANTED_MODULE


@pytest.mark.slow
def test_fallback_plan_keeps_only_the_planted_path_in_float(planted):
    import onnx

    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["evaluation"],
                          quantize_int8)
    plan = plan_float_fallback(evaluator, Budget(min_snr_db=15.0, max_accuracy_drop=1.0))
    assert plan.float_model.accuracy > 99
    assert plan.full_int8.accuracy < plan.float_model.accuracy - 5  # full INT8 collapses
    assert plan.met and plan.score.accuracy >= plan.float_model.accuracy - 1.0 and plan.score.snr_db >= 15
    # the nodes that produce or read the scaled tensors: features.6's and features.7's projections,
    # features.7's add and expansion conv, features.8's conv (BN folded: the Conv nodes)
    nodes = onnx.load(str(planted["fp32"].path)).graph.node
    scaled = {"getitem_51", "getitem_60", "add_3"}
    touching = {n.name for n in nodes if n.output[0] in scaled or set(n.input) & scaled}
    assert set(plan.float_nodes) <= touching and len(plan.float_nodes) <= 5
    # every kept node is needed: dropping any one breaks the budget
    budget = Budget(min_snr_db=15.0, max_accuracy_drop=1.0)
    for node in plan.float_nodes:
        trial = evaluator.score([n for n in plan.float_nodes if n != node])
        assert not budget.met(trial, plan.float_model.accuracy)


@pytest.mark.slow
def test_planted_layer_is_the_first_divergence_in_tflite_int8(planted, tmp_path):
    import onnx

    from edgekit.stages.tflite import convert_tflite

    tflite = {a.precision: a for a in convert_tflite(planted["fp32"], ["fp32", "int8"], planted["calibration"],
                                                          "int8", tmp_path)}
    x = {"input": planted["evaluation"].inputs["input"][:32]}
    graph = onnx.load(str(planted["fp32"].path))
    reference = capture_torch(planted["model"], x)
    onnx_capture = capture_onnx(graph, x)
    to_onnx = map_torch_onnx(reference, onnx_capture).pairs
    to_tflite = match_by_value(onnx_capture, capture_tflite(tflite["fp32"].path, x, tflite["fp32"].io)).pairs
    rows = compare_layers(reference, capture_tflite(tflite["int8"].path, x, tflite["int8"].io), compose(to_onnx, to_tflite))
    assert first_divergence(rows, 15.0).reference == PLANTED_MODULE
    assert rows[-1].cosine < 0.9  # and the output collapses
