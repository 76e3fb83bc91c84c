"""Target profiles and recipes are data, validated on load; flags override the recipe."""
from __future__ import annotations

from importlib.resources import files

import pytest

from conftest import run_cli
from edgekit import example
from edgekit import recipe as recipes
from edgekit import targets
from edgekit.errors import UserError


def test_builtin_profiles_ship_inside_the_package(capsys):
    shipped = {p.name for p in files("edgekit").joinpath("profiles").iterdir()}
    assert {"arm64.yaml", "x86_64.yaml"} <= shipped
    assert run_cli("targets") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == targets.available()
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)  # a real description each


def test_profiles_hold_the_scheme_providers_and_tolerances():
    arm, x86 = targets.load("arm64"), targets.load("x86_64")
    assert arm.runtime.onnxruntime_providers == ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    assert (arm.quantization.activation_type, x86.quantization.activation_type) == ("int8", "uint8")
    assert arm.tolerance("fp32").min_snr_db == pytest.approx(60.0) and arm.tolerance("fp32").max_rel_error is None
    assert arm.tolerance("int8").max_accuracy_drop == pytest.approx(1.0)


def test_extends_merges_a_profile_over_another(tmp_path):
    path = tmp_path / "pixel8.yaml"
    path.write_text("extends: arm64\ndescription: Pixel 8 (Tensor G3)\nruntime: {threads: 4}\n"
                    "tolerances: {int8: {min_cosine: 0.995}}\n")
    device = targets.load(str(path))
    assert device.name == "pixel8" and device.runtime.threads == 4
    assert device.runtime.onnxruntime_providers[0] == "XnnpackExecutionProvider"  # inherited
    assert device.tolerance("int8").min_cosine == 0.995
    assert device.tolerance("int8").min_snr_db == 15.0  # the other int8 limits are inherited
    assert device.quantization.activation_type == "int8"


@pytest.mark.parametrize("text, words", [
    ("extends: arm64\nruntime: {thread: 4}\n", ["unknown key 'runtime.thread'", "threads"]),
    ("extends: arm64\nopset: eighteen\n", ["'opset' must be int"]),
    ("extends: arm64\nquantization: {activation_type: int4}\n", ["'quantization.activation_type'"]),
    ("extends: nowhere\n", ["unknown target 'nowhere'"]),
    ("opset: 18\n", ["required key 'description'"]),
])
def test_profile_errors_name_the_file_and_key(tmp_path, text, words):
    path = tmp_path / "device.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        targets.load(str(path))
    for word in words:
        assert word in str(err.value)


def test_a_local_profile_may_take_a_built_in_profiles_name_and_extend_it(tmp_path):
    path = tmp_path / "arm64.yaml"
    path.write_text("extends: arm64\ndescription: our arm64 phones\nruntime: {threads: 4}\n")
    device = targets.load(str(path))
    assert device.name == "arm64" and device.runtime.threads == 4 and device.formats == ["onnx", "tflite", "pte"]


def test_extends_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b\ndescription: a\n")
    (tmp_path / "b.yaml").write_text("extends: a\ndescription: b\n")
    with pytest.raises(UserError, match="loop"):
        targets.load(str(tmp_path / "a.yaml"))


def test_flags_override_the_recipe_and_paths_are_relative_to_it(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "edgekit.yaml"
    path.write_text("model: nets/model.py:make\nweights: w.pt\ntargets: [x86_64]\nquantize: fp16\n"
                    "calibration: {data: calib.npy, method: entropy, samples: 64}\n")
    made = recipes.make(str(path), {"quantize": "int8", "calibration": {"samples": 16}})
    assert made.model == f"{tmp_path / 'cfg' / 'nets' / 'model.py'}:make"
    assert made.weights == str(tmp_path / "cfg" / "w.pt")
    assert made.calibration.data == str(tmp_path / "cfg" / "calib.npy")
    assert (made.quantize, made.targets) == ("int8", ["x86_64"])
    assert (made.calibration.method, made.calibration.samples) == ("entropy", 16)


def test_module_references_are_not_paths(tmp_path):
    path = tmp_path / "edgekit.yaml"
    path.write_text("model: mypackage.models:make_model\ninput_shape: [1, 3, 224, 224]\n")
    assert recipes.make(str(path)).model == "mypackage.models:make_model"


def test_no_model_means_the_bundled_example():
    made = recipes.make(None, {})
    assert made.model == example.FACTORY and made.input_shape == [1, 1, 32, 32] and made.eval.endswith("test.npz")
