"""A runner, a command or a number that would run something on the user's own machine, or quietly mean
something else: from a flag, a recipe, a profile or a build folder. Every refusal asserts exit 2, one line on
stderr, no traceback, and that nothing under the test's folder changed (the MARKER file a hostile string
would create included)."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_error, read_manifest, run_cli, run_console, tree_state

SSH_FORM = "ssh://[user@]host[:port]"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The bundled example built for x86_64, fp32 ONNX only (about 10 s)."""
    out = tmp_path_factory.mktemp("built")
    assert run_cli("build", "--target", "x86_64", "--quantize", "none", "--out", out, "--quiet") == 0
    return out / "x86_64"


@pytest.fixture
def folder(built, tmp_path) -> Path:
    """A private copy of the build, inside tmp_path with the MARKER a hostile string would create."""
    copy = tmp_path / "x86_64"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


def refused(capsys, tmp_path: Path, *args, words=()) -> str:
    """Run edgekit; it must refuse with one line naming `words` and leave tmp_path exactly as it was."""
    before = tree_state(tmp_path)
    capsys.readouterr()
    message = one_line_error(capsys, run_cli(*args), 2, *words)
    assert tree_state(tmp_path) == before
    return message


def hostile_manifest(folder: Path, marker: Path, builtin="keep") -> None:
    """The profile copy inside the folder says to run a command on this machine."""
    manifest = read_manifest(folder)
    manifest["target"]["profile"]["bench"].update(runner=f"ssh://-oProxyCommand=touch {marker}",
                                                  remote_python=f"touch {marker};python3")
    if builtin != "keep":
        manifest["target"]["builtin"] = builtin
    (folder / "manifest.json").write_text(json.dumps(manifest))


# ---- ssh:// destinations are parsed strictly --------------------------------------------------------------

HOSTILE = ["ssh://-oProxyCommand=touch {marker}", "ssh://host -oProxyCommand=touch {marker}",
           "ssh://-host", "ssh://user@-host", "ssh://-l@host", "ssh://host:0", "ssh://host:99999", "ssh://host:22x",
           "ssh://a;touch {marker}", "ssh://a$(touch {marker})", "ssh://a`touch {marker}`", "ssh://", "ssh://user@",
           "ssh://host%eth0", "ssh://[fe80::1%eth0]", "ssh://my host", "ssh://host\n-oProxyCommand=touch {marker}"]


@pytest.mark.parametrize("runner", HOSTILE)
def test_a_hostile_ssh_destination_is_refused_and_runs_nothing(folder, marker, tmp_path, capsys, runner):
    runner = runner.format(marker=marker)
    refused(capsys, tmp_path, "bench", folder, "--runner", runner, "--runs", "1",
            words=(repr(runner), SSH_FORM))
    assert not marker.exists()


def test_a_hostile_ssh_destination_from_the_console(folder, marker, tmp_path):
    before = tree_state(tmp_path)
    done = run_console("bench", folder, "--runner", f"ssh://-oProxyCommand=touch {marker}")
    one_line_error(done.stderr, done.returncode, 2, "-oProxyCommand", SSH_FORM)
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("runner, host", [("ssh://nobody@127.0.0.1:1", "nobody@127.0.0.1"),
                                          ("ssh://nobody@[::1]:1", "nobody@::1")])
def test_a_valid_unreachable_destination_fails_quickly_naming_the_host(folder, tmp_path, capsys, runner, host):
    started = time.monotonic()
    refused(capsys, tmp_path, "bench", folder, "--runner", runner, "--runs", "1", words=(host, "SSH"))
    assert time.monotonic() - started < 30


def test_the_device_python_is_one_quoted_word_on_the_device(folder, marker, tmp_path, capsys, ssh_device):
    """The device is this machine's own sshd: an unquoted remote_python would create MARKER here."""
    profile = tmp_path / "board.yaml"
    profile.write_text(f"extends: x86_64\ndescription: a board over SSH\n"
                       f"bench: {{runner: '{ssh_device}', remote_python: 'touch {marker};{sys.executable}'}}\n")
    refused(capsys, tmp_path, "bench", folder, "--target", profile, "--runs", "1", "--warmup", "1",
            words=("device runner failed",))


# ---- A build folder never chooses the runner, the profile or a command ------------------------------------

def test_a_folder_recording_a_hostile_runner_is_benched_by_its_builtin_profile(folder, marker, tmp_path, capsys):
    hostile_manifest(folder, marker)
    outside = {k: v for k, v in tree_state(tmp_path).items() if not k.startswith("x86_64")}
    capsys.readouterr()
    assert run_cli("bench", folder, "--runs", "1", "--warmup", "1", "--samples", "4") == 0
    assert "Traceback" not in capsys.readouterr().err
    assert [b["runner"] for b in read_manifest(folder)["artifacts"][0]["benchmarks"]] == ["build", "native"]
    assert not marker.exists()
    assert {k: v for k, v in tree_state(tmp_path).items() if not k.startswith("x86_64")} == outside


