from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli import main

TESTS = Path(__file__).resolve().parent


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


@pytest.fixture(scope="session")
def factory_file() -> str:
    return f"{TESTS / 'models.py'}"
