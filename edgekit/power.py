"""Energy measured where the machine exposes power readings, read through zeus where it has a reader: the
RAPL counters of Intel and AMD CPUs under Linux powercap (zeus also follows their wrap-around), NVIDIA GPUs
through NVML; and the power monitor rails of boards such as NVIDIA Jetson (device/meter.py, which the device
runner uses too; zeus's Jetson reader cannot be pointed at another tree and does not run on a device without
edgekit).

The measurement itself (device/meter.measure): a window of back-to-back inferences, idle power subtracted.
"""
from __future__ import annotations

import abc
import functools
from importlib import metadata
from pathlib import Path

from .device.meter import HWMON_ROOT, IIO_ROOT, ReadingFailed, board_power
from .errors import first_line

RAPL_ROOT = Path("/sys/class/powercap/intel-rapl")


class ProcessWide(abc.ABC):
    """A zeus reader, made once per process so that its wrap-around trackers start once: closing keeps it."""

    def millijoules(self) -> float:
        from zeus.exception import ZeusBaseError

        try:
            return self.read()
        except (OSError, ZeusBaseError) as err:
            raise ReadingFailed(first_line(err)) from err

    @abc.abstractmethod
    def read(self) -> float:
        """Cumulative millijoules."""

    def close(self) -> None:
        """Nothing to release: the reader is made once per process and read again by the next measurement."""


class Rapl(ProcessWide):
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

    def read(self) -> float:
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


class Nvml(ProcessWide):
    """Cumulative energy of every NVIDIA GPU this process sees (CUDA_VISIBLE_DEVICES applies) that reports it
    (Volta and newer)."""

    def __init__(self):
        from zeus.device.gpu import get_gpus
        from zeus.device.gpu.nvidia import NVIDIAGPUs

        gpus = get_gpus()
        if not isinstance(gpus, NVIDIAGPUs):  # zeus falls back to AMD's library
            raise OSError("no NVIDIA GPU here (NVML)")
        self.indices = [i for i in range(len(gpus)) if gpus.supports_get_total_energy_consumption(i)]
        if not self.indices:
            raise OSError("no GPU here reports its total energy (NVML has it from Volta on)")
        self.gpus = gpus
        names = sorted({gpus.get_name(i) for i in self.indices})
        self.source = (f"NVML ({len(self.indices)} GPU{'s' * (len(self.indices) != 1)}: {', '.join(names)}), "
                       f"read with zeus {metadata.version('zeus')}")

    def read(self) -> float:
        return float(sum(self.gpus.get_total_energy_consumption(i) for i in self.indices))


def power_reader(gpu: bool = False, rapl_root: Path = RAPL_ROOT, hwmon_root: Path = HWMON_ROOT,
                 iio_root: Path = IIO_ROOT):
    """(a reader, None), or (None, why this machine gives no reading): NVML for a run on an NVIDIA GPU, else
    RAPL; where neither reads, the board's power monitor rails (a Jetson has no NVML and no RAPL). Close the
    reader after measuring."""
    reader, why = _nvml() if gpu else _rapl(rapl_root)
    if reader is not None:
        return reader, None
    board, board_why = board_power(hwmon_root, iio_root)
    if board is not None:
        return board, None
    return None, f"no power reading on this machine: {why}; {board_why}"


@functools.cache
def _rapl(root: Path):
    if not any(root.glob("intel-rapl:*")):
        return None, (f"{root} is absent (RAPL needs a Linux host with an Intel or AMD CPU; in a container, "
                      f"mount it)")
    # unreadable counters: RAPL wants root on recent kernels
    return _made("RAPL", lambda: Rapl(root), f"cannot read the RAPL counters under {root}")


@functools.cache
def _nvml():
    # no NVIDIA driver, no GPU, or one too old to count energy
    return _made("NVML", Nvml, "no GPU energy through NVML")


def _made(what: str, make, failure: str):
    """(the zeus reader `make` gives, None), or (None, why not: zeus missing, or `failure` and zeus's words)."""
    try:
        from zeus.exception import ZeusBaseError
    except ImportError:
        return None, f"reading {what} needs zeus: pip install 'edgekit[energy]'"
    try:
        return make(), None
    except (OSError, ZeusBaseError) as err:
        return None, f"{failure}: {first_line(err)}"
