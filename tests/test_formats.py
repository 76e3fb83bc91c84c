"""The format registry's contract: every registered format passes the same conformance checks, and a format
registered without its entry in CONFORMANCE fails here."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from edgekit import example, formats, package, sources, targets
from edgekit.bench import bench_folder
from edgekit.data import Dataset
from edgekit.runners import open_runner, run_dataset
from edgekit.stages import HUB, Artifact, StageContext, validate_order

from conftest import run_cli

# The built-in profile whose example build ships each format's artifacts.
CONFORMANCE = {"onnx": "arm64", "tflite": "arm64", "pte": "arm64", "ort": "arm64-pte"}


def test_every_registered_format_has_a_conformance_entry():
    assert set(CONFORMANCE) == set(formats.FORMATS)


@pytest.mark.parametrize("name", sorted(formats.FORMATS))
def test_profiles_hold_each_formats_settings_under_its_name(name):
    fmt = formats.get(name)
    fields = {f.name for f in dataclasses.fields(targets.Target)}
    assert name in fields, f"the profile has no '{name}' key for the format's settings"
    for profile in targets.available():
        listed = getattr(targets.load(profile), name).precisions
        assert set(listed) <= set(fmt.precisions), (profile, listed)


@pytest.mark.parametrize("name", sorted(formats.FORMATS))
def test_stages_declare_what_they_make_and_need(name, tmp_path):
    fmt = formats.get(name)
    target = targets.load(CONFORMANCE[name])
    calibration = Dataset({"input": np.zeros((4, 1, 32, 32), np.float32)}, None, "zeros")
    hub = Artifact(tmp_path / "model.fp32.onnx", "onnx", "fp32")
    source = sources.load(example.FACTORY, str(example.WEIGHTS), list(example.INPUT_SHAPE))
    context = StageContext(hub, target, calibration, target.quantization, [], None, tmp_path, source)
    stages = formats.stages_for(context, {name: list(fmt.precisions)})
    validate_order(stages)
    made = set()
    for stage in [stage for stage in stages if stage.format == name]:
        # A stage needs the hub, or the files of the same precision of the format it saves from.
        base = {f"{fmt.made_from}:{precision}" for precision in stage.makes} if fmt.made_from else set()
        assert set(stage.makes) <= set(fmt.precisions) and set(stage.requires) <= {HUB} | base, stage.requires
        made |= set(stage.makes)
        if stage.fallback:
            assert set(stage.fallback.makes) < set(stage.makes)
    assert made == set(fmt.precisions)


@pytest.mark.parametrize("name", sorted(formats.FORMATS))
def test_built_artifacts_run_in_the_host_runner_the_device_runner_and_the_layer_capture(name, example_build,
                                                                                       tmp_path):
    fmt = formats.get(name)
    folder = example_build / CONFORMANCE[name]
    manifest = package.read_manifest(folder)
    entries = [e for e in manifest.artifacts if e.format == name]
    profile = targets.load(CONFORMANCE[name])
    assert sorted(e.name for e in entries) == sorted(fmt.file(p) for p in getattr(profile, name).precisions)
    inputs, _, reference = package.read_parity_data(folder, manifest.input_names)
    inputs = {k: v[:8] for k, v in inputs.items()}
    for entry in entries:
        path = folder / entry.name
        assert formats.by_suffix(path) is fmt
        host = run_dataset(open_runner(path, name, profile.runtime, (entry.inputs, entry.outputs)), inputs)
        assert {k: v.shape for k, v in host.items()} == {k: v[:8].shape for k, v in reference.items()}
        if fmt.capture:
            capture = fmt.capture(path, inputs, (entry.inputs, entry.outputs))
            assert len(capture.tensors) >= 10, entry.name
    copy = tmp_path / "build"
    shutil.copytree(folder, copy)
    records = bench_folder(copy, profile, "native", 1, 1, 1, 8)
    on_device = [r for r in records if r["file"] in {e.name for e in entries}]
    assert len(on_device) == len(entries) and all(r["parity"]["passed"] for r in on_device), on_device


@pytest.mark.parametrize("name", sorted(formats.FORMATS))
def test_check_fails_a_changed_byte_in_each_formats_artifact(name, example_build, tmp_path, capsys):
    folder = tmp_path / "build"
    shutil.copytree(example_build / CONFORMANCE[name], folder)
    artifact = folder / formats.get(name).file("int8")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(data)
    assert run_cli("check", folder) == 1
    assert f"{artifact.name}: its sha256 differs from the manifest" in capsys.readouterr().out
