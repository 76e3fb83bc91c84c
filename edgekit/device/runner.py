#!/usr/bin/env python3
"""Run one edgekit artifact (.onnx, .ort, .tflite or .pte) on this machine: outputs for every sample, plus timings.

Self-contained on purpose: it needs only the standard library, numpy and the runtime it uses
(onnxruntime; one of ai_edge_litert / tflite_runtime / tensorflow.lite; ExecuTorch's runtime, which
imports torch, or the torch-free executorch_numpy_runtime), so it can be copied to a phone, a board or a
container and run there without edgekit.

    python runner.py model.onnx --inputs inputs.npz --out result.npz --json result.json \
        [--io io.json] [--threads N] [--warmup N] [--runs N] [--providers XnnpackExecutionProvider,CPUExecutionProvider]
        [--session-config KEY=VALUE ...] [--energy]

With --energy it also measures joules per inference from the board's power monitors, through meter.py beside it;
cpu.py beside it reads the CPU's flags.
"""
import argparse
import importlib
import json
import os
import platform
import resource
import sys
import time

import numpy as np

ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def machine_info():
    """The CPU as this process sees it (cpu.py beside this file: CPUID on x86, HWCAP on ARM Linux)."""
    if __package__:  # imported from edgekit
        from .cpu import cpu_info
    else:  # run as a script: cpu.py is copied beside it
        from cpu import cpu_info
    return {**cpu_info(), "system": platform.system(), "cpu_count": os.cpu_count()}


def package_version(*names):
    from importlib import metadata
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None


class OnnxModel:
    def __init__(self, path, threads, providers, session_config=()):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        refused = None
        for key, value in session_config:
            opts.add_session_config_entry(key, value)
        available = ort.get_available_providers()
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        options = [{"intra_op_num_threads": threads} if p == "XnnpackExecutionProvider" and threads else {}
                   for p in chosen]
        try:
            self.session = ort.InferenceSession(path, opts, providers=chosen, provider_options=options)
        except ort.capi.onnxruntime_pybind11_state.Fail as err:  # a graph these entries' rewrite breaks
            if not session_config:
                raise
            refused, session_config = str(err).splitlines()[0][:200], ()
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(path, opts, providers=chosen, provider_options=options)
        self.runtime = {"name": "onnxruntime", "version": ort.__version__, "requested": providers,
                        "available": available, "used": self.session.get_providers()[0],
                        "session_config": dict(session_config), "session_config_refused": refused}
        self.inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        batch = self.inputs[0].shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else None  # None: dynamic

    def prepare(self, arrays):
        return [a.astype(ONNX_DTYPES.get(i.type, a.dtype), copy=False) for i, a in zip(self.inputs, arrays)]

    def invoke(self, tensors):
        return self.session.run(self.output_names, dict(zip(self.input_names, tensors)))

    def finish(self, tensors):
        return [np.asarray(y, dtype=np.float32) for y in tensors]


def load_interpreter():
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        package = module.split(".")[0]
        cls = mod.lite.Interpreter if package == "tensorflow" else mod.Interpreter
        return cls, package, package_version(package.replace("_", "-"))
    raise SystemExit("no TFLite runtime: pip install ai-edge-litert")


# ---- The I/O adapter: the one place where reference-layout float arrays become runtime tensors -------
# A tensor entry is what the build manifest records per artifact input/output: `name` (the reference
# model's), `runtime_name` (the runtime's own), `transpose` (inputs: reference -> runtime layout;
# outputs: runtime -> reference layout) and `quantization` ({scale, zero_point}) for integer tensors.

def bind(details, entries, kind):
    """Each entry's runtime tensor, found by name (never by position or shape)."""
    by_name = {d["name"]: d for d in details}
    bound = []
    for entry in entries:
        detail = by_name.get(entry.get("runtime_name") or entry["name"])
        if detail is None:
            raise ValueError(f"the model has no {kind} tensor named '{entry.get('runtime_name') or entry['name']}' "
                             f"(for '{entry['name']}'); its {kind}s are {sorted(by_name)}")
        bound.append(detail)
    if len(bound) != len(details):
        raise ValueError(f"the model has {len(details)} {kind}s, the manifest describes {len(entries)}")
    return bound


