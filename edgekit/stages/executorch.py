"""Stage: the (pruned) PyTorch model -> ExecuTorch programs (.pte) with the XNNPACK delegate.

fp32 is the model as torch.export captures it; INT8 is PT2E static quantization with ExecuTorch's XNNPACK
quantizer (weights int8 symmetric per output channel, activations int8 per tensor), calibrated on the
build's calibration data. Layers a precision plan keeps float are left out of quantization by module path,
and the lowered program is read back to prove they are float. Every file records what the XNNPACK
delegate took and which operators stay on ExecuTorch's portable CPU kernels.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import UserError, first_line, machine_error
from ..sources import SourceModel
from . import Artifact

if TYPE_CHECKING:
    from ..precision_plan import PrecisionPlan

INSTALL = "pip install 'edgekit[pte]'"
DELEGATE = "XnnpackBackend"
WEIGHTED_OPS = ("aten.convolution.default", "aten.linear.default")  # the layers quantization changes


def unavailable(source: SourceModel) -> str | None:
    """Why this build cannot make ExecuTorch programs (None: it can)."""
    if importlib.util.find_spec("executorch") is None:
        return f"ExecuTorch programs need the executorch package, which is not installed: {INSTALL}"
    if source.kind != "torch":
        return "ExecuTorch programs are made from the PyTorch model by torch.export, and this build's source is ONNX"
    if not hasattr(source.module, "graph_signature") and hasattr(source.module, "_c"):  # a ScriptModule
        return "TorchScript models cannot go through torch.export: give the model as `file.py:factory --weights W`"
    return None


def convert_pte(source: SourceModel, precisions: list[str], calibration: dict[str, np.ndarray],
                plan: PrecisionPlan | None, observer: str, folder: Path) -> list[Artifact]:
    """`model.<precision>.pte` for each precision; `calibration`: input name -> (N, ...) calibration samples;
    the INT8 program keeps the PyTorch modules of the plan's float layers float."""
    import torch

    example = tuple(torch.zeros(spec.shape) for spec in source.inputs)
    blocks = {node: plan.modules.get(node) and _weighted_block(source.module, plan.modules[node])
              for node in plan.float_nodes} if plan else {}
    float_modules = sorted({block for block in blocks.values() if block})
    unmapped = [node for node, block in blocks.items() if not block]
    with _quiet():
        program, rewrites = _images_only_prelu(_export(source, example), example)
        artifacts = []
        for precision in precisions:
            if precision == "int8":
                quantized = _export_quantized(program, example, source, calibration, float_modules, observer)
                artifact, layers = _lower(quantized, precision, folder, source)
                artifact.metadata.update(_int8_details(layers, float_modules, unmapped, observer))
            else:
                artifact, _ = _lower(program, precision, folder, source)
            if rewrites:
                artifact.metadata["lowering_rewrites"] = rewrites
            artifacts.append(artifact)
    return artifacts


def _images_only_prelu(program, example: tuple):
    """`program` with each PReLU on an input that is not an image written as relu(x) + w * (x - relu(x)), and one
    line per PReLU rewritten. XNNPACK's channels-last pass takes aten.prelu for an image op and refuses it on a
    2-D or 3-D input ("Attempting to convert non-NHWC compatible node to NHWC": the PReLU after a Linear in the
    MTCNN networks); the sum is exact and it lowers op by op."""
    import torch

    aten = torch.ops.aten
    module = program.module()
    rewrites = []
    for node in list(module.graph.nodes):
        if node.target != aten.prelu.default or node.args[0].meta["val"].dim() in (0, 1, 4):
            continue
        x, weight = node.args
        rank = x.meta["val"].dim()
        with module.graph.inserting_before(node):
            positive = module.graph.call_function(aten.relu.default, (x,))
            negative = module.graph.call_function(aten.sub.Tensor, (x, positive))
            slopes = module.graph.call_function(aten.view.default, (weight, [-1] + [1] * (rank - 2)))
            result = module.graph.call_function(
                aten.add.Tensor, (positive, module.graph.call_function(aten.mul.Tensor, (negative, slopes))))
        node.replace_all_uses_with(result)
        module.graph.erase_node(node)
        rewrites.append(f"PReLU '{node.name}' on a {rank}-D input written as relu(x) + w * (x - relu(x))")
    if not rewrites:
        return program, []
    module.recompile()
    return torch.export.export(module, example), rewrites


def _weighted_block(module, name: str) -> str | None:
    """`name`, or its closest parent holding a convolution or linear layer; None where that is the whole model
    (an "INT8" program kept float throughout is not one). The plan maps an ONNX Conv with its BatchNorm
    folded in to the BatchNorm module (whose output it equals); the quantizer quantizes that output with the
    convolution, so keeping it float means keeping the block that holds both float."""
    import torch

    if not hasattr(module, "named_modules"):  # a torch.export program: module paths as recorded
        return name
    modules = dict(module.named_modules())
    weighted = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    while name and not any(isinstance(m, weighted) for path, m in modules.items()
                           if path == name or path.startswith(f"{name}.")):
        name = name.rpartition(".")[0]
    return name or None


def _export(source: SourceModel, example: tuple):
    import torch

    if hasattr(source.module, "graph_signature"):  # already a torch.export program (.pt2)
        return source.module
    try:
        return torch.export.export(source.module.eval(), example)
    except Exception as err:  # torch.export traces the user's forward(), which may raise anything
        if machine_error(err):
            raise machine_error(err) from None
        raise UserError(f"torch.export cannot capture {source.reference} for ExecuTorch: {first_line(err)[:300]}. "
                        f"Drop 'pte' from the target's formats, or make forward() exportable") from None


