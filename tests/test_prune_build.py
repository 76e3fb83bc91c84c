"""`edgekit build --prune`: the pruned, recovered model is what gets exported, quantized and verified."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import TESTS, read_manifest, run_cli
from edgekit import example


@pytest.mark.slow
def test_half_the_channels_with_recovery_on_arm64(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", "--prune", "0.5", "--out", out) == 0
    assert "pruned (ratio 0.5): MACs 6,092,032 ->" in capsys.readouterr().err
    manifest = read_manifest(out / "arm64")
    pruning = manifest["pruning"]
    assert pruning["macs_ratio"] <= 0.55
    assert pruning["config"]["round_to"] == 8  # the arm64 profile's channel multiple
    assert [step["recovery"] for step in pruning["steps"]][0]  # which recovery ran, for how long
    original = pruning["original"]["accuracy"]
    for artifact in manifest["artifacts"]:
        assert artifact["parity"]["passed"], artifact["file"]
        if artifact["precision"] == "int8":  # against the original, unpruned float model
            assert original - artifact["parity"]["accuracy"] <= 2.0, artifact["file"]
    graph = onnx.load(str(out / "arm64" / "model.fp32.onnx")).graph
    weights = {i.name: i for i in graph.initializer}
    widths = [weights[n.input[1]].dims[0] for n in graph.node if n.op_type == "Conv"]
    assert all(w % 8 == 0 for w in widths), widths
    assert manifest["source_model"]["reference"].endswith("(pruned)")


@pytest.mark.slow
def test_accuracy_budget_searches_the_ratio(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--max-accuracy-drop", "1.0", "--target", "x86_64", "--recover-steps", "200",
                   "--out", out, "--quiet") == 0
    pruning = read_manifest(out / "x86_64")["pruning"]
    search = pruning["search"]
    assert len(search["tried"]) >= 2 and search["chosen"] in search["candidates"]
    chosen = next(t for t in search["tried"] if t["ratio"] == search["chosen"])
    assert chosen["inside_budget"]
    assert pruning["original"]["accuracy"] - pruning["final"]["accuracy"] <= 1.0
    assert all(not t["inside_budget"] for t in search["tried"] if t["ratio"] > search["chosen"])


@pytest.mark.parametrize("args, words", [
    (["--prune", "1.5"], ["prune ratio 1.5 is outside (0, 1)"]),
    (["--prune", "0.5", "--target", "x86_64", "--recover", "kd", "--sparsity", "1.2"], ["sparsity 1.2"]),
])
def test_bad_prune_settings(tmp_path, capsys, args, words):
    assert run_cli("build", *args, "--out", tmp_path / "out", "--quiet") == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err


def test_pruning_an_onnx_model_is_refused(tmp_path, capsys, example_build):
    code = run_cli("build", example_build / "x86_64" / "model.fp32.onnx", "--prune", "0.3", "--calib",
                   example.CALIB, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert "pruning needs the PyTorch model" in capsys.readouterr().err


def test_accuracy_budget_without_labels_is_refused(tmp_path, capsys):
    np.save(tmp_path / "calib.npy", np.load(example.CALIB)["x"])
    code = run_cli("build", f"{TESTS / 'models.py'}:planted_digits", "--input-shape", "1,1,32,32", "--calib",
                   tmp_path / "calib.npy", "--max-accuracy-drop", "1.0", "--target", "x86_64",
                   "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert "max_accuracy_drop needs labeled evaluation data" in capsys.readouterr().err


@pytest.mark.slow
def test_a_detector_with_three_outputs_is_pruned_with_its_heads_kept_and_recovered(tmp_path, capsys):
    """The zoo's face detector (scores, boxes, landmarks from six 1x1 head convolutions): the heads are found
    by walking back from every output and kept whole, and distillation matches all three outputs."""
    import zoo

    np.save(tmp_path / "calib.npy", zoo.images((1, 3, 64, 64), 160, 0))
    out = tmp_path / "out"
    assert run_cli("build", f"{TESTS / 'zoo.py'}:face_detector", "--calib", tmp_path / "calib.npy",
                   "--prune", "0.3", "--target", "x86_64", "--out", out) == 0
    assert "cosine to the original per output" in capsys.readouterr().err
    manifest = read_manifest(out / "x86_64")
    (step,) = manifest["pruning"]["steps"]
    assert step["after"]["macs"] < 0.6 * step["before"]["macs"]
    kd = step["recovery"][-1]
    assert kd["kind"] == "kd" and kd["loss"].endswith("mean of 3 outputs")
    pruned, recovered = step["quality"][0], step["quality"][-1]
    assert len(recovered["output_cosines"]) == 3 and recovered["cosine"] == min(recovered["output_cosines"])
    # distillation wins back what pruning cost on every output
    assert all(after > before + 0.05 for before, after in zip(pruned["output_cosines"], recovered["output_cosines"]))
    assert [o["shape"] for o in manifest["model_io"]["outputs"]] == [[1, 160], [1, 160, 4], [1, 160, 10]]
    assert all(artifact["parity"]["passed"] for artifact in manifest["artifacts"])