def to_runtime(array, entry, dtype):
    """A reference-layout float array -> the runtime tensor: transposed, then quantized if integer."""
    if entry.get("transpose"):
        array = np.transpose(array, entry["transpose"])
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and array.dtype.kind == "f":
        scale, zero_point = _quantization(entry)
        limits = np.iinfo(dtype)
        array = np.clip(np.round(array / scale) + zero_point, limits.min, limits.max)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def from_runtime(array, entry):
    """A runtime tensor -> a reference-layout float32 array: dequantized, then transposed back."""
    if np.issubdtype(array.dtype, np.integer) and entry.get("quantization"):
        scale, zero_point = _quantization(entry)
        array = (array.astype(np.float32) - zero_point) * scale
    array = array.astype(np.float32, copy=False)
    return np.transpose(array, entry["transpose"]) if entry.get("transpose") else array


def _quantization(entry):
    quantization = entry.get("quantization") or {}
    scale = float(quantization.get("scale") or 0.0)
    if not scale > 0:
        raise ValueError(f"integer tensor '{entry['name']}' has no positive quantization scale ({quantization})")
    return scale, int(quantization.get("zero_point", 0))


def quantization_of(detail):
    """A LiteRT tensor detail's {scale, zero_point}, or None for a float tensor."""
    scale, zero_point = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero_point)} if scale else None


def own_entries(details):
    """Entries for a model run with its own names and layout (no manifest at hand)."""
    return [{"name": d["name"], "runtime_name": d["name"], "quantization": quantization_of(d)} for d in details]


def tflite_delegation(ops):
    """What LiteRT's delegate took, from the interpreter's ops after it applied the delegate: the graph's own
    ops, then one DELEGATE op per partition whose inputs are every tensor the partition reads from outside.
    A partition's ops are found by walking back from its outputs until those inputs; the rest run on the
    built-in kernels. The shape is the one every format's delegation report has."""
    producers = {t: op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    taken = set()
    for partition in partitions:
        outside, pending = {int(t) for t in partition["inputs"]}, [int(t) for t in partition["outputs"]]
        while pending:
            tensor = pending.pop()
            op = producers.get(tensor)
            if tensor in outside or op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            pending.extend(int(t) for t in op["inputs"])
    left = {}
    for op in ops:
        if op["op_name"] != "DELEGATE" and op["index"] not in taken:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {"delegate": "XNNPACK delegate", "delegated_nodes": len(taken), "partitions": len(partitions),
            "fallback": "built-in kernels", "fallback_ops": left}


def delegation_text(delegation):
    """One line from a delegation report: what the delegate (or preferred provider) took, what it left;
    None for a report without these keys (a folder made before they were named so)."""
    if not all(key in delegation for key in ("delegate", "delegated_nodes", "fallback", "fallback_ops")):
        return None
    partitions = delegation.get("partitions")
    where = "" if partitions is None else f" in {partitions} partition{'s' * (partitions != 1)}"
    left = ", ".join(f"{op} x{count}" for op, count in delegation["fallback_ops"].items()) or "none"
    taken = f"{delegation['delegate']} took {delegation['delegated_nodes']} nodes{where}"
    return f"{taken}; on {delegation['fallback']}: {left}"


class TfliteModel:
    def __init__(self, path, threads, io=None):
        """`io`: the manifest's {"inputs": [...], "outputs": [...]} for this artifact; None: the file's own."""
        cls, package, version = load_interpreter()
        self.interpreter = cls(model_path=path, num_threads=threads or None)
        self.interpreter.allocate_tensors()
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.input_entries = io["inputs"] if io else own_entries(ins)
        self.output_entries = io["outputs"] if io else own_entries(outs)
        self.inputs = bind(ins, self.input_entries, "input")
        self.outputs = bind(outs, self.output_entries, "output")
        self.input_names = [e["name"] for e in self.input_entries]
        self.output_names = [e["name"] for e in self.output_entries]
        self.batch = int(self.inputs[0]["shape"][0])
        try:  # private API, but the only way to see what the default XNNPACK delegate took
            used = delegation_text(tflite_delegation(self.interpreter._get_ops_details()))
        except AttributeError:
            used = "unknown"
        self.runtime = {"name": package, "version": version, "used": used}

    def prepare(self, arrays):
        """The numpy adaptation an app does before invoking (kept out of the timed call)."""
        return [to_runtime(a, e, d["dtype"]) for a, e, d in zip(arrays, self.input_entries, self.inputs)]

    def invoke(self, tensors):
        for detail, tensor in zip(self.inputs, tensors):
            self.interpreter.set_tensor(detail["index"], tensor)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self.outputs]

    def finish(self, tensors):
        return [from_runtime(t, e) for t, e in zip(tensors, self.output_entries)]


