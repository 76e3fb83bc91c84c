"""Measured energy: RAPL counters read through zeus, on a fake powercap tree whose counters move at a known
power, and on this machine's own tree where it has one (it has none here: the test says so and skips)."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from edgekit.power import RAPL_ROOT, measure, power_reader

pytest.importorskip("zeus")

IDLE_WATTS = 5.0
MJ_PER_CALL = 10.0


class FakePackage:
    """intel-rapl:0 under `root`: a counter in microjoules that an idle draw of IDLE_WATTS advances in real
    time, and that each call of `work` advances by MJ_PER_CALL more, written the way the kernel shows it."""

    def __init__(self, root: Path, dram: bool = False):
        self.zone = root / "intel-rapl:0"
        self.zone.mkdir(parents=True)
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text("262143328850\n")
        if dram:  # a DRAM sub-zone that draws nothing
            sub = self.zone / "intel-rapl:0:0"
            sub.mkdir()
            (sub / "name").write_text("dram\n")
            (sub / "max_energy_range_uj").write_text("65712999613\n")
            (sub / "energy_uj").write_text("1000\n")
        self.energy_uj, self.last = 1_000_000.0, time.perf_counter()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self._write()
        self.thread = threading.Thread(target=self._idle, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        partial = self.zone / "energy_uj.partial"
        partial.write_text(f"{int(self.energy_uj)}\n")
        os.replace(partial, self.zone / "energy_uj")

    def _advance(self, extra_uj: float = 0.0) -> None:
        with self.lock:
            now = time.perf_counter()
            self.energy_uj += IDLE_WATTS * 1e6 * (now - self.last) + extra_uj
            self.last = now
            self._write()

    def _idle(self) -> None:
        while not self.stop.wait(0.005):
            self._advance()

    def work(self) -> None:
        time.sleep(0.001)
        self._advance(MJ_PER_CALL * 1e3)


@pytest.fixture
def package(tmp_path):
    fake = FakePackage(tmp_path / "intel-rapl", dram=True)
    yield fake
    fake.stop.set()
    fake.thread.join()


def test_joules_per_inference_above_idle_from_a_fake_powercap_tree(package):
    reader, why = power_reader(package.zone.parent)
    assert why is None and "RAPL (1 package and DRAM" in reader.source and "zeus 0.16" in reader.source
    result = measure(reader, package.work, idle_s=1.0, window_s=1.0)
    assert result["measured"] and result["window_s"] >= 1.0 and result["inferences"] > 20
    # The fake counter moves when its thread is scheduled: on a loaded machine a reading can lag by a tick.
    # Without the idle subtraction the result would be 1.5x or more (5 W over each 1 ms call), so 20% still
    # tells right from wrong.
    assert result["idle_watts"] == pytest.approx(IDLE_WATTS, rel=0.2)
    assert result["joules_per_inference"] * 1e3 == pytest.approx(MJ_PER_CALL, rel=0.2)
    assert result["active_watts"] > result["idle_watts"]


def test_no_tree_or_an_unreadable_counter_is_said_not_measured(tmp_path):
    reader, why = power_reader(tmp_path / "absent")
    assert reader is None and "no power reading on this machine" in why
    zone = tmp_path / "intel-rapl" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")  # no energy_uj: a counter that cannot be read
    reader, why = power_reader(zone.parent)
    assert reader is None and "cannot read the RAPL counters" in why


def test_this_machines_own_counters():
    reader, why = power_reader(RAPL_ROOT)
    if reader is None:
        pytest.skip(why)
    result = measure(reader, lambda: sum(range(10_000)), idle_s=1.0, window_s=2.0)
    assert result["measured"] and result["idle_watts"] > 0 and result["inferences"] > 0


def test_bench_says_why_it_measured_no_energy(example_build, tmp_path, capsys):
    """Here there are no counters (or a non-native runner): the bench says so and records it, never a number."""
    folder = tmp_path / "x86_64"
    shutil.copytree(example_build / "x86_64", folder)
    capsys.readouterr()
    assert run_cli("bench", folder / "model.int8.onnx", "--runner", "native", "--runs", "3", "--energy") == 0
    out = capsys.readouterr().out
    reader, why = power_reader(RAPL_ROOT)
    if reader is None:
        assert f"energy not measured: {why}" in out
    else:
        assert "mJ per inference MEASURED" in out
