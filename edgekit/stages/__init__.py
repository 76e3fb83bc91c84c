"""The stage contract: every step that makes artifacts has one shape.

A stage names what it needs (artifacts made before it, as "format:precision", which it reads from
`StageContext.made`), makes the artifacts of one format, checks settings before any work starts (`check`),
and may name a `fallback` stage tried when it fails, and whether its work runs in a child process (it then
overlaps the others). After it runs, `ensure` checks each artifact it returned against what it declared.
The pipeline builds a target's stage list from the format registry (edgekit.formats), validates the order,
and runs every stage under one failure policy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..artifact import Artifact
from ..errors import UserError
from ..isolation import Converters

if TYPE_CHECKING:
    from ..data import Dataset
    from ..precision_plan import PrecisionPlan
    from ..sources import SourceModel
    from ..targets import Quantization, Target

HUB = "onnx:fp32"  # the float ONNX every other artifact is made from; exported before any stage runs


@dataclass
class StageContext:
    """What every stage of one target's build may read."""
    hub: Artifact
    target: Target
    calibration: Dataset
    scheme: Quantization  # the target's INT8 scheme, with the recipe's calibration method
    excluded_nodes: list[str]  # ONNX nodes the user keeps float
    plan: PrecisionPlan | None  # layers every INT8 artifact keeps float
    folder: Path
    source: SourceModel  # the (pruned) model: formats made from PyTorch itself read it
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why this build cannot make it
    stop: threading.Event = field(default_factory=threading.Event)  # set when the build ends early
    converters: Converters = field(default_factory=Converters)  # child processes for conversions
    made: dict[str, Artifact] = field(default_factory=dict)  # "format:precision" -> artifact, as stages make them

    def __post_init__(self):
        self.made.setdefault(HUB, self.hub)

    @property
    def float_nodes(self) -> list[str]:
        return self.plan.float_nodes if self.plan else []


@dataclass(frozen=True)
class Stage:
    name: str  # what the progress line and a recorded failure call it
    version: int  # bumped when what it makes changes for the same inputs
    format: str
    makes: tuple[str, ...]  # precisions
    requires: tuple[str, ...]  # "format:precision" of artifacts made before it
    run: Callable[[StageContext], list[Artifact]]
    check: Callable[[StageContext], None] | None = None  # settings problems, raised before any stage runs
    fallback: Stage | None = None  # a smaller stage tried when this one fails
    # The settings its artifacts depend on besides the hub and the calibration data (its cache key);
    # None: not worth caching.
    settings: Callable[[StageContext], Any] | None = None
    in_child: bool = False  # its work runs in a child process, so it may overlap the stages run in this one

    def ensure(self, made: list[Artifact]) -> list[Artifact]:
        """What the stage returned is what it declared, on disk."""
        for artifact in made:
            if artifact.format != self.format or artifact.variant not in self.makes or not artifact.path.is_file():
                raise RuntimeError(f"stage '{self.name}' returned {artifact.key} at {artifact.path}, but declares "
                                   f"{self.format}:{'/'.join(self.makes)}")
        return made


def validate_order(stages: list[Stage]) -> None:
    """Every stage's inputs are made by the hub or by a stage before it (the fallback stands in for its stage)."""
    available = {HUB}
    for stage in stages:
        missing = [need for need in stage.requires if need not in available]
        if missing:
            raise UserError(f"stage '{stage.name}' needs {missing[0]}, which no earlier stage makes: "
                            f"list the formats it depends on first in the profile's 'formats'")
        available |= {f"{stage.format}:{precision}" for precision in stage.makes}
