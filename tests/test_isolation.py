"""Conversion children: a warm child imports its converter before its job arrives, and every child ends with the
build (used, unused, or stopped while it works)."""
from __future__ import annotations

import os
import threading
import time

import pytest

from edgekit.isolation import Converters, Stopped

psutil = pytest.importorskip("psutil")


def children() -> list:
    return [child for child in psutil.Process().children(recursive=True)
            if "spawn_main" in " ".join(child.cmdline())]


def started_children(timeout: float = 10) -> list:
    """The conversion children once they show: a spawned child is forked first and only then runs Python, so
    right after the start its command line can still be the parent's."""
    deadline = time.monotonic() + timeout
    while not (found := children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_a_warm_child_imports_ahead_and_then_runs_the_job(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    monkeypatch.setenv("EDGEKIT_TEST_MARKER", str(marker))
    with Converters() as converters:
        converters.warm(["warm_marker"])
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the warm child never imported its module"
            time.sleep(0.05)
        asked = time.time()
        worker = converters.run("job", threading.Event(), os.getpid)
    pid, imported = marker.read_text().split()
    assert worker == int(pid) != os.getpid()  # the job ran in the child that had imported the module
    assert float(imported) < asked
    assert children() == []


def test_an_unused_warm_child_ends_with_the_build():
    with Converters() as converters:
        converters.warm(["json"])
        started = started_children()
        assert len(started) == 1
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [] and children() == []


def test_a_stop_ends_the_child_at_work():
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    begun = time.monotonic()
    with Converters() as converters, pytest.raises(Stopped):
        converters.run("sleeping", stop, time.sleep, 60)
    assert time.monotonic() - begun < 30
    assert children() == []
