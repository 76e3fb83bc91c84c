"""Data that is valid but wrong, images that would exhaust memory, shapes no runtime can hold: each ends with
one line on stderr and exit code 2 before anything is written, and legitimate data still builds."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import one_line_error, read_manifest, run_cli, tree_state
from edgekit import example, recipe, resources
from edgekit.data import load_build_data
from edgekit.spec import TensorSpec

EXAMPLE = [example.FACTORY, "--weights", example.WEIGHTS, "--input-shape", "1,1,32,32"]
FAST = ["--target", "x86_64", "--quantize", "none", "--quiet"]
SPECS = [TensorSpec("input", (1, 1, 32, 32))]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The example's calibration images and labeled test split, in [-1, 1] as its preprocessing makes them."""
    with np.load(example.CALIB) as calib, np.load(example.TEST) as test:
        return calib["x"], test["x"], test["y"]


def as_pixels(x: np.ndarray) -> np.ndarray:
    """[-1, 1] back to 0-255 pixel values, float32: what a user gets by forgetting the normalization."""
    return ((x * 0.5 + 0.5) * 255).astype(np.float32)


def refused(capsys, tmp_path: Path, args: list, *words: str) -> None:
    """Build with `args`: exit 2, one line naming `words`, and nothing under tmp_path added or changed."""
    before = tree_state(tmp_path)
    one_line_error(capsys, run_cli("build", *args, "--out", tmp_path / "out", *FAST), 2, *words)
    assert tree_state(tmp_path) == before


def dynamic_onnx(path: Path) -> Path:
    """A real ONNX model whose height and width are dynamic: any --input-shape loads without running it."""
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["image"], ["pooled"])], "pool",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


# ---- Valid arrays, wrong preprocessing ------------------------------------------------------------------

def test_raw_uint8_pixels_for_a_float_model(tmp_path, capsys, digits):
    np.save(tmp_path / "calib.npy", np.round(as_pixels(digits[0])).astype(np.uint8))
    refused(capsys, tmp_path, [*EXAMPLE, "--calib", tmp_path / "calib.npy"],
            "calib.npy", "uint8 (values 0..255, raw pixels?)", "takes float32", "divide by 255", "preprocess:")


@pytest.mark.parametrize("which", ["--calib", "--eval"])
def test_float_pixels_255_times_off_the_declared_preprocessing(tmp_path, capsys, digits, which):
    """The bundled example declares scale 1/255, mean 0.5, std 0.5: 8-bit images become [-1, 1]."""
    np.savez(tmp_path / "pixels.npz", x=as_pixels(digits[1]), y=digits[2])
    refused(capsys, tmp_path, [which, tmp_path / "pixels.npz"],
            "pixels.npz", "spans [0, 255]", "declared preprocessing makes [-1, 1]", "(pixels * scale - mean) / std")


@pytest.mark.parametrize("pixels_in", ["calib", "eval"])
def test_calibration_and_eval_data_prepared_differently(tmp_path, capsys, digits, pixels_in):
    """No preprocessing declared (the user's own model): only the two data sets can disagree."""
    calib, test, labels = digits
    np.save(tmp_path / "calib.npy", as_pixels(calib) if pixels_in == "calib" else calib)
    np.savez(tmp_path / "eval.npz", x=as_pixels(test) if pixels_in == "eval" else test, y=labels)
    spans = {"calib": "[-1, 1]", "eval": "[-1, 1]", pixels_in: "[0, 255]"}
    refused(capsys, tmp_path, [*EXAMPLE, "--calib", tmp_path / "calib.npy", "--eval", tmp_path / "eval.npz"],
            f"calib.npy spans {spans['calib']}", f"eval.npz spans {spans['eval']}", "preprocessed differently")


def test_milder_mismatches_are_warnings_that_the_build_records(tmp_path, digits):
    calib, test, labels = digits
    np.save(tmp_path / "wide.npy", calib * 3)  # [-3, 3]: another normalization, or heavy augmentation
    np.save(tmp_path / "twice.npy", calib / 255)  # divided by 255 after the normalization
    np.savez(tmp_path / "eval.npz", x=test, y=labels)
    declared = {"scale": 1 / 255, "mean": [0.5], "std": [0.5]}

    def warnings(calib_file: str, eval_file: str | None) -> list[str]:
        made = recipe.make(None, {"model": example.FACTORY, "input_shape": [1, 1, 32, 32], "preprocess": declared,
                                  "calibration": {"data": str(tmp_path / calib_file)},
                                  "eval": eval_file and str(tmp_path / eval_file)})
        return load_build_data(made, SPECS).warnings()

    against_declared, against_eval = warnings("wide.npy", "eval.npz")
    assert "wide.npy: input 'input' spans [-3, 3], but the declared preprocessing makes [-1, 1]" in against_declared
    assert "wide.npy spans [-3, 3]" in against_eval and "eval.npz spans [-1, 1]" in against_eval
    tiny, few_held_out = warnings("twice.npy", None)  # against eval.npz it would be refused: 127 widths apart
    assert "twice.npy: input 'input' spans [-0.00392, 0.00392]" in tiny and "normalized twice" in tiny
    assert "only 26 held-out samples" in few_held_out


