"""Every intermediate tensor of one model, run on N samples: PyTorch, ONNX (float or QDQ) and TFLite.

A `Capture` holds float32 arrays in channel-first layout (the reference's), in execution order, so
captures of different formats can be compared element by element once their names are mapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..int8_kernels import exact_session_config
from ..runners.onnxrt import exact_session


@dataclass
class Capture:
    tensors: dict[str, np.ndarray]  # name -> (N, ...) float32, channel-first, in execution order
    kinds: dict[str, str] = field(default_factory=dict)  # name -> op type / module class
    aliases: dict[str, list[str]] = field(default_factory=dict)  # name -> other names of the same tensor

    def __len__(self) -> int:
        return len(self.tensors)


def _batches(inputs: dict[str, np.ndarray], batch: int):
    count = len(next(iter(inputs.values())))
    for start in range(0, count - count % batch, batch):
        yield {name: array[start:start + batch] for name, array in inputs.items()}


class _Joined:
    """Each tensor's samples joined along the batch axis as the runs come: one float32 array per tensor, each
    run copied into its rows (no list of runs joined at the end); a single run is taken as it is. Scalars (an
    attention scale) are not layers."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int):
        self.runs = len(next(iter(inputs.values()))) // batch
        self.tensors: dict[str, np.ndarray] = {}
        self._added = 0

    def add(self, run: dict[str, np.ndarray]) -> None:
        for name, value in run.items():
            if np.ndim(value) == 0:
                continue
            if self.runs == 1:
                self.tensors[name] = np.asarray(value).astype(np.float32, copy=False)
                continue
            rows = len(value)
            if name not in self.tensors:
                self.tensors[name] = np.empty((self.runs * rows, *np.shape(value)[1:]), np.float32)
            self.tensors[name][self._added * rows:(self._added + 1) * rows] = value
        self._added += 1


# ---- PyTorch ----------------------------------------------------------------------------------------

def capture_torch(module, inputs: dict[str, np.ndarray], batch: int = 32) -> Capture:
    """Outputs of every module, keyed by module path (`features.3.block.1.0`).

    A container whose output is its last leaf's output (a Sequential) is an alias of that leaf,
    not a tensor of its own; one that computes something (a residual add) is kept under its path.
    """
    import torch

    module = module.module() if hasattr(module, "graph_signature") else module
    kinds: dict[str, str] = {}
    aliases: dict[str, list[str]] = {}
    state = {"run": {}, "last": None}  # last leaf output: (python object, its recorded name)

    def hook(name, leaf):
        def record(mod, args, output):
            if not isinstance(output, torch.Tensor):
                return
            last = state["last"]
            if not leaf and last is not None and last[0] is output:
                if name not in aliases.setdefault(last[1], []):
                    aliases[last[1]].append(name)
                return
            kinds.setdefault(name, type(mod).__name__)
            # clone: an in-place activation (ReLU6(inplace=True)) would overwrite the value later
            state["run"][name] = output.detach().clone().float().numpy()
            state["last"] = (output, name)
        return record

    handles = [m.register_forward_hook(hook(name or "<model>", not any(True for _ in m.children())))
               for name, m in module.named_modules()]
    joined = _Joined(inputs, batch)
    try:
        with torch.no_grad():
            for feeds in _batches(inputs, batch):
                state["run"], state["last"] = dict(feeds), None
                module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()])
                joined.add(state["run"])
    finally:
        for handle in handles:
            handle.remove()
    return Capture(joined.tensors, {**{name: "input" for name in inputs}, **kinds}, aliases)


# ---- ONNX -------------------------------------------------------------------------------------------

