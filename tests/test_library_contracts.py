"""The private library APIs edgekit uses, each wrapped in one place, still have the shape edgekit relies on.

An update that renames or reshapes one fails here, naming the library and its version, rather than deep
inside a build or, worse, silently (an unknown converter attribute is simply set; an unknown denylisted
node is simply ignored).
"""
from __future__ import annotations

import inspect
from importlib import metadata

import numpy as np
import pytest


def version(distribution: str) -> str:
    return f"{distribution} {metadata.version(distribution)}"


@pytest.fixture(scope="module")
def make_converter():
    """A new TFLite converter, set up for INT8 calibration, of a small Conv + ReLU graph."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
    samples = [rng.normal(size=(1, 8, 8, 3)).astype(np.float32) for _ in range(4)]

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def model(x):
        return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))

    def make():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample] for sample in samples)
        return converter

    return make


@pytest.fixture(scope="module")
def calibrated(make_converter, tmp_path_factory):
    """The graph calibrated by edgekit's wrapper: a float .tflite with min/max statistics."""
    from edgekit.stages.tflite_fallback import calibrate_only

    path = tmp_path_factory.mktemp("contracts") / "calibrated.tflite"
    path.write_bytes(calibrate_only(make_converter()))
    return path


def test_litert_ops_details_has_the_fields_edgekit_reads(calibrated):
    from edgekit.runners.litert import LiteRTRunner, builtin_interpreter, ops_details

    where = f"{version('ai-edge-litert')}: Interpreter._get_ops_details (edgekit.runners.litert.ops_details)"
    for interpreter in (builtin_interpreter(calibrated), LiteRTRunner(calibrated).interpreter):
        ops = ops_details(interpreter)
        assert ops, f"{where} lists no ops"
        for op in ops:
            missing = {"index", "op_name", "inputs", "outputs"} - set(op)
            assert not missing, f"{where} no longer gives {sorted(missing)} (it gives {sorted(op)})"
            assert isinstance(op["op_name"], str), f"{where}: op_name is {type(op['op_name']).__name__}, not str"
            for field in ("inputs", "outputs"):
                kind = np.asarray(op[field]).dtype.kind
                assert kind in "iu", f"{where}: {field} holds {kind!r} values, not tensor indices"
    names = [op["op_name"] for op in ops_details(builtin_interpreter(calibrated))]
    assert "CONV_2D" in names, f"{where}: op names are not LiteRT's builtin names ({names})"


def test_tensorflow_calibrate_only_switch_exists(make_converter, calibrated):
    from edgekit.layerwise.placement import float_ops, tflite_ops

    converter = make_converter()
    for attribute in ("_experimental_calibrate_only", "_experimental_disable_per_channel"):
        assert hasattr(converter, attribute), \
            f"{version('tensorflow')}: TFLiteConverter has no {attribute} any more " \
            f"(edgekit.stages.tflite_fallback.calibrate_only sets it)"
    # Were the switch ignored, convert() would quantize: the convolution would no longer compute in float.
    assert set(tflite_ops(calibrated)) <= float_ops(calibrated), \
        f"{version('tensorflow')}: _experimental_calibrate_only no longer stops the converter after calibration"


def test_tensorflow_mlir_quantize_takes_what_edgekit_passes(calibrated, monkeypatch):
    from tensorflow.lite.python import convert

    from edgekit.layerwise.placement import float_ops, same_op, tflite_ops
    from edgekit.runners.litert import builtin_interpreter
    from edgekit.stages.tflite_fallback import quantize_calibrated

    where = f"{version('tensorflow')}: tensorflow.lite.python.convert.mlir_quantize"
    assert callable(getattr(convert, "mlir_quantize", None)), \
        f"{where} is gone (edgekit.stages.tflite_fallback.quantize_calibrated calls it)"
    real = convert.mlir_quantize

    def checked(*args, **kwargs):
        try:
            inspect.signature(real).bind(*args, **kwargs)
        except TypeError as err:
            pytest.fail(f"{where} no longer takes the arguments quantize_calibrated passes: {err}")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "mlir_quantize", checked)
    ops = tflite_ops(calibrated)
    kept = next(name for name, op in ops.items() if op["op_type"] == "CONV_2D")
    quantized = calibrated.with_name("quantized.tflite")
    quantized.write_bytes(quantize_calibrated(calibrated.read_bytes(), "int8", [kept]))
    assert any(same_op(kept, name) for name in float_ops(quantized)), \
        f"{where} ignored denylisted_nodes: the denylisted convolution '{kept}' was quantized"
    interpreter = builtin_interpreter(quantized)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8, f"{where} ignored input_data_type"