def test_legitimate_data_is_not_refused_or_warned_about(tmp_path):
    """The bundled example (declared preprocessing, arrays in [-1, 1], its own --eval) builds with no warning;
    random-normal --random-calib data is never range-checked."""
    out = tmp_path / "out"
    assert run_cli("build", *FAST, "--out", out) == 0
    manifest = read_manifest(out / "x86_64")
    assert manifest["warnings"] == [] and manifest["reference"]["accuracy"] > 99
    made = recipe.make(None, {"model": example.FACTORY, "input_shape": [1, 1, 32, 32], "calibration": {"random": True},
                              "preprocess": {"scale": 1 / 255, "mean": [0.5], "std": [0.5]}})
    random = load_build_data(made, SPECS)  # normal values reach 4 and more: outside [-1, 1], never checked
    assert random.range_warnings == [] and np.abs(random.calibration.inputs["input"]).max() > 3


# ---- Images that would exhaust memory -------------------------------------------------------------------

def declared_size_png(path: Path, width: int, height: int) -> None:
    """A real 1x1 PNG whose header is rewritten (CRC included) to declare width x height: a decompression
    bomb's header, a few dozen bytes on disk."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: signature (8), length (4), type (4), then the size
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["bomb", "huge"])
def test_an_image_with_too_many_pixels(tmp_path, capsys, kind):
    """50000x50000 (Pillow refuses it) and a real 10000x9000 1-bit PNG, 11 KB on disk: Pillow only warns
    about it and would decode 90 million pixels."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (32, 32), 128).save(folder / "fine.png")
    if kind == "bomb":
        declared_size_png(folder / "image.png", 50000, 50000)
    else:
        Image.new("1", (10000, 9000)).save(folder / "image.png")
    refused(capsys, tmp_path, [*EXAMPLE, "--calib", folder], "image.png", "more than 89 million pixels",
            "decompression bomb", "resize it")


# ---- Shapes no runtime can hold, builds that cannot fit in memory ---------------------------------------

@pytest.mark.parametrize("shape,elements", [("1,3,100000,100000", "30000000000"), ("1,1,2147483648,1", "2147483648")])
def test_an_input_shape_no_runtime_can_index(tmp_path, capsys, shape, elements):
    """Refused while parsing the flags: the PyTorch model is never run on zeros of that shape."""
    args = [example.FACTORY, "--weights", example.WEIGHTS, "--input-shape", shape, "--random-calib"]
    refused(capsys, tmp_path, args, f"'{shape}' has {elements} elements", "more than the 2147483647",
            "lower the input shape")


def test_an_oversized_shape_from_a_recipe(tmp_path, capsys):
    """A recipe file's shape is not parsed as a flag: the check before loading the model catches it."""
    model = dynamic_onnx(tmp_path / "pool.onnx")
    (tmp_path / "edgekit.yaml").write_text(f"model: {model}\ninput_shape: [1, 3, 2147483648, 1]\n"
                                           "calibration: {random: true}\n")
    refused(capsys, tmp_path, ["--recipe", tmp_path / "edgekit.yaml"],
            "of shape 1,3,2147483648,1 has 6442450944 elements", "lower the input shape")


def test_a_build_that_would_not_fit_in_memory(tmp_path, capsys):
    """1x3x20000x35000 fits int32 indexing, but 40 random samples of 8.4 GB each, three copies, do not fit."""
    available = resources.available_bytes()
    if available is None:
        pytest.skip("no MemAvailable reading on this system")
    if available > 1e12:
        pytest.skip("this machine has more than the 1 TB the build would need")
    model = dynamic_onnx(tmp_path / "pool.onnx")
    refused(capsys, tmp_path, [model, "--input-shape", "1,3,20000,35000", "--random-calib"],
            "needs about 1008.0 GB", "GB available", "lower --calib-samples or the input shape")
