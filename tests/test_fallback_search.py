"""The bounded float-fallback search on the planted fragile layer: candidates cut from one calibrated QDQ
graph (checked against the quantizer itself), the noise ranking, bisection, pruning and its cap."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import TESTS
from edgekit import example
from edgekit.data import Dataset
from edgekit.int8_kernels import exact_session_config
from edgekit.layerwise import Budget, Evaluator, layer_sensitivity, plan_float_fallback
from edgekit.parity import accuracy, output_metrics
from edgekit.precision_plan import make_plan
from edgekit.sources import load
from edgekit.stages import Artifact
from edgekit.stages.export_onnx import export_onnx
from edgekit.stages.quantize import quantize_int8
from edgekit.targets import Quantization, Tolerance

# the tensors the planted model scales by 1000 in channel 0 (see tests/models.py planted_digits)
SCALED = {"getitem_51", "getitem_60", "add_3"}


def run(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX ModelProto or artifact, one sample at a time."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model.path)) if isinstance(model, Artifact) else model
    options = ort.SessionOptions()
    for key, value in exact_session_config().items():  # INT8 added in int32 on any host, as ARM does
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    runs = [session.run(None, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(count)]
    return {o.name: np.concatenate([r[j] for r in runs]) for j, o in enumerate(session.get_outputs())}


def planted_path(fp32: Artifact) -> set[str]:
    """The nodes that produce or read the scaled tensors."""
    import onnx

    return {n.name for n in onnx.load(str(fp32.path)).graph.node if n.output[0] in SCALED or set(n.input) & SCALED}


def digits() -> tuple[Dataset, Dataset]:
    with np.load(example.CALIB) as calib, np.load(example.TEST) as test:
        return (Dataset({"input": calib["x"]}, None, "calib.npz"),
                Dataset({"input": test["x"]}, test["y"], "test.npz"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("planted")
    source = load(f"{TESTS / 'models.py'}:planted_digits", None, [1, 1, 32, 32])
    calibration, test = digits()
    return {"folder": folder, "source": source, "fp32": export_onnx(source, 18, folder),
            "calibration": calibration, "test": test}


def test_no_node_float_is_the_int8_model_and_every_node_float_the_float_model(planted):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["calibration"],
                          quantize_int8)
    x = evaluator.evaluation.inputs
    int8 = quantize_int8(planted["fp32"], Quantization(), planted["calibration"], [], planted["folder"])
    assert np.array_equal(run(evaluator.candidate([]), x)["output"], run(int8, x)["output"])
    everything = run(evaluator.candidate(evaluator.candidates), x)["output"]
    np.testing.assert_allclose(everything, evaluator.reference["output"], rtol=0, atol=1e-5)


def test_a_candidate_is_what_the_quantizer_makes_with_those_nodes_excluded(planted, tmp_path):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["calibration"],
                          quantize_int8)
    x = evaluator.evaluation.inputs
    rng = np.random.default_rng(0)
    for nodes in [sorted(planted_path(planted["fp32"])),
                  *([n for n in evaluator.candidates if rng.random() < 0.3] for _ in range(3))]:
        excluded = quantize_int8(planted["fp32"], Quantization(), planted["calibration"], nodes, tmp_path)
        np.testing.assert_allclose(run(evaluator.candidate(nodes), x)["output"], run(excluded, x)["output"],
                                   rtol=0, atol=1e-5, err_msg=str(nodes))


def test_ranking_puts_the_planted_tensors_first(planted):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["calibration"],
                          quantize_int8)
    ranking = layer_sensitivity(evaluator)
    assert {s.tensor for s in ranking[:3]} == SCALED
    assert all(s.snr_db < 3 for s in ranking[:3]) and ranking[3].snr_db > 10
    assert {n for s in ranking[:3] for n in s.nodes} == planted_path(planted["fp32"])  # 5 convs and adds


def test_auto_plan_brings_int8_back_to_fp32_accuracy_in_few_evaluations(planted):
    calibration, test = planted["calibration"], planted["test"]
    plan = make_plan("auto", planted["source"], planted["fp32"], Quantization(), calibration, Tolerance())
    search = plan.search
    assert 1 <= len(plan.float_nodes) <= 6 and "features.6.block.2.1" in plan.modules.values()
    assert search["met"] and search["full_int8"]["snr_db"] < 15 <= search["score"]["snr_db"]
    assert search["nodes"] == {"float": len(plan.float_nodes), "quantized": 27}
    assert search["budget"]["min_snr_db"] == 15 and search["samples"] == 128
    assert search["evaluations"] <= 16 and set(search["seconds"]) == {"quantize", "search"}
    int8 = quantize_int8(planted["fp32"], Quantization(), calibration, plan.float_nodes, planted["folder"])
    fp32_accuracy = accuracy(run(planted["fp32"], test.inputs)["output"], test.labels)
    assert fp32_accuracy == pytest.approx(99.72, abs=0.01)
    assert accuracy(run(int8, test.inputs)["output"], test.labels) == pytest.approx(fp32_accuracy, abs=0.01)


def test_budget_met_by_full_int8_takes_one_evaluation(planted):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["calibration"],
                          quantize_int8)
    plan = plan_float_fallback(evaluator, Budget(min_snr_db=0.0))
    assert plan.met and plan.float_nodes == [] and plan.evaluations == 1 and plan.note is None


def test_a_budget_nothing_meets_keeps_no_node_float_and_says_so(planted):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["test"], quantize_int8)
    plan = plan_float_fallback(evaluator, Budget(max_accuracy_drop=-1.0))  # better than float: impossible
    assert not plan.met and plan.float_nodes == [] and plan.evaluations == 2
    assert plan.note.startswith("no plan meets the budget: with all 27 quantized nodes float")
    assert plan.to_dict()["note"] == plan.note


def test_pruning_stops_at_the_evaluation_cap(planted):
    evaluator = Evaluator(planted["fp32"], Quantization(), planted["calibration"], planted["calibration"],
                          quantize_int8)
    budget = Budget(min_snr_db=15.0)
    capped = plan_float_fallback(evaluator, budget, max_evaluations=4)  # the bisection alone takes more
    assert capped.met and capped.score.snr_db >= 15 and "pruning stopped at the cap of 4 evaluations" in capped.note
    full = plan_float_fallback(evaluator, budget)
    assert set(full.float_nodes) <= set(capped.float_nodes) and full.note is None


def test_the_score_is_the_worst_of_several_outputs(tmp_path):
    torch.set_num_threads(1)
    source = load(f"{TESTS / 'models.py'}:two_heads", None, [1, 3, 16, 16])
    fp32 = export_onnx(source, 18, tmp_path)
    data = Dataset({"input": np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)}, None, "random")
    evaluator = Evaluator(fp32, Quantization(), data, data, quantize_int8)
    assert len(evaluator.evaluation) == 40 and len(evaluator.reference) == 2
    int8 = run(quantize_int8(fp32, Quantization(), data, [], tmp_path), evaluator.evaluation.inputs)
    per_output = [output_metrics(evaluator.reference[name], int8[name])["snr_db"] for name in evaluator.reference]
    assert per_output[0] != per_output[1]
    assert evaluator.score([]).snr_db == pytest.approx(min(per_output))
    everything = run(evaluator.candidate(evaluator.candidates), evaluator.evaluation.inputs)
    for name, value in evaluator.reference.items():
        np.testing.assert_allclose(everything[name], value, rtol=0, atol=1e-5)


def test_an_opset_11_model(planted, tmp_path):
    """Opset 11 has no per-channel DequantizeLinear (ORT quantizes its weights per tensor there)."""
    from models import planted_digits

    path = tmp_path / "opset11.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(planted_digits(), (torch.zeros(1, 1, 32, 32),), str(path), dynamo=False, opset_version=11,
                          input_names=["input"], output_names=["output"])
    evaluator = Evaluator(Artifact(path, "onnx", "fp32"), Quantization(), planted["calibration"],
                          planted["calibration"], quantize_int8)
    assert [o.version for o in evaluator.qdq.opset_import if o.domain in ("", "ai.onnx")] == [11]
    everything = run(evaluator.candidate(evaluator.candidates), evaluator.evaluation.inputs)["output"]
    np.testing.assert_allclose(everything, evaluator.reference["output"], rtol=0, atol=1e-5)
    plan = plan_float_fallback(evaluator, Budget(min_snr_db=15.0))
    assert plan.met and 1 <= len(plan.float_nodes) <= 6 and plan.full_int8.snr_db < 15


def paddle_heads(path) -> None:
    """A paddle2onnx-style graph (opset 11, names with dots and slashes) whose outputs are a Softmax that is also
    read by a Slice, the Slice (a graph output produced by Slice, read again), and a Mul of it; its Conv has no bias
    and a separate BatchNormalization, which the quantizer's own optimizations fold (the float graph stays as is)."""
    import onnx
    from onnx import helper

    import zoo

    g = zoo.PaddleGraph(seed=13)
    x = g.conv_bn(g.conv_bn("x", 3, 16, 3, 2), 16, 32, 3, 2)
    flat = g.node("Reshape", [g.node("GlobalAveragePool", [x], "pool2d"),
                              g.const("shape", np.array([1, 32], np.int64))], "flatten")
    weight = g.const("fc_w", (np.random.default_rng(0).standard_normal((32, 10)) * 0.5).astype(np.float32))
    logits = g.node("Add", [g.node("MatMul", [flat, weight], "matmul"), g.const("fc_b", np.zeros(10, np.float32))], "fc")
    g.nodes += [helper.make_node("Softmax", [logits], ["p2o.Softmax.0"], name="p2o.Softmax.0", axis=1),
                helper.make_node("Slice", ["p2o.Softmax.0", g.const("starts", np.array([0], np.int64)),
                                           g.const("ends", np.array([5], np.int64)),
                                           g.const("axes", np.array([1], np.int64))], ["p2o.Slice.6"], name="p2o.Slice.6"),
                helper.make_node("Mul", ["p2o.Slice.6", g.const("scale", np.array(2.0, np.float32))], ["p2o/Mul.7"],
                                 name="p2o/Mul.7")]
    model = g.model({"x": (1, 3, 32, 32)}, {"p2o.Softmax.0": (1, 10), "p2o.Slice.6": (1, 5), "p2o/Mul.7": (1, 5)})
    zoo._fit_batch_norms(model, {"x": zoo.images((1, 3, 32, 32), 64, 0)})
    onnx.save(model, str(path))