# ExecuTorch's ScalarType codes of the dtypes a .pte's inputs and outputs may have.
PTE_DTYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
              7: np.float64, 11: np.bool_}


def load_executorch(threads):
    """(open a .pte's forward method, package, version, wrap inputs, unwrap outputs): ExecuTorch's own
    runtime (it runs on torch tensors), else the torch-free executorch_numpy_runtime."""
    try:
        import torch  # loads libtorch, which ExecuTorch's extension links against
        # The compiled extension itself: executorch.runtime imports the whole compiler (seconds) for a warning
        # class. Private API, pinned by tests/test_library_contracts.py.
        from executorch.extension.pybindings import _C as executorch_c
    except ImportError as missing:
        try:
            import executorch_numpy_runtime as numpy_runtime
        except ImportError:
            raise SystemExit(f"no ExecuTorch runtime ({missing}): pip install executorch (with torch) or "
                             f"executorch-numpy-runtime")
        runtime = numpy_runtime.Runtime.get()
        return (lambda path: numpy_runtime_forward(runtime, path), "executorch_numpy_runtime",
                package_version("executorch-numpy-runtime"), list, list)
    if threads:
        # XNNPACK's threads come from one process-wide pool, sized before a method loads; no public setting.
        executorch_c._unsafe_reset_threadpool(threads)
    return (lambda path: executorch_forward(executorch_c, path), "executorch", package_version("executorch"),
            lambda arrays: [torch.from_numpy(a) for a in arrays], lambda tensors: [t.numpy().copy() for t in tensors])


def executorch_forward(executorch_c, path):
    """(program, forward method, input dtypes, input shapes, number of outputs); the program must outlive its
    method."""
    program = executorch_c._load_program(path, program_verification=executorch_c.Verification.InternalConsistency)
    meta = program.method_meta("forward")
    infos = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
    return (program, program.load_method("forward"), [PTE_DTYPES[int(i.dtype())] for i in infos],
            [list(i.sizes()) for i in infos], meta.num_outputs())


def numpy_runtime_forward(runtime, path):
    """The same for executorch_numpy_runtime, which describes a method as a dict."""
    program = runtime.load_program(path)
    method = program.load_method("forward")
    meta = method.metadata
    return (program, method, [PTE_DTYPES[e["scalar_type"]] for e in meta["inputs"]],
            [e["shape"] for e in meta["inputs"]], meta["num_outputs"])


class PteModel:
    def __init__(self, path, threads, io=None):
        """`io`: the manifest's {"inputs": [...], "outputs": [...]}: a .pte has no tensor names, its tensors
        are the model's in forward()'s order; None: named input_<i> / output_<i>."""
        open_forward, package, version, self.wrap, self.unwrap = load_executorch(threads)
        self.program, self.method, self.input_dtypes, self.input_shapes, outputs = open_forward(path)
        count = len(self.input_shapes)
        self.input_names = [e["name"] for e in io["inputs"]] if io else [f"input_{i}" for i in range(count)]
        self.output_names = [e["name"] for e in io["outputs"]] if io else [f"output_{i}" for i in range(outputs)]
        self.batch = int(self.input_shapes[0][0]) if count and self.input_shapes[0] else None
        self.runtime = {"name": package, "version": version, "used": "XNNPACK delegate where the program has one"}

    def prepare(self, arrays):
        return self.wrap([np.ascontiguousarray(a, dtype=d) for a, d in zip(arrays, self.input_dtypes)])

    def invoke(self, tensors):
        return self.method(tensors)

    def finish(self, tensors):
        return [np.asarray(y, dtype=np.float32) for y in self.unwrap(tensors)]


def match_inputs(names, data):
    """Arrays of the npz in model-input order, by name (a lone input may take a lone array of any name)."""
    if all(name in data.files for name in names):
        return [data[name] for name in names]
    if len(names) == 1 and len(data.files) == 1:
        return [data[data.files[0]]]
    raise SystemExit(f"inputs {names} not found in npz keys {data.files}")


def batches(arrays, size):
    """Slices of `size` samples; the last one is padded by repeating its final sample."""
    n = len(arrays[0])
    for start in range(0, n, size):
        chunk = [a[start:start + size] for a in arrays]
        real = len(chunk[0])
        if real < size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], size - real, axis=0)]) for c in chunk]
        yield chunk, real


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1e3


