"""The fewest ONNX nodes to keep in float for INT8 to meet a budget, found in a bounded search.

The model is calibrated and quantized once, by the quantizer the caller passes (edgekit's
`stages.quantize.quantize_int8`, ORT QDQ). A candidate "these nodes stay float" is cut from that QDQ
graph instead of quantizing again. ORT quantizes a tensor when its producer or any consumer is
quantized, and then every consumer reads the dequantized value, so a candidate drops a tensor's Q/DQ
only when all of those nodes stay float (keeping one tensor float can take several nodes). Candidates
run with ORT's fused integer kernels on a few samples.

The search ranks the quantized tensors by the noise their own quantization adds (one float run),
bisects over how many of the noisiest go back to float (with the nodes that quantize them), then
drops the kept nodes the budget does not need: O(log n + kept) evaluations, capped.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import output_kinds
from ..artifact import Artifact
from ..data import Dataset
from ..graph_stats import graph_stats
from ..parity import accuracy, classifier_output, output_metrics
from ..targets import Quantization

# Candidates are scored on as many calibration samples as fit SCORE_MACS multiply-accumulates, within
# [MIN, MAX]: small models get a finer top-1 estimate, a 10 M-parameter recognizer stays within minutes.
MIN_EVAL_SAMPLES, MAX_EVAL_SAMPLES, SCORE_MACS = 32, 128, 5 * 10**9
RANK_SAMPLES = 8  # samples of the float run that measures each tensor's quantization noise
MAX_EVALUATIONS = 40  # the pruning pass stops here
FOLDED_ACTIVATIONS = ("Relu", "Clip")  # ORT's QDQ quantizer removes these when the Q after them clips alike
# (float model, scheme, calibration, ONNX nodes to keep float, folder) -> its INT8 QDQ model: quantize_int8's shape
Quantizer = Callable[[Artifact, Quantization, Dataset, list[str], Path], Artifact]


@dataclass
class Score:
    snr_db: float  # the lowest over the model's outputs, against the float model
    accuracy: float | None  # percent on the classifier output, when the evaluation data has labels
    top1_agreement: float | None = None  # the lowest over outputs with classes (logits, Softmax)

    def to_dict(self) -> dict:
        return {"snr_db": self.snr_db, "accuracy": self.accuracy, "top1_agreement": self.top1_agreement}


@dataclass
class Budget:
    min_snr_db: float | None = None
    max_accuracy_drop: float | None = None  # percentage points below the float model
    min_top1_agreement: float | None = None  # with the float model, on outputs with classes

    def met(self, score: Score, float_accuracy: float | None) -> bool:
        if self.min_snr_db is not None and not score.snr_db >= self.min_snr_db:
            return False
        if self.min_top1_agreement is not None and score.top1_agreement is not None \
                and not score.top1_agreement >= self.min_top1_agreement:
            return False
        if self.max_accuracy_drop is not None and float_accuracy is not None and score.accuracy is not None:
            return float_accuracy - score.accuracy <= self.max_accuracy_drop
        return True


@dataclass
class QuantPoint:
    """One tensor the INT8 graph quantizes (activation: Q -> DQ; weight or bias: quantized initializer -> DQ)
    and how to make it float again."""
    tensor: str  # its name in the float graph
    owners: frozenset[str]  # the quantized nodes that make ORT quantize it
    removed: list[str]  # its QuantizeLinear / DequantizeLinear nodes
    rename: dict[str, str]  # tensor names of the QDQ graph -> the float tensor
    unfolded: list  # float-graph activations the quantizer folded into its Q, to put back (NodeProto)
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int  # of a per-channel scale
    weight: bool


@dataclass
class Sensitivity:
    tensor: str
    nodes: list[str]  # keeping all of them float keeps the tensor float
    snr_db: float  # of the tensor quantized alone against its float value: min(overall, median per channel)


@dataclass
class FallbackPlan:
    float_nodes: list[str]  # ONNX node names for quantize_int8(exclude_nodes=...) / ORT nodes_to_exclude
    score: Score
    full_int8: Score
    float_model: Score
    met: bool
    budget: Budget
    quantized_nodes: int  # nodes the full INT8 model quantizes (those a plan can keep float)
    samples: int  # scored on
    evaluations: int  # candidates run (each a session and an inference on `samples`)
    seconds: dict[str, float]
    note: str | None = None
    ranking: list[Sensitivity] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"float_nodes": self.float_nodes, "met": self.met, "budget": asdict(self.budget),
                "nodes": {"float": len(self.float_nodes), "quantized": self.quantized_nodes},
                "score": self.score.to_dict(), "full_int8": self.full_int8.to_dict(),
                "float_model": self.float_model.to_dict(), "samples": self.samples,
                "evaluations": self.evaluations, "seconds": self.seconds, "note": self.note}


class Evaluator:
    """The float model and its INT8 QDQ graph made by `quantize` (edgekit.stages.quantize.quantize_int8),
    calibrated once; scores "these nodes stay float" on at most `samples` samples of `evaluation`."""

    def __init__(self, fp32: Artifact, scheme: Quantization, calibration: Dataset, evaluation: Dataset,
                 quantize: Quantizer, samples: int | None = None):
        import onnx

        start = time.perf_counter()
        self.model = onnx.load(str(fp32.path))
        with tempfile.TemporaryDirectory(prefix="edgekit-fallback-") as scratch:
            int8 = quantize(fp32, scheme, calibration, [], Path(scratch))
            self.qdq = onnx.load(str(int8.path))
        excluded = set(int8.metadata["float_nodes"])  # the scheme's own exclusions
        quantized = [n for n in quantized_nodes(self.qdq, _quantized_op_types(scheme)) if n not in excluded]
        float_names = {n.name for n in self.model.graph.node}
        self.candidates = [n for n in quantized if n in float_names]
        self.points = _quant_points(self.qdq, self.model, set(quantized), set(self.candidates))
        self.kinds = output_kinds.detect(self.model)
        if samples is None:
            per_sample = max(graph_stats(self.model)["macs"] // _batch(self.model), 1)
            samples = max(MIN_EVAL_SAMPLES, min(MAX_EVAL_SAMPLES, SCORE_MACS // per_sample))
        self.evaluation = _subset(evaluation, samples, _batch(self.model))
        self.reference = _run(self.model, self.evaluation.inputs)
        self.float_score = self._score(self.reference)
        self.runs = 0
        self._scores: dict[frozenset[str], Score] = {}
        self.setup_seconds = time.perf_counter() - start

    def score(self, float_nodes: list[str]) -> Score:
        points = self._float_points(float_nodes)
        key = frozenset(p.tensor for p in points)  # node sets that free the same tensors are one graph
        if key not in self._scores:
            self.runs += 1
            self._scores[key] = self._score(_run(self._graph(points), self.evaluation.inputs))
        return self._scores[key]

    def candidate(self, float_nodes: list[str]):
        """The QDQ graph with `float_nodes` kept float, as ORT's quantizer would make it (ModelProto)."""
        return self._graph(self._float_points(float_nodes))

    def _float_points(self, float_nodes: list[str]) -> list[QuantPoint]:
        kept = set(float_nodes)
        return [p for p in self.points if p.owners <= kept]

    def _graph(self, points: list[QuantPoint]):
        """The QDQ graph without the Q/DQ of `points`: their readers read the float tensors again."""
        import onnx

        removed = {name for p in points for name in p.removed}
        rename = {old: new for p in points for old, new in p.rename.items()}
        nodes = []
        for original in self.qdq.graph.node:
            if original.name not in removed:
                node = onnx.NodeProto()
                node.CopyFrom(original)
                node.input[:] = [rename.get(name, name) for name in node.input]
                node.output[:] = [rename.get(name, name) for name in node.output]
                nodes.append(node)
        for point in (p for p in points if p.unfolded):
            at = next(i for i, n in enumerate(nodes) if point.tensor in n.output)
            nodes[at].output[list(nodes[at].output).index(point.tensor)] = point.unfolded[0].input[0]
            nodes[at + 1:at + 1] = point.unfolded
        # what no node reads any more goes; the float weights (and a Clip's bounds) read again come back
        used = {name for n in nodes for name in n.input} - {name for n in nodes for name in n.output}
        kept = [i for i in self.qdq.graph.initializer if i.name in used]
        missing = used - {i.name for i in kept}
        constants = [n for n in self.model.graph.node if n.op_type == "Constant" and n.output[0] in missing]
        model = onnx.ModelProto()
        model.CopyFrom(self.qdq)
        graph = model.graph
        del graph.node[:], graph.initializer[:], graph.value_info[:]  # value_info: renamed tensors changed type
        graph.node.extend(constants + nodes)
        graph.initializer.extend(kept + [i for i in self.model.graph.initializer if i.name in missing])
        return model

    def _score(self, outputs: dict[str, np.ndarray]) -> Score:
        metrics = [output_metrics(self.reference[name], outputs[name], self.kinds.get(name)) for name in self.reference]
        agreements = [m["top1_agreement"] for m in metrics if "top1_agreement" in m]
        classifier = classifier_output(self.reference, self.kinds)
        labels = self.evaluation.labels
        acc = accuracy(outputs[classifier], labels) if labels is not None and classifier else None
        return Score(min(m["snr_db"] for m in metrics), acc, min(agreements) if agreements else None)


