"""Load the user's model: an ONNX file, a torch.export .pt2, a TorchScript file, or a factory + weights.

Checkpoints are read with `torch.load(weights_only=True)`: a pickle that would run code is refused.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from .errors import UserError, first_line
from .spec import TensorSpec, image_layout

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
# The ONNX checker on an operator outside the standard set (tf2onnx writes TensorFlow's Erfc that way)
UNKNOWN_OPERATOR = re.compile(r"No Op registered for (\S+) with domain_version of (\d+)")


@dataclass
class SourceModel:
    kind: Literal["torch", "onnx"]
    reference: str  # what the user named, e.g. "my_model.py:make_model"
    sha256: str  # over the model file(s) and weights
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    module: Any = None  # torch.nn.Module, ExportedProgram or ScriptModule
    onnx_path: Path | None = None
    files: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(model: str, weights: str | None, input_shape: list[int] | None) -> SourceModel:
    path = Path(model)
    if path.suffix == ".onnx":
        return _load_onnx(_existing(path, "model"), input_shape)
    if ":" in model and not path.exists():
        return _load_factory(model, weights, input_shape)
    _existing(path, "model")
    if weights:
        raise UserError(f"--weights is for a `file.py:factory` model; {path} already holds its weights")
    if path.suffix == ".pt2":
        return _load_exported_program(path, input_shape)
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return _load_torchscript(path, input_shape)
    raise UserError(f"cannot tell what kind of model {path} is: give an .onnx file, a torch.export .pt2, "
                    f"a TorchScript file ({', '.join(TORCHSCRIPT_SUFFIXES)}) or `file.py:factory` with --weights")


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    return path


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


# ---- ONNX -----------------------------------------------------------------------------------------

def _load_onnx(path: Path, input_shape: list[int] | None) -> SourceModel:
    import onnx

    model = read_onnx(path)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    inputs = []
    for position, value in enumerate(graph_inputs):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor.shape.dim]
        given = input_shape if position == 0 else None
        shape = _resolve_shape(value.name, dims, given, path)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        inputs.append(TensorSpec(value.name, shape, dtype, image_layout(shape)))
    outputs = [TensorSpec(v.name, tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim),
                          onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)
               for v in model.graph.output]
    return SourceModel("onnx", str(path), _digest(path), inputs, outputs, onnx_path=path, files=[str(path)])


def read_onnx(path: Path):
    """Load and check an ONNX file; a corrupt or truncated file is a UserError."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as err:
        detail = first_line(err)
        unknown = UNKNOWN_OPERATOR.search(detail)
        if unknown:  # the file is whole: its exporter wrote an operator ONNX does not have
            raise UserError(f"{path} uses the operator {unknown[1]}, which ONNX does not define (at opset "
                            f"{unknown[2]}): its exporter could not convert that layer; re-export it with a "
                            f"layer the exporter supports in its place") from None
        raise UserError(f"{path} is not a valid ONNX model ({detail}): re-export it, "
                        f"or check that the file was copied completely") from None
    return model


def _resolve_shape(name: str, dims: list[int | None], given: list[int] | None, where: Path) -> tuple[int, ...]:
    if given is None:
        if any(d is None for d in dims):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            example = ("--input-shape " + ",".join(["1", *map(str, dims[1:])]) + " (batch 1)"
                       if None not in dims[1:] else "e.g. --input-shape 1,3,224,224")
            raise UserError(f"input '{name}' of {where} has dynamic dimensions ({shown}): "
                            f"pass --input-shape with a fixed shape, {example}")
        return tuple(dims)
    if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
        shown = ",".join("?" if d is None else str(d) for d in dims)
        raise UserError(f"--input-shape {','.join(map(str, given))} does not match input '{name}' of "
                        f"{where}, which is ({shown})")
    return tuple(given)


# ---- PyTorch --------------------------------------------------------------------------------------

def _load_factory(reference: str, weights: str | None, input_shape: list[int] | None) -> SourceModel:
    import torch

    target, _, name = reference.rpartition(":")
    module = _import(target)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"{target} has no factory function '{name}': name a function that returns "
                        f"the model, as in `{target}:make_model`")
    try:
        model = factory()
    except Exception as err:  # the user's code, which may raise anything
        raise UserError(f"calling {reference}() failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{reference}() returned {type(model).__name__}, not a torch.nn.Module")
    files = [Path(target)] if target.endswith(".py") else []
    if weights:
        weights_path = _existing(Path(weights), "weights")
        _load_state_dict(model, weights_path)
        files.append(weights_path)
    model.eval()
    inputs = _torch_inputs(reference, model, input_shape)
    outputs = _check_forward(model, inputs, reference)
    digest = _digest(*files) if files else hashlib.sha256(reference.encode()).hexdigest()
    return SourceModel("torch", reference, digest, inputs, outputs, module=model, files=[str(f) for f in files])


