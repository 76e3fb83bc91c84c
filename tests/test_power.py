"""Measured energy: RAPL counters read through zeus, on a fake powercap tree whose counters move at a known
power; a board's power monitor rails (Jetson's INA3221 under hwmon or IIO), on fake sysfs trees whose readings
change at known times; and this machine's own readers where it has them (it has none here: the tests say so
and skip)."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from edgekit.device.meter import board_power, measure
from edgekit.power import power_reader

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
    reader, why = power_reader(rapl_root=package.zone.parent)
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
    absent = {"hwmon_root": tmp_path / "hwmon", "iio_root": tmp_path / "iio"}
    reader, why = power_reader(rapl_root=tmp_path / "absent", **absent)
    assert reader is None and "no power reading on this machine" in why
    assert f"no power monitor under {tmp_path / 'hwmon'}" in why
    zone = tmp_path / "intel-rapl" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")  # no energy_uj: a counter that cannot be read
    reader, why = power_reader(rapl_root=zone.parent, **absent)
    assert reader is None and "cannot read the RAPL counters" in why


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu-or-board", "nvidia-gpu"])
def test_this_machines_own_readers(gpu):
    reader, why = power_reader(gpu=gpu)
    if reader is None:
        pytest.skip(why)
    try:
        result = measure(reader, lambda: sum(range(10_000)), idle_s=1.0, window_s=2.0)
    finally:
        reader.close()
    # A CPU loop may leave a GPU at idle: then nothing above idle is said, not a number.
    assert (result["idle_watts"] > 0 and result["source"] == reader.source if result["measured"]
            else "no energy above the idle" in result["why"])


def test_bench_says_why_it_measured_no_energy(example_build, tmp_path, capsys):
    """Here there are no counters (or a non-native runner): the bench says so and records it, never a number."""
    folder = tmp_path / "x86_64"
    shutil.copytree(example_build / "x86_64", folder)
    capsys.readouterr()
    assert run_cli("bench", folder / "model.int8.onnx", "--runner", "native", "--runs", "3", "--energy") == 0
    out = capsys.readouterr().out
    reader, why = power_reader()
    if reader is None:
        assert f"energy not measured: {why}" in out
    else:
        reader.close()
        assert "mJ per inference MEASURED" in out


class FakeBoard:
    """A board's INA3221 power monitor: three rails, the board's input drawing IDLE_WATTS until `work` is first
    called, ACTIVE_WATTS from then on. `layout`: "hwmon" (current kernels: in<i>_label, in<i>_input in mV,
    curr<i>_input in mA) or "iio" (JetPack 4's ina3221x: rail_name_<i>, in_power<i>_input in mW)."""

    def __init__(self, root: Path, layout: str, labels=("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")):
        self.layout = layout
        self.chip = root / ("hwmon3" if layout == "hwmon" else "iio:device0")
        self.chip.mkdir(parents=True)
        (self.chip / "name").write_text("ina3221\n" if layout == "hwmon" else "ina3221x\n")
        for index, label in enumerate(labels, start=1 if layout == "hwmon" else 0):
            if layout == "hwmon":
                (self.chip / f"in{index}_label").write_text(f"{label}\n")
                (self.chip / f"in{index}_input").write_text("5000\n")  # 5 V on every rail
            else:
                (self.chip / f"rail_name_{index}").write_text(f"{label}\n")
            self._draw(index, 1.0)
        self.first = 1 if layout == "hwmon" else 0

    def _draw(self, index: int, watts: float) -> None:
        name, value = ((f"curr{index}_input", watts / 5 * 1000) if self.layout == "hwmon"
                       else (f"in_power{index}_input", watts * 1000))
        partial = self.chip / f"{name}.partial"
        partial.write_text(f"{int(value)}\n")
        os.replace(partial, self.chip / name)

    def work(self) -> None:
        self._draw(self.first, ACTIVE_WATTS)
        time.sleep(0.001)


ACTIVE_WATTS = 15.0


@pytest.mark.parametrize("layout", ["hwmon", "iio"])
def test_joules_per_inference_from_a_boards_power_monitor(tmp_path, layout):
    board = FakeBoard(tmp_path / layout, layout)
    board._draw(board.first, IDLE_WATTS)
    reader, why = board_power(hwmon_root=tmp_path / "hwmon", iio_root=tmp_path / "iio")
    assert why is None and reader.source.startswith(f"power monitor rail VDD_IN ({board.chip})")
    try:
        result = measure(reader, board.work, idle_s=1.0, window_s=1.0, warmup=0)
    finally:
        reader.close()
    assert result["measured"] and result["idle_watts"] == pytest.approx(IDLE_WATTS, rel=0.02)
    assert result["active_watts"] == pytest.approx(ACTIVE_WATTS, rel=0.02)
    # 10 W above idle over the window, shared by the calls made in it
    expected = (ACTIVE_WATTS - IDLE_WATTS) * result["window_s"] / result["inferences"]
    assert result["joules_per_inference"] == pytest.approx(expected, rel=0.03)


def test_a_board_without_an_input_rail_sums_its_rails_and_says_so(tmp_path):
    FakeBoard(tmp_path / "hwmon", "hwmon", labels=("GPU", "CPU", "SOC"))  # Jetson AGX Xavier's rails
    reader, why = board_power(hwmon_root=tmp_path / "hwmon", iio_root=tmp_path / "iio")
    try:
        assert why is None and "rails GPU" in reader.source and "summed: no rail is labeled" in reader.source
        first = reader.millijoules()
        time.sleep(0.2)
        assert (reader.millijoules() - first) / 1000 / 0.2 == pytest.approx(3.0, rel=0.15)  # 3 rails of 1 W
    finally:
        reader.close()


def test_a_power_monitor_that_stops_answering_is_not_a_measurement(tmp_path):
    from edgekit.device.meter import energy

    board = FakeBoard(tmp_path / "hwmon", "hwmon")

    def work():
        (board.chip / "curr1_input").unlink(missing_ok=True)
        time.sleep(0.001)

    result = energy(board_power(tmp_path / "hwmon", tmp_path / "iio"), work)
    assert result == {"measured": False, "why": result["why"]} and "the power reading failed" in result["why"]


def test_energy_over_ssh_is_measured_by_the_devices_runner(example_build, tmp_path, capsys, ssh_device):
    """`bench --energy` on a device: its runner reads the device's power monitors (meter.py travels beside it).
    This machine, the device here, has none: the record says so, never a number."""
    import sys

    profile = tmp_path / "board.yaml"
    profile.write_text(f"extends: x86_64\ndescription: a board over SSH\n"
                       f"bench: {{runner: '{ssh_device}', remote_python: '{sys.executable}', runs: 3}}\n")
    folder = tmp_path / "x86_64"
    shutil.copytree(example_build / "x86_64", folder)
    capsys.readouterr()
    assert run_cli("bench", folder / "model.int8.onnx", "--target", profile, "--energy") == 0
    out = capsys.readouterr().out
    reader, why = board_power()
    if reader is not None:
        reader.close()
        pytest.skip("this machine has power monitor rails: the device runner measured them")
    assert f"energy not measured: {why}" in out


def test_an_unlabeled_monitor_reads_every_channel_and_a_dead_one_is_left_out(tmp_path):
    """An INA3221 without rail labels: each channel with a bus voltage and a current counts, summed; a
    channel that cannot be read (disabled) is left out instead of failing the board."""
    chip = tmp_path / "hwmon" / "hwmon0"
    chip.mkdir(parents=True)
    (chip / "name").write_text("ina3221\n")
    for index, milliamps in ((1, 200), (2, 400)):
        (chip / f"in{index}_input").write_text("5000\n")
        (chip / f"curr{index}_input").write_text(f"{milliamps}\n")
    (chip / "in4_input").write_text("12\n")  # a shunt voltage, no current: not a rail
    (chip / "curr3_input").mkdir()  # reading it fails, like a disabled channel's file
    (chip / "in3_input").write_text("5000\n")
    reader, why = board_power(hwmon_root=tmp_path / "hwmon", iio_root=tmp_path / "iio")
    try:
        assert why is None and "ina3221 channel 1" in reader.source and "channel 3" not in reader.source
        first = reader.millijoules()
        time.sleep(0.2)
        assert (reader.millijoules() - first) / 1000 / 0.2 == pytest.approx(3.0, rel=0.15)  # 1 W + 2 W
    finally:
        reader.close()