def test_torch_pruning_round_to_is_still_the_hook_edgekit_overrides():
    tp = pytest.importorskip("torch_pruning")
    from edgekit.stages.prune.channels import nearest_rounding_pruner

    where = f"{version('torch-pruning')}: BasePruner._round_to (overridden in edgekit/stages/prune/channels.py)"
    base = getattr(tp.pruner.BasePruner, "_round_to", None)
    assert callable(base), f"{where} is gone"
    ours = nearest_rounding_pruner()._round_to
    assert inspect.signature(base) == inspect.signature(ours), \
        f"{where} now takes {inspect.signature(base)}, edgekit's override {inspect.signature(ours)}"
    assert "self._round_to(" in inspect.getsource(tp.pruner.BasePruner), f"{where} is no longer called"


def test_executorch_threadpool_reset_sets_the_threads_the_device_runner_asks_for():
    """XNNPACK's threads come from ExecuTorch's process-wide pool, sized only through a private call
    (edgekit/device/runner.py `load_executorch`)."""
    pytest.importorskip("executorch")
    import torch  # noqa: F401  (loads libtorch for the extension)
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(1)
    assert _C._threadpool_get_thread_count() == 1, version("executorch")


RUN_PTE = """
import sys
import numpy as np
from edgekit.device.runner import PteModel
model = PteModel(sys.argv[1], 1)
outputs = model.finish(model.invoke(model.prepare([np.load(sys.argv[2])])))
np.save(sys.argv[3], outputs[0])
print(model.input_shapes, len(model.output_names), "executorch.exir" in sys.modules)
"""


def test_executorch_extension_loads_and_runs_a_program_without_importing_the_compiler(tmp_path):
    """Programs load through ExecuTorch's compiled extension `_C` (private; edgekit/device/runner.py
    `executorch_forward`): the public executorch.runtime imports the whole compiler, seconds per process."""
    pytest.importorskip("executorch")
    import subprocess
    import sys

    import torch
    from executorch.exir import to_edge_transform_and_lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    sample = torch.randn(2, 3, 8, 8)
    program = to_edge_transform_and_lower(torch.export.export(model, (sample,))).to_executorch()
    (tmp_path / "model.pte").write_bytes(program.buffer)
    np.save(tmp_path / "x.npy", sample.numpy())
    done = subprocess.run([sys.executable, "-c", RUN_PTE, str(tmp_path / "model.pte"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{version('executorch')}: {done.stderr[-2000:]}"
    assert done.stdout.split("\n")[-2] == "[[2, 3, 8, 8]] 1 False", version("executorch")
    expected = model(sample).detach().numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-5, version("executorch")


def test_executorch_lowered_programs_keep_the_module_path_of_each_layer():
    """The INT8 program's float layers are proven by reading the lowered XNNPACK subgraphs back (their
    `original_module`) and each layer's `nn_module_stack` (edgekit/stages/executorch.py `layer_precisions`)."""
    pytest.importorskip("executorch")
    import torch

    from edgekit.sources import SourceModel
    from edgekit.spec import TensorSpec
    from edgekit.stages.executorch import _export, _export_quantized, layer_precisions
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    source = SourceModel("torch", "two convolutions", "0" * 64, [TensorSpec("input", (1, 3, 8, 8))],
                         [TensorSpec("output", (1, 4, 4, 4))], module=model)
    example = (torch.zeros(1, 3, 8, 8),)
    calibration = {"input": np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)}
    program = _export_quantized(_export(source, example), example, source, calibration, ["2"], "minmax")
    graph = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).exported_program().graph_module
    assert layer_precisions(graph) == {"0": "int8", "2": "fp32"}, version("executorch")
