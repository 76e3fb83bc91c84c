"""Parity metrics on arrays whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.parity import compare, output_metrics
from edgekit.targets import Tolerance


def test_identical_outputs():
    ref = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    metrics = output_metrics(ref, ref.copy())
    assert metrics["max_abs_error"] == 0 and metrics["cosine"] == pytest.approx(1.0)
    assert math.isinf(metrics["snr_db"]) and metrics["top1_agreement"] == 1.0


def test_known_noise_level_and_errors():
    ref = np.array([[3.0, 4.0], [0.0, 5.0]])
    out = ref + np.array([[0.3, 0.0], [0.0, -0.4]])
    metrics = output_metrics(ref, out)
    assert metrics["max_abs_error"] == pytest.approx(0.4)
    assert metrics["mean_abs_error"] == pytest.approx(0.175)
    assert metrics["max_rel_error"] == pytest.approx(0.4 / 5.0)
    assert metrics["snr_db"] == pytest.approx(10 * np.log10(50 / 0.25))
    assert metrics["top1_agreement"] == 1.0


def test_top1_agreement_and_accuracy_drop():
    ref = np.eye(4)[[0, 1, 2, 3]] * 5.0
    out = np.eye(4)[[0, 1, 2, 0]] * 5.0  # last sample flips from class 3 to class 0
    labels = np.array([0, 1, 2, 3])
    result = compare({"logits": ref}, {"logits": out}, Tolerance(min_top1_agreement=0.9, max_accuracy_drop=1.0), labels)
    assert result.outputs["logits"]["top1_agreement"] == 0.75
    assert (result.reference_accuracy, result.accuracy) == (100.0, 75.0)
    assert not result.passed
    failures = result.failures()
    assert any("top1_agreement (logits) = 0.75" in f for f in failures)
    assert any("accuracy_drop" in f and "25" in f for f in failures)


def test_nan_output_fails_every_check():
    ref = np.ones((2, 3))
    out = ref.copy()
    out[1, 1] = np.nan
    result = compare({"o": ref}, {"o": out}, Tolerance(max_abs_error=1.0, min_cosine=0.5))
    assert not result.passed and len(result.failures()) == 2


def test_shape_or_count_mismatch_is_an_error_verdict():
    ref = {"o": np.ones((2, 3))}
    assert "shape" in compare(ref, {"o": np.ones((2, 4))}, Tolerance()).error
    assert "outputs" in compare(ref, {"a": np.ones((2, 3)), "b": np.ones(1)}, Tolerance()).error


def test_outputs_are_compared_by_name_not_position():
    """Two outputs of one shape in another order still pair with the reference's of the same name."""
    boxes, scores = np.arange(12.0).reshape(2, 6), np.linspace(0.1, 0.9, 12).reshape(2, 6)
    result = compare({"boxes": boxes, "scores": scores}, {"scores": scores, "boxes": boxes},
                     Tolerance(max_abs_error=0.0))
    assert result.passed and result.outputs["boxes"]["max_abs_error"] == 0.0
    assert "not the reference's" in compare({"boxes": boxes}, {"output_0": boxes}, Tolerance()).error
