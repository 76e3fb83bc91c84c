"""Energy per inference: an estimate from MACs by precision and bytes moved (Horowitz, ISSCC 2014, 45 nm),
labeled as an estimate everywhere it appears."""
from __future__ import annotations

import json

import pytest

from conftest import read_manifest
from edgekit.energy import estimate
from edgekit.manifest import Manifest
from edgekit.report import summary_table


def estimates(folder) -> dict[str, dict]:
    return {a["file"]: a["details"]["energy_estimate"] for a in read_manifest(folder)["artifacts"]}


def test_every_artifact_has_an_estimate_and_int8_costs_less_than_fp32(example_build):
    energy = estimates(example_build / "arm64")
    for value in energy.values():
        assert value["kind"] == "estimate" and "not a device measurement" in value["basis"]
        assert value["microjoules"] == pytest.approx(sum(value["parts_microjoules"].values()), abs=0.01)
    for fmt in ("onnx", "tflite"):
        assert energy[f"model.int8.{fmt}"]["microjoules"] < 0.5 * energy[f"model.fp32.{fmt}"]["microjoules"]
    # weights-only fp16 halves the weight traffic and keeps float32 arithmetic; dynamic-range INT8 keeps
    # float activations between layers: both sit between full INT8 and fp32
    tflite = {p: energy[f"model.{p}.tflite"]["microjoules"] for p in ("int8", "dynamic_int8", "fp16", "fp32")}
    assert tflite["int8"] < tflite["dynamic_int8"] < tflite["fp32"] and tflite["fp16"] < tflite["fp32"]
    assert energy["model.fp16.tflite"]["macs"] == {"fp32": energy["model.fp32.tflite"]["macs"]["fp32"]}


def test_the_estimate_prices_the_published_figures(example_build):
    """fp32: 4.6 pJ per MAC, weights once from DRAM (1.95 nJ per 64 bits), activations written and read
    through a 1 MB cache (100 pJ per 64 bits)."""
    document = json.loads((example_build / "arm64" / "manifest.json").read_text())
    manifest = Manifest.from_dict(document, "manifest.json")
    hub = manifest.artifact("model.fp32.onnx")
    parts = hub.details["energy_estimate"]["parts_microjoules"]
    assert parts["arithmetic"] == pytest.approx(hub.details["macs"] * 4.6e-6, rel=1e-3)
    assert parts["weights"] == pytest.approx(hub.details["parameters"] * 4 * 1950 / 8 * 1e-6, rel=1e-3)
    assert parts["activations"] == pytest.approx(hub.details["activation_bytes"] * 2 * 12.5e-6, rel=1e-3)
    # The layers a precision plan keeps float are priced at fp32 in an INT8 artifact.
    int8 = manifest.artifact("model.int8.onnx")
    kept = estimate(int8, hub.details, float_macs=1_000_000)
    assert kept["macs"] == {"int8": hub.details["macs"] - 1_000_000, "fp32": 1_000_000}
    assert kept["microjoules"] == pytest.approx(int8.details["energy_estimate"]["microjoules"] + 1_000_000 * 4.3e-6,
                                                rel=1e-3)


def test_the_summary_and_report_call_it_an_estimate(example_build):
    folder = example_build / "arm64"
    text = summary_table(read_manifest(folder)["artifacts"], [])
    assert "energy est. µJ" in text and "relative between artifacts, not a measurement" in text
    page = (folder / "report.html").read_text()
    assert "<figure id='fig-energy'" in page and "an estimate, not a measurement" in page
