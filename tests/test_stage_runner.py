"""The stage runner's scheduling: a stage whose work runs in a child process goes to a background thread, one
found in the stage cache is only a copy and is done here, and `meanwhile` runs only beside real work."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from edgekit import targets
from edgekit.cache import StageCache
from edgekit.report import Progress
from edgekit.stages import Artifact, Stage, StageContext
from edgekit.stages.runner import StageRunner


def _writer(name: str, seconds: float, runs: list[str]):
    def run(context: StageContext) -> list[Artifact]:
        runs.append(f"{name} on {threading.current_thread().name}")
        time.sleep(seconds)
        path = context.folder / f"model.fp32.{name}"
        path.write_bytes(name.encode())
        return [Artifact(path, name, "fp32")]
    return run


def _run_once(folder: Path, cache: StageCache, slow_copy: float = 0.0) -> tuple[list[str], int, list[str]]:
    """(where each stage ran, how often `meanwhile` was called, the stages from the cache) for a conversion in a
    child process (0.5 s of work) and an in-process stage after it."""
    folder.mkdir()
    hub = folder / "model.fp32.onnx"
    hub.write_bytes(b"hub")
    target = targets.load("x86_64")
    context = StageContext(Artifact(hub, "onnx", "fp32"), target, None, target.quantization, [], None, folder,
                           None)
    runs: list[str] = []
    stages = [Stage("convert", 1, "tflite", ("fp32",), ("onnx:fp32",), _writer("tflite", 0.5, runs),
                    settings=lambda context: {"converter": 1}, in_child=True),
              Stage("lower", 1, "pte", ("fp32",), ("onnx:fp32",), _writer("pte", 0.0, runs))]
    meanwhile = []
    runner = StageRunner(context, cache, ("versions",), Progress(quiet=True), "[test]",
                         meanwhile=lambda: meanwhile.append(1))
    load = cache.load

    def slow_load(key, into):
        time.sleep(slow_copy)
        return load(key, into)

    cache.load = slow_load
    made = runner.run_all(stages)
    assert [a.path.read_bytes() for a in made] == [b"tflite", b"pte"]
    return runs, len(meanwhile), runner.cached


def test_a_conversion_runs_in_the_background_and_a_cached_one_is_copied_here(tmp_path):
    cache = StageCache(tmp_path / "cache")
    runs, meanwhile, cached = _run_once(tmp_path / "first", cache)
    assert sorted(runs) == ["pte on MainThread", "tflite on edgekit-stage_0"]
    assert meanwhile == 1 and cached == []  # the in-process stage finished while the conversion went on
    # Again, with a copy out of the cache as slow as the conversion was: it is not a conversion, so it is done
    # in this thread and nothing is started beside it.
    runs, meanwhile, cached = _run_once(tmp_path / "second", StageCache(tmp_path / "cache"), slow_copy=0.5)
    assert runs == ["pte on MainThread"] and meanwhile == 0 and cached == ["convert"]
