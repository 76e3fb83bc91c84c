"""TFLite lowering (onnx2tf + TFLite converter) and the LiteRT runner. Needs the `tflite` extra."""
from __future__ import annotations

import hashlib
import os
import socket
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")

from edgekit import example, sources  # noqa: E402
from edgekit.data import Dataset  # noqa: E402
from edgekit.errors import UserError  # noqa: E402
from edgekit.runners import run_dataset  # noqa: E402
from edgekit.runners.litert import LiteRTRunner  # noqa: E402
from edgekit.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402
from edgekit.stages import Artifact  # noqa: E402
from edgekit.stages import tflite  # noqa: E402
from edgekit.stages.export_onnx import export_onnx  # noqa: E402

ALL = ["fp32", "fp16", "dynamic_int8", "int8"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The bundled example as float ONNX, its calibration data and its labeled test split."""
    folder = tmp_path_factory.mktemp("digits")
    source = sources.load(example.FACTORY, str(example.WEIGHTS), list(example.INPUT_SHAPE))
    onnx = export_onnx(source, 18, folder)
    calib = Dataset({"input": np.load(example.CALIB)["x"]}, None, "calib")
    test = np.load(example.TEST)
    return onnx, calib, test["x"], test["y"]


@pytest.fixture(scope="module")
def converted(digits, tmp_path_factory):
    onnx, calib, _, _ = digits
    before = _sha(onnx.path)
    workdir = tmp_path_factory.mktemp("tflite")
    artifacts = tflite.convert_tflite(onnx, ALL, calib, "int8", workdir)
    assert _sha(onnx.path) == before, "onnx2tf must not rewrite the source ONNX"
    return workdir, {a.path.name.split(".")[1]: a for a in artifacts}


@pytest.fixture
def offline(monkeypatch):
    """Record and refuse every network connection Python code attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def _rgb_model(folder):
    """A tiny MobileNetV2-style net on 1x3x64x64: onnx2tf treats 3-channel 4-D inputs specially."""
    import torch
    from torch import nn

    from edgekit.example.model import InvertedResidual, conv_bn_act

    torch.manual_seed(0)
    model = nn.Sequential(conv_bn_act(3, 8, stride=2), InvertedResidual(8, 8, 1, 4),
                          InvertedResidual(8, 16, 2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = folder / "rgb.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        torch.onnx.export(model.eval(), torch.rand(1, 3, 64, 64), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=18, dynamo=False)
    return Artifact(path, "onnx", "fp32")


def test_unsupported_operator_names_op_and_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
         helper.make_node("CenterCropPad", ["r", "size"], ["y"], name="crop1", axes=[2, 3])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor("size", TensorProto.INT64, [2], [4, 4])])
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    calib = Dataset({"x": np.zeros((2, 3, 8, 8), np.float32)}, None, "zeros")
    with pytest.raises(UserError, match=r"CenterCropPad \(node 'crop1'\)"):
        tflite.convert_tflite(Artifact(path, "onnx", "fp32"), ["fp32"], calib, "int8", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unsupported.onnx"]


def test_rejects_unknown_precision_and_io_type(digits, tmp_path):
    onnx, calib, _, _ = digits
    with pytest.raises(UserError, match="precisions"):
        tflite.convert_tflite(onnx, ["int4"], calib, "int8", tmp_path)
    with pytest.raises(UserError, match="I/O type"):
        tflite.convert_tflite(onnx, ["int8"], calib, "int16", tmp_path)


@pytest.mark.slow
def test_example_parity(converted, digits):
    workdir, artifacts = converted
    onnx, _, x, y = digits
    # Only the four models are left: onnx2tf's scratch folder is gone.
    assert sorted(p.name for p in workdir.iterdir()) == sorted(f"model.{p}.tflite" for p in ALL)
    reference_runner = OnnxRuntimeRunner(onnx.path, ["CPUExecutionProvider"])
    reference = run_dataset(reference_runner, {"input": x})["output"]
    reference_accuracy = (reference.argmax(1) == y).mean()
    for precision, artifact in artifacts.items():
        runner = LiteRTRunner(artifact.path, 1, artifact.io)
        out = run_dataset(runner, {"input": x})["output"]
        agreement = (out.argmax(1) == reference.argmax(1)).mean()
        if precision == "fp32":
            assert np.abs(out - reference).max() <= 1e-4
        assert agreement >= 0.99, precision
        assert (out.argmax(1) == y).mean() >= reference_accuracy - 0.01, precision


@pytest.mark.slow
def test_nhwc_layout_described_and_applied(converted, digits):
    _, artifacts = converted
    _, _, x, _ = digits
    runner = LiteRTRunner(artifacts["fp32"].path, 1, artifacts["fp32"].io)
    (entry,) = runner.inputs
    assert (entry.name, entry.layout, entry.shape, entry.transpose) == ("input", "NHWC", (1, 32, 32, 1), [0, 2, 3, 1])
    assert runner.outputs[0].transpose is None  # (1, 10) logits keep their layout
    sample = x[:1]
    # What an app does by hand, with the transpose the spec names.
    interpreter = runner.interpreter
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.transpose(sample, entry.transpose))
    interpreter.invoke()
    by_hand = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(runner.run({"input": sample})["output"], by_hand)
    description = runner.describe()
    assert description["interpreter"] == "ai-edge-litert" and description["delegate"].startswith("XNNPACK")


@pytest.mark.slow
def test_integer_io_quantization(converted):
    _, artifacts = converted
    int8 = artifacts["int8"]
    assert int8.metadata["scheme"]["mode"] == "full_integer" and int8.metadata["scheme"]["io_type"] == "int8"
    runner = LiteRTRunner(int8.path)
    for spec, detail in [(runner.inputs[0], runner.interpreter.get_input_details()[0]),
                         (runner.outputs[0], runner.interpreter.get_output_details()[0])]:
        assert spec.dtype == "int8" and detail["dtype"] == np.int8
        scale, zero_point = detail["quantization"]
        assert spec.quantization == {"scale": pytest.approx(scale), "zero_point": zero_point}
        assert scale > 0 and -128 <= zero_point <= 127
    # Inputs in [-1, 1] fill the int8 range.
    assert runner.inputs[0].quantization["scale"] == pytest.approx(2 / 255, rel=1e-3)
    for precision in ("fp32", "fp16", "dynamic_int8"):
        assert LiteRTRunner(artifacts[precision].path).inputs[0].quantization is None


@pytest.mark.slow
def test_three_channel_model_converts_offline(tmp_path, monkeypatch, offline):
    onnx = _rgb_model(tmp_path)
    workdir = tmp_path / "out"
    workdir.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rng = np.random.default_rng(0)
    calib = Dataset({"image": rng.uniform(0, 1, (16, 3, 64, 64)).astype(np.float32)}, None, "uniform")
    artifacts = tflite.convert_tflite(onnx, ["fp32", "int8"], calib, "uint8", workdir)
    assert offline == []
    assert os.listdir(cwd) == [] and sorted(os.listdir(workdir)) == ["model.fp32.tflite", "model.int8.tflite"]

    reference_runner = OnnxRuntimeRunner(onnx.path, ["CPUExecutionProvider"])
    x = rng.uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    reference = run_dataset(reference_runner, {"image": x})["logits"]
    for artifact in artifacts:
        runner = LiteRTRunner(artifact.path, 1, artifact.io)
        assert runner.inputs[0].transpose == [0, 2, 3, 1]
        out = run_dataset(runner, {"image": x})["logits"]
        limit = 1e-4 if artifact.precision == "fp32" else 0.05 * np.abs(reference).max()
        assert np.abs(out - reference).max() <= limit
    (uint8_input,) = LiteRTRunner(artifacts[1].path).inputs
    assert uint8_input.dtype == "uint8" and 0 <= uint8_input.quantization["zero_point"] <= 255


@pytest.mark.slow
def test_offline_guard_sees_onnx2tf_download(tmp_path, monkeypatch, offline):
    """Without our sample-image file onnx2tf goes to the network: proves the guard above can see it. The
    failed conversion is then retried with onnx2tf's documented remedies, and channel-first inputs (which
    need no sample images) succeed; the artifact says so."""
    monkeypatch.setattr(tflite, "SAMPLE_FILE", "not-the-name-onnx2tf-looks-for.npy")
    calib = Dataset({"image": np.zeros((2, 3, 64, 64), np.float32)}, None, "zeros")
    (artifact,) = tflite.convert_tflite(_rgb_model(tmp_path), ["fp32"], calib, "int8", tmp_path)
    assert offline
    remedy = artifact.metadata["lowering_remedy"]
    assert remedy.startswith("onnx2tf with channel-first inputs") and "could not lower the model" in remedy
    assert artifact.io[0][0].transpose is None  # the input stays NCHW, and the manifest says so