@pytest.mark.parametrize("scheme", [Quantization(), Quantization(activation_type="uint8", reduce_range=True)],
                         ids=["arm64", "x86_64"])
def test_candidates_of_a_graph_from_another_exporter(tmp_path, scheme):
    """Every candidate graph loads and computes what the quantizer makes with those nodes excluded, on a graph whose
    outputs come from Slice and are read again, named with dots and slashes, as the edgekit hub makes it.
    Keeping only the Softmax or only the Slice float is where the two differ by design: a candidate keeps a tensor
    quantized until every quantized node that reads or makes it is float, where ORT's quantizer lets a Slice follow
    its input (and then re-quantizes its output for the Mul with that tensor's own scale). The search's estimate
    is the conservative one there — it keeps both float — which is also what the TFLite and ExecuTorch plans,
    made without that rule, need: those candidates agree to within a few 8-bit steps, the rest exactly."""
    import zoo

    paddle_heads(tmp_path / "heads.onnx")
    fp32 = export_onnx(load(str(tmp_path / "heads.onnx"), None, None), 17, tmp_path)
    data = Dataset({"x": zoo.images((1, 3, 32, 32), 64, 0)}, None, "calib")
    evaluator = Evaluator(fp32, scheme, data, data, quantize_int8)
    assert len(evaluator.candidates) >= 6
    x = evaluator.evaluation.inputs
    for nodes in [[], evaluator.candidates, *([n] for n in evaluator.candidates)]:
        excluded = quantize_int8(fp32, scheme, data, nodes, tmp_path)
        ours, theirs = run(evaluator.candidate(nodes), x), run(excluded, x)
        assert sorted(ours) == ["p2o.Slice.6", "p2o.Softmax.0", "p2o/Mul.7"]
        loose = nodes in (["p2o.Softmax.0"], ["p2o.Slice.6"])
        for name in ours:
            step = float(np.abs(theirs[name]).max()) / 64 if loose else 1e-5  # 4 steps of its 8-bit range
            np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=step, err_msg=f"{nodes}: {name}")


def test_a_graph_the_quantizer_optimizes_further_gives_candidates(tmp_path):
    """Unsimplified, the paddle-style Conv has no bias and its BatchNormalization is a node of its own; the
    quantizer folds it, so its Conv reads a bias the float node lacks: the search still finds its candidates."""
    import zoo

    paddle_heads(tmp_path / "heads.onnx")
    data = Dataset({"x": zoo.images((1, 3, 32, 32), 64, 0)}, None, "calib")
    evaluator = Evaluator(Artifact(tmp_path / "heads.onnx", "onnx", "fp32", {}, None), Quantization(), data, data,
                          quantize_int8)
    assert {"p2o.Softmax.0", "p2o.Slice.6", "p2o/Mul.7"} <= set(evaluator.candidates)
    assert run(evaluator.candidate(evaluator.candidates), evaluator.evaluation.inputs).keys() == \
        {"p2o.Softmax.0", "p2o.Slice.6", "p2o/Mul.7"}
