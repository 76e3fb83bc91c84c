"""LiteRT (TensorFlow Lite) interpreter, fed the same NCHW float arrays as the ONNX model.

A .tflite made by onnx2tf is channel-last, may have integer I/O and names its tensors its own way.
`bind_io` pairs each of its inputs and outputs with the reference model's by identity (the TFLite
signature, or onnx2tf's naming), once, when the artifact is made; the manifest records that pairing
and every runner, here and on the device, feeds the tensors through the same adapter
(edgekit/device/runner.py: transpose, quantize, dequantize, transpose back).
"""
from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..device import runner as adapter
from ..spec import TensorSpec
from .base import Runner, silenced

# (module, attribute path, distribution) in order of preference: the same Interpreter class in all three.
INTERPRETERS = [("ai_edge_litert.interpreter", "Interpreter", "ai-edge-litert"),
                ("tflite_runtime.interpreter", "Interpreter", "tflite-runtime"),
                ("tensorflow", "lite.Interpreter", "tensorflow")]
IO = tuple[list[TensorSpec], list[TensorSpec]]


class LiteRTRunner(Runner):
    def __init__(self, path: Path, threads: int = 1, io: IO | None = None):
        """`io`: the artifact's inputs and outputs as `bind_io` paired them (and the manifest records them);
        without it, names and layouts are the .tflite file's own and no transpose is applied."""
        interpreter_class, self.package, self.version = _interpreter_class()
        # The default op resolver applies the XNNPACK delegate, as LiteRT does on devices.
        with silenced():  # the delegate announces itself on the native stderr
            self.interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.threads = threads
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.inputs, self.outputs = io or (_own_specs(ins), _own_specs(outs))
        self._in_entries = [s.to_dict() for s in self.inputs]
        self._out_entries = [s.to_dict() for s in self.outputs]
        self._in = adapter.bind(ins, self._in_entries, "input")
        self._out = adapter.bind(outs, self._out_entries, "output")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for entry, detail in zip(self._in_entries, self._in):
            tensor = adapter.to_runtime(feeds[entry["name"]], entry, detail["dtype"])
            self.interpreter.set_tensor(detail["index"], tensor)
        self.interpreter.invoke()
        return {entry["name"]: adapter.from_runtime(self.interpreter.get_tensor(detail["index"]), entry)
                for entry, detail in zip(self._out_entries, self._out)}

    def describe(self) -> dict[str, Any]:
        return {"engine": "litert", "interpreter": self.package, "version": self.version,
                "delegate": self.delegate(), "threads": self.threads}

    def delegate(self) -> str:
        """'XNNPACK (k partitions)' when the default delegate took over part of the graph."""
        taken = self.delegation()
        if taken is None:
            return "unknown"
        partitions = taken["partitions"]
        return f"XNNPACK ({partitions} partition{'s' * (partitions != 1)})" if partitions else "none (built-in kernels)"

    def delegation(self) -> dict[str, Any] | None:
        try:
            ops = ops_details(self.interpreter)  # no public API tells what the delegate took
        except AttributeError:
            return None
        return adapter.tflite_delegation(ops)


def ops_details(interpreter) -> list[dict[str, Any]]:
    """Every op of the graph in execution order, each a dict with at least op_name, index, inputs and outputs
    (tensor indices, -1 for an absent optional input).

    LiteRT's only listing of ops is private (`Interpreter._get_ops_details`); every edgekit module reads it
    here, and tests/test_library_contracts.py fails, naming the LiteRT version, if its fields change.
    """
    return interpreter._get_ops_details()


def builtin_interpreter(path: Path, preserve_all_tensors: bool = False):
    """A LiteRT interpreter for `path` on its built-in kernels, allocated: no XNNPACK delegate, which would
    hide the ops it takes over (and their intermediate tensors) behind one DELEGATE node."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with silenced():
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=preserve_all_tensors,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    return interpreter


def bind_io(path: Path, reference: IO, probe: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> IO:
    """The .tflite's inputs and outputs, each paired with the reference model's tensor of the same identity.

    Pairing is by name: the TFLite signature's keys (onnx2tf names them after the ONNX tensors, or
    `output_<k>` for the k-th ONNX output where it could not) or, in onnx2tf's signature-less float files,
    the input names and `Identity_<k>` for the k-th ONNX output; never by shape. Layout comes from shapes
    (onnx2tf makes 3-D to 5-D inputs channel-last); an output whose shape fits both layouts (C == H == W) is
    settled on `probe`, one batch of reference inputs and outputs. Raises ValueError naming the tensor that
    cannot be paired.
    """
    runner = LiteRTRunner(path)
    interpreter = runner.interpreter
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    signature = _signature_names(interpreter)
    in_details = _pair(ins, reference[0], signature.get("inputs", {}), "input", _input_candidates)
    out_details = _pair(outs, reference[1], signature.get("outputs", {}), "output", _output_candidates)
    inputs = [_spec(spec, detail, _input_perm(spec, detail)) for spec, detail in zip(reference[0], in_details)]
    outputs = []
    for spec, detail in zip(reference[1], out_details):
        perms = _output_perms(spec, detail)
        if len(perms) > 1:
            perms = [_closest(path, (inputs, runner.outputs), spec, detail, perms, probe)]
        outputs.append(_spec(spec, detail, perms[0]))
    return inputs, outputs


def _signature_names(interpreter) -> dict[str, dict[str, str]]:
    """{"inputs"|"outputs": signature key -> runtime tensor name} of the one signature, if there is one."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_index = {d["index"]: d["name"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    return {kind: {key: by_index[d["index"]] for key, d in details.items()}
            for kind, details in (("inputs", runner.get_input_details()), ("outputs", runner.get_output_details()))}


