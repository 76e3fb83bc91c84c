"""manifest.json as a typed object: what a build writes reads back into the same document, key for key."""
from __future__ import annotations

import json

import pytest

from edgekit.errors import UserError
from edgekit.manifest import Manifest


@pytest.mark.parametrize("target", ["arm64", "x86_64"])
def test_a_built_manifest_round_trips_exactly(example_build, target):
    document = json.loads((example_build / target / "manifest.json").read_text())
    manifest = Manifest.from_dict(document, "manifest.json")
    assert manifest.to_dict() == document and list(manifest.to_dict()) == list(document)
    assert manifest.passed and manifest.input_names == ["input"]
    assert [entry.name for entry in manifest.artifacts] == [a["file"] for a in document["artifacts"]]


def test_a_new_benchmark_replaces_the_same_runners_and_stays_out_of_the_digest_view(example_build):
    manifest = Manifest.from_dict(json.loads((example_build / "arm64" / "manifest.json").read_text()), "m")
    entry = manifest.artifacts[0]
    entry.benchmarks = []  # without the build's own host timing
    for runner, p50 in (("native", 1.0), ("qemu", 9.0), ("native", 2.0)):
        entry.record_benchmark({"runner": runner, "latency_ms": {"p50": p50}})
    assert [(b["runner"], b["latency_ms"]["p50"]) for b in entry.benchmarks] == [("qemu", 9.0), ("native", 2.0)]
    assert "benchmarks" in manifest.to_dict()["artifacts"][0]
    assert "benchmarks" not in manifest.to_dict(benchmarks=False)["artifacts"][0]


def test_a_document_that_does_not_fit_is_refused_with_its_key(example_build):
    document = json.loads((example_build / "arm64" / "manifest.json").read_text())
    document["artifacts"][1]["precision"] = "int3"
    with pytest.raises(UserError, match=r"key 'artifacts\[1\]\.precision'"):
        Manifest.from_dict(document, "manifest.json")
