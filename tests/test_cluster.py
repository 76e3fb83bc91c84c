"""Weight sharing (weight clustering): K shared values per layer, snapped to the int8 grid, fine-tuned by
distillation; what it buys is compressed size, reported as such."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from conftest import one_line_error, read_manifest, run_cli
from edgekit.example import CALIB, INPUT_SHAPE, TEST, WEIGHTS
from edgekit.example.model import make_model
from edgekit.package import compressed_sizes
from edgekit.stages.prune import ClusterConfig, PruneConfig, prune

pytest.importorskip("sklearn")
K = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_layer_holds_at_most_k_values_on_the_int8_grid_and_keeps_its_accuracy():
    model = make_model()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    test = np.load(TEST)
    result = prune(model.eval(), INPUT_SHAPE, PruneConfig(cluster=ClusterConfig(clusters=K, fine_tune_steps=100)),
                   np.load(CALIB)["x"], (test["x"], test["y"]))
    step = result.report["steps"][0]
    layers = [m for m in result.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert step["step"] == "cluster" and step["layers"] == len(layers) == 23
    for module in layers:
        values = torch.unique(module.weight.detach())
        assert len(values) <= K
        step_size = values.abs().max() / 127  # every shared value is a whole number of int8 steps
        assert torch.allclose(values / step_size, torch.round(values / step_size), atol=1e-3)
    assert max(step["unique_values"].values()) <= K
    # the same parameters, far fewer distinct bytes: the compressed size falls, the raw size does not
    assert step["after"]["float32_bytes"] == step["before"]["float32_bytes"]
    assert step["after"]["zlib_bytes"] < 0.4 * step["before"]["zlib_bytes"]
    final = result.report["final"]
    assert final["accuracy"] >= result.report["original"]["accuracy"] - 1.0
    assert "not the raw files or CPU time" in step["note"]


@pytest.mark.slow
def test_a_clustered_build_under_a_budget_ships_smaller_compressed_artifacts(tmp_path, example_build, capsys):
    """--cluster with the budget flags: the exported files keep at most K values per output channel (a folded
    BatchNorm scales each channel's shared values), and compress far better than the unclustered build's."""
    recipe = tmp_path / "edgekit.yaml"
    recipe.write_text(f"cluster: {{clusters: {K}, fine_tune_steps: 100}}\n")
    out = tmp_path / "out"
    assert run_cli("build", "--recipe", recipe, "--target", "x86_64", "--min-agreement", "0.98",
                   "--out", out) == 0
    err = capsys.readouterr().err
    assert f"weights shared ({K} shared values per layer)" in err and "compressed (zstd / zip):" in err
    built = {a["file"]: a for a in read_manifest(out / "x86_64")["artifacts"]}
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        assert built[name]["parity"]["passed"]
        for weights in _layer_weights(out / "x86_64" / name):
            assert max(len(np.unique(channel)) for channel in weights) <= K
        plain = example_build / "x86_64" / name
        packed, unpacked = built[name]["details"]["compressed_bytes"], compressed_sizes(plain)
        assert packed["zip"] < (0.5 if name == "model.fp32.onnx" else 0.9) * unpacked["zip"]
        assert abs(built[name]["bytes"] - plain.stat().st_size) < 0.02 * plain.stat().st_size  # raw: unchanged
    pruning = read_manifest(out / "x86_64")["pruning"]
    assert pruning["final"]["top1_agreement"] >= 0.98
    # The original model, timed as fp32 ONNX beside the clustered one: its graph is the same size.
    original = pruning["original_host_latency"]
    assert original["runner"] == "build" and original["latency_ms"]["p50"] > 0
    assert original["model"]["macs"] == built["model.fp32.onnx"]["details"]["macs"]
    assert f"the original as fp32 ONNX: {original['latency_ms']['p50']:.3f} ms p50 on the build host" in err


def _layer_weights(path):
    """The weight tensor of every Conv and Gemm (through its DequantizeLinear in a QDQ graph)."""
    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {n.output[0]: n for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            name = node.input[1]
            if name not in initializers:
                name = producers[name].input[0]
            yield initializers[name]


@pytest.mark.parametrize("value", ["1", "300"])
def test_a_cluster_count_outside_2_to_256_is_refused(tmp_path, capsys, value):
    code = run_cli("build", "--cluster", value, "--target", "x86_64", "--out", tmp_path / "out")
    one_line_error(capsys, code, 2, "outside 2..256")
    assert not (tmp_path / "out").exists()
