"""Stage: float32 ONNX -> TFLite (float32, float16, dynamic-range INT8, full-integer INT8) via onnx2tf.

onnx2tf rebuilds the graph in TensorFlow (channel-last) and runs the TFLite converter; its full-integer
model is calibrated with our own calibration data (`custom_input_op_name_np_data_path`, i.e. `-cind`).
Everything it writes, including its scratch files, stays in a folder inside `workdir` that is removed
afterwards.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data import Dataset
from ..errors import UserError, first_line, machine_error
from ..runners.litert import bind_io, silenced, tf_name
from . import Artifact
from .max_pool_padding import rewrite_max_pools

# precision -> (onnx2tf's file suffix, Artifact.precision)
OUTPUTS = {"fp32": ("float32", "fp32"), "fp16": ("float16", "fp16"),
           "dynamic_int8": ("dynamic_range_quant", "int8"), "int8": ("full_integer_quant", "int8")}
IO_TYPES = ("int8", "uint8", "float32")
# ONNX ops onnx2tf would lower to TensorFlow (Flex) ops, and onnx2tf's (lower-case) name for its builtin form.
PSEUDO_OPS = {"Erf": "erf"}
# onnx2tf downloads this file for models whose inputs are all 4-D with 3 channels unless it is in the
# working directory; it only feeds onnx2tf's internal shape checks, so our own data does as well.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
UNSUPPORTED_ADVICE = ("Replace the operator in the model, or pass --keep-going to ship the ONNX artifacts "
                      "without TFLite")


def convert_tflite(fp32: Artifact, precisions: list[str], calibration: Dataset, io_type: str,
                   workdir: Path) -> list[Artifact]:
    """`precisions`: any of fp32, fp16, dynamic_int8, int8; `io_type`: the full-integer model's I/O type."""
    import onnx

    unknown = [p for p in precisions if p not in OUTPUTS]
    if unknown or io_type not in IO_TYPES:
        raise UserError(f"TFLite precisions must be among {', '.join(OUTPUTS)} (got {', '.join(precisions)}) "
                        f"and the integer I/O type one of {', '.join(IO_TYPES)} (got {io_type})")
    model = onnx.load(str(fp32.path))
    check_operators(model)
    with onnx2tf_scratch(workdir) as (scratch, log):
        return _convert(fp32, model, precisions, calibration, io_type, workdir, scratch, log)


def lowered(model) -> tuple[Any, list[str]]:
    """The float ONNX as onnx2tf is given it, and what was rewritten (see max_pool_padding)."""
    return rewrite_max_pools(model)


@contextlib.contextmanager
def onnx2tf_scratch(workdir: Path) -> Iterator[tuple[Path, Path]]:
    """A new folder inside `workdir` for onnx2tf and the TFLite converter to work in (see `inside`), and the
    log in it that takes everything they print; the folder is removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=workdir)).resolve()
    log = scratch / "onnx2tf.log"
    try:
        with silenced(log):
            yield scratch, log
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with `folder` as working directory and temporary directory, so nothing lands elsewhere."""
    cwd, tmp_env, tmp_cached = os.getcwd(), os.environ.get("TMPDIR"), tempfile.tempdir
    os.chdir(folder)
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        tempfile.tempdir = tmp_cached
        if tmp_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = tmp_env


def run_onnx2tf(fp32: Artifact, model, calibration: Dataset, scratch: Path, log: Path, **options) -> list[list]:
    """onnx2tf on `model` (the float ONNX, as `lowered` rewrites it), saved inside `scratch` (offline, writing
    nothing elsewhere), into scratch/out; returns the calibration files it was given (its -cind argument)."""
    import onnx

    source = scratch / "model.onnx"
    onnx.save(model, str(source))  # a copy: onnx2tf rewrites the file it is given
    calib = _calibration_files(calibration, scratch)
    # TensorFlow's Erf (exact GELU) becomes a Flex op that LiteRT cannot run: onnx2tf's built-in
    # replacement writes it with TFLite builtins instead.
    pseudo = sorted({PSEUDO_OPS[node.op_type] for node in model.graph.node if node.op_type in PSEUDO_OPS})
    if pseudo:
        options["replace_to_pseudo_operators"] = pseudo
    with inside(scratch), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2tf's own use of the deprecated tf.lite.Interpreter
        # Imports TensorFlow, which logs on stderr and probes the temporary directory while importing.
        import onnx2tf

        try:
            onnx2tf.convert(input_onnx_file_path=str(source), output_folder_path=str(scratch / "out"),
                            not_use_onnxsim=True,  # edgekit's ONNX is simplified already (onnxslim)
                            custom_input_op_name_np_data_path=calib, non_verbose=True, **options)
        except (Exception, SystemExit) as err:  # only onnx2tf runs here; it ends some failures with sys.exit(1)
            if machine_error(err):
                raise machine_error(err) from None
            raise _conversion_error(err, log, model) from None
    return calib


