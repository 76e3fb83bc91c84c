"""The build recipe: one typed object made from `edgekit.yaml` and command-line flags.

Flags override the recipe file. Relative paths in a recipe file are relative to that file.
Everything is validated here, before any model is loaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import example, schema
from .errors import UserError
from .stages.prune import ClusterConfig, DistillConfig, PruneConfig
from .targets import CalibrationMethod, check_counts, check_runner

QuantizeChoice = Literal["int8", "fp16", "none"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input (image-folder data; recorded in the manifest)."""
    resize: list[int] | None = None  # [height, width]; default: the model's input size
    color: Literal["rgb", "grayscale"] | None = None  # default: from the input's channel count
    scale: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    layout: Literal["NCHW", "NHWC"] = "NCHW"


@dataclass(frozen=True)
class Calibration:
    data: str | None = None  # .npy, .npz or a folder of images
    method: CalibrationMethod | None = None  # default: the target's
    samples: int = 128  # at most this many samples are used
    random: bool = False  # explicit opt-in to random-normal data when the user has none
    exclude_nodes: list[str] = field(default_factory=list)  # ONNX node names that stay float


@dataclass(frozen=True)
class BenchRequest:
    """`build --bench`: run the benchmark as a build step (None fields: the target's settings)."""
    runner: str | None = None
    runs: int | None = None
    warmup: int | None = None
    threads: int | None = None
    samples: int | None = None  # held-out samples for on-target parity (default: all)


@dataclass(frozen=True)
class Recipe:
    model: str | None = None  # None: the bundled example
    weights: str | None = None
    targets: list[str] = field(default_factory=lambda: ["arm64"])
    out: str = "build"
    input_shape: list[int] | None = None
    quantize: QuantizeChoice | None = None  # every format makes fp32 + this; None: the target's lists
    calibration: Calibration = field(default_factory=Calibration)
    eval: str | None = None  # held-out inputs (optionally labeled) for parity and accuracy
    preprocess: Preprocess | None = None  # None: not declared (image folders then use the defaults)
    labels: list[str] | None = None
    keep_going: bool = False  # package even when an artifact fails parity
    bench: BenchRequest | None = None  # benchmark each target's artifacts before packaging
    require_gpu: bool = False  # a GPU target whose GPU cannot run here is an error, not a skipped step
    # INT8 layers kept in float in every format: "auto" (fewest that meet the target's budget) or
    # a list of PyTorch module paths / ONNX node names.
    float_fallback: str | list[str] | None = None
    prune: PruneConfig | None = None  # channel pruning / sparsity with recovery, before export
    cluster: ClusterConfig | None = None  # weight sharing (K values per layer), after pruning, before export
    distill: DistillConfig | None = None  # train the user's smaller network from the model, before pruning
    cache: bool = True  # reuse stage results from the stage cache (edgekit.cache) when nothing they read changed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make(recipe_path: str | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read the recipe file (if any), apply flag overrides, fill the example's defaults, validate."""
    data: dict[str, Any] = {}
    where = "command line"
    if recipe_path:
        data = _read(Path(recipe_path))
        where = recipe_path
    recipe = schema.build(Recipe, schema.deep_merge(data, overrides or {}), where)
    if recipe.model is None:
        recipe = _with_example(recipe)
    if recipe.input_shape is not None and (not recipe.input_shape or any(d <= 0 for d in recipe.input_shape)):
        raise UserError(f"{where}: input_shape {recipe.input_shape} must be positive integers, e.g. 1,3,224,224")
    bench = recipe.bench or BenchRequest()
    check_counts(where, {"calibration.samples": recipe.calibration.samples, "bench.runs": bench.runs,
                         "bench.warmup": bench.warmup, "bench.threads": bench.threads, "bench.samples": bench.samples})
    if bench.runner is not None:
        check_runner(bench.runner, f"{where}: bench.runner")
    if not recipe.targets:
        raise UserError(f"{where}: give at least one target")
    if recipe.prune and recipe.prune.cluster is not None:
        raise UserError(f"{where}: weight sharing is its own section: write `cluster: {{clusters: K}}` at the top "
                        f"level, not inside prune")
    if isinstance(recipe.float_fallback, str) and recipe.float_fallback != "auto":
        raise UserError(f"{where}: float_fallback is '{recipe.float_fallback}'; write auto, or a list of layers")
    return recipe


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of keys to values")
    base = path.resolve().parent
    for keys in (("model",), ("weights",), ("out",), ("eval",), ("calibration", "data"), ("distill", "student"),
                 ("distill", "data")):
        holder = data
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder.get(key), dict) else {}
        value = holder.get(keys[-1])
        if isinstance(value, str) and not _is_module_reference(value):
            holder[keys[-1]] = str(base / value)
    return data


def _is_module_reference(value: str) -> bool:
    """`package.module:factory` is not a path; `dir/file.py:factory` and plain paths are."""
    head, sep, _ = value.rpartition(":")
    return bool(sep) and not head.endswith(".py") and "/" not in head


def _with_example(recipe: Recipe) -> Recipe:
    calibration = recipe.calibration
    if calibration.data is None:
        calibration = dataclasses.replace(calibration, data=str(example.CALIB))
    return dataclasses.replace(
        recipe, model=example.FACTORY, weights=str(example.WEIGHTS),
        input_shape=recipe.input_shape or list(example.INPUT_SHAPE),
        calibration=calibration, eval=recipe.eval or str(example.TEST),
        preprocess=schema.build(Preprocess, example.PREPROCESS, "the bundled example"),
        labels=recipe.labels or example.LABELS)
