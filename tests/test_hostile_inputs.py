"""Tried as an attacker or a hostile CI would: build folders that lie, destinations that are not edgekit's,
signals mid-build, full and read-only disks. Every case asserts the exit code, one line on stderr, no
traceback, and that nothing outside the build's own paths changed."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTS, one_line_error, read_manifest, run_cli, tree_state
from edgekit import example
from edgekit.sources import sha256_file

FAST = ["--target", "x86_64", "--quantize", "none", "--quiet"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, str]:
    """The bundled example built for x86_64 (fp32 + INT8 ONNX) and its release digest."""
    out = tmp_path_factory.mktemp("release")
    assert run_cli("build", "--target", "x86_64", "--quantize", "int8", "--out", out, "--quiet") == 0
    folder = out / "x86_64"
    return folder, json.loads((folder / "report.json").read_text())["release_digest"]


@pytest.fixture
def folder(release, tmp_path) -> Path:
    """A private copy of the release to tamper with."""
    copy = tmp_path / "x86_64"
    shutil.copytree(release[0], copy)
    return copy


def rewrite(folder: Path, change) -> None:
    manifest = read_manifest(folder)
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def reseal(folder: Path) -> None:
    """Re-record every checksum, as a forger who can edit the whole folder would."""
    def seal(manifest):
        for record in [*manifest["artifacts"], *manifest["evaluation"].values()]:
            if isinstance(record, dict) and "sha256" in record:
                record["sha256"] = sha256_file(folder / record["file"])
    rewrite(folder, seal)


# ---- Builds never replace what edgekit did not make -------------------------------------------------------

def user_folder(out: Path) -> Path:
    target = out / "x86_64"
    target.mkdir(parents=True)
    (target / "thesis.tex").write_text("years of work")
    return target


@pytest.mark.parametrize("setup", ["user folder", "user file", "build with a user file", "user archive",
                                   "link to a user folder"])
def test_a_build_never_replaces_what_edgekit_did_not_make(release, tmp_path, capsys, setup):
    out = tmp_path / "out"
    elsewhere = user_folder(tmp_path / "elsewhere")
    out.mkdir()
    if setup == "user folder":
        user_folder(out)
    elif setup == "user file":
        (out / "x86_64").write_text("mine")
    elif setup == "build with a user file":
        shutil.copytree(release[0], out / "x86_64")
        (out / "x86_64" / "notes.txt").write_text("mine")
    elif setup == "user archive":
        (out / "x86_64.tar.gz").write_bytes(b"my own archive")
    else:
        (out / "x86_64").symlink_to(elsewhere, target_is_directory=True)
    before, outside = tree_state(out), tree_state(elsewhere)
    code = run_cli("build", *FAST, "--out", out)
    one_line_error(capsys, code, 2, "x86_64", "choose another --out")
    assert tree_state(out) == before and tree_state(elsewhere) == outside


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/b", "-rf", ".hidden"])
def test_a_profile_name_is_one_plain_folder_name(tmp_path, capsys, name):
    profile = tmp_path / "evil.yaml"
    profile.write_text(f"extends: x86_64\nname: {json.dumps(name)}\ndescription: d\n")
    out = tmp_path / "deep" / "out"
    before = tree_state(tmp_path)
    code = run_cli("build", "--target", profile, "--quantize", "none", "--out", out, "--quiet")
    one_line_error(capsys, code, 2, "target name", "one plain folder name")
    assert tree_state(tmp_path) == before


def test_the_filesystem_root_and_a_repeated_target_are_refused(tmp_path, capsys):
    one_line_error(capsys, run_cli("build", *FAST, "--out", "/"), 2, "filesystem root")
    code = run_cli("build", "--target", "x86_64,x86_64", "--out", tmp_path / "out", "--quiet")
    one_line_error(capsys, code, 2, "named twice")
    assert not (tmp_path / "out").exists()


def test_a_rebuild_replaces_its_own_build_and_clears_only_its_own_stale_staging(release, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(release[0], out / "x86_64")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live, foreign = (out / f".x86_64.partial-{tag}" for tag in ("dead0001", "live0001", "user0001"))
    for stage, owner in ((stale, dead.stdout), (live, f"{os.getpid()}\n"), (foreign, None)):
        stage.mkdir()
        (stage / "x86_64").mkdir()
        if owner:
            (stage / ".edgekit-staging").write_text(owner)
    assert run_cli("build", *FAST, "--out", out) == 0
    assert not stale.exists() and live.exists() and foreign.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["x86_64", "x86_64.tar.gz"]
    assert [a["file"] for a in read_manifest(out / "x86_64")["artifacts"]] == ["model.fp32.onnx", "model.fp32.pte"]


# ---- check: paths stay inside, limits come from the profile, releases can be pinned ---------------------

@pytest.mark.parametrize("path", ["../../outside.onnx", "/etc/passwd", "parity/../../x.onnx"])
def test_check_refuses_paths_that_leave_the_folder(folder, capsys, path):
    rewrite(folder, lambda m: m["artifacts"][0].update(file=path))
    one_line_error(capsys, run_cli("check", folder), 2, "manifest", "artifacts")


@pytest.mark.parametrize("link", ["model.fp32.onnx", "parity"])
def test_check_refuses_symbolic_links(folder, tmp_path, capsys, link):
    outside = tmp_path / "outside"
    shutil.move(folder / link, outside)
    (folder / link).symlink_to(outside)
    one_line_error(capsys, run_cli("check", folder), 2, "symbolic link")


def test_check_fails_a_release_with_no_artifacts(folder, capsys):
    rewrite(folder, lambda m: m.update(artifacts=[]))
    assert run_cli("check", folder) == 1
    assert "no artifacts" in capsys.readouterr().out


def test_loosened_limits_in_the_folder_do_not_pass_a_forged_release(folder, capsys):
    """Reference outputs replaced by noise, checksums resealed, every tolerance emptied: the profile still judges."""
    with np.load(folder / "parity" / "reference.npz") as archive:
        noise = {k: np.random.default_rng(0).standard_normal(v.shape).astype(v.dtype) for k, v in archive.items()}
    np.savez(folder / "parity" / "reference.npz", **noise)

    def loosen(manifest):
        for entry in manifest["artifacts"]:
            entry["tolerance"], entry["output_tolerances"] = {}, {}
    rewrite(folder, loosen)
    reseal(folder)
    assert run_cli("check", folder) == 1
    assert run_cli("check", folder, "--recorded-tolerances") == 0  # what the folder's own limits would say


def test_a_pinned_digest_catches_a_self_consistent_forgery(folder, release, capsys):
    """The forger swaps the INT8 model for the float one, re-records its outputs and checksums: only the
    pinned digest notices."""
    assert run_cli("check", folder, "--expect", release[1]) == 0
    shutil.copyfile(folder / "model.fp32.onnx", folder / "model.int8.onnx")
    reseal(folder)
    assert run_cli("check", folder) == 0
    capsys.readouterr()
    assert run_cli("check", folder, "--expect", release[1]) == 1
    out = capsys.readouterr().out
    assert f"is not the expected {release[1]}" in out and "FAIL" in out


def test_benchmark_numbers_do_not_change_the_release_digest(folder, release, capsys):
    assert run_cli("bench", folder, "--runs", "1", "--warmup", "1", "--samples", "8") == 0
    assert "benchmarks" in read_manifest(folder)["artifacts"][0]
    assert run_cli("check", folder, "--expect", release[1]) == 0


def test_an_artifact_no_runtime_can_load_is_a_failed_verdict(folder, capsys):
    (folder / "model.int8.onnx").write_bytes(b"not a model")
    reseal(folder)
    assert run_cli("check", folder) == 1
    assert "could not run" in capsys.readouterr().out


# ---- Malformed build folders: exit 2, one line, the key or file named -----------------------------------

def drop_artifacts(manifest):
    del manifest["artifacts"]


def bad_sha(manifest):
    manifest["artifacts"][0]["sha256"] = 5


def bad_shape(manifest):
    manifest["model_io"]["inputs"][0]["shape"] = "1,1,32,32"


def bad_original_timing(manifest):
    """A compressed build's section that bench reads back, with the original's timing not a record."""
    manifest["pruning"] = {"config": {}, "steps": [{"step": "cluster"}], "original_host_latency": {"p50": 1}}


@pytest.mark.parametrize("command", ["check", "bench", "debug"])
@pytest.mark.parametrize("change,key", [(drop_artifacts, "artifacts"), (bad_sha, "artifacts[0].sha256"),
                                        (bad_shape, "model_io.inputs[0].shape"),
                                        (bad_original_timing, "pruning.original_host_latency")])
def test_a_malformed_manifest_names_the_key(folder, capsys, command, change, key):
    rewrite(folder, change)
    before = tree_state(folder)
    one_line_error(capsys, run_cli(command, folder), 2, "manifest.json", key)
    assert tree_state(folder) == before


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_manifest_that_is_not_a_manifest(folder, capsys, content):
    (folder / "manifest.json").write_bytes(content)
    one_line_error(capsys, run_cli("check", folder), 2, "manifest.json")


class TouchesAFile:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("command", ["check", "bench", "debug"])
def test_pickled_parity_data_is_never_loaded(folder, tmp_path, capsys, command):
    marker = tmp_path / "pickle-ran"
    with np.load(folder / "parity" / "inputs.npz") as archive:
        arrays = dict(archive)
    arrays["input"] = np.array([TouchesAFile(marker)], dtype=object)
    np.savez(folder / "parity" / "inputs.npz", **arrays, allow_pickle=True)
    reseal(folder)
    one_line_error(capsys, run_cli(command, folder), 2, "inputs.npz", "pickled")
    assert not marker.exists()


def test_parity_data_that_is_not_an_archive(folder, capsys):
    (folder / "parity" / "reference.npz").write_bytes(pickle.dumps([1, 2, 3]))
    reseal(folder)
    one_line_error(capsys, run_cli("check", folder), 2, "reference.npz")


def test_debug_never_imports_the_model_a_folder_names(folder, tmp_path, capsys):
    marker = tmp_path / "imported"
    planted = tmp_path / "planted.py"
    planted.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef make_model():\n    pass\n")
    rewrite(folder, lambda m: m["recipe"].update(model=f"{planted}:make_model"))
    one_line_error(capsys, run_cli("debug", folder, "--reference", "torch"), 2, "--model")
    assert not marker.exists()


# ---- Library messages, signals, full and read-only disks --------------------------------------------------

def test_a_library_message_with_colour_codes_and_line_breaks_is_one_plain_line(tmp_path, capsys):
    model = tmp_path / "noisy.py"
    model.write_text("raise RuntimeError('\\x1b[31mred failure\\x1b[0m\\nsecond line\\nthird')\n")
    code = run_cli("build", f"{model}:make", "--random-calib", *FAST, "--out", tmp_path / "out")
    message = one_line_error(capsys, code, 2, "red failure", "second line")
    assert "\x1b" not in message


SLOW_EXPORT = '''
import pathlib, time, torch
from edgekit.example.model import make_model

class SlowToExport(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, x):
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            pathlib.Path(__file__).with_suffix(".exporting").touch()
            time.sleep(30)
        return self.net(x)

def make():
    return SlowToExport()
'''


def start_build(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    model = tmp_path / "slow.py"
    model.write_text(SLOW_EXPORT)
    out = tmp_path / "out"
    shutil.copytree(TESTS.parent / "edgekit" / "example", tmp_path / "unrelated")  # a neighbour that must survive
    process = subprocess.Popen([sys.executable, "-m", "edgekit", "build", f"{model}:make", "--input-shape",
                                "1,1,32,32", "--calib", str(example.CALIB), "--out", str(out), "--quiet", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=_ctrl_c_reaches_it)
    return process, out


def _ctrl_c_reaches_it() -> None:
    """The build starts as a terminal's foreground command does, with SIGINT at its default: a shell script
    that runs the tests in the background (`pytest &`) leaves SIGINT ignored, and the build would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the build never reached the stage"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("sent,expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_the_pytorch_exporter(tmp_path, sent, expected):
    process, out = start_build(tmp_path, "--target", "x86_64")
    wait_for(lambda: (tmp_path / "slow.exporting").exists(), process)
    neighbours = tree_state(tmp_path / "unrelated")
    process.send_signal(sent)
    _, err = process.communicate(timeout=60)
    message = one_line_error(err, process.returncode, expected, "nothing was left half-written")
    assert "error" not in message  # never reported as a model error
    assert list(out.iterdir()) == [] and tree_state(tmp_path / "unrelated") == neighbours


