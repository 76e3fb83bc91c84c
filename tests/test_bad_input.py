"""Bad input ends with one clear line naming the problem, exit code 2, no traceback, nothing left behind."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from conftest import TESTS, run_cli, run_console
from edgekit import example

EXAMPLE = [example.FACTORY, "--weights", example.WEIGHTS, "--input-shape", "1,1,32,32"]


class RunsCode:
    """A pickle payload that would create a file if it were ever unpickled with code execution."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def assert_user_error(capsys, out: pathlib.Path, code: int, *words: str) -> str:
    message = capsys.readouterr().err.strip()
    assert code == 2, message
    lines = message.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), message
    assert "Traceback" not in message
    for word in words:
        assert word in message
    assert not out.exists() or not any(out.iterdir()), "a failed build left files behind"
    return message


def test_missing_model_file(tmp_path, capsys):
    code = run_cli("build", tmp_path / "nope.onnx", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "nope.onnx", "does not exist")


@pytest.mark.parametrize("content", [b"this is not protobuf \x00\xff" * 10, None], ids=["corrupt", "truncated"])
def test_corrupt_or_truncated_onnx(tmp_path, capsys, example_build, content):
    path = tmp_path / "bad.onnx"
    if content is None:
        whole = (example_build / "arm64" / "model.fp32.onnx").read_bytes()
        content = whole[: len(whole) // 3]
    path.write_bytes(content)
    code = run_cli("build", path, "--out", tmp_path / "out", "--quiet", "--random-calib")
    assert_user_error(capsys, tmp_path / "out", code, "not a valid ONNX model")


def _one_op_onnx(path: pathlib.Path, op: str, name: str) -> pathlib.Path:
    """An opset-17 ONNX file of one `op` node from input x (1, 8) to output y."""
    from onnx import TensorProto, helper, save

    io = [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, 8]) for tensor in ("x", "y")]
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name=name)], "g", io[:1], io[1:])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_with_an_operator_onnx_does_not_define(tmp_path, capsys):
    """tf2onnx writes TensorFlow ops it cannot convert as they are (Keras's exact GELU became `Erfc`)."""
    path = _one_op_onnx(tmp_path / "exported.onnx", "Erfc", "gelu/Erfc")
    code = run_cli("build", path, "--out", tmp_path / "out", "--quiet", "--random-calib")
    assert_user_error(capsys, tmp_path / "out", code, "uses the operator Erfc", "does not define (at opset 17)",
                      "re-export")


def test_source_model_that_outputs_nan_on_the_held_out_data(tmp_path, capsys):
    """Log of random (partly negative) inputs: the reference itself is NaN, so nothing can be judged against it."""
    path = _one_op_onnx(tmp_path / "nan.onnx", "Log", "log")
    code = run_cli("build", path, "--out", tmp_path / "out", "--quiet", "--random-calib")
    assert_user_error(capsys, tmp_path / "out", code, "outputs NaN/Inf for 'y'", "held-out data", "preprocessing")


def test_pickle_that_needs_code_execution_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "code-was-executed"
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": RunsCode(marker)}, weights)
    code = run_cli("build", example.FACTORY, "--weights", weights, "--input-shape", "1,1,32,32",
                   "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "refused", "state_dict")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_model(tmp_path, capsys):
    weights = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, weights)
    code = run_cli("build", example.FACTORY, "--weights", weights, "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "do not fit", "unexpected conv.weight")


@pytest.mark.parametrize("reference, words", [
    (f"{TESTS / 'models.py'}:no_such_factory", ["no factory function 'no_such_factory'"]),
    ("no_such_package.models:make", ["cannot import 'no_such_package.models'"]),
    (f"{TESTS / 'models.py'}:not_a_model", ["not a torch.nn.Module"]),
])
def test_factory_problems(tmp_path, capsys, reference, words):
    code = run_cli("build", reference, "--input-shape", "1,3,32,32", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, *words)


def test_unknown_target(tmp_path, capsys):
    code = run_cli("build", "--target", "arm65", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "unknown target 'arm65'", "arm64", "x86_64")


@pytest.mark.parametrize("text, words", [
    ("quantise: int8\n", ["unknown key 'quantise'", "quantize"]),
    ("calibration:\n  metod: entropy\n", ["unknown key 'calibration.metod'"]),
    ("input_shape: 224\n", ["'input_shape' must be a list"]),
    ("quantize: int4\n", ["'quantize' is 'int4'", "'int8'"]),
    ("keep_going: [yes]\n", ["'keep_going' must be bool"]),
    ("targets: [arm64\n", ["not valid YAML"]),
])
def test_recipe_typos_and_wrong_types(tmp_path, capsys, text, words):
    recipe = tmp_path / "edgekit.yaml"
    recipe.write_text(text)
    code = run_cli("build", "--recipe", recipe, "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, str(recipe), *words)


def test_input_shape_that_does_not_match_the_model(tmp_path, capsys):
    code = run_cli("build", example.FACTORY, "--weights", example.WEIGHTS, "--input-shape", "1,3,32,32",
                   "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "rejects inputs of shape input 1,3,32,32")


def test_input_shape_that_does_not_match_an_onnx_model(tmp_path, capsys, example_build):
    code = run_cli("build", example_build / "arm64" / "model.fp32.onnx", "--input-shape", "1,1,64,64",
                   "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "does not match input 'input'", "(1,1,32,32)")


def test_calibration_with_nan(tmp_path, capsys):
    data = np.zeros((10, 1, 32, 32), np.float32)
    data[3, 0, 5, 5] = np.nan
    data[7, 0, 1, 1] = np.inf
    np.save(tmp_path / "calib.npy", data)
    code = run_cli("build", *EXAMPLE, "--calib", tmp_path / "calib.npy", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "2 NaN/Inf values", "first at index 3")


def test_calibration_with_the_wrong_shape(tmp_path, capsys):
    np.save(tmp_path / "calib.npy", np.zeros((10, 3, 32, 32), np.float32))
    code = run_cli("build", *EXAMPLE, "--calib", tmp_path / "calib.npy", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "shape (10, 3, 32, 32)", "(N, 1, 32, 32)")


def test_own_model_without_calibration_data(tmp_path, capsys):
    code = run_cli("build", *EXAMPLE, "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "no calibration data", "--random-calib")


def test_unknown_node_to_keep_in_float(tmp_path, capsys):
    code = run_cli("build", "--exclude-node", "node_Conv_9999", "--out", tmp_path / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "out", code, "no node of that name", "node_Conv_9999")


def test_output_folder_that_is_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = run_cli("build", "--out", blocker / "out", "--quiet")
    assert_user_error(capsys, tmp_path / "unused", code, "is a file, not a folder")
    code = run_cli("build", "--out", "/proc/edgekit-out", "--quiet")
    assert_user_error(capsys, tmp_path / "unused", code, "/proc/edgekit-out")


def test_check_on_a_folder_that_is_not_a_build(tmp_path, capsys):
    code = run_cli("check", tmp_path)
    assert_user_error(capsys, tmp_path / "unused", code, "no manifest.json")


def test_console_script_prints_one_line_without_traceback(tmp_path):
    result = run_console("build", tmp_path / "missing.pt2", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("edgekit: error: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
