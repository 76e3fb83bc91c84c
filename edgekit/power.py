"""Energy measured where the machine exposes power readings: the RAPL counters of Intel and AMD CPUs under
Linux powercap, read through zeus (which also follows their wrap-around).

A measurement is a window of several seconds of back-to-back inferences; the idle power measured just before
is subtracted, and what is left is divided by the inferences run: joules per inference, reported with the
window, the idle and active power and the source. Where there is no reading, it says why.
"""
from __future__ import annotations

import functools
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .errors import first_line

RAPL_ROOT = Path("/sys/class/powercap/intel-rapl")
IDLE_S, WINDOW_S, SETTLE_S = 2.0, 5.0, 0.5


class Rapl:
    """Cumulative energy of every RAPL package under `root` (and its DRAM domain where there is one)."""

    def __init__(self, root: Path):
        from zeus.device.cpu.rapl import RAPLCPU

        # Only CPU packages: a laptop's psys zone (the whole platform) would count the package twice.
        indices = sorted(int(zone.name.split(":")[1]) for zone in root.glob("intel-rapl:*")
                         if zone.name.split(":")[1].isdigit() and _zone_name(zone).startswith("package"))
        if not indices:
            raise OSError(f"no package-N zone under {root}")
        self.packages = [RAPLCPU(index, str(root)) for index in indices]
        dram = " and DRAM" if any(p.dram is not None for p in self.packages) else ""
        self.source = (f"RAPL ({len(indices)} package{'s' * (len(indices) != 1)}{dram}, {root}), "
                       f"read with zeus {metadata.version('zeus')}")

    def millijoules(self) -> float:
        total = 0.0
        for package in self.packages:
            reading = package.get_total_energy_consumption()
            total += reading.cpu_mj + (reading.dram_mj or 0.0)
        return total


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


@functools.cache
def power_reader(root: Path = RAPL_ROOT) -> tuple[Rapl | None, str | None]:
    """(a reader, None), or (None, why this machine gives no reading); one reader per tree and process, so
    zeus starts its wrap-around trackers once."""
    if not any(root.glob("intel-rapl:*")):
        return None, (f"no power reading on this machine: {root} is absent (RAPL needs a Linux host with an "
                      f"Intel or AMD CPU; in a container, mount it)")
    try:
        from zeus.exception import ZeusBaseError
    except ImportError:
        return None, "reading RAPL needs zeus: pip install 'edgekit[energy]'"
    try:
        return Rapl(root), None
    except (OSError, ZeusBaseError) as err:  # unreadable counters (RAPL wants root on recent kernels)
        return None, f"cannot read the RAPL counters under {root}: {first_line(err)}"


def measure(reader: Rapl, workload: Callable[[], Any], idle_s: float = IDLE_S,
            window_s: float = WINDOW_S, warmup: int = 3) -> dict[str, Any]:
    """Joules per call of `workload` above idle: a few warm-up calls, idle power over `idle_s`, then calls
    for `window_s`. Not measured when nothing is left above idle (other load fell during the window)."""
    for _ in range(warmup):
        workload()
    reader.millijoules()  # zeus starts its wrap-around trackers (child processes) on the first read
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
            "note": "per call of the model (one batch of its input shape); whole-package energy above the idle "
                    "power measured just before; other load on the machine during the window counts too"}
