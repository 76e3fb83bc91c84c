"""Where a benchmark runs: this machine, emulated arm64 (QEMU user mode or a Docker image), or a device over SSH.

Every host runs the same file, edgekit/device/runner.py, in a folder holding the runner, the artifact
and the inputs; the runner leaves result.npz and result.json there.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
import tarfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..targets import Bench, check_runner, ssh_address

CACHE = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))
DEVICE_SIDE = Path(__file__).resolve().parents[1] / "device"
# What a device runs, copied beside the model: the runner, its CPU reader and its energy meter.
DEVICE_FILES = tuple(DEVICE_SIDE / name for name in ("runner.py", "cpu.py", "meter.py"))


class Host(ABC):
    kind: str  # "native", "emulated" or "device": how far its timings can be trusted
    name: str  # the --runner value

    @abstractmethod
    def run(self, workdir: Path, args: list[str], timeout: float) -> None:
        """Run `python runner.py ARGS` with `workdir`'s files; the results end up in `workdir`."""

    def label(self, host_cpu: str) -> str:
        return f"native on this machine ({host_cpu})"


class NativeHost(Host):
    kind, name = "native", "native"

    def run(self, workdir: Path, args: list[str], timeout: float) -> None:
        _call([sys.executable, "runner.py", *args], workdir, timeout)


class QemuHost(Host):
    """arm64 Python under qemu-aarch64-static, from the root filesystem tools/arm64_rootfs.sh makes."""
    kind, name = "emulated", "qemu"

    def __init__(self, arch: str):
        if arch != "arm64":
            raise UserError(f"the qemu runner emulates arm64 only, not {arch}: use --runner native or docker")
        self.python = CACHE / "arm64" / "python3"
        if not self.python.is_file():
            raise UserError(f"no emulated arm64 Python at {self.python}: run tools/arm64_rootfs.sh once "
                            f"(it installs qemu-user-static and makes an arm64 root filesystem)")

    def run(self, workdir: Path, args: list[str], timeout: float) -> None:
        _call([str(self.python), "runner.py", *args], workdir, timeout)

    def label(self, host_cpu: str) -> str:
        cpu = os.environ.get("QEMU_CPU", "cortex-a76")
        return f"emulated arm64 (QEMU user mode, {cpu}) on {host_cpu}: not device latency"


class DockerHost(Host):
    """The edgekit-<arch> image from tools/docker_images.sh; arm64 runs through binfmt + QEMU."""
    kind, name = "emulated", "docker"

    def __init__(self, arch: str):
        self.arch, self.image = arch, f"edgekit-{arch}"
        self.kind = "emulated" if arch == "arm64" else "native"
        try:
            found = subprocess.run(["docker", "image", "inspect", self.image], capture_output=True)
        except FileNotFoundError:
            raise UserError(f"Docker is not installed: run tools/docker_images.sh {arch} (as root it installs "
                            f"docker.io, starts dockerd and builds {self.image})") from None
        if found.returncode:
            raise UserError(f"Docker image {self.image} is not built (or no Docker engine runs): "
                            f"run tools/docker_images.sh {arch}")

    def run(self, workdir: Path, args: list[str], timeout: float) -> None:
        platform = {"arm64": "linux/arm64", "x86_64": "linux/amd64"}[self.arch]
        mounts = ["-v", f"{workdir}:/work"]
        if self.arch == "arm64":  # onnxruntime reads /proc/cpuinfo and crashes on the host's x86 one
            mounts += ["-v", f"{CACHE / 'arm64' / 'rootfs' / 'proc' / 'cpuinfo'}:/proc/cpuinfo:ro"]
        user = ["--user", f"{os.getuid()}:{os.getgid()}"]
        _call(["docker", "run", "--rm", "--pull", "never", "--platform", platform, *user, *mounts, "-w", "/work",
               self.image, "python3", "runner.py", *args], workdir, timeout)

    def label(self, host_cpu: str) -> str:
        if self.arch == "arm64":
            return f"emulated arm64 (Docker {self.image}, QEMU cortex-a76) on {host_cpu}: not device latency"
        return f"native in Docker {self.image} on this machine ({host_cpu})"


