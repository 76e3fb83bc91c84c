"""Distillation into a student: the user's smaller network learns the model on unlabeled images, under the
budget flags, and is then exported, quantized and verified like any model."""
from __future__ import annotations

import pytest

from conftest import one_line_error, read_manifest, run_cli

pytest.importorskip("torch")
STUDENT = "edgekit.example.model:make_student"


@pytest.mark.slow
def test_the_example_distils_into_a_student_at_a_quarter_of_its_macs(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("build", "--target", "x86_64", "--student", STUDENT, "--distill-steps", "300",
                   "--min-agreement", "0.9", "--out", out) == 0
    err = capsys.readouterr().err
    assert f"distilled (student {STUDENT}, 300 steps): MACs 6,092,032 -> 1,523,968 (0.25x)" in err
    manifest = read_manifest(out / "x86_64")
    report = manifest["pruning"]
    assert report["config"]["student"] == STUDENT and report["macs_ratio"] == pytest.approx(0.25, abs=0.01)
    (step,) = report["steps"]
    assert step["step"] == "distill" and [q["after"] for q in step["quality"]] == ["untrained student", "kd"]
    untrained, trained = step["quality"]
    assert untrained["top1_agreement"] < 0.3 <= 0.9 <= trained["top1_agreement"]  # it learned the teacher
    assert report["final"]["accuracy"] >= 90.0 and report["original"]["accuracy"] == pytest.approx(99.72, abs=0.01)
    # The teacher is timed as fp32 ONNX on the build host, beside the student's own fp32 ONNX.
    student_onnx = next(a for a in manifest["artifacts"] if a["file"] == "model.fp32.onnx")
    teacher = report["original_host_latency"]
    assert teacher["latency_ms"]["p50"] > 0 and teacher["model"]["macs"] > 3.5 * student_onnx["details"]["macs"]
    # The student is the reference its artifacts are verified against; its own agreement with the teacher
    # is reported beside it.
    assert manifest["reference"]["accuracy"] == pytest.approx(report["final"]["accuracy"], abs=0.01)
    for artifact in manifest["artifacts"]:
        assert artifact["parity"]["passed"]
        assert artifact["parity"]["accuracy"] >= report["final"]["accuracy"] - 1.0


def test_a_student_outside_the_budget_is_refused(tmp_path, capsys):
    code = run_cli("build", "--target", "x86_64", "--student", STUDENT, "--distill-steps", "5",
                   "--min-agreement", "0.99", "--out", tmp_path / "out", "--quiet")
    one_line_error(capsys, code, 2, "outside the budget", "distill.steps")
    assert not (tmp_path / "out").exists()


def test_a_student_with_other_outputs_or_beside_pruning_is_refused(tmp_path, capsys):
    factory = tmp_path / "five.py"
    factory.write_text("from edgekit.example.model import MobileNetV2Style\n\n\n"
                       "def make():\n    return MobileNetV2Style(num_classes=5)\n")
    code = run_cli("build", "--target", "x86_64", "--student", f"{factory}:make", "--distill-steps", "5",
                   "--out", tmp_path / "out", "--quiet")
    one_line_error(capsys, code, 2, "the same outputs")
    code = run_cli("build", "--target", "x86_64", "--student", STUDENT, "--distill-steps", "5", "--prune", "0.5",
                   "--out", tmp_path / "out", "--quiet")
    one_line_error(capsys, code, 2, "build the student first")
    assert not (tmp_path / "out").exists()