def _convert(fp32: Artifact, model, precisions: list[str], calibration: Dataset, io_type: str, workdir: Path,
             scratch: Path, log: Path) -> list[Artifact]:
    options = {"output_dynamic_range_quantized_tflite": "dynamic_int8" in precisions,
               "output_integer_quantized_tflite": "int8" in precisions, "quant_type": "per-channel",
               "input_quant_dtype": io_type, "output_quant_dtype": io_type}
    model, rewrites = lowered(model)
    remedy = _lower(fp32, model, calibration, scratch, log, options)
    made_by = f"onnx2tf {metadata.version('onnx2tf')}, TensorFlow Lite converter {metadata.version('tensorflow')}"
    reference = ReferenceIO(fp32, calibration)
    artifacts = []
    for precision in precisions:
        suffix, kind = OUTPUTS[precision]
        produced = scratch / "out" / f"model_{suffix}.tflite"
        if not produced.is_file():
            raise UserError(f"onnx2tf made no {precision} TFLite model: {log_tail(log)}")
        path = workdir / f"model.{precision}.tflite"
        shutil.move(produced, path)
        details = {"made_by": made_by, "scheme": describe_scheme(precision, io_type, calibration)}
        if remedy:
            details["lowering_remedy"] = remedy
        if rewrites:
            details["lowering_rewrites"] = rewrites
        artifacts.append(Artifact(path, "tflite", kind, details, reference.bind(path)))
    return artifacts


def _lower(fp32: Artifact, model, calibration: Dataset, scratch: Path, log: Path, options: dict) -> str | None:
    """onnx2tf as a compiler driver would run it: when it cannot lower the graph, the remedies it documents
    are tried in turn (the parameter-replacement JSON it writes after a failure, channel-first inputs);
    returns the remedy that worked (None: none was needed), or raises naming the operator and every remedy."""
    first_error = None
    tried = []
    for remedy in (None, "replacement JSON", "channel-first inputs"):
        extra = {}
        if remedy == "replacement JSON":
            written = sorted((scratch / "out").glob("*_auto.json"))
            if not written:
                continue
            extra["param_replacement_file"] = str(shutil.copy(written[-1], scratch / "replacement.json"))
        elif remedy == "channel-first inputs":
            extra["keep_ncw_or_nchw_or_ncdhw_input_names"] = [i.name for i in model.graph.input]
        shutil.rmtree(scratch / "out", ignore_errors=True)
        try:
            run_onnx2tf(fp32, model, calibration, scratch, log, **options, **extra)
            return f"onnx2tf with {remedy} (it failed as is: {first_error})" if remedy else None
        except UserError as err:
            first_error = first_error or str(err)
            tried.append(remedy or "as is")
    raise UserError(f"{first_error} (tried: {', '.join(tried)})")


class ReferenceIO:
    """The float ONNX model's inputs and outputs, and its outputs on one calibration batch, against which
    a .tflite's tensors are paired (`runners.litert.bind_io`)."""

    def __init__(self, fp32: Artifact, calibration: Dataset):
        from ..runners.onnxrt import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(fp32.path, ["CPUExecutionProvider"])
        self.io = runner.inputs, runner.outputs
        feeds = {name: array[:runner.inputs[0].shape[0]] for name, array in calibration.inputs.items()}
        self.probe = feeds, runner.run(feeds)

    def bind(self, path: Path):
        try:
            return bind_io(path, self.io, self.probe)
        except ValueError as err:
            raise UserError(f"{path.name} cannot be matched to the model's inputs and outputs: {err}") from None
        except RuntimeError as err:  # LiteRT cannot prepare it, e.g. a TensorFlow (Flex) op left in the graph
            detail = first_line(err)
            raise UserError(f"{path.name} does not load in LiteRT: {detail[:300]}") from None


