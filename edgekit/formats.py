"""The format registry: everything edgekit knows about one artifact format, in one entry.

A format is its file suffix, the precisions a profile may list for it (under the profile key of the
same name), the stages that make its artifacts, its host runner, its per-layer capture, what runs it in the
device runner and a label.
No other module branches on a format's name; a new format is a stage module, a runner module, an entry
here, a profile key, and its conformance test (tests/test_formats.py fails for a format without one).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError
from .stages import HUB, Artifact, Stage, StageContext

if TYPE_CHECKING:
    from .runners.base import Runner
    from .targets import Runtime


@dataclass(frozen=True)
class Format:
    name: str  # also the profile key holding its settings (`onnx:`, `tflite:`)
    suffix: str
    label: str  # the runtime that runs it on a device, in words
    precisions: tuple[str, ...]
    stages: Callable[[StageContext, list[str]], list[Stage]]  # the stages that make these precisions
    runner: Callable[[Path, Runtime, Any], Runner]  # the host runner, fed through the artifact's recorded io
    capture: Callable[[Path, dict, Any], Any] | None  # every intermediate tensor, for per-layer divergence
    device: str  # what runs its files in the device runner (device/runner.py --runtime)
    tensorrt: bool = False  # GPU targets get a trtexec command for its artifacts
    onnx_graph: bool = False  # its files are ONNX graphs: their int8 weights are checked for x86 saturation
    # Per-layer mapping: a format whose tensors keep the hub graph's names maps by name; any other is matched
    # by value through its own fp32 file, and its other files are aligned to that one op by op, with these
    # bookkeeping ops set aside and these hub operators counted as fused into their producer.
    hub_names: bool = False
    # Modules its stages import in a child process: a child starts importing them while the build exports.
    child_modules: tuple[str, ...] = ()
    # The format whose artifact of the same precision each of its files is saved from. A build that asks for
    # this format makes that artifact too, and ships it only when the profile lists it.
    made_from: str | None = None
    bookkeeping_ops: tuple[str, ...] = ()
    fused_ops: tuple[str, ...] = ()

    def file(self, precision: str) -> str:
        return f"model.{precision}{self.suffix}"


# ---- ONNX: the hub itself, float16, and INT8 QDQ by ONNX Runtime's quantizer ----------------------------

def _onnx_stages(context: StageContext, precisions: list[str]) -> list[Stage]:
    from .stages.quantize import check_excluded_nodes, convert_fp16, quantize_int8

    scheme, calibration = context.scheme, context.calibration
    stages = {
        "fp32": Stage("ship the float ONNX", 1, "onnx", ("fp32",), (HUB,), lambda c: [c.hub]),
        "fp16": Stage("convert to float16", 1, "onnx", ("fp16",), (HUB,),
                      lambda c: [convert_fp16(c.hub, c.target.float16, c.folder)],
                      settings=lambda c: c.target.float16),
        "int8": Stage(f"quantize INT8 ({scheme.calibration} calibration, {len(calibration)} samples)", 1, "onnx",
                      ("int8",), (HUB,),
                      lambda c: [quantize_int8(c.hub, c.scheme, c.calibration, c.excluded_nodes + c.float_nodes,
                                               c.folder)],
                      check=lambda c: check_excluded_nodes(c.hub, c.scheme, c.excluded_nodes),
                      settings=lambda c: (c.scheme, c.excluded_nodes + c.float_nodes)),
    }
    return [stages[p] for p in precisions]


def _onnx_runner(path: Path, runtime: Runtime, io) -> Runner:
    from .int8_kernels import session_config
    from .runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, runtime.onnxruntime_providers, runtime.threads, session_config(runtime.cpu_floor))


def _onnx_capture(path: Path, inputs: dict, io):
    from .layerwise.capture import capture_onnx

    return capture_onnx(path, inputs)


# ---- TFLite: onnx2tf files, in a child process; full-integer INT8 may keep a plan's layers float ---------

def _tflite_stages(context: StageContext, precisions: list[str]) -> list[Stage]:
    def stage(name: str, chosen: list[str], fallback: Stage | None = None) -> Stage:
        return Stage(f"{name} ({', '.join(chosen)})", 2, "tflite", tuple(chosen), (HUB,),
                     lambda c: _tflite_artifacts(c, chosen), fallback=fallback,
                     settings=lambda c: (c.target.tflite.io_type, c.float_nodes), in_child=True)

    if context.plan and "dynamic_int8" in precisions:
        precisions = [p for p in precisions if p != "dynamic_int8"]
        context.plan.notes.append("dynamic_int8 TFLite not built: dynamic-range quantization cannot keep layers "
                                  "in float")
    # Calibrating the full-integer model is where TensorFlow fails most (it has crashed on a BiLSTM): the
    # float and dynamic-range files are then made without it.
    rest = [p for p in precisions if p != "int8"]
    fallback = stage("convert to TFLite without full-integer INT8", rest) if "int8" in precisions and rest else None
    return [stage("convert to TFLite", precisions, fallback)] if precisions else []


def _tflite_artifacts(context: StageContext, precisions: list[str]) -> list[Artifact]:
    from .stages.tflite import convert_tflite
    from .stages.tflite_fallback import convert_tflite_int8_with_float_ops

    io_type, planned = context.target.tflite.io_type, "int8" in precisions and bool(context.float_nodes)
    unplanned = [p for p in precisions if not (planned and p == "int8")]
    artifacts = []
    if unplanned:
        artifacts += context.converters.run("onnx2tf", context.stop, convert_tflite, context.hub, unplanned,
                                            context.calibration, io_type, context.folder)
    if planned:
        artifacts.append(context.converters.run("the TFLite INT8 conversion with float layers", context.stop,
                                                convert_tflite_int8_with_float_ops, context.hub, context.float_nodes,
                                                context.calibration, io_type, context.folder))
    return artifacts


def _tflite_runner(path: Path, runtime: Runtime, io) -> Runner:
    from .runners.litert import LiteRTRunner

    return LiteRTRunner(path, runtime.threads, io)


def _tflite_capture(path: Path, inputs: dict, io):
    from .layerwise.capture import capture_tflite

    return capture_tflite(path, inputs, io)


# ---- ExecuTorch: the PyTorch model itself through torch.export, XNNPACK-delegated; INT8 by PT2E ----------

def _pte_stages(context: StageContext, precisions: list[str]) -> list[Stage]:
    from .stages.executorch import unavailable

    reason = unavailable(context.source)
    if reason:
        context.skipped["pte"] = reason
        return []
    return [Stage(f"lower to ExecuTorch ({', '.join(precisions)})", 2, "pte", tuple(precisions), (),
                  lambda c: _pte_artifacts(c, precisions),
                  settings=lambda c: (c.scheme.calibration, c.float_nodes, c.plan and c.plan.modules))]


def _pte_artifacts(context: StageContext, precisions: list[str]) -> list[Artifact]:
    from .stages.executorch import convert_pte

    return convert_pte(context.source, precisions, context.calibration.inputs, context.plan,
                       context.scheme.calibration, context.folder)


def _pte_runner(path: Path, runtime: Runtime, io) -> Runner:
    from .runners.executorch import ExecuTorchRunner

    return ExecuTorchRunner(path, runtime.threads, io)


# ---- ORT format: ONNX Runtime's optimized graph of an ONNX artifact, for its reduced-size mobile builds ------

def _ort_stages(context: StageContext, precisions: list[str]) -> list[Stage]:
    from .sources import sha256_file

    def stage(precision: str) -> Stage:
        made_from = f"onnx:{precision}"

        def inputs(c: StageContext):
            return (c.target.ort.optimization, _for_arm(c), made_from in c.made and sha256_file(c.made[made_from].path))

        return Stage(f"save ORT format ({precision})", 1, "ort", (precision,), (made_from,),
                     lambda c: [_ort_artifact(c, c.made.get(made_from), precision)], settings=inputs)

    return [stage(precision) for precision in precisions]


def _ort_artifact(context: StageContext, onnx_artifact: Artifact | None, precision: str) -> Artifact:
    from .stages.ort_format import save_ort

    return save_ort(onnx_artifact, precision, context.target.ort.optimization, _for_arm(context), context.folder)


def _for_arm(context: StageContext) -> bool:
    from .int8_kernels import FLOORS

    return FLOORS[context.target.runtime.cpu_floor][0] == "arm64"


FORMATS = {format.name: format for format in (
    Format("onnx", ".onnx", "ONNX Runtime", ("fp32", "fp16", "int8"), _onnx_stages, _onnx_runner, _onnx_capture,
           "onnxruntime", tensorrt=True, hub_names=True, onnx_graph=True),
    Format("tflite", ".tflite", "LiteRT", ("fp32", "fp16", "dynamic_int8", "int8"), _tflite_stages, _tflite_runner,
           _tflite_capture, "litert", bookkeeping_ops=("input", "QUANTIZE", "DEQUANTIZE"), fused_ops=("Clip", "Relu"),
           child_modules=("onnx2tf", "edgekit.stages.tflite")),
    # ExecuTorch's intermediate-output tap gives wrong values on quantized programs (1.5.1): no capture yet.
    Format("pte", ".pte", "ExecuTorch (XNNPACK)", ("fp32", "int8"), _pte_stages, _pte_runner, None, "executorch"),
    # Its tensors cannot be added as graph outputs (the file is ONNX Runtime's own): no per-layer capture.
    Format("ort", ".ort", "ONNX Runtime (ORT format)", ("fp32", "fp16", "int8"), _ort_stages, _onnx_runner, None,
           "onnxruntime", made_from="onnx"),
)}


def stages_for(context: StageContext, chosen: dict[str, list[str]]) -> list[Stage]:
    """The stages that make `chosen` (format -> precisions), a format's stages after those of the format its
    files are saved from, which makes the precisions they need whether chosen or not."""
    wanted = {name: list(precisions) for name, precisions in chosen.items()}
    ordered: list[str] = []  # the profile's order, a base moved up to just before its first derived format
    for name, precisions in chosen.items():
        base = get(name).made_from
        if base:
            have = wanted.setdefault(base, [])
            have += [p for p in precisions if p not in have]
        ordered += [n for n in (base, name) if n and n not in ordered]
    return [stage for name in ordered for stage in get(name).stages(context, wanted[name])]


def get(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"unknown artifact format '{name}': edgekit makes {', '.join(FORMATS)}")
    return FORMATS[name]


def by_suffix(path: Path) -> Format:
    for format in FORMATS.values():
        if path.suffix == format.suffix:
            return format
    raise UserError(f"{path} is neither a build folder nor an artifact edgekit runs "
                    f"({', '.join(f.suffix for f in FORMATS.values())})")
