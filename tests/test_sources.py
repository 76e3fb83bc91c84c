"""Every model kind a user can hand to `edgekit build`, each built end to end with fp32 parity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TESTS, read_manifest, run_cli
from models import tiny_resnet


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real-valued smooth images (not noise) for a 3x32x32 model: calibration and labeled eval sets."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    base = rng.standard_normal((60, 3, 8, 8)).astype(np.float32)
    images = torch.nn.functional.interpolate(torch.from_numpy(base), size=(32, 32), mode="bilinear").numpy()
    np.save(folder / "calib.npy", images[:40])
    np.savez(folder / "eval.npz", x=images[40:], y=rng.integers(0, 5, 20))
    return folder


def fp32_parity(out, target="x86_64"):
    artifacts = read_manifest(out / target)["artifacts"]
    return next(a["parity"] for a in artifacts if a["precision"] == "fp32")


def test_factory_file_with_weights(tmp_path, data):
    weights = tmp_path / "resnet.pt"
    torch.save(tiny_resnet().state_dict(), weights)
    out = tmp_path / "out"
    code = run_cli("build", f"{TESTS / 'models.py'}:tiny_resnet", "--weights", weights, "--input-shape",
                   "1,3,32,32", "--calib", data / "calib.npy", "--eval", data / "eval.npz", "--out", out, "--quiet")
    assert code == 0  # arm64: a 3-channel ResNet-style model through ONNX and TFLite
    for artifact in read_manifest(out / "arm64")["artifacts"]:
        assert artifact["parity"]["passed"] and artifact["parity"]["samples"] == 20
        assert artifact["parity"]["accuracy"] is not None
        if artifact["precision"] == "fp32":
            assert artifact["parity"]["outputs"]["output"]["max_abs_error"] <= 1e-4


def test_module_factory_reference_and_held_out_split(tmp_path, data, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "out"
    assert run_cli("build", "models:tiny_resnet", "--input-shape", "1,3,32,32", "--calib", data / "calib.npy",
                   "--out", out, "--target", "x86_64", "--quiet") == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["calibration"]["samples"] == 32 and manifest["evaluation"]["samples"] == 8
    assert "held out" in manifest["evaluation"]["source"]


def test_onnx_file_with_dynamic_batch(tmp_path, data, capsys):
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(tiny_resnet(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["images"], output_names=["scores"], dynamic_axes={"images": {0: "batch"}})
    out = tmp_path / "out"
    args = ["build", path, "--calib", data / "calib.npy", "--target", "x86_64", "--out", out, "--quiet"]
    assert run_cli(*args) == 2  # dynamic batch needs --input-shape, and the message gives the one to pass
    assert "has dynamic dimensions (?,3,32,32): pass --input-shape with a fixed shape, --input-shape 1,3,32,32 " \
        "(batch 1)" in capsys.readouterr().err
    assert run_cli(*args, "--input-shape", "1,3,32,32") == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["reference"]["engine"] == "onnxruntime"
    assert manifest["artifacts"][0]["inputs"][0]["name"] == "images"
    assert fp32_parity(out)["outputs"]["scores"]["max_abs_error"] <= 1e-5


def test_torch_export_program(tmp_path, data):
    path = tmp_path / "resnet.pt2"
    torch.export.save(torch.export.export(tiny_resnet(), (torch.zeros(1, 3, 32, 32),)), str(path))
    out = tmp_path / "out"
    assert run_cli("build", path, "--calib", data / "calib.npy", "--target", "x86_64", "--out", out,
                   "--quiet") == 0
    assert fp32_parity(out)["passed"]


def test_torchscript_file(tmp_path, data):
    path = tmp_path / "resnet.ts"
    torch.jit.trace(tiny_resnet(), torch.zeros(1, 3, 32, 32)).save(str(path))
    out = tmp_path / "out"
    assert run_cli("build", path, "--input-shape", "1,3,32,32", "--calib", data / "calib.npy", "--target",
                   "x86_64", "--out", out, "--quiet") == 0
    assert fp32_parity(out)["outputs"]["output"]["max_abs_error"] <= 1e-4


def test_two_outputs_are_compared_separately(tmp_path, data):
    out = tmp_path / "out"
    assert run_cli("build", f"{TESTS / 'models.py'}:two_heads", "--input-shape", "1,3,32,32", "--calib",
                   data / "calib.npy", "--out", out, "--quantize", "fp16", "--target", "x86_64", "--quiet") == 0
    artifacts = read_manifest(out / "x86_64")["artifacts"]
    assert [(a["format"], a["precision"]) for a in artifacts] == [("onnx", "fp32"), ("onnx", "fp16"), ("pte", "fp32")]
    for artifact in artifacts:
        assert set(artifact["parity"]["outputs"]) == {"output_0", "output_1"}
        assert "top1_agreement" in artifact["parity"]["outputs"]["output_0"]
        assert "top1_agreement" not in artifact["parity"]["outputs"]["output_1"]  # not a classifier output


def test_image_folders_for_calibration_and_labeled_eval(tmp_path):
    """The example's held-out digits written as PNG class folders, read back with the recipe's preprocessing."""
    from PIL import Image

    from edgekit import example

    with np.load(example.TEST) as archive:
        x, y = archive["x"], archive["y"]
    pixels = np.clip((x[:, 0] * 0.5 + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels[:100], y[:100])):
        (tmp_path / "eval" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "eval" / str(label) / f"{index}.png")
    (tmp_path / "calib").mkdir()
    for index, image in enumerate(pixels[100:164]):
        Image.fromarray(image).save(tmp_path / "calib" / f"{index}.png")
    recipe = tmp_path / "edgekit.yaml"
    recipe.write_text(f"model: {example.FACTORY}\nweights: {example.WEIGHTS}\ninput_shape: [1, 1, 32, 32]\n"
                      "calibration: {data: calib}\neval: eval\n"
                      "preprocess: {scale: 0.00392156862745098, mean: [0.5], std: [0.5]}\n")
    out = tmp_path / "out"
    assert run_cli("build", "--recipe", recipe, "--target", "x86_64", "--out", out, "--quiet") == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["evaluation"]["samples"] == 100 and manifest["evaluation"]["labeled"]
    assert manifest["reference"]["accuracy"] >= 98.0  # the digits survive the PNG round trip
    assert manifest["calibration"]["samples"] == 64


def test_onnx_file_with_a_uint8_image_input(tmp_path, capsys):
    """A model exported with its preprocessing takes raw uint8 pixels: calibration, parity, the per-layer SNR
    and `debug` all feed it uint8 (the per-layer step fed float32, which ONNX Runtime refused with a
    traceback)."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "weight")
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")
    nodes = [helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "weight"], ["features"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["features"], ["map"])]
    graph = helper.make_graph(nodes, "preprocessing_inside",
                              [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 8, 14, 14])],
                              [weight, scale])
    path = tmp_path / "raw_pixels.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    smooth = torch.nn.functional.interpolate(torch.rand(80, 3, 4, 4), size=(16, 16), mode="bilinear").numpy()
    np.save(tmp_path / "pixels.npy", (smooth * 255).round().astype(np.uint8))
    out = tmp_path / "out"
    assert run_cli("build", path, "--calib", tmp_path / "pixels.npy", "--target", "x86_64", "--out", out,
                   "--quiet") == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["artifacts"][0]["inputs"][0]["dtype"] == "uint8"
    int8 = next(a for a in manifest["artifacts"] if a["precision"] == "int8")
    assert int8["parity"]["passed"] and int8["parity"]["outputs"]["map"]["cosine"] >= 0.999
    snr = {layer["name"]: float(layer["snr_db"]) for layer in int8["layers"]}  # "inf" where exact (JSON)
    assert set(snr) == {"as_float", "scaled", "map"} and min(snr.values()) > 20
    assert run_cli("debug", out / "x86_64") == 0  # debug feeds the folder's uint8 parity inputs as they are