def _input_candidates(spec: TensorSpec, position: int) -> list[str]:
    return [spec.name, tf_name(spec.name)]


def _output_candidates(spec: TensorSpec, position: int) -> list[str]:
    # onnx2tf's Keras model returns the ONNX outputs in order; its float TFLite calls them Identity, Identity_1...
    # and, where its output layers kept no ONNX name (tf2onnx's 'Identity:0'), its signature output_0, output_1...
    return [spec.name, tf_name(spec.name), "Identity" if position == 0 else f"Identity_{position}",
            f"output_{position}"]


def tf_name(onnx_name: str) -> str:
    """The name onnx2tf gives an ONNX tensor in TensorFlow."""
    return re.sub("^/", "wa/", onnx_name.replace(":", "__"))


def _pair(details: list[dict], reference: list[TensorSpec], signature: dict[str, str], kind: str,
          candidates) -> list[dict]:
    if len(details) != len(reference):
        raise ValueError(f"the .tflite has {len(details)} {kind}s, the reference model {len(reference)}")
    by_name = {d["name"]: d for d in details}
    paired = []
    for position, spec in enumerate(reference):
        names = candidates(spec, position)
        found = next((by_name[signature[n]] for n in names if n in signature), None) or \
            next((by_name[n] for n in names if n in by_name and not signature), None)
        if found is None and len(details) == 1:
            found = details[0]  # one tensor on each side: there is nothing to confuse it with
        if found is None or any(found is d for d in paired):
            raise ValueError(f"cannot tell which TFLite {kind} is the model's '{spec.name}': the .tflite names "
                             f"them {sorted(signature) or sorted(by_name)}")
        paired.append(found)
    return paired


def _input_perm(spec: TensorSpec, detail: dict) -> list[int] | None:
    shape, want = tuple(spec.shape), tuple(int(d) for d in detail["shape"])
    perm = channels_last(len(shape)) if len(shape) >= 3 else None
    if perm and tuple(shape[i] for i in perm) == want:
        return perm  # also when C == H == W: onnx2tf makes every 3-D to 5-D input channel-last
    if shape == want:
        return None
    raise ValueError(f"input '{spec.name}' {shape} fits neither the TFLite tensor '{detail['name']}' {want} "
                     f"nor its channel-last transpose")


def _output_perms(spec: TensorSpec, detail: dict) -> list[list[int] | None]:
    """Every perm that takes the TFLite output back to the reference shape: none, channel-first, or both."""
    shape, have = tuple(spec.shape), tuple(int(d) for d in detail["shape"])
    perms: list[list[int] | None] = [None] if shape == have else []
    if len(shape) >= 3:
        back = inverse(channels_last(len(shape)))
        if tuple(have[i] for i in back) == shape and back != list(range(len(shape))):
            perms.append(back)
    if not perms:
        raise ValueError(f"output '{spec.name}' {shape} fits neither the TFLite tensor '{detail['name']}' {have} "
                         f"nor its channel-first transpose")
    return perms


def _closest(path: Path, io: IO, spec: TensorSpec, detail: dict, perms: list[list[int] | None],
             probe) -> list[int] | None:
    """The layout under which the output agrees with the reference on one batch; `io`: the paired inputs
    and the file's own outputs (under their runtime names, as laid out)."""
    feeds, expected = probe
    value = LiteRTRunner(path, 1, io).run(feeds)[detail["name"]]
    errors = [float(np.abs((np.transpose(value, perm) if perm else value) - expected[spec.name]).mean())
              for perm in perms]
    return perms[int(np.argmin(errors))]


def _spec(reference: TensorSpec, detail: dict, perm: list[int] | None) -> TensorSpec:
    """The tensor as an app sees it, under the reference's name, with the transpose to apply."""
    shape = tuple(int(d) for d in detail["shape"])
    layout = layout_name(len(shape), True) if perm is not None else reference.layout
    return TensorSpec(reference.name, shape, np.dtype(detail["dtype"]).name, layout, adapter.quantization_of(detail),
                      perm, detail["name"])


def _own_specs(details: list[dict]) -> list[TensorSpec]:
    return [TensorSpec(e["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name, None,
                       e["quantization"], None, e["runtime_name"])
            for e, d in zip(adapter.own_entries(details), details)]


def channels_last(rank: int) -> list[int]:
    """The perm that takes a channel-first array (NCHW, NCW, NCDHW) to channel-last."""
    return [0, *range(2, rank), 1]


def inverse(perm: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def layout_name(rank: int, channel_last: bool) -> str | None:
    spatial = {3: "W", 4: "HW", 5: "DHW"}.get(rank)
    if spatial is None:
        return None
    return f"N{spatial}C" if channel_last else f"NC{spatial}"


def _interpreter_class():
    for module_name, attribute, distribution in INTERPRETERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        interpreter = module
        for part in attribute.split("."):
            interpreter = getattr(interpreter, part)
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = getattr(module, "__version__", "unknown")
        return interpreter, distribution, version
    raise ImportError("running .tflite files needs a LiteRT interpreter: pip install ai-edge-litert")