def _torch_inputs(reference: str, model, input_shape: list[int] | None) -> list[TensorSpec]:
    """One input: `--input-shape` or the model's `input_shape`. Several: the model's `input_shapes`, a mapping
    of input name to shape in the order forward() takes them."""
    declared = getattr(model, "input_shapes", None)
    if declared is None:
        return [_torch_input(_torch_input_shape(reference, input_shape, getattr(model, "input_shape", None)))]
    if not isinstance(declared, dict) or not declared:
        raise UserError(f"{reference}(): `input_shapes` must map each input name to its shape, in the order "
                        f"forward() takes them, e.g. {{'image': (1, 3, 224, 224), 'vector': (1, 8)}}")
    if input_shape:
        raise UserError(f"{reference}() declares {len(declared)} inputs (`input_shapes`): set their shapes there, "
                        f"not with --input-shape")
    return [TensorSpec(str(name), tuple(int(d) for d in shape), "float32", image_layout(tuple(shape)))
            for name, shape in declared.items()]


def _import(target: str):
    if target.endswith(".py"):
        path = _existing(Path(target), "model")
        spec = importlib.util.spec_from_file_location(f"edgekit_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # so the file can import its siblings
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code, which may raise anything
            del sys.modules[spec.name]
            raise UserError(f"importing {path} failed: {type(err).__name__}: {err}") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        raise UserError(f"cannot import '{target}' ({err}): give `path/to/file.py:factory` or a module "
                        f"on PYTHONPATH as `package.module:factory`") from None
    except Exception as err:  # the user's code, which may raise anything
        raise UserError(f"importing {target} failed: {type(err).__name__}: {err}") from None


def _load_state_dict(model, path: Path) -> None:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[0]
        raise UserError(f"refused to load {path}: it is a pickle that needs code execution to read ({detail}). "
                        f"Save only the weights with torch.save(model.state_dict(), ...)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"cannot read weights {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds {type(checkpoint).__name__}, not a state_dict")
    result = model.load_state_dict(checkpoint, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:3])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:3])}")
    if problems:
        raise UserError(f"weights {path} do not fit the model ({'; '.join(problems)}): "
                        f"check that --weights belongs to this factory")


def _torch_input_shape(reference: str, given: list[int] | None, declared) -> tuple[int, ...]:
    if given:
        return tuple(given)
    if declared:
        return tuple(int(d) for d in declared)
    raise UserError(f"the input shape of {reference} is not known: pass --input-shape, e.g. 1,3,224,224")


def _torch_input(shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec("input", shape, "float32", image_layout(shape))


def _check_forward(model, inputs: list[TensorSpec], reference: str) -> list[TensorSpec]:
    """Run the model once on zeros: proves the shapes fit and tells the outputs."""
    import torch

    try:
        with torch.no_grad():
            result = model(*(torch.zeros(spec.shape) for spec in inputs))
    except Exception as err:  # whatever the user's forward() raises
        detail = first_line(err)
        shapes = "; ".join(f"{s.name} {','.join(map(str, s.shape))}" for s in inputs)
        raise UserError(f"{reference} rejects inputs of shape {shapes} ({detail}): "
                        f"pass the --input-shape the model was trained with") from None
    values = list(result) if isinstance(result, (tuple, list)) else [result]
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise UserError(f"{reference} must return a tensor or a tuple of tensors")
    names = ["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))]
    return [TensorSpec(n, tuple(v.shape), "float32") for n, v in zip(names, values)]


def _load_exported_program(path: Path, input_shape: list[int] | None) -> SourceModel:
    import torch

    logging.getLogger("torch.export").setLevel(logging.ERROR)  # it logs a traceback before raising
    try:
        program = torch.export.load(str(path))
    except (RuntimeError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot load {path} as a torch.export program: {str(err).splitlines()[0]}") from None
    args = program.example_inputs[0] if program.example_inputs else ()
    declared = tuple(args[0].shape) if args else None
    dims = [int(d) if isinstance(d, int) else None for d in declared] if declared else None
    if dims is None or program.range_constraints:
        if input_shape is None:
            raise UserError(f"{path} has dynamic or unknown input dimensions: pass --input-shape, "
                            f"e.g. --input-shape 1,3,224,224")
        shape = tuple(input_shape)
    else:
        shape = _resolve_shape("input", dims, input_shape, path)
    outputs = _check_forward(program.module(), [_torch_input(shape)], str(path))
    return SourceModel("torch", str(path), _digest(path), [_torch_input(shape)], outputs, module=program,
                       files=[str(path)])


def _load_torchscript(path: Path, input_shape: list[int] | None) -> SourceModel:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"cannot load {path} as TorchScript ({str(err).strip().splitlines()[0]}): a plain "
                        f"state_dict needs its model, as `file.py:factory --weights {path}`") from None
    module.eval()
    shape = _torch_input_shape(str(path), input_shape, None)
    outputs = _check_forward(module, [_torch_input(shape)], str(path))
    return SourceModel("torch", str(path), _digest(path), [_torch_input(shape)], outputs, module=module,
                       files=[str(path)])

