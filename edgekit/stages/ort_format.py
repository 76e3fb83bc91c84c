"""Stage: an ONNX artifact -> ONNX Runtime's ORT format (.ort), the format its reduced-size mobile builds load.

ONNX Runtime optimizes the graph at the profile's level and saves what it would run, as its own
convert_onnx_models_to_ort tool does in its default ("Fixed") style. The NCHWc layout transform is left out
at every level: its block size is the converting machine's vector width, so the file would not be portable.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError, first_line
from . import Artifact

LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
NO_NCHWC = ("ONNX Runtime does not optimize an ORT-format file again when it loads it, and the NCHWc layout it "
            "gives an .onnx file on x86-64 CPUs with AVX2 or AVX-512 is left out of this one (it would tie the file "
            "to this machine's vector width): on such a CPU the .onnx may run faster; on arm64 they match")


def save_ort(onnx_artifact: Artifact | None, precision: str, optimization: str, for_arm: bool,
             folder: Path) -> Artifact:
    """`onnx_artifact`: the ONNX file of the same precision (None when its stage failed). `for_arm`: the file
    keeps signed INT8 QDQ as it is (`session.qdqisint8allowed`, what ONNX Runtime asks for files that ARM
    devices run); otherwise, as on x86, it is saved as U8S8. Saved on an x86 host without the option, an
    S8S8 file became U8S8 and saturated there although ARM's kernels never do."""
    import onnxruntime as ort

    from ..runners import runtime_errors

    output = folder / f"model.{precision}.ort"
    if onnx_artifact is None:
        raise UserError(f"{output.name} is saved from model.{precision}.onnx, which this build could not make "
                        f"(its own failure says why)")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization])
    options.optimized_model_filepath = str(output)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.add_session_config_entry("session.qdqisint8allowed", "1" if for_arm else "0")
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx_artifact.path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except runtime_errors() as err:
        output.unlink(missing_ok=True)
        raise UserError(f"ONNX Runtime cannot save {onnx_artifact.path.name} in ORT format: "
                        f"{first_line(err)[:300]}") from None
    return Artifact(output, "ort", precision, {
        **onnx_artifact.metadata, "notes": [*onnx_artifact.metadata.get("notes", []), NO_NCHWC],
        "saved_from": onnx_artifact.path.name,
        "saved_by": f"onnxruntime {ort.__version__} (ORT format, '{optimization}' graph optimizations)",
        "required_operators": required_operators(output)})


def required_operators(path: Path) -> list[str]:
    """The operators a reduced-size ONNX Runtime build needs for `path`: the lines of the
    required_operators.config its build script takes ("domain;opset;Op,Op")."""
    from onnxruntime.tools.ort_format_model import OrtFormatModelProcessor

    used: dict[str, dict[int, set[str]]] = {}
    OrtFormatModelProcessor(str(path), used, None).process()
    return [f"{domain};{opset};{','.join(sorted(ops))}"
            for domain in sorted(used) for opset, ops in sorted(used[domain].items()) if ops]
