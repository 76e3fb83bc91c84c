"""`edgekit bench` and `build --bench`: latency percentiles and on-target parity, natively and on emulated arm64."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from conftest import read_manifest, run_cli

# (the example build's folder, file): one INT8 artifact per format; the arm64 image and root filesystem run
# the .pte on the torch-free executorch_numpy_runtime.
INT8_ARTIFACTS = [("arm64", "model.int8.onnx"), ("arm64", "model.int8.tflite"), ("arm64", "model.int8.pte"),
                  ("arm64-pte", "model.int8.ort")]


def bench_json(capsys, *args) -> tuple[int, list[dict]]:
    capsys.readouterr()
    code = run_cli("bench", *args, "--json")
    return code, json.loads(capsys.readouterr().out)


def assert_latency(record):
    latency = record["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "mean", "min"}
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert record["load_ms"] > 0 and record["first_run_ms"] > 0 and record["peak_rss_mb"] > 0


def test_native_bench_of_every_artifact_with_on_target_parity(example_build, tmp_path, capsys):
    folder = tmp_path / "x86_64"
    shutil.copytree(example_build / "x86_64", folder)
    shutil.copy(example_build / "x86_64.tar.gz", tmp_path)
    code, records = bench_json(capsys, folder, "--runner", "native", "--runs", "20", "--warmup", "2")
    assert code == 0
    assert [r["file"] for r in records] == ["model.fp32.onnx", "model.int8.onnx", "model.fp32.pte", "model.int8.pte"]
    for record in records:
        assert_latency(record)
        assert record["kind"] == "native" and record["where"].startswith("native on this machine")
        assert record["runs"] == 20 and record["threads"] == 1 and record["samples"] == 360
        runtime = "executorch" if record["file"].endswith(".pte") else "onnxruntime"
        assert record["runtime"]["name"] == runtime and record["machine"]["isa"]
        assert record["parity"]["passed"] and record["parity"]["accuracy"] >= 99.0
    manifest = read_manifest(folder)
    assert [b["runner"] for b in manifest["artifacts"][0]["benchmarks"]] == ["build", "native"]  # build: host timing
    with tarfile.open(tmp_path / "x86_64.tar.gz") as tar:  # the archive carries the updated manifest
        archived = json.load(tar.extractfile("x86_64/manifest.json"))
    assert archived["artifacts"][1]["benchmarks"][1]["latency_ms"] == records[1]["latency_ms"]
    assert run_cli("check", folder) == 0


def test_one_file_of_a_build_folder_is_benched_alone_with_on_target_parity(example_build, tmp_path, capsys):
    folder = tmp_path / "arm64-pte"
    shutil.copytree(example_build / "arm64-pte", folder)
    code, records = bench_json(capsys, folder / "model.int8.ort", "--runner", "native", "--runs", "3")
    assert code == 0 and [r["file"] for r in records] == ["model.int8.ort"]
    assert records[0]["parity"]["passed"] and records[0]["runtime"]["name"] == "onnxruntime"
    benched = {a["file"]: [b["runner"] for b in a["benchmarks"]] for a in read_manifest(folder)["artifacts"]}
    assert benched["model.int8.ort"] == ["build", "native"] and benched["model.int8.onnx"] == ["build"]


def test_lone_artifact_gets_latency_without_a_parity_claim(example_build, tmp_path, capsys):
    artifact = tmp_path / "model.int8.tflite"
    shutil.copy(example_build / "arm64" / "model.int8.tflite", artifact)
    code, (record,) = bench_json(capsys, artifact, "--runner", "native", "--runs", "5")
    assert code == 0
    assert_latency(record)
    assert record["parity"]["passed"] is None and "not computed" in record["parity"]["error"]
    assert record["runtime"]["name"] == "ai_edge_litert"


def test_build_with_bench_reports_host_and_on_target_parity(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", "--target", "x86_64", "--bench", "--runs", "5", "--out", out) == 0
    err = capsys.readouterr().err
    assert "host parity  on-target parity" in err
    for artifact in read_manifest(out / "x86_64")["artifacts"]:
        build, native = artifact["benchmarks"]  # the build's own host timing, then --bench's
        assert build["kind"] == "host" and native["parity"]["passed"] and native["kind"] == "native"


@pytest.mark.parametrize("args, words", [
    (["--runner", "ftp://device"], ["unknown runner 'ftp://device'"]),
    (["--runner", "qemu", "--target", "x86_64"], ["emulates arm64 only"]),
])
def test_bench_errors(example_build, capsys, args, words):
    capsys.readouterr()
    assert run_cli("bench", example_build / "x86_64", *args) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words) and "Traceback" not in err


def test_bench_of_a_missing_path(tmp_path, capsys):
    assert run_cli("bench", tmp_path / "nothing.onnx") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.emulated
@pytest.mark.slow
@pytest.mark.parametrize("runner", ["qemu", "docker"])
def test_int8_artifacts_on_emulated_arm64(example_build, tmp_path, capsys, runner, request):
    request.getfixturevalue("arm64_python" if runner == "qemu" else "arm64_image")
    for target in {target for target, _ in INT8_ARTIFACTS}:
        shutil.copytree(example_build / target, tmp_path / target)  # bench records its numbers in the manifest
    for target, name in INT8_ARTIFACTS:
        code, (record,) = bench_json(capsys, tmp_path / target / name, "--runner", runner, "--samples", "48",
                                     "--runs", "10", "--warmup", "2")
        assert code == 0, record["parity"]
        assert record["kind"] == "emulated" and "emulated arm64" in record["where"]
        assert "not device latency" in record["where"]
        assert record["machine"]["machine"] == "aarch64" and record["machine"]["isa"]["asimd"]
        assert record["samples"] == 48
        assert_latency(record)
        parity = record["parity"]
        assert parity["passed"] and parity["reference_accuracy"] - parity["accuracy"] <= 1.0
        assert parity["outputs"]["output"]["top1_agreement"] >= 0.97
    capsys.readouterr()
    assert run_cli("bench", tmp_path / "arm64" / "model.int8.onnx", "--runner", runner, "--samples", "16",
                   "--runs", "3") == 0
    table = capsys.readouterr().out
    assert f"{runner} (emulated)" in table and "not device latency" in table


def test_ssh_runner_copies_runs_and_fetches(example_build, tmp_path, capsys, ssh_device):
    """A host reached over SSH (here this machine's own sshd) with the device's Python from the profile."""
    import sys

    profile = tmp_path / "board.yaml"
    profile.write_text(f"extends: x86_64\ndescription: a board over SSH\n"
                       f"bench: {{runner: '{ssh_device}', remote_python: '{sys.executable}', runs: 5}}\n")
    folder = tmp_path / "x86_64"
    shutil.copytree(example_build / "x86_64", folder)
    code, records = bench_json(capsys, folder, "--target", profile, "--samples", "32")
    assert code == 0
    for record in records:
        assert record["runner"] == ssh_device and record["kind"] == "device"
        assert record["where"].startswith("device ") and record["parity"]["passed"]
        assert_latency(record)


def test_unreachable_ssh_host_names_the_fix(example_build, capsys):
    capsys.readouterr()
    assert run_cli("bench", example_build / "x86_64", "--runner", "ssh://nobody@127.0.0.1:1", "--runs", "1") == 2
    err = capsys.readouterr().err
    assert "cannot reach nobody@127.0.0.1 over SSH" in err and "ssh -p 1 nobody@127.0.0.1 true" in err


def test_missing_emulation_setup_names_the_command(example_build, capsys, monkeypatch, tmp_path):
    from edgekit.bench import hosts

    monkeypatch.setattr(hosts, "CACHE", tmp_path / "empty-cache")
    capsys.readouterr()
    assert run_cli("bench", example_build / "arm64", "--runner", "qemu") == 2
    assert "run tools/arm64_rootfs.sh" in capsys.readouterr().err
    monkeypatch.setattr(hosts.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 1})())
    assert run_cli("bench", example_build / "arm64", "--runner", "docker") == 2
    assert "run tools/docker_images.sh arm64" in capsys.readouterr().err