def peak_rss_mb():
    # VmHWM starts afresh at exec; ru_maxrss keeps the peak of the process we were forked from.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def run_all(model, arrays, size):
    """Outputs for every sample, in batches of `size` (the last one padded), and the first call's time."""
    outputs, first_ms = [], None
    for chunk, real in batches(arrays, size):
        tensors = model.prepare(chunk)
        result, ms = timed(model.invoke, tensors)
        first_ms = ms if first_ms is None else first_ms
        outputs.append([y[:real] for y in model.finish(result)])
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(model.output_names))], first_ms


# The runtime a file is run with when the caller does not name it (`--runtime`).
SUFFIX_RUNTIMES = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".tflite": "litert", ".pte": "executorch"}


def percentiles(times):
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
            "p99": float(np.percentile(times, 99)), "mean": float(times.mean()), "min": float(times.min())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--inputs", required=True, help="npz: one array per model input, first axis = samples")
    p.add_argument("--out", required=True, help="npz written with float32 outputs keyed by output name")
    p.add_argument("--json", required=True, help="timings and machine description")
    p.add_argument("--io", help="json: the manifest's inputs/outputs entries of this artifact (names, "
                                "runtime names, transposes, quantization); without it, the model's own")
    p.add_argument("--threads", type=int, default=0, help="0: the runtime's default")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--batch", type=int, default=0, help="for a dynamic batch axis (default 32)")
    p.add_argument("--providers", default="XnnpackExecutionProvider,CPUExecutionProvider",
                   help="ONNX Runtime providers in order of preference; missing ones are skipped")
    p.add_argument("--runtime", choices=sorted(set(SUFFIX_RUNTIMES.values())),
                   help="what runs the file (edgekit's bench names it); default: by its suffix")
    p.add_argument("--session-config", action="append", default=[], metavar="KEY=VALUE",
                   help="an ONNX Runtime session config entry (repeatable), e.g. session.x64quantprecision=1")
    p.add_argument("--energy", action="store_true", help="also measure joules per inference (meter.py beside this "
                                                         "file reads the board's power monitors)")
    args = p.parse_args(argv)

    io = None
    if args.io:
        with open(args.io) as f:
            io = json.load(f)
    runtime = args.runtime or SUFFIX_RUNTIMES.get(os.path.splitext(args.model)[1].lower())
    if runtime is None:
        raise SystemExit(f"unsupported artifact {args.model}: expected {', '.join(SUFFIX_RUNTIMES)}, or --runtime")
    if runtime == "onnxruntime":
        config = [entry.partition("=")[::2] for entry in args.session_config]
        model, load_ms = timed(OnnxModel, args.model, args.threads, args.providers.split(","), config)
    else:
        model, load_ms = timed(TfliteModel if runtime == "litert" else PteModel, args.model, args.threads, io)

    with np.load(args.inputs) as data:
        arrays = match_inputs(model.input_names, data)
    size = args.batch or model.batch or 32
    outputs, first_ms = run_all(model, arrays, size)
    np.savez(args.out, **dict(zip(model.output_names, outputs)))

    first = next(batches(arrays, model.batch or 1))[0]  # first sample, or first batch if fixed
    prepared, adapt_ms = timed(model.prepare, first)
    for _ in range(args.warmup):
        model.invoke(prepared)
    # Device time is the runtime's call alone; the numpy adaptation (layout, quantization) is reported apart.
    times = np.array([timed(model.invoke, prepared)[1] for _ in range(args.runs)] or [np.nan])
    report = {
        "model": os.path.abspath(args.model),
        "samples": len(arrays[0]),
        "batch": size,
        "timed_batch": len(first[0]),
        "threads": args.threads or "default",
        "runtime": model.runtime,
        "load_ms": load_ms,
        "first_run_ms": first_ms,
        "adaptation_ms": adapt_ms,
        "warmup": args.warmup,
        "runs": args.runs,
        "latency_ms": percentiles(times),
        "peak_rss_mb": peak_rss_mb(),
        "machine": machine_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if args.energy:
        if __package__:  # imported from edgekit
            from .meter import board_power, energy
        else:  # run as a script: meter.py is copied beside it
            from meter import board_power, energy
        report["energy"] = energy(board_power(), lambda: model.invoke(prepared))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    lat = report["latency_ms"]
    print(f"{report['runtime']['name']} {report['runtime']['used']} on {report['machine']['machine']}: "
          f"p50 {lat['p50']:.3f} ms, mean {lat['mean']:.3f} ms over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
