"""Conformance zoo: architecture families this project did not design (tests/zoo.py), each built end to end.

Every family builds for arm64 (ONNX fp32/INT8, TFLite fp32/fp16/dynamic/INT8) and x86_64 (ONNX fp32/INT8), a
PyTorch family for both as ExecuTorch programs too (fp32/INT8), with every artifact passing parity, `edgekit
check` passing on the folder, and the device runner agreeing under emulated arm64; families whose full INT8
misses the gate are built with `--float-fallback auto`, and what still cannot ship (KNOWN_LIMITS) must be
reported in one line while the rest passes. The per-family INT8 numbers are printed (`pytest -s`) for the
README and release notes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
from conftest import read_manifest, run_cli

pytestmark = pytest.mark.slow
# 256 calibration samples (the first 128 calibrate, as by default); 200 labeled held-out samples: one flipped
# sample moves accuracy by 0.5 points, within the 1-point budget.
CALIB_SAMPLES, EVAL_SAMPLES = 256, 200
ARTIFACTS = {"arm64": ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.fp16.tflite",
                       "model.dynamic_int8.tflite", "model.int8.tflite"],
             "x86_64": ["model.fp32.onnx", "model.int8.onnx"]}
PTE = ["model.fp32.pte", "model.int8.pte"]  # made from the PyTorch model: not for an ONNX family
# Families whose full INT8 misses the gate (per-position top-1 agreement 0.91-0.93): built as a user would
# then build them, with `--float-fallback auto` (some layers stay float; dynamic-range TFLite is left out).
RESCUED = {"text_recognizer", "text_recognizer_lstm"}
# What cannot be shipped today, with the one line the build gives (README, "Supported model families").
KNOWN_LIMITS = {
    # TensorFlow's calibrator crashes on the BiLSTM's WHILE loop: the float TFLite files are still made.
    ("text_recognizer_lstm", "arm64"): {"failure": "crashed (signal SIGSEGV)"},
    # The plan cannot name the attention's functional ops to the XNNPACK quantizer: its INT8 program stays
    # just under the per-step top-1 limit (0.967 against 0.97) where the ONNX and TFLite INT8 pass. For x86_64
    # the plan searched with int32 INT8 kernels (any host) keeps enough float for the program to pass.
    ("text_recognizer", "arm64"): {"model.int8.pte": "top1_agreement (output) = 0.96"},
}
CASES = [(name, target) for name in zoo.FAMILIES for target in ARTIFACTS]


def _data(family: zoo.Family, folder, count: int, seed: int, name: str):
    path = folder / f"{name}.npz"
    np.savez(path, **family.data(count, seed))
    return path


@pytest.fixture(scope="module")
def zoo_builds(tmp_path_factory):
    """Each family built for arm64 and x86_64 once, on first use: {(family, target): (exit code, folder)}."""
    built = {}

    def build(name: str, target: str):
        if (name, target) not in built:
            family = zoo.FAMILIES[name]
            folder = tmp_path_factory.mktemp(f"{name}-{target}")
            calib = _data(family, folder, CALIB_SAMPLES, 0, "calib")
            evaluation = _data(family, folder, EVAL_SAMPLES, 1, "eval")
            rescue = ["--float-fallback", "auto"] if name in RESCUED else []
            code = run_cli("build", family.source(folder), "--calib", calib, "--eval", evaluation, *rescue,
                           "--target", target, "--out", folder / "out", "--quiet", "--keep-going")
            built[name, target] = code, folder / "out" / target
        return built[name, target]

    return build


def _expected_files(name: str, target: str) -> list[str]:
    files = ARTIFACTS[target] + (PTE if zoo.FAMILIES[name].factory is not None else [])
    if name in RESCUED:  # dynamic-range quantization cannot keep layers float
        files = [f for f in files if f != "model.dynamic_int8.tflite"]
    if "failure" in KNOWN_LIMITS.get((name, target), {}):  # the full-integer TFLite could not be made
        files = [f for f in files if f != "model.int8.tflite"]
    return files


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_family_outputs_are_not_degenerate(name):
    """INT8 parity means something only on outputs that vary with the input and pick several classes."""
    assert zoo.degeneracy(name) == []


@pytest.mark.parametrize("name,target", [case for case in CASES if case not in KNOWN_LIMITS])
def test_family_builds_and_passes_parity(zoo_builds, name, target, capsys):
    code, folder = zoo_builds(name, target)
    manifest = read_manifest(folder)
    assert manifest["failures"] == [], manifest["failures"]
    assert [a["file"] for a in manifest["artifacts"]] == _expected_files(name, target)
    failing = {a["file"]: a["parity"]["failures"] for a in manifest["artifacts"] if not a["parity"]["passed"]}
    assert failing == {}
    assert code == 0
    assert manifest["warnings"] == []  # enough held-out samples for the gate
    assert manifest["layerwise"]["computed"], manifest["layerwise"]  # per-layer SNR maps through every family
    capsys.readouterr()
    assert run_cli("check", folder) == 0
    plan = manifest["precision_plan"]
    for artifact in manifest["artifacts"]:
        if "int8" in artifact["file"]:
            outputs = artifact["parity"]["outputs"].values()
            top1 = [o["top1_agreement"] for o in outputs if "top1_agreement" in o]
            with capsys.disabled():
                print(f"\nzoo {name} {target} {artifact['file']}: cosine {min(o['cosine'] for o in outputs):.4f} "
                      f"SNR {min(float(o['snr_db']) for o in outputs):.1f} dB top-1 {min(top1) if top1 else '-'}"
                      + (f" ({len(plan['float_nodes'])} nodes float)" if plan else ""))


@pytest.mark.parametrize("name,target", list(KNOWN_LIMITS))
def test_known_limits_are_reported_and_the_rest_ships(zoo_builds, name, target, capsys):
    """Where a family cannot be fully lowered, the build says why in one line and every other artifact passes."""
    code, folder = zoo_builds(name, target)
    manifest = read_manifest(folder)
    limit = KNOWN_LIMITS[name, target]
    assert [a["file"] for a in manifest["artifacts"]] == _expected_files(name, target)
    failing = {a["file"]: a["parity"]["failures"] for a in manifest["artifacts"] if not a["parity"]["passed"]}
    assert sorted(failing) == sorted(f for f in limit if f != "failure")
    for file, problems in failing.items():
        assert any(problem.startswith(limit[file]) for problem in problems), problems
    errors = [f["error"] for f in manifest["failures"]]
    assert (len(errors), "failure" in limit) in ((0, False), (1, True))
    assert all(limit["failure"] in error and "\n" not in error for error in errors)
    capsys.readouterr()
    assert code == 0 and run_cli("check", folder) == 1  # packaged with --keep-going; the gate still says no


def test_outputs_are_paired_by_name_in_the_manifest(zoo_builds):
    """The three-head detector: every TFLite output is recorded with the runtime tensor it was paired with."""
    _, folder = zoo_builds("face_detector", "arm64")
    manifest = read_manifest(folder)
    names = [o["name"] for o in manifest["model_io"]["outputs"]]
    assert len(names) == 3
    kinds = {o["name"]: o["kind"]["kind"] for o in manifest["model_io"]["outputs"]}
    assert sorted(kinds.values()) == ["probability", "values", "values"]
    for artifact in manifest["artifacts"]:
        assert [o["name"] for o in artifact["outputs"]] == names
        if artifact["format"] == "tflite":
            runtime_names = [o["runtime_name"] for o in artifact["outputs"]]
            assert len(set(runtime_names)) == 3


@pytest.mark.emulated
@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_family_runs_on_emulated_arm64(zoo_builds, arm64_python, name, capsys):
    """The device runner, on emulated arm64, feeds the family's most reduced TFLite file that passed host parity
    from its manifest entry and agrees with the reference (on-target parity), for every input and output."""
    _, folder = zoo_builds(name, "arm64")
    tflite = [a["file"] for a in read_manifest(folder)["artifacts"] if a["format"] == "tflite" and a["parity"]["passed"]]
    capsys.readouterr()
    code = run_cli("bench", folder / tflite[-1], "--runner", "qemu", "--samples", "4", "--runs", "2",
                   "--warmup", "1", "--json")
    (record,) = json.loads(capsys.readouterr().out)
    assert code == 0, record["parity"]["failures"]
    assert record["kind"] == "emulated" and record["parity"]["passed"]