def check_operators(model) -> None:
    """Fail before converting when onnx2tf has no lowering for an operator (it has one module per op)."""
    spec = importlib.util.find_spec("onnx2tf")  # locates the package without importing TensorFlow
    if spec is None:
        raise UserError("TFLite conversion needs onnx2tf and TensorFlow: pip install 'edgekit[tflite]'")
    ops = Path(next(iter(spec.submodule_search_locations))) / "ops"
    for node in model.graph.node:
        if not (ops / f"{node.op_type}.py").is_file():
            raise UserError(f"onnx2tf cannot lower operator {node.op_type} (node '{node.name}') to TFLite: "
                            f"it has no conversion for it. {UNSUPPORTED_ADVICE}")


def _calibration_files(calibration: Dataset, scratch: Path) -> list[list]:
    """One channel-last .npy per input for `-cind`, and onnx2tf's sample-image file made from our data."""
    params = []
    for name, array in calibration.inputs.items():
        if array.ndim >= 3:  # onnx2tf makes 3-D to 5-D inputs channel-last
            array = np.transpose(array, [0, *range(2, array.ndim), 1])
        path = scratch / f"calib_{len(params)}.npy"
        np.save(path, np.ascontiguousarray(array, dtype=np.float32))
        # onnx2tf feeds (x - mean) / std to the converter: our data is preprocessed already.
        params.append([tf_name(name), str(path), np.float32(0.0), np.float32(1.0)])
    images = [a for a in calibration.inputs.values() if a.ndim == 4]
    if images:
        np.save(scratch / SAMPLE_FILE, _sample_images(images[0]))
    return params


def _sample_images(nchw: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize to 20x128x128x3 (channels repeated or cut): shape checks need no more."""
    count, height, width, channels = SAMPLE_SHAPE
    rows = np.arange(height) * nchw.shape[2] // height
    cols = np.arange(width) * nchw.shape[3] // width
    picked = nchw[np.arange(count) % len(nchw)][:, np.arange(channels) % nchw.shape[1]]
    return np.ascontiguousarray(picked[:, :, rows][:, :, :, cols].transpose(0, 2, 3, 1), dtype=np.float32)


def describe_scheme(precision: str, io_type: str, calibration: Dataset) -> dict[str, Any]:
    """How a TFLite artifact of `precision` is quantized, as the manifest records it."""
    if precision == "int8":
        return {"mode": "full_integer", "weights": "int8 per-channel", "activations": "int8",
                "io_type": io_type, "calibration_samples": len(calibration)}
    if precision == "dynamic_int8":
        return {"mode": "dynamic_range", "weights": "int8 per-channel", "activations": "float32 (int8 at run time)",
                "io_type": "float32"}
    return {"mode": "float", "weights": "float16" if precision == "fp16" else "float32", "io_type": "float32"}


def _conversion_error(err: BaseException, log: Path, model) -> UserError:
    node = getattr(err, "onnx_op_name", None)
    op_type = next((n.op_type for n in model.graph.node if n.name == node), None)
    where = f" operator {op_type} (node '{node}')" if op_type else f" node '{node}'" if node else " the model"
    detail = str(err).strip().splitlines()[0] if str(err).strip() else f"{type(err).__name__}; log: {log_tail(log)}"
    advice = UNSUPPORTED_ADVICE if node else "Pass --keep-going to ship the ONNX artifacts without TFLite"
    return UserError(f"onnx2tf could not lower{where} to TFLite: {detail}. {advice}")


def log_tail(log: Path) -> str:
    """The log's last error line (TensorFlow's own), else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "failed" in line]
    return (errors or lines or ["(empty log)"])[-1][:300]
