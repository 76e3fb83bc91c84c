"""The prune stage on real models and real data: the bundled digits example and a full-size MobileNetV2."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from edgekit.errors import UserError  # noqa: E402
from edgekit.example import CALIB, INPUT_SHAPE, TEST, WEIGHTS  # noqa: E402
from edgekit.example.model import InvertedResidual, make_mobilenet_v2, make_model  # noqa: E402
from edgekit.stages.prune import PruneConfig, count_macs, prune  # noqa: E402

ORIGINAL_MACS = 6_092_032  # what edgekit.graph_stats counts in the example's ONNX graph
# The default 300 distillation steps: 200 passed too, with 0.9 points to spare instead of 1.2.
STEPS = 300


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def example():
    model = make_model()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    test = np.load(TEST)
    return model.eval(), np.load(CALIB)["x"], (test["x"], test["y"])


@pytest.fixture(scope="module")
def half_pruned(example):
    model, calib, evaluation = example
    torch.set_num_threads(1)
    return prune(model, INPUT_SHAPE, PruneConfig(ratio=0.5, round_to=8, recover_steps=STEPS), calib, evaluation)


def test_mac_count_matches_the_onnx_count(example):
    assert count_macs(example[0], INPUT_SHAPE) == ORIGINAL_MACS


@pytest.mark.slow
def test_half_pruned_example_keeps_its_accuracy(half_pruned):
    report = half_pruned.report
    original, final = report["original"], report["final"]
    assert original["macs"] == ORIGINAL_MACS and original["accuracy"] == pytest.approx(99.72, abs=0.01)
    assert report["macs_ratio"] <= 0.55
    assert final["parameters"] < 0.5 * original["parameters"]
    assert final["accuracy"] >= original["accuracy"] - 2.0
    assert count_macs(half_pruned.module, INPUT_SHAPE) == final["macs"]

    step = report["steps"][0]
    assert [r["kind"] for r in step["recovery"]] == ["bn", "kd"]
    assert step["recovery"][1]["steps"] == STEPS
    # The model handed back is the one measured: counting MACs after recovery once ran a training-mode forward
    # that moved the batch-norm statistics of the returned model.
    logits = half_pruned.module(torch.from_numpy(np.load(TEST)["x"])).detach().numpy()
    assert 100 * float((logits.argmax(1) == np.load(TEST)["y"]).mean()) == pytest.approx(final["accuracy"], abs=1e-3)
    accuracy = {q["after"]: q["accuracy"] for q in step["quality"]}
    # Pruning half the channels of this small network leaves it near chance; recovery brings it back.
    assert accuracy["pruning"] < 50
    assert accuracy["kd"] - accuracy["pruning"] >= 40
    assert accuracy["kd"] == final["accuracy"]


@pytest.mark.slow
def test_pruned_channels_are_multiples_of_round_to(half_pruned):
    model = half_pruned.module
    assert not model.training
    assert all(isinstance(p, nn.Parameter) and not hasattr(m, "weight_mask")
               for m in model.modules() for p in m.parameters(recurse=False))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        # Every output count is a multiple of 8, depthwise ones included: a depthwise conv's channels
        # are tied to the pointwise conv that feeds it, and Torch-Pruning rounds that group as one.
        assert conv.out_channels % 8 == 0, conv
        if conv.groups > 1:
            assert conv.groups == conv.in_channels == conv.out_channels, conv
    # The stem still takes the one grayscale channel and the head still gives the ten classes.
    assert convs[0].in_channels == 1
    assert model.classifier[1].out_features == 10


def test_sparsity_is_permanent_and_shrinks_the_compressed_size(example):
    model, calib, evaluation = example
    result = prune(model, INPUT_SHAPE, PruneConfig(sparsity=0.5, recover=["bn"]), calib, evaluation)
    step = result.report["steps"][0]
    assert step["step"] == "sparsity" and step["achieved"] == pytest.approx(0.5, abs=0.01)
    assert step["after"]["macs"] == step["before"]["macs"] == ORIGINAL_MACS
    assert step["after"]["zlib_bytes"] < 0.75 * step["before"]["zlib_bytes"]
    assert "not CPU time" in step["note"]
    for module in result.module.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert not hasattr(module, "weight_orig")
            assert (module.weight == 0).float().mean() >= 0.4
    assert result.report["final"]["accuracy"] >= 95
    assert model.features[0][0].weight.count_nonzero() == model.features[0][0].weight.numel()  # original untouched


@pytest.mark.slow
def test_budget_search_picks_the_most_compressed_ratio_inside(example):
    model, calib, evaluation = example
    config = PruneConfig(max_accuracy_drop=1.0, round_to=8, recover_steps=STEPS, candidates=[0.3, 0.5, 0.7])
    result = prune(model, INPUT_SHAPE, config, calib, evaluation)
    search, original = result.report["search"], result.report["original"]
    assert search["candidates"] == [0.3, 0.5, 0.7]
    assert len(search["tried"]) >= 2
    for tried in search["tried"]:
        assert {"ratio", "macs", "parameters", "accuracy", "top1_agreement", "inside_budget"} <= set(tried)
        assert tried["inside_budget"] == (tried["accuracy"] >= original["accuracy"] - 1.0)
    chosen = search["chosen"]
    assert chosen == max(t["ratio"] for t in search["tried"] if t["inside_budget"])
    assert result.report["final"]["accuracy"] >= original["accuracy"] - 1.0
    assert result.report["steps"][0]["ratio"] == chosen


@pytest.mark.slow
def test_full_size_mobilenet_v2_prunes_and_exports(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from edgekit.sources import SourceModel
    from edgekit.spec import TensorSpec
    from edgekit.stages.export_onnx import export_onnx

    model, shape = make_mobilenet_v2(), (1, 3, 224, 224)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, *shape[1:]), dtype=np.float32)
    config = PruneConfig(ratio=0.3, round_to=8, recover=["bn"])
    result = prune(model, shape, config, images[:6], (images[6:], None))
    pruned, report = result.module, result.report
    assert report["macs_ratio"] < 0.75 and report["final"]["parameters"] < report["original"]["parameters"]

    blocks = [m for m in pruned.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    x = torch.from_numpy(images[:1])
    for block in blocks:
        first = block.block[0][0]
        out = block.block(torch.zeros(1, first.in_channels, 8, 8))
        if block.residual:  # the add still lines up: a residual block gives back as many channels as it takes
            assert out.shape[1] == first.in_channels
        depthwise = [c for c in block.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
        assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels == depthwise[0].out_channels
        assert depthwise[0].out_channels % 8 == 0

    source = SourceModel("torch", "pruned mobilenet_v2", hashlib.sha256(b"pruned").hexdigest(),
                         [TensorSpec("input", shape, "float32", "NCHW")], [TensorSpec("output", (1, 1000))],
                         module=pruned)
    artifact = export_onnx(source, 18, tmp_path)
    assert artifact.metadata["macs"] == report["final"]["macs"]
    session = onnxruntime.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"input": images[:1]})[0]
    with torch.no_grad():
        expected = pruned(x).numpy()
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


# ---- bad settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, words", [
    ({"ratio": 1.5}, "ratio 1.5 is outside (0, 1)"),
    ({"ratio": 0.0}, "ratio 0.0 is outside (0, 1)"),
    ({"sparsity": 1.0}, "sparsity 1.0 is outside [0, 1)"),
    ({"sparsity": -0.1}, "sparsity -0.1 is outside [0, 1)"),
    ({"candidates": [0.5, 1.2]}, "candidates"),
    ({"min_agreement": 98}, "fraction"),
])
def test_bad_config_values(settings, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        PruneConfig(**settings)


def test_accuracy_budget_needs_labels(example):
    model, calib, (x, _) = example
    with pytest.raises(UserError, match="needs labeled evaluation data.*--min-agreement"):
        prune(model, INPUT_SHAPE, PruneConfig(max_accuracy_drop=1.0), calib, (x, None))


def test_keep_must_name_a_module(example):
    model, calib, evaluation = example
    with pytest.raises(UserError, match="'features.99', which is not a module .* e.g. features"):
        prune(model, INPUT_SHAPE, PruneConfig(ratio=0.5, keep=["features.99"]), calib, evaluation)


class Untraceable(nn.Module):
    """Its forward leaves autograd, so Torch-Pruning's tracer sees no graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        features = torch.from_numpy(self.conv(x).detach().numpy())
        return self.head(features.mean(dim=(2, 3)))


def test_untraceable_model_is_a_user_error(example):
    _, calib, evaluation = example
    with pytest.raises(UserError, match="Torch-Pruning traced no removable channel in Untraceable"):
        prune(Untraceable().eval(), INPUT_SHAPE, PruneConfig(ratio=0.5, recover=[]), calib, evaluation)


def test_no_candidate_inside_the_budget_lists_what_was_tried(example):
    model, calib, evaluation = example
    config = PruneConfig(min_agreement=0.999, recover=["bn"], candidates=[0.6, 0.7])
    with pytest.raises(UserError, match=r"no prune ratio stays inside .*tried 0\.6: .*agreement"):
        prune(model, INPUT_SHAPE, config, calib, evaluation)


def test_ratio_outside_the_budget_fails_clearly(example):
    model, calib, evaluation = example
    config = PruneConfig(ratio=0.7, max_accuracy_drop=0.5, recover=["bn"])
    with pytest.raises(UserError, match="prune ratio 0.7 ends outside the budget"):
        prune(model, INPUT_SHAPE, config, calib, evaluation)