@pytest.mark.parametrize("builtin", [None, "../x86_64", "not-a-profile"])
def test_a_folder_without_a_builtin_profile_needs_one_named(folder, marker, tmp_path, capsys, builtin):
    hostile_manifest(folder, marker, builtin)
    refused(capsys, tmp_path, "bench", folder, "--runs", "1", words=("--target",))
    assert not marker.exists()


# ---- build --bench: the recipe's runner is checked before any work ----------------------------------------

def test_build_bench_with_a_hostile_runner_does_no_work(marker, tmp_path, capsys):
    runner = f"ssh://-oProxyCommand=touch {marker}"
    refused(capsys, tmp_path, "build", "--target", "x86_64", "--out", tmp_path / "out", "--bench",
            "--runner", runner, words=(repr(runner), SSH_FORM))
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- Numbers out of range: flags, recipes, profiles -------------------------------------------------------

@pytest.mark.parametrize("command", ["bench", "debug"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_sample_count_below_one_is_refused(folder, tmp_path, capsys, command, value):
    refused(capsys, tmp_path, command, folder, "--samples", value, words=("--samples", value))


@pytest.mark.parametrize("flag", ["--runs", "--warmup", "--threads"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_bench_count_below_one_is_refused(folder, tmp_path, capsys, flag, value):
    refused(capsys, tmp_path, "bench", folder, flag, value, words=(flag, value))


@pytest.mark.parametrize("flags, words", [
    (["--calib-samples", "0"], ["--calib-samples"]),
    (["--recover-steps", "-1"], ["--recover-steps"]),
    (["--bench", "--runs", "0"], ["--runs"]),
    (["--prune", "0"], ["ratio", "(0, 1)"]),
    (["--prune", "1"], ["ratio", "(0, 1)"]),
    (["--sparsity", "1"], ["sparsity", "[0, 1)"]),
    (["--sparsity", "-0.1"], ["sparsity", "[0, 1)"]),
    (["--min-agreement", "0"], ["min_agreement", "(0, 1]"]),
    (["--min-agreement", "1.5"], ["min_agreement", "(0, 1]"]),
    (["--max-accuracy-drop", "-1"], ["max_accuracy_drop", ">= 0"]),
])
def test_build_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys, flags, words):
    refused(capsys, tmp_path, "build", "--target", "x86_64", "--out", tmp_path / "out", *flags, words=words)


def test_a_flag_that_is_not_a_number_is_one_line_from_the_console(folder, tmp_path):
    before = tree_state(tmp_path)
    for flags in (["--runs", "many"], ["--no-such-flag"]):
        done = run_console("bench", folder, *flags)
        one_line_error(done.stderr, done.returncode, 2, flags[0], "--help")
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("text, words", [
    ("bench: {runs: 0}\n", ["edgekit.yaml", "bench.runs"]),
    ("bench: {threads: -2}\n", ["edgekit.yaml", "bench.threads"]),
    ("calibration: {samples: -1}\n", ["edgekit.yaml", "calibration.samples"]),
    ("bench: {runner: 'ssh://-oProxyCommand=touch MARKER'}\n", ["edgekit.yaml", "bench.runner", SSH_FORM]),
    ("prune: {min_agreement: 0}\n", ["min_agreement", "(0, 1]"]),  # PruneConfig's own check
])
def test_a_recipe_out_of_range_is_refused_before_any_work(tmp_path, capsys, text, words):
    recipe = tmp_path / "edgekit.yaml"
    recipe.write_text(text.replace("MARKER", str(tmp_path / "MARKER")) + f"out: {tmp_path / 'out'}\n")
    refused(capsys, tmp_path, "build", "--recipe", recipe, "--target", "x86_64", "--bench", words=words)


@pytest.mark.parametrize("text, words", [
    ("bench: {runs: -5}\n", ["bench.runs", "-5"]),
    ("bench: {warmup: 0}\n", ["bench.warmup"]),
    ("runtime: {threads: 0}\n", ["runtime.threads"]),
    ("bench: {runner: 'ssh://-oProxyCommand=touch MARKER'}\n", ["bench.runner", SSH_FORM]),
])
def test_a_profile_out_of_range_is_refused_on_load(folder, tmp_path, capsys, text, words):
    profile = tmp_path / "board.yaml"
    profile.write_text("extends: x86_64\ndescription: a board\n" + text.replace("MARKER", str(tmp_path / "MARKER")))
    refused(capsys, tmp_path, "bench", folder, "--target", profile, words=[*words, str(profile)])
