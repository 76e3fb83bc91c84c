"""INT8 verdicts that do not depend on the build machine's CPU.

ONNX Runtime's x86 INT8 kernels saturate on CPUs without VNNI (pairs of u8 x s8 products added into int16);
ARM, VNNI x86 and GPUs add in int32. These tests hold on any x86-64 host: the no-VNNI case is reproduced
under QEMU's Haswell CPU model (AVX2, no AVX-512, no VNNI), whatever CPU runs the suite.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit import int8_kernels, targets
from edgekit.errors import UserError
from edgekit.example import TEST

from conftest import read_manifest, run_cli, run_console

NO_VNNI = {"machine": "x86_64", "cpu_model": "AVX2 CPU", "isa": {"avx2": True, "avx512_vnni": False}, "isa_source": "cpuid"}
VNNI = {"machine": "x86_64", "cpu_model": "VNNI CPU", "isa": {"avx2": True, "avx512_vnni": True}, "isa_source": "cpuid"}
ARM = {"machine": "aarch64", "cpu_model": "Cortex-A76", "isa": {"asimd": True, "asimddp": True}, "isa_source": "hwcap"}
SAMPLES = 40  # held-out images: enough for a stable SNR, few enough for emulation (about 12 s a folder)


def profile(folder: Path, name: str, base: str, extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"extends: {base}\ndescription: {base}, ONNX only\nformats: [onnx]\n{extra}")
    return path


@pytest.fixture(scope="module")
def onnx_builds(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The bundled example's ONNX files for arm64, x86_64 (the avx2 floor, 7-bit weights) and an x86_64 profile
    that keeps full-range weights, judged on 40 held-out images."""
    folder = tmp_path_factory.mktemp("kernels")
    with np.load(TEST) as data:
        np.savez(folder / "eval.npz", x=data["x"][:SAMPLES], y=data["y"][:SAMPLES])
    profiles = {"arm64-onnx": profile(folder, "arm64-onnx", "arm64"),
                "x86_64-onnx": profile(folder, "x86_64-onnx", "x86_64"),
                "x86_64-full-range": profile(folder, "x86_64-full-range", "x86_64",
                                             "quantization: {reduce_range: false}\n")}
    args = [a for p in profiles.values() for a in ("--target", p)]
    code = run_cli("build", *args, "--eval", folder / "eval.npz", "--out", folder / "out", "--keep-going", "--quiet")
    assert code == 0  # --keep-going: the full-range x86 file fails its weight check (below) and is packaged
    return folder / "out", profiles


# ---- what the host is and which kernels model the target ------------------------------------------------

@pytest.mark.parametrize("host, floor, config", [
    (NO_VNNI, "armv8", {int8_kernels.PRECISION_OPTION: "1"}),  # ARM adds in int32: the host must too
    (NO_VNNI, "gpu", {int8_kernels.PRECISION_OPTION: "1"}),
    (NO_VNNI, "avx512_vnni", {int8_kernels.PRECISION_OPTION: "1"}),
    (NO_VNNI, "avx2", {}),  # the device saturates as this host does: judged as it is
    (VNNI, "armv8", {}),  # the host already adds in int32
    (VNNI, "avx2", {}),  # cannot saturate here: the weight check judges what the floor would do
    (ARM, "armv8", {}),
])
def test_the_host_session_models_the_targets_int8_accumulation(monkeypatch, host, floor, config):
    monkeypatch.setattr(int8_kernels, "host_cpu", lambda: host)
    assert int8_kernels.session_config(floor) == config
    kernels = int8_kernels.onnxruntime_kernels(config)
    saturating = host is NO_VNNI and not config
    assert kernels["int8_accumulation"] == (int8_kernels.SATURATING if saturating else int8_kernels.EXACT)
    assert kernels["cpu_model"] == host["cpu_model"] and kernels["session_config"] == config


