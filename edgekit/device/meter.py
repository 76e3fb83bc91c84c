"""Energy per inference from the power readings a machine exposes; used by the device runner on a device and
by edgekit's bench on its own host.

Standard library only, like runner.py, beside which it is copied to a device. It reads the current/power
monitor chips boards carry (the INA3221 of NVIDIA Jetson boards, INA219/INA226 on others) through Linux hwmon,
or through IIO on older Jetson kernels. A reader gives cumulative millijoules; a monitor gives power, so it is
sampled in a thread and integrated.

A measurement is a window of several seconds of back-to-back inferences; the idle power measured just before
is subtracted, and what is left is divided by the inferences run: joules per inference, reported with the
window, the idle and active power and the source.
"""
import re
import threading
import time
from pathlib import Path

IDLE_S, WINDOW_S, SETTLE_S = 2.0, 5.0, 0.5
SAMPLE_S = 0.01  # the monitors average over a few milliseconds; sampling faster reads the same value again
HWMON_ROOT, IIO_ROOT = Path("/sys/class/hwmon"), Path("/sys/bus/iio/devices")
MONITORS = ("ina3221", "ina3221x", "ina219", "ina226", "ina230", "ina238", "ina2xx")
BOARD_INPUT = re.compile(r"(^|_)IN(_|$)|TOTAL|^VIN", re.IGNORECASE)  # VDD_IN, POM_5V_IN, VIN_SYS_5V0


class ReadingFailed(Exception):
    """A power reading that failed during a measurement (not the workload's own error)."""


def energy(found, workload):
    """What measure() gives, or why nothing was measured; `found`: (reader, None) or (None, why), as
    board_power and edgekit's power_reader return them. The reader is closed afterwards."""
    reader, why = found
    if reader is None:
        return {"measured": False, "why": why}
    try:
        return measure(reader, workload)
    except ReadingFailed as err:
        return {"measured": False, "why": f"the power reading failed during the window: {err}"}
    finally:
        reader.close()


def measure(reader, workload, idle_s=IDLE_S, window_s=WINDOW_S, warmup=3):
    """Joules per call of `workload` above idle: a few warm-up calls, idle power over `idle_s`, then calls
    for `window_s`. Not measured when nothing is left above idle (other load fell during the window)."""
    for _ in range(warmup):
        workload()
    reader.millijoules()  # a reader may start its trackers on the first read
    time.sleep(SETTLE_S)
    start, began = reader.millijoules(), time.perf_counter()
    time.sleep(idle_s)
    idle_mj, idle_elapsed = reader.millijoules() - start, time.perf_counter() - began
    idle_watts = idle_mj / idle_elapsed / 1000
    start, began, runs = reader.millijoules(), time.perf_counter(), 0
    while runs == 0 or time.perf_counter() - began < window_s:
        workload()
        runs += 1
    used_mj, elapsed = reader.millijoules() - start, time.perf_counter() - began
    above_idle_mj = used_mj - idle_watts * 1000 * elapsed
    if above_idle_mj <= 0:
        return {"measured": False, "why": f"no energy above the idle {idle_watts:.2f} W over {elapsed:.1f} s "
                                          f"(other load on the machine changed): measure on a quiet machine"}
    return {"measured": True, "joules_per_inference": above_idle_mj / runs / 1000, "inferences": runs,
            "window_s": round(elapsed, 3), "idle_watts": round(idle_watts, 3),
            "active_watts": round(used_mj / elapsed / 1000, 3), "source": reader.source,
            "note": "per call of the model (one batch of its input shape); energy of what the source covers, "
                    "above the idle power measured just before; other load on the machine during the window "
                    "counts too"}


