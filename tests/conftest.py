from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CACHE = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))


def run_cli(*args: str) -> int:
    """Run edgekit in this process (fast: torch is imported once) and return its exit code."""
    return main([str(a) for a in args])


def run_console(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console entry point as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="session")
def example_build(tmp_path_factory) -> Path:
    """The bundled example built once for both targets (what `edgekit build` does with no model)."""
    out = tmp_path_factory.mktemp("example")
    assert run_cli("build", "--target", "arm64,x86_64", "--out", out, "--quiet") == 0
    return out


def build_env(script: str, *args: str) -> None:
    """Run one of the tools/ scripts that set up emulation (cached: seconds when already done)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the emulation tools target x86_64 Linux hosts")
    if os.geteuid() != 0 and not shutil.which("qemu-aarch64-static"):
        pytest.skip("needs root (apt-get install qemu-user-static debootstrap) or those tools installed")
    done = subprocess.run(["bash", str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="session")
def arm64_python():
    build_env("arm64_rootfs.sh")
    return [str(CACHE / "arm64" / "python3")]


@pytest.fixture(scope="session")
def arm64_image():
    build_env("docker_images.sh", "arm64")
    return "edgekit-arm64"