def quantized_nodes(int8_model, op_types: set[str] | None = None) -> list[str]:
    """Nodes of a QDQ graph that run quantized (an input comes from a DequantizeLinear and, given
    `op_types`, the quantizer quantizes their type: a float op can read a dequantized tensor), in order."""
    dq_outputs = {n.output[0] for n in int8_model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in int8_model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)
            and (op_types is None or n.op_type in op_types)]


def _quantized_op_types(scheme: Quantization) -> set[str]:
    """The operator types quantize_static quantizes: the scheme's, or ORT's default (as quantize_static
    makes it when given none)."""
    if scheme.op_types:
        return set(scheme.op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


def _quant_points(qdq, model, quantized: set[str], candidates: set[str]) -> list[QuantPoint]:
    """The tensors `quantized` nodes quantize in `qdq` that keeping some `candidates` float can make float."""
    from onnx import numpy_helper

    producer = {o: n for n in qdq.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in qdq.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    initializers = {i.name: i for i in qdq.graph.initializer}
    float_nodes = {n.name: n for n in model.graph.node}
    float_initializers = {i.name for i in model.graph.initializer}
    float_producer = {o: n for n in model.graph.node for o in n.output}
    # the quantizer's own graph optimizations can rename tensors (its transpose optimizer rewires a Reshape): a
    # tensor the float graph does not have cannot be kept float, ranked, or read back by name
    float_tensors = set(float_producer) | {i.name for i in model.graph.input}
    graph_outputs = {o.name for o in qdq.graph.output}
    qdq_nodes = {n.name for n in qdq.graph.node}

    def quantization(dq) -> tuple[np.ndarray, np.ndarray, int]:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale, zero_point = (numpy_helper.to_array(initializers[name]) for name in dq.input[1:3])
        return scale.astype(np.float64), zero_point, axis

    points = []
    for q in (n for n in qdq.graph.node if n.op_type == "QuantizeLinear"):
        dqs = [n for n, _ in readers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        outs = [dq.output[0] for dq in dqs]
        # a graph output keeps its name on the DQ; the quantizer renamed its producer's output
        tensor = next((o for o in outs if o in graph_outputs), q.input[0])
        users = [n for o in outs for n, _ in readers.get(o, [])]
        if q.input[0] in producer:
            users.append(producer[q.input[0]])
        unfolded = _folded(tensor, float_producer, qdq_nodes)
        points.append(QuantPoint(tensor, frozenset(n.name for n in users if n.name in quantized),
                                 [q.name, *(dq.name for dq in dqs)],
                                 {name: tensor for name in [q.input[0], *outs] if name != tensor}, unfolded,
                                 *quantization(dqs[0]), weight=False))
    for dq in (n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers):
        users = readers.get(dq.output[0], [])
        # the quantizer keeps node names: the same node of the float graph reads the float weight there (unless
        # the quantizer's own graph optimizations gave the node an input the float one lacks: a folded bias)
        tensor = next((float_nodes[n.name].input[i] for n, i in users
                       if n.name in float_nodes and i < len(float_nodes[n.name].input)), None)
        if tensor in float_initializers:
            points.append(QuantPoint(tensor, frozenset(n.name for n, _ in users if n.name in quantized),
                                     [dq.name], {dq.output[0]: tensor}, [], *quantization(dq), weight=True))
    return [p for p in points if p.owners and p.owners <= candidates and (p.weight or p.tensor in float_tensors)]


def _folded(tensor: str, producer: dict, qdq_nodes: set[str]) -> list:
    """The Relu / Clip chain of the float graph that ends in `tensor` and is missing from the QDQ graph."""
    chain = []
    while tensor in producer and producer[tensor].name not in qdq_nodes \
            and producer[tensor].op_type in FOLDED_ACTIVATIONS:
        chain.insert(0, producer[tensor])
        tensor = producer[tensor].input[0]
    return chain


def layer_sensitivity(evaluator: Evaluator, samples: int = RANK_SAMPLES) -> list[Sensitivity]:
    """The quantized tensors, noisiest first, by the noise of quantizing each one alone: its float value
    (a weight, or an activation on `samples` samples) against that value quantized and dequantized."""
    from onnx import numpy_helper

    # A bias (int32, scale = input scale x weight scale) rounds off less than one accumulator step, however
    # large that is next to the bias itself; its node is ranked with its weight.
    ranked = [p for p in evaluator.points if p.zero_point.dtype != np.int32]
    activations = [p for p in ranked if not p.weight]
    runner = _session(_with_outputs(evaluator.model, [p.tensor for p in activations]))
    batch = _batch(evaluator.model)
    inputs = _subset(evaluator.evaluation, samples, batch).inputs
    noise: dict[str, np.ndarray] = {}
    for start in range(0, len(next(iter(inputs.values()))), batch):
        feeds = {name: value[start:start + batch] for name, value in inputs.items()}
        values = {**feeds, **runner.run(feeds)}
        for p in activations:  # summed per batch: the float run's tensors need not all fit in memory
            noise[p.tensor] = noise.get(p.tensor, 0) + _channel_noise(values[p.tensor], p, channel_axis=1)
    weights = {i.name: i for i in evaluator.model.graph.initializer}
    for p in (p for p in ranked if p.weight):
        noise[p.tensor] = _channel_noise(numpy_helper.to_array(weights[p.tensor]), p, channel_axis=0)
    order = {name: i for i, name in enumerate(evaluator.candidates)}
    ranking = [Sensitivity(p.tensor, sorted(p.owners, key=order.get), _noise_snr_db(noise[p.tensor]))
               for p in ranked]
    return sorted(ranking, key=lambda s: s.snr_db)


def plan_float_fallback(evaluator: Evaluator, budget: Budget, max_evaluations: int = MAX_EVALUATIONS,
                        ranking: list[Sensitivity] | None = None) -> FallbackPlan:
    """Keep float the nodes of the k noisiest tensors, k the smallest that meets `budget` (bisection),
    then drop the kept nodes the budget does not need (until `max_evaluations` candidates ran)."""
    start, runs = time.perf_counter(), evaluator.runs
    float_accuracy = evaluator.float_score.accuracy
    full = evaluator.score([])

    def plan(nodes: list[str], score: Score, met: bool, note: str | None = None) -> FallbackPlan:
        seconds = {"quantize": round(evaluator.setup_seconds, 2), "search": round(time.perf_counter() - start, 2)}
        return FallbackPlan([n for n in evaluator.candidates if n in nodes], score, full, evaluator.float_score,
                            met, budget, len(evaluator.candidates), len(evaluator.evaluation),
                            evaluator.runs - runs, seconds, note, ranking or [])

    if budget.met(full, float_accuracy):
        return plan([], full, True)
    ranking = ranking if ranking is not None else layer_sensitivity(evaluator)
    prefixes = _prefixes(ranking)
    low, high = 0, len(ranking)
    best = evaluator.score(prefixes[high])
    if not budget.met(best, float_accuracy):
        return plan([], full, False, f"no plan meets the budget: with all {len(prefixes[high])} quantized nodes "
                                     f"float, {_show(best)}; none is kept float")
    while high - low > 1:
        middle = (low + high) // 2
        score = evaluator.score(prefixes[middle])
        if budget.met(score, float_accuracy):
            high, best = middle, score
        else:
            low = middle
    # Drop what the budget does not need in halves, quarters, ... single nodes, latest joined first: few
    # evaluations when the bisection overshot by many nodes, about twice one-by-one when it did not.
    kept = prefixes[high]
    size = max(len(kept) // 2, 1)
    while size:
        for chunk in reversed([kept[i:i + size] for i in range(0, len(kept), size)]):
            if evaluator.runs - runs >= max_evaluations:
                return plan(kept, best, True, f"pruning stopped at the cap of {max_evaluations} evaluations: "
                                              "some of the float nodes may not be needed")
            trial = [n for n in kept if n not in chunk]
            score = evaluator.score(trial)
            if budget.met(score, float_accuracy):
                kept, best = trial, score
        size //= 2
    return plan(kept, best, True)


def _prefixes(ranking: list[Sensitivity]) -> list[list[str]]:
    """prefixes[k]: the nodes of the k first tensors of `ranking`, in the order they join."""
    prefixes, nodes = [[]], []
    for item in ranking:
        nodes = nodes + [n for n in item.nodes if n not in nodes]
        prefixes.append(nodes)
    return prefixes


def _channel_noise(value: np.ndarray, point: QuantPoint, channel_axis: int) -> np.ndarray:
    """Per channel: the energy of `value` and of its quantization error with `point`'s parameters, (2, C)."""
    scale, zero = point.scale, point.zero_point
    if scale.size > 1:  # per channel
        shape = [1] * value.ndim
        shape[point.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    x = value.astype(np.float64)
    error = (np.clip(np.round(x / scale) + zero, info.min, info.max) - zero) * scale - x
    others = tuple(a for a in range(x.ndim) if a != channel_axis)
    return np.stack([(x ** 2).sum(axis=others), (error ** 2).sum(axis=others)]).reshape(2, -1)


def _noise_snr_db(noise: np.ndarray) -> float:
    """min(overall SNR, median per-channel SNR): one huge channel can set the whole tensor's INT8 range
    while every other channel rounds to zero, which the overall SNR hides."""
    signal, error = noise
    with np.errstate(divide="ignore"):
        channels = 10 * np.log10(signal[signal > 0] / error[signal > 0])
    overall = 10 * math.log10(signal.sum() / error.sum()) if error.sum() else math.inf
    return min(overall, float(np.median(channels)) if channels.size else math.inf)


def _show(score: Score) -> str:
    accuracy_text = f", accuracy {score.accuracy:.2f} %" if score.accuracy is not None else ""
    return f"SNR {score.snr_db:.1f} dB{accuracy_text}"


def _subset(data: Dataset, samples: int, batch: int) -> Dataset:
    """At most `samples` samples, spread evenly (data is often ordered by class), whole batches."""
    count = min(samples, len(data))
    count -= count % batch
    index = np.linspace(0, len(data) - 1, count).round().astype(int)
    return data.take(index, f"{count} samples of {data.source}")


def _batch(model) -> int:
    return model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1


def _with_outputs(model, names: list[str]):
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return probe


def plan_cost(evaluator: Evaluator, float_nodes: list[str], runs: int = 20) -> dict:
    """What keeping `float_nodes` float costs against full INT8: serialized bytes, and host latency (ONNX
    Runtime's CPU EP, one thread, median of `runs` calls on one batch): a relative figure, not device time."""
    import onnxruntime

    feeds = {name: array[:_batch(evaluator.model)] for name, array in evaluator.evaluation.inputs.items()}
    graphs = {"full_int8": evaluator.qdq, "with_plan": evaluator.candidate(float_nodes)}
    latency = {}
    for name, graph in graphs.items():
        runner = _session(graph, threads=1)
        for _ in range(3):
            runner.run(feeds)
        latency[name] = round(float(np.median([_timed_ms(runner.run, feeds) for _ in range(runs)])), 3)
    return {"bytes": {name: graph.ByteSize() for name, graph in graphs.items()}, "host_latency_ms": latency,
            "measured_on": f"ONNX Runtime {onnxruntime.__version__} CPUExecutionProvider, 1 thread, on the build "
                           f"machine: relative cost, not device latency"}


def _timed_ms(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return (time.perf_counter() - start) * 1e3


def _session(model, threads: int = 0):
    import onnx

    from ..int8_kernels import exact_session_config
    from ..runners.onnxrt import OnnxRuntimeRunner

    with tempfile.TemporaryDirectory(prefix="edgekit-fallback-") as scratch:
        path = Path(scratch) / "candidate.onnx"
        onnx.save(model, str(path))
        # 0 threads: ORT's default, every core
        return OnnxRuntimeRunner(path, ["CPUExecutionProvider"], threads=threads, session_config=exact_session_config())


def _run(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ..runners import run_dataset

    return run_dataset(_session(model), inputs)