class SampledRails:
    """Cumulative energy of power rails read as watts, sampled every SAMPLE_S and integrated (trapezoids)."""

    def __init__(self, rails, source):
        self.rails, self.source = rails, source
        self.lock, self.stop, self.error = threading.Lock(), threading.Event(), None
        self.mj, self.last_time, self.last_watts = 0.0, time.perf_counter(), self._watts()
        self.thread = threading.Thread(target=self._sample_until_closed, daemon=True)
        self.thread.start()

    def _watts(self):
        return sum(read() for _, read in self.rails)

    def _sample(self):
        with self.lock:
            now, watts = time.perf_counter(), self._watts()
            self.mj += (watts + self.last_watts) / 2 * (now - self.last_time) * 1000
            self.last_time, self.last_watts = now, watts

    def _sample_until_closed(self):
        try:
            while not self.stop.wait(SAMPLE_S):
                self._sample()
        except (OSError, ValueError) as err:  # a rail that stops answering: the measurement fails
            self.error = err

    def millijoules(self):
        try:
            if self.error:
                raise self.error
            self._sample()
        except (OSError, ValueError) as err:
            raise ReadingFailed(err) from err
        return self.mj

    def close(self):
        self.stop.set()
        self.thread.join()


def board_power(hwmon_root=HWMON_ROOT, iio_root=IIO_ROOT):
    """(a reader of the board's power monitors, None), or (None, why there is none). The rail a board labels
    as its input (VDD_IN on Jetson boards) when there is one, else the sum of every rail."""
    rails = _hwmon_rails(hwmon_root) + _iio_rails(iio_root)
    if not rails:
        return None, (f"no power monitor under {hwmon_root} or {iio_root} (boards with an INA3221, INA219 or "
                      f"INA226 have one, e.g. NVIDIA Jetson)")
    rails = [rail for rail in rails if _answers(rail[1])]  # a disabled channel does not stop the others
    if not rails:
        return None, f"the power monitor rails under {hwmon_root} or {iio_root} cannot be read (root only?)"
    inputs = [rail for rail in rails if BOARD_INPUT.search(rail[0])]
    chosen = inputs or rails
    names = ", ".join(f"{label} ({where})" for label, _, where in chosen)
    summed = "" if inputs else ", summed: no rail is labeled as the board's input"
    source = f"power monitor rail{'s' * (len(chosen) > 1)} {names}{summed}, sampled every {SAMPLE_S * 1000:.0f} ms"
    try:
        return SampledRails([(label, read) for label, read, _ in chosen], source), None
    except (OSError, ValueError) as err:  # stopped answering since
        return None, f"cannot read the power monitor rails: {err}"


def _hwmon_rails(root):
    """(label, watts, where) of every channel of a monitor chip under hwmon (current kernels) that has a power
    reading, or a bus voltage and a current: named by its label, else by the chip and channel."""
    rails = []
    for chip in sorted(root.glob("hwmon*")):
        name = _text(chip / "name")
        if name not in MONITORS:
            continue
        channels = sorted({match.group(1) for path in chip.glob("*_input")
                           if (match := re.fullmatch(r"(?:power|curr)(\d+)_input", path.name))})
        for index in channels:
            # microwatts, or millivolts times milliamps
            read = _watts(chip / f"power{index}_input", 1e-6, chip / f"in{index}_input", chip / f"curr{index}_input")
            if read:
                rails.append((_text(chip / f"in{index}_label") or f"{name} channel {index}", read, str(chip)))
    return rails


def _iio_rails(root):
    """The same under IIO, where older Jetson kernels' ina3221x driver puts its rails."""
    rails = []
    for device in sorted(root.glob("iio:device*")):
        if _text(device / "name") not in MONITORS:
            continue
        for name in sorted(device.glob("rail_name_*")):
            index = name.name.rsplit("_", 1)[1]
            # milliwatts, or millivolts times milliamps
            read = _watts(device / f"in_power{index}_input", 1e-3, device / f"in_voltage{index}_input",
                          device / f"in_current{index}_input")
            if read:
                rails.append((_text(name), read, str(device)))
    return rails


def _answers(read):
    try:
        read()
        return True
    except (OSError, ValueError):
        return False


def _watts(power, power_scale, millivolts, milliamps):
    """A reading of one channel in watts: its power file where the driver has one, else volts times amps; None
    when it has neither."""
    if power.exists():
        return lambda: float(power.read_text()) * power_scale
    if millivolts.exists() and milliamps.exists():
        return lambda: float(millivolts.read_text()) * float(milliamps.read_text()) * 1e-6
    return None


def _text(path):
    try:
        return path.read_text().strip()
    except OSError:
        return ""