@pytest.mark.slow
def test_sigterm_while_onnx2tf_converts_stops_its_child_and_publishes_nothing(tmp_path, fresh_stages):
    psutil = pytest.importorskip("psutil")
    process = subprocess.Popen([sys.executable, "-m", "edgekit", "build", "--target", "arm64", "--quantize", "fp16",
                                "--out", str(tmp_path / "out"), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    parent = psutil.Process(process.pid)
    # The converter's child starts (importing TensorFlow) while the model exports; the conversion itself begins
    # once the float ONNX is in the staging folder.
    wait_for(lambda: any((tmp_path / "out").glob(".arm64.partial-*/arm64/model.fp32.onnx")), process)
    children = parent.children(recursive=True)
    assert any("multiprocessing" in " ".join(c.cmdline()) for c in children)
    time.sleep(2)  # inside the conversion
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    one_line_error(err, process.returncode, 143, "terminated")
    assert list((tmp_path / "out").iterdir()) == []
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A real tmpfs mounted at `where` for the test (root only; skipped visibly otherwise)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=300k") as where:
        yield where


@pytest.fixture
def read_only_disk(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as where:
        yield where


def test_a_full_disk_ends_with_one_line_and_leaves_nothing(small_disk, capsys):
    code = run_cli("build", *FAST, "--out", small_disk / "out")
    one_line_error(capsys, code, 2, "space")
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []


def test_a_read_only_disk_ends_with_one_line(read_only_disk, capsys):
    code = run_cli("build", *FAST, "--out", read_only_disk / "out")
    one_line_error(capsys, code, 2, "out")
    assert list(read_only_disk.iterdir()) == []