class SshHost(Host):
    """A real device: copy the files over, run them with the device's own Python, fetch the results."""
    kind = "device"

    def __init__(self, address: str, python: str):
        self.name, self.python = address, python
        self.destination, self.port = ssh_address(address, "--runner")
        # Keys, jump hosts and the like come from ~/.ssh/config or EDGEKIT_SSH_OPTIONS ("-i KEY -J HOST").
        self.options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                        *shlex.split(os.environ.get("EDGEKIT_SSH_OPTIONS", ""))]

    def _ssh(self, command: str, timeout: float, send: bytes | None = None) -> bytes:
        port = ["-p", str(self.port)] if self.port else []
        # `--`: whatever the destination looks like, ssh never reads it as an option.
        return _call(["ssh", *self.options, *port, "--", self.destination, command], None, timeout, send)

    @contextlib.contextmanager
    def _remote_folder(self, files: list[Path], timeout: float) -> Iterator[str]:
        """A temporary folder on the device holding `files`, removed afterwards.

        Files travel as a tar stream over ssh: that works where scp/sftp are missing (BusyBox, Dropbear)."""
        remote = f"/tmp/edgekit-{uuid.uuid4().hex[:8]}"
        bundle = io.BytesIO()
        with tarfile.open(fileobj=bundle, mode="w") as tar:
            for path in files:
                tar.add(path, arcname=path.name)
        try:
            self._ssh(f"mkdir -p {remote} && tar -xf - -C {remote}", timeout, bundle.getvalue())
            yield remote
        finally:
            self._ssh(f"rm -rf {remote}", 60)

    def run(self, workdir: Path, args: list[str], timeout: float) -> None:
        try:
            self._ssh("true", 60)
        except UserError as err:
            port = f" -p {self.port}" if self.port else ""
            raise UserError(f"cannot reach {self.destination} over SSH ({str(err).rpartition('): ')[2]}): "
                            f"make `ssh{port} {self.destination} true` work without a password (keys in "
                            f"~/.ssh/config or EDGEKIT_SSH_OPTIONS='-i KEY')") from None
        with self._remote_folder(sorted(workdir.iterdir()), timeout) as remote:
            self._ssh(f"cd {remote} && {shlex.quote(self.python)} runner.py {shlex.join(args)}", timeout)
            results = self._ssh(f"tar -cf - -C {remote} result.npz result.json", timeout)
        with tarfile.open(fileobj=io.BytesIO(results)) as tar:
            tar.extractall(workdir, filter="data")

    def trtexec(self, artifact: Path, command: str, timeout: float) -> dict:
        """Build and time the artifact's TensorRT engine on the device with `command`, which
        edgekit.gpu.trtexec_command makes (names shell-quoted) from the profile benched by, never from the folder."""
        from ..gpu import parse_trtexec

        tool = shlex.split(command)[0]
        try:
            self._ssh(f"command -v {shlex.quote(tool)}", 60)
        except UserError:
            return {"status": "skipped", "reason": f"{tool} not found on {self.destination} (install TensorRT, "
                                                   f"or set gpu.trtexec.path in the profile)"}
        with self._remote_folder([artifact], timeout) as remote:
            output = self._ssh(f"cd {remote} && {command}", timeout).decode(errors="replace")
        return {"status": "ran", "command": command, **parse_trtexec(output)}

    def label(self, host_cpu: str) -> str:
        return f"device {self.destination} over SSH"


def make_host(runner: str, settings: Bench) -> Host:
    check_runner(runner, "--runner")
    if runner.startswith("ssh://"):
        return SshHost(runner, settings.remote_python)
    if runner == "qemu":
        return QemuHost(settings.arch)
    if runner == "docker":
        return DockerHost(settings.arch)
    return NativeHost()


def _call(command: list[str], cwd: Path | None, timeout: float, send: bytes | None = None) -> bytes:
    """Run a command to completion; its stdout, or a UserError with the end of what it printed."""
    try:
        done = subprocess.run(command, cwd=cwd, input=send, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"'{command[0]}' is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{command[0]} took longer than {timeout:.0f} s: lower --runs or --samples") from None
    if done.returncode:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"the device runner failed ({' '.join(command[:3])} ...): {' | '.join(tail)}")
    return done.stdout