def test_profiles_name_their_cpu_floor_and_a_wrong_one_is_refused(tmp_path):
    assert targets.load("arm64").runtime.cpu_floor == "armv8"
    assert targets.load("x86_64").runtime.cpu_floor == "avx2"
    assert targets.load("x86_64").quantization.reduce_range
    assert targets.load("cuda").runtime.cpu_floor == "gpu"
    assert targets.load("jetson-orin").runtime.cpu_floor == "gpu"
    assert targets.load(str(profile(tmp_path, "plain", "x86_64", "runtime: {cpu_floor: null}\n"))).runtime.cpu_floor \
        == "avx2"
    with pytest.raises(UserError, match="'avx3' is not a CPU floor"):
        targets.load(str(profile(tmp_path, "typo", "x86_64", "runtime: {cpu_floor: avx3}\n")))
    with pytest.raises(UserError, match="'dotprod' is an arm64 CPU but bench.arch is x86_64"):
        targets.load(str(profile(tmp_path, "mixed", "x86_64", "runtime: {cpu_floor: dotprod}\n")))


# ---- the static weight check ------------------------------------------------------------------------------

def qdq_model(op: str, weight: np.ndarray, **attributes) -> onnx.ModelProto:
    """x -> op(x, DequantizeLinear(int8 weight)) -> y, as ONNX Runtime's quantizer writes a QDQ layer."""
    reduced = weight.shape[1] if attributes.get("transB") else weight.shape[0]
    shape = [1, weight.shape[1] * attributes.get("group", 1), 4, 4] if op == "Conv" else [2, reduced]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="dq_w"),
             helper.make_node(op, ["x", "w"], ["y"], name="layer", **attributes)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight.astype(np.int8), "w_q"),
                               numpy_helper.from_array(np.array(0.01, np.float32), "w_scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op, weight, attributes, pair", [
    ("Conv", np.full((4, 3, 3, 3), 64), {}, 128),  # 7-bit weights: 255 x 128 fits int16
    ("Conv", np.pad(np.full((4, 1, 1, 2), 100), ((0, 0), (0, 2), (0, 2), (0, 1))), {}, 200),
    ("Conv", np.full((8, 1, 3, 3), 127), {"group": 8}, None),  # depthwise: its own kernel, never saturates
    ("Conv", np.full((8, 2, 3, 3), 127), {"group": 4}, 254),  # grouped, not depthwise: a matrix product
    ("MatMul", np.diag(np.full(6, 120)), {}, 120),  # one large weight per output column
    ("MatMul", np.tile(np.array([[90], [90], [0]]), (1, 5)), {}, 180),
    ("Gemm", np.tile(np.array([[90, 90, 0]]), (5, 1)), {"transB": 1}, 180),  # rows are the outputs
])
def test_the_weight_check_finds_the_layers_that_can_saturate(tmp_path, op, weight, attributes, pair):
    path = tmp_path / "model.onnx"
    onnx.save(qdq_model(op, weight, **attributes), path)
    assert int8_kernels.int8_layers(path) == ({} if pair is None else {"layer": pair})
    check = int8_kernels.saturation_check(path, "avx2")
    if pair is None:
        assert check is None
    else:
        assert check.passed == (pair <= int8_kernels.PAIR_LIMIT)
    assert int8_kernels.saturation_check(path, "avx512_vnni") is None  # nothing saturates on VNNI CPUs


def test_full_range_weights_fail_an_avx2_floor_on_every_host_and_pass_a_vnni_one(onnx_builds):
    out, profiles = onnx_builds
    entry = next(a for a in read_manifest(out / "x86_64-full-range")["artifacts"] if a["file"] == "model.int8.onnx")
    check = next(c for c in entry["parity"]["checks"] if c["metric"] == "saturating_layers")
    assert not entry["parity"]["passed"] and check["value"] >= 1
    assert "reduce_range" in check["detail"] and "saturating int16" in check["detail"]
    # The same file for CPUs that all have VNNI: judged as they compute it, the same on this host as on any.
    vnni = profile(out.parent, "x86_64-vnni", "x86_64", "runtime: {cpu_floor: avx512_vnni}\n")
    done = run_console("check", out / "x86_64-full-range", "--target", vnni, "--json")
    assert done.returncode == 0, done.stdout[-3000:]
    int8 = next(r for r in json.loads(done.stdout)["artifacts"] if r["file"] == "model.int8.onnx")
    assert int8["parity"]["outputs"]["output"]["snr_db"] > 30


