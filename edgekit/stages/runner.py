"""Runs one target's stages: through the stage cache, under the one failure policy, and with the stages whose
work happens in a child process (onnx2tf) overlapping the ones that run in this process (ONNX quantization,
ExecuTorch lowering), each on its own core.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..cache import StageCache
from ..errors import UserError
from ..manifest import Failure
from ..report import Progress
from . import HUB, Artifact, Stage, StageContext


@dataclass
class StageRunner:
    """A stage that cannot make its artifacts is recorded as a failure (which fails the build) and its fallback,
    if it has one, is tried; the other stages go on."""
    context: StageContext
    cache: StageCache
    common: tuple  # what every stage's artifacts depend on: library versions, the hub's bytes, calibration data
    progress: Progress
    label: str
    failures: list[Failure] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # names of the stages that came from the cache
    # Work for this process while a background stage converts and no stage is left to run here.
    meanwhile: Callable[[], None] | None = None

    def run_all(self, stages: list[Stage]) -> list[Artifact]:
        """Every stage's artifacts, in the stages' order. A stage in a child process starts in a background
        thread as soon as what it needs is made, one at a time (their memory does not add up); a stage here
        waits for a background one only when it needs what that one makes."""
        made: dict[int, Future | list[Artifact]] = {}
        pending, available = list(range(len(stages))), {HUB}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-stage") as background:
            try:
                while pending:
                    ready = [i for i in pending if stages[i].in_child and set(stages[i].requires) <= available]
                    index = (ready or pending)[0]
                    pending.remove(index)
                    stage = stages[index]
                    for earlier, result in made.items():
                        if isinstance(result, Future) and set(stage.requires) & _makes(stages[earlier]):
                            result.result()
                    # A stage found in the cache is only a copy: done here, so `meanwhile` sees no conversion running.
                    converting = stage.in_child and not self._in_cache(stage)
                    made[index] = background.submit(self.run, stage) if converting else self.run(stage)
                    available |= _makes(stage)
                    for result in made.values():  # a background stage's crash stops the build now, not at the end
                        if isinstance(result, Future) and result.done():
                            result.result()
                if self.meanwhile and any(isinstance(result, Future) and not result.done() for result in made.values()):
                    self.meanwhile()
                artifacts = [artifact for index in sorted(made) for artifact in
                             (made[index].result() if isinstance(made[index], Future) else made[index])]
            except BaseException:
                self.context.stop.set()  # the background stage ends its child instead of finishing it
                raise
        rank = {name: position for position, name in enumerate(_names(stages))}  # the hub's export comes first
        self.failures.sort(key=lambda failure: rank.get(failure.stage, -1))
        self.cached.sort(key=lambda name: rank.get(name, -1))
        return artifacts

    def run(self, stage: Stage) -> list[Artifact]:
        try:
            with self.progress.step(f"{self.label} {stage.name}"):
                made = stage.ensure(self._made(stage))
            self.context.made.update((artifact.key, artifact) for artifact in made)
            return made
        except UserError as err:
            self.failures.append(Failure(stage.name, stage.format, str(err)))
        return self.run(stage.fallback) if stage.fallback else []

    def _key(self, stage: Stage) -> str:
        return self.cache.key(*self.common, stage.format, stage.makes, stage.version, stage.settings(self.context))

    def _in_cache(self, stage: Stage) -> bool:
        return stage.settings is not None and self.cache.has(self._key(stage))

    def _made(self, stage: Stage) -> list[Artifact]:
        if stage.settings is None:
            return stage.run(self.context)
        key = self._key(stage)
        made = self.cache.load(key, self.context.folder)
        if made is None:
            made = stage.run(self.context)
            self.cache.store(key, made)
        else:
            self.cached.append(stage.name)
        return made


def _makes(stage: Stage) -> set[str]:
    """What a stage, or the fallback standing in for it, makes: "format:precision"."""
    return {f"{stage.format}:{precision}" for precision in stage.makes}


def _names(stages: list[Stage]) -> list[str]:
    """Every stage's name and its fallbacks', in the order they are listed."""
    names = []
    for stage in stages:
        while stage:
            names.append(stage.name)
            stage = stage.fallback
    return names
