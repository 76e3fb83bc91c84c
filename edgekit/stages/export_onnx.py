"""Stage: the source model -> one simplified, checked float32 ONNX graph (the hub of every later artifact)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from ..errors import UserError, first_line, machine_error
from .. import output_kinds
from ..graph_stats import graph_stats
from ..sources import SourceModel
from . import Artifact

EXPORT_VERSION = 2  # part of the stage cache's key: raise it when what export_onnx makes changes

def export_onnx(source: SourceModel, opset: int, workdir: Path) -> Artifact:
    import onnx

    if source.kind == "torch":
        model, opset_note = _from_torch(source, opset, workdir), None
    else:
        model, opset_note = to_opset(onnx.load(str(source.onnx_path)), opset)
    model = _simplify(model, source)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as err:
        raise UserError(f"the ONNX graph exported from {source.reference} fails the ONNX checker: "
                        f"{str(err).splitlines()[0]}") from None
    path = workdir / "model.fp32.onnx"
    onnx.save(model, str(path))
    details = {"made_by": f"onnxslim {_version('onnxslim')}", **graph_stats(model),
               "output_kinds": {name: kind.to_dict() for name, kind in output_kinds.detect(model).items()}}
    if opset_note:
        details["opset_conversion"] = opset_note
    return Artifact(path, "onnx", "fp32", details)


def model_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def to_opset(model, opset: int):
    """An ONNX input at the target's opset (onnx's version converter), and what was done, in words.

    Exporters from other frameworks write old opsets (paddle2onnx: 11), where for example a per-channel
    DequantizeLinear has no `axis`. Where the converter cannot convert, the model keeps its own opset and
    later stages adapt to it (per-tensor quantization below opset 13)."""
    import onnx
    from onnx import version_converter

    found = model_opset(model)
    if found == opset:
        return model, None
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as err:
        detail = first_line(err)
        return model, {"from": found, "to": found, "converted": False,
                       "why": f"onnx's version converter could not take opset {found} to {opset}: {detail[:200]}"}
    return converted, {"from": found, "to": opset, "converted": True}


def _from_torch(source: SourceModel, opset: int, workdir: Path):
    import onnx
    import torch

    args = tuple(torch.zeros(spec.shape) for spec in source.inputs)
    # TorchScript cannot go through torch.export; it takes the TorchScript-based exporter.
    legacy = isinstance(source.module, torch.jit.ScriptModule)
    raw = workdir / "exported.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            torch.onnx.export(source.module, args, str(raw), dynamo=not legacy, opset_version=opset,
                              input_names=[s.name for s in source.inputs],
                              output_names=[s.name for s in source.outputs], external_data=False)
    except Exception as err:  # the exporter runs the user's forward(), which may raise anything
        if machine_error(err):
            raise machine_error(err) from None
        detail = first_line(err)
        raise UserError(f"PyTorch could not export {source.reference} to ONNX opset {opset}: {detail}. "
                        f"Replace or register the unsupported operation, or export to ONNX yourself and "
                        f"pass the .onnx file") from None
    model = onnx.load(str(raw))
    raw.unlink()
    return model


def _simplify(model, source: SourceModel):
    import onnxslim

    shapes = [f"{s.name}:{','.join(map(str, s.shape))}" for s in source.inputs]
    try:
        slimmed = onnxslim.slim(model, input_shapes=shapes)
    except Exception as err:  # only onnxslim runs here; its passes raise whatever an unusual graph trips
        raise UserError(f"simplifying the ONNX graph of {source.reference} failed: {str(err).splitlines()[0]}") from None
    # onnxslim drops an output's shape when its shape inference cannot follow an operator; the checker
    # then rejects the graph, so the output keeps the type the input graph declared.
    declared = {o.name: o.type for o in model.graph.output}
    for output in slimmed.graph.output:
        if not output.type.tensor_type.HasField("shape") and output.name in declared:
            output.type.CopyFrom(declared[output.name])
    return slimmed


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