def test_every_verdict_records_the_kernels_that_computed_it(onnx_builds):
    out, _ = onnx_builds
    host = int8_kernels.host_cpu()
    for name in ("arm64-onnx", "x86_64-onnx"):
        for entry in read_manifest(out / name)["artifacts"]:
            kernels = entry["runtime"]["kernels"]
            assert kernels["cpu_model"] == (host["cpu_model"] or "unknown CPU") and kernels["isa_source"]
            assert kernels["int8_accumulation"] in (int8_kernels.EXACT, int8_kernels.SATURATING)
    arm = next(a for a in read_manifest(out / "arm64-onnx")["artifacts"] if a["file"] == "model.int8.onnx")
    assert arm["runtime"]["kernels"]["int8_accumulation"] == int8_kernels.EXACT  # as ARM's kernels add


def test_check_on_a_machine_with_other_kernels_says_so_and_keeps_the_verdict(onnx_builds, monkeypatch):
    from edgekit.check import check

    out, profiles = onnx_builds
    here = check(out / "arm64-onnx", str(profiles["arm64-onnx"]))
    other = VNNI if int8_kernels.saturates(int8_kernels.host_cpu()) else NO_VNNI
    monkeypatch.setattr(int8_kernels, "host_cpu", lambda: other)
    there = check(out / "arm64-onnx", str(profiles["arm64-onnx"]))
    assert here.passed and there.passed and not here.machine_notes
    assert len(there.machine_notes) == 1 and other["cpu_model"] in there.machine_notes[0]
    assert "model.int8.onnx" in there.machine_notes[0]


# ---- on an emulated CPU without VNNI ------------------------------------------------------------------------

@pytest.mark.emulated
def test_cpu_flags_are_what_the_process_sees_not_the_hosts(haswell_python):
    """Under QEMU /proc/cpuinfo shows the host's flags; CPUID shows the emulated CPU, which the runtimes use."""
    code = "import json; from edgekit.device.cpu import cpu_info; print(json.dumps(cpu_info()))"
    done = subprocess.run([*haswell_python, "-c", code], capture_output=True, text=True, timeout=120)
    info = json.loads(done.stdout)
    assert info["isa_source"] == "cpuid" and "Haswell" in info["cpu_model"]
    assert info["isa"]["avx2"] and not info["isa"]["avx512f"] and not info["isa"]["avx512_vnni"]
    assert not int8_kernels.saturates(VNNI) and int8_kernels.saturates(info)


@pytest.mark.emulated
@pytest.mark.slow
def test_int8_onnx_verdicts_hold_on_a_cpu_without_vnni(onnx_builds, haswell_python):
    out, profiles = onnx_builds
    for name in ("arm64-onnx", "x86_64-onnx"):
        done = subprocess.run([*haswell_python, "-m", "edgekit", "check", out / name, "--target", profiles[name],
                               "--json"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = json.loads(done.stdout)
        built = {a["file"]: a["parity"]["outputs"]["output"]["snr_db"] for a in read_manifest(out / name)["artifacts"]}
        emulated = {r["file"]: r["parity"]["outputs"]["output"]["snr_db"] for r in result["artifacts"]}
        assert abs(emulated["model.int8.onnx"] - built["model.int8.onnx"]) < 1.0, (name, emulated, built)
        assert any("Haswell" in note for note in result["machine_notes"])
    # The saturation is real there: the arm64 file in a default session loses about 20 dB.
    script = ("import sys, numpy as np, onnxruntime as ort; from edgekit.device.cpu import cpu_info\n"
              "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
              "x = np.load(sys.argv[2])['input'][:10]; r = np.load(sys.argv[3])['output'][:10].astype(float)\n"
              "y = np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i+1]})[0] for i in range(len(x))])\n"
              "print(10 * np.log10((r ** 2).sum() / ((y - r) ** 2).sum()))\n")
    folder = out / "arm64-onnx"
    done = subprocess.run([*haswell_python, "-c", script, folder / "model.int8.onnx", folder / "parity" / "inputs.npz",
                           folder / "parity" / "reference.npz"], capture_output=True, text=True, timeout=300)
    default_snr = float(done.stdout.strip())
    arm = next(a for a in read_manifest(folder)["artifacts"] if a["file"] == "model.int8.onnx")
    assert default_snr < arm["parity"]["outputs"]["output"]["snr_db"] - 10, default_snr
