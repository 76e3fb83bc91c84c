"""Conformance zoo: architecture families this project did not design (tests/zoo.py), each built end to end.

Every family builds for arm64 (ONNX fp32/INT8, TFLite fp32/fp16/dynamic/INT8) and x86_64 (ONNX fp32/INT8)
with every artifact passing parity, `edgekit check` passing on the folder, and the device runner agreeing
on the INT8 TFLite under emulated arm64. The per-family INT8 numbers are printed (`pytest -s`) for the
README and release notes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
from conftest import read_manifest, run_cli

pytestmark = pytest.mark.slow
# 200 labeled held-out samples: one flipped sample moves accuracy by 0.5 points, within the 1-point budget
CALIB_SAMPLES, EVAL_SAMPLES = 64, 200
ARTIFACTS = {"arm64": ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.fp16.tflite",
                       "model.dynamic_int8.tflite", "model.int8.tflite"],
             "x86_64": ["model.fp32.onnx", "model.int8.onnx"]}


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
            code = run_cli("build", family.source(folder), "--calib", calib, "--eval", evaluation,
                           "--target", target, "--out", folder / "out", "--quiet", "--keep-going")
            built[name, target] = code, folder / "out" / target
        return built[name, target]

    return build


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_family_builds_and_passes_parity(zoo_builds, name, target, capsys):
    code, folder = zoo_builds(name, target)
    manifest = read_manifest(folder)
    assert manifest["failures"] == [], manifest["failures"]
    assert [a["file"] for a in manifest["artifacts"]] == ARTIFACTS[target]
    failing = {a["file"]: a["parity"]["failures"] for a in manifest["artifacts"] if not a["parity"]["passed"]}
    assert failing == {}
    assert code == 0
    assert manifest["warnings"] == []  # enough held-out samples for the gate
    capsys.readouterr()
    assert run_cli("check", folder) == 0
    for artifact in manifest["artifacts"]:
        if "int8" in artifact["file"]:
            worst = {key: min(float(o[key]) for o in artifact["parity"]["outputs"].values() if key in o)
                     for key in ("cosine", "snr_db")}
            top1 = [o["top1_agreement"] for o in artifact["parity"]["outputs"].values() if "top1_agreement" in o]
            with capsys.disabled():
                print(f"\nzoo {name} {target} {artifact['file']}: cosine {worst['cosine']:.4f} "
                      f"SNR {worst['snr_db']:.1f} dB top-1 {min(top1) if top1 else '-'}")


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
    """The device runner, on emulated arm64, feeds the INT8 TFLite from its manifest entry and agrees with
    the reference (on-target parity), for every input and output of every family."""
    _, folder = zoo_builds(name, "arm64")
    capsys.readouterr()
    code = run_cli("bench", folder / "model.int8.tflite", "--runner", "qemu", "--samples", "4", "--runs", "2",
                   "--warmup", "1", "--json")
    (record,) = json.loads(capsys.readouterr().out)
    assert code == 0, record["parity"]["failures"]
    assert record["kind"] == "emulated" and record["parity"]["passed"]