def float_tensors(model) -> dict[str, tuple[str, str]]:
    """Float activation tensors of an ONNX graph as {name to read: (name to report, op type)}, in node order.

    In a QDQ graph a float tensor T that is quantized is read at its DequantizeLinear output (the
    value the next operator really sees) and reported as T, so QDQ and float captures share names.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name for i in model.graph.initializer}

    graph_outputs = {o.name for o in model.graph.output}

    def read_point(name: str) -> tuple[str, str]:
        for q in consumers.get(name, []):
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        # the quantizer renames a graph output's producer and gives the name to the DQ
                        return dq.output[0], dq.output[0] if dq.output[0] in graph_outputs else name
        return name, name

    found: dict[str, tuple[str, str]] = {}
    produced = [(i.name, "input") for i in model.graph.input if i.name not in initializers]
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            produced += [(name, node.op_type) for name in node.output if name]
    for name, kind in produced:
        if types.get(name, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            read, report = read_point(name)
            found[read] = (report, kind)
    return found


def node_outputs(model) -> dict[str, str]:
    """ONNX node name -> its (first) output tensor name."""
    return {node.name: node.output[0] for node in model.graph.node if node.output}


def capture_onnx(model, inputs: dict[str, np.ndarray]) -> Capture:
    """Every float tensor of an ONNX model (path or ModelProto), exposed as extra graph outputs.

    For a QDQ graph, exposing the DequantizeLinear outputs stops ONNX Runtime from fusing Q/DQ pairs
    into integer kernels, so the values are its QDQ emulation (same scales, float accumulation):
    close to, not bit-identical with, the fused integer run.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    wanted = float_tensors(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in present:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    def options():
        made = ort.SessionOptions()
        made.log_severity_level = 3
        return made

    session = exact_session(options, exact_session_config(), lambda o: ort.InferenceSession(
        probe.SerializeToString(), o, providers=["CPUExecutionProvider"]))[0]
    names = [o.name for o in session.get_outputs() if o.name in wanted]
    first = session.get_inputs()[0].shape[0]
    batch = first if isinstance(first, int) and first > 0 else 32
    feeds_names = [i.name for i in session.get_inputs()]
    joined = _Joined(inputs, batch)
    for feeds in _batches(inputs, batch):
        values = session.run(names, dict(zip(feeds_names, feeds.values())))
        joined.add({wanted[n][0]: v for n, v in zip(names, values)})
    return Capture({name: joined.tensors[name] for name, _ in wanted.values() if name in joined.tensors},
                   dict(wanted.values()))


# ---- TFLite -----------------------------------------------------------------------------------------

def tflite_key(name: str) -> str:
    """A TFLite tensor's stable name: the first of the fused ops it names (`model/tf.nn.relu6_3/Relu6`).

    The converter joins the names of fused ops with ';' and appends constants' names, which differ
    between a float and an integer model of the same graph; the first part does not.
    """
    return name.split(";")[0]


def capture_tflite(path: Path, inputs: dict[str, np.ndarray], io=None) -> Capture:
    """Every activation tensor of a .tflite, dequantized and made channel-first.

    `io`: the artifact's (inputs, outputs) as the build paired them with the reference model
    (`runners.litert.bind_io`, recorded in the manifest): inputs are fed through the same adapter as an
    app, and the graph's inputs and outputs take the reference's names, since TFLite names them
    differently in float and integer models. Runs the built-in kernels (no XNNPACK delegate): a
    delegate keeps no intermediate tensors.
    """
    from ..device import runner as adapter
    from ..runners.litert import builtin_interpreter, ops_details

    interpreter = builtin_interpreter(path, preserve_all_tensors=True)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    in_entries = [s.to_dict() for s in io[0]] if io else adapter.own_entries(ins)
    out_entries = [s.to_dict() for s in io[1]] if io else adapter.own_entries(outs)
    in_details = adapter.bind(ins, in_entries, "input")
    output_entries = {d["index"]: e for d, e in zip(adapter.bind(outs, out_entries, "output"), out_entries)}
    names = {d["index"]: e["name"] for d, e in zip(in_details, in_entries)}
    names.update({index: e["name"] for index, e in output_entries.items()})
    order, kinds = [d["index"] for d in in_details], {d["index"]: "input" for d in in_details}
    varying = set(kinds)  # tensors that depend on an input; the rest are weights (fp16 ones dequantized)
    for op in ops_details(interpreter):
        if not varying.intersection(op["inputs"]):
            continue
        for index in op["outputs"]:
            if index >= 0 and index not in kinds:
                order.append(index)
                kinds[index] = op["op_name"]
                varying.add(index)
    key = _unique({i: tflite_key(details[i]["name"]) for i in order if i not in names}, names)
    entries = {**dict(zip(order, adapter.own_entries([details[i] for i in order]))), **output_entries}
    joined = _Joined(inputs, 1)
    for feeds in _batches(inputs, 1):
        for detail, entry in zip(in_details, in_entries):
            interpreter.set_tensor(detail["index"], adapter.to_runtime(feeds[entry["name"]], entry, detail["dtype"]))
        interpreter.invoke()
        joined.add({key[index]: adapter.from_runtime(interpreter.get_tensor(index), entries[index])
                    for index in order})
    # Channel-first views of the joined channel-last tensors (graph outputs are laid out by their entry):
    # joining first is one contiguous copy, where joining transposed views is a slow strided one.
    channel_last = set()
    for index in order:
        (channel_last.discard if index in output_entries else channel_last.add)(key[index])
    tensors = {name: np.moveaxis(value, -1, 1) if name in channel_last and value.ndim >= 3 else value
               for name, value in joined.tensors.items()}
    return Capture(tensors, {key[i]: kinds[i] for i in order})


def _unique(keys: dict[int, str], io_names: dict[int, str]) -> dict[int, str]:
    """Tensor index -> key: the model inputs and outputs by their reference names, the rest by `keys`, where a
    key an earlier tensor holds takes a '#n' suffix (two fused ops can name one TensorFlow op first: a PReLU
    and the transpose after it)."""
    unique, held = dict(io_names), set(io_names.values())
    for index, key in keys.items():
        suffixed, n = key, 1
        while suffixed in held:
            n += 1
            suffixed = f"{key}#{n}"
        unique[index] = suffixed
        held.add(suffixed)
    return unique
