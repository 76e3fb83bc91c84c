"""The stage cache: a re-run reuses the stages whose inputs did not change, recomputes parity every time,
and stays correct when two builds share it at once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_manifest, run_cli

INT8 = ["--target", "x86_64", "--quantize", "int8", "--quiet"]
EXPORT = "export ONNX (opset 18) and simplify"
QUANTIZE = "quantize INT8 (minmax calibration, 128 samples)"
LOWER_PTE = "lower to ExecuTorch (fp32, int8)"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_STAGE_CACHE", str(folder))
    return folder


def cached(out: Path, target: str = "x86_64") -> list[str]:
    return json.loads((out / target / "report.json").read_text())["cached_stages"]


def shas(out: Path, target: str = "x86_64") -> dict[str, str]:
    return {a["file"]: a["sha256"] for a in read_manifest(out / target)["artifacts"]}


def test_a_rerun_reuses_the_export_and_quantized_model_and_recomputes_parity(cache, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli("build", *INT8, "--out", first) == 0
    assert cached(first) == [] and len(list(cache.iterdir())) == 4  # export, INT8, ExecuTorch, the per-layer SNR
    import edgekit.layerwise.divergence as per_layer

    def recomputed(*args, **kwargs):
        raise AssertionError("the per-layer SNR of unchanged artifacts was computed again")

    monkeypatch.setattr(per_layer, "divergence", recomputed)
    assert run_cli("build", *INT8, "--out", second) == 0
    assert cached(second) == [EXPORT, QUANTIZE, LOWER_PTE]
    assert shas(second) == shas(first)  # the same bytes, verified again
    built = read_manifest(second / "x86_64")
    assert built["artifacts"][1]["parity"]["passed"]
    assert built["artifacts"][1]["layers"] == read_manifest(first / "x86_64")["artifacts"][1]["layers"]


def test_a_changed_calibration_method_remakes_the_quantized_model(cache, tmp_path):
    assert run_cli("build", *INT8, "--out", tmp_path / "minmax") == 0
    assert run_cli("build", *INT8, "--calib-method", "percentile", "--out", tmp_path / "percentile") == 0
    assert cached(tmp_path / "percentile") == [EXPORT]
    assert shas(tmp_path / "percentile")["model.int8.onnx"] != shas(tmp_path / "minmax")["model.int8.onnx"]


def test_a_changed_tolerance_reruns_only_parity(cache, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("extends: x86_64\ndescription: x86_64 with an INT8 limit no quantizer meets\n"
                      "tolerances: {int8: {min_cosine: 0.9999999}}\n")
    assert run_cli("build", *INT8, "--out", tmp_path / "loose") == 0
    out = tmp_path / "strict-out"
    assert run_cli("build", "--target", strict, "--quantize", "int8", "--keep-going", "--out", out, "--quiet") == 0
    assert cached(out, "strict") == [EXPORT, QUANTIZE, LOWER_PTE]
    assert [a["parity"]["passed"] for a in read_manifest(out / "strict")["artifacts"]] == [True, False, True, False]


def test_no_cache_makes_every_stage_and_stores_nothing(cache, tmp_path):
    assert run_cli("build", *INT8, "--no-cache", "--out", tmp_path / "out") == 0
    assert cached(tmp_path / "out") == [] and not cache.exists()


def test_the_cache_stays_under_its_cap(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_MB", "0")
    assert run_cli("build", *INT8, "--out", tmp_path / "out") == 0
    assert list(cache.iterdir()) == []


def test_two_builds_sharing_the_cache_at_once(cache, tmp_path):
    # Every build with the same threads: the export's key holds the reference outputs' bytes, which PyTorch's
    # AVX-512 kernels round differently at another thread count.
    env = {"EDGEKIT_STAGE_CACHE": str(cache), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    builds = [subprocess.Popen([sys.executable, "-m", "edgekit", "build", *INT8, "--out", str(tmp_path / f"b{i}")],
                               env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for build in builds:
        _, err = build.communicate(timeout=600)
        assert build.returncode == 0, err
    assert shas(tmp_path / "b0") == shas(tmp_path / "b1")
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no partial entry left
    assert len(list(cache.iterdir())) == 4  # one entry each: export, INT8, ExecuTorch, per-layer SNR
    third = subprocess.run([sys.executable, "-m", "edgekit", "build", *INT8, "--out", str(tmp_path / "b2")], env=env,
                           stderr=subprocess.PIPE, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    assert cached(tmp_path / "b2") == [EXPORT, QUANTIZE, LOWER_PTE]


MODEL = """
import torch
from scaling import SCALE


class Net(torch.nn.Module):
    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3)) * SCALE


def make():
    torch.manual_seed(0)
    return Net()
"""


def test_code_outside_the_model_file_that_changes_the_outputs_remakes_the_export(cache, tmp_path):
    """The export's key holds the model's outputs: a constant in a file the model imports is part of it."""
    (tmp_path / "net.py").write_text(MODEL)
    built = {}
    for scale in ("1.0", "1.0", "3.0"):
        (tmp_path / "scaling.py").write_text(f"SCALE = {scale}\n")
        out = tmp_path / f"out{len(built)}"
        assert run_cli("build", f"{tmp_path / 'net.py'}:make", "--target", "x86_64", "--quantize", "none",
                       "--random-calib", "--out", out, "--quiet") == 0
        sys.modules.pop("scaling", None)  # the next build imports the changed file
        built[len(built)] = (cached(out), read_manifest(out / "x86_64")["artifacts"][0])
    assert [stages for stages, _ in built.values()] == [[], [EXPORT, "lower to ExecuTorch (fp32)"], []]
    assert built[0][1]["sha256"] == built[1][1]["sha256"] != built[2][1]["sha256"]
    assert built[2][1]["parity"]["passed"]


def test_a_rerun_from_the_cache_starts_no_converter_child(cache, tmp_path, monkeypatch):
    """A child importing TensorFlow would only run beside the host timing when every conversion is cached; a
    cached conversion is a copy, so no per-layer capture is started beside it either."""
    from edgekit.isolation import Converters

    warmed = []
    warm = Converters.warm
    monkeypatch.setattr(Converters, "warm", lambda self, modules: (warmed.append(modules), warm(self, modules)))
    build = ["build", "--target", "arm64", "--quantize", "int8", "--quiet", "--out"]
    assert run_cli(*build, tmp_path / "first") == 0
    assert warmed == [["edgekit.stages.tflite", "onnx2tf"]]
    assert run_cli(*build, tmp_path / "second") == 0
    assert warmed == [["edgekit.stages.tflite", "onnx2tf"]]
    assert cached(tmp_path / "second", "arm64") == [EXPORT, QUANTIZE, "convert to TFLite (fp32, int8)", LOWER_PTE]
    steps = json.loads((tmp_path / "second" / "arm64" / "report.json").read_text())["timings_s"]
    assert not [step for step in steps if "while the conversion runs" in step]