def _export_quantized(program, example: tuple, source: SourceModel, calibration: dict[str, np.ndarray],
                      float_modules: list[str], observer: str):
    """PT2E: annotate with the XNNPACK quantizer, observe the calibration samples, convert, export again."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    quantizer = XNNPACKQuantizer().set_global(_config(get_symmetric_quantization_config(is_per_channel=True),
                                                      observer))
    if float_modules:
        # A module-name config of None is refused by this quantizer; a filter leaves those modules unannotated.
        kept = [get_module_name_filter(name) for name in float_modules]
        quantizer.set_filter_function(lambda node: not any(keep(node) for keep in kept))
    prepared = prepare_pt2e(program.module(), quantizer)
    batch = source.inputs[0].shape[0]
    count = len(next(iter(calibration.values()))) // batch * batch
    with torch.no_grad():
        for start in range(0, count, batch):
            prepared(*(torch.from_numpy(np.ascontiguousarray(calibration[spec.name][start:start + batch]))
                       for spec in source.inputs))
    return torch.export.export(convert_pt2e(prepared), example)  # .eval() is refused on a converted module


def _config(config, observer: str):
    """The XNNPACK config with the profile's calibration method: min/max, else its histogram observer."""
    import dataclasses

    if observer != "minmax":
        return config
    from torchao.quantization.pt2e import MinMaxObserver

    activation = dataclasses.replace(config.input_activation,
                                     observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def _lower(program, precision: str, folder: Path, source: SourceModel) -> tuple[Artifact, dict[str, str]]:
    """The program lowered to XNNPACK and written as model.<precision>.pte, with its delegation report; and the
    precision of each of its convolution and linear layers."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        path = folder / f"model.{precision}.pte"
        path.write_bytes(edge.to_executorch().buffer)
    except Exception as err:  # ExecuTorch's lowering passes raise whatever an unusual graph trips
        if machine_error(err):
            raise machine_error(err) from None
        raise UserError(f"ExecuTorch could not lower the {precision} program of {source.reference}: "
                        f"{first_line(err)[:300]}") from None
    graph = edge.exported_program().graph_module
    details = {"made_by": f"executorch {_version()} (torch.export, XNNPACK partitioner)", "method": "forward",
               "runtime": f"executorch {_version()}", "delegation": delegation(graph)}
    # A .pte has no tensor names: its inputs and outputs are the model's, in forward()'s order.
    io = list(source.inputs), list(source.outputs)
    return Artifact(path, "pte", precision, details, io), layer_precisions(graph)


def _int8_details(layers: dict[str, str], float_modules: list[str], unmapped: list[str],
                  observer: str) -> dict[str, Any]:
    """The INT8 program's scheme, its layer counts by precision, and the plan's layers proven float in it."""
    kept: dict[str, Any] = {"modules": float_modules, "layers": {}}
    for module in float_modules:
        under = {name: p for name, p in layers.items() if name == module or name.startswith(f"{module}.")}
        quantized = sorted(name for name, p in under.items() if p != "fp32")
        if quantized:
            raise UserError(f"the INT8 .pte quantized {', '.join(quantized)}, which the precision plan keeps float")
        kept["layers"][module] = sorted(under)
    if unmapped:
        kept["not_kept"] = {"onnx_nodes": unmapped,
                            "why": "no PyTorch module short of the whole model computes them (graph-level "
                                   "operations): quantized"}
    return {"scheme": {"quantizer": "XNNPACKQuantizer (PT2E static)", "weights": "int8 symmetric per output channel",
                       "activations": "int8 per tensor", "observer": "min/max" if observer == "minmax" else "histogram"},
            "layers": {"int8": sum(p == "int8" for p in layers.values()),
                       "fp32": sum(p == "fp32" for p in layers.values())},
            "float_layers": kept}


def delegation(graph) -> dict[str, Any]:
    """What the XNNPACK delegate took: its subgraphs and nodes, and the operators left to portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph)
    table = info.get_operator_delegation_dataframe()
    left = {row.op_type: int(row.occurrences_in_non_delegated_graphs) for row in table.itertuples()
            if row.op_type not in ("Total", "getitem") and row.occurrences_in_non_delegated_graphs}
    return {"delegate": DELEGATE, "delegated_nodes": info.num_delegated_nodes,
            "partitions": info.num_delegated_subgraphs, "fallback": "portable kernels", "fallback_ops": left}


def layer_precisions(graph) -> dict[str, str]:
    """Each convolution and linear layer of a lowered program (by module path) -> int8 when its weight comes
    from a dequantize node, else fp32; inside the delegate's subgraphs and outside them."""
    found: dict[str, str] = {}

    def walk(module) -> None:
        for node in module.graph.nodes:
            if node.op == "call_function" and getattr(node.target, "__name__", "") in WEIGHTED_OPS:
                weight = getattr(node.args[1], "target", None)  # a parameter's name, or the op producing it
                int8 = "dequantize" in getattr(weight, "__name__", "")
                stack = node.meta.get("nn_module_stack") or {}
                layer = list(stack.values())[-1][0] if stack else node.name
                found[layer] = "fp32" if found.get(layer) == "fp32" or not int8 else "int8"

    walk(graph)
    for node in graph.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            walk(getattr(graph, node.target).original_module.graph_module)
    return found


def _version() -> str:
    return metadata.version("executorch")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and ExecuTorch print warnings and notes for every graph; the build's summary says what matters."""
    captured = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
