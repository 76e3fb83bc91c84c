"""`edgekit check`: re-run the parity gate on a finished build folder.

The folder may come from anywhere, so nothing in it decides how it is judged: tolerances come from the
profile the user names (or the built-in one the manifest names), every path stays inside the folder, and
the whole release has one digest a CI can pin.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import package, targets
from .output_kinds import OutputKind
from .parity import ParityResult
from .spec import TensorSpec
from .targets import Runtime, Target, Tolerance
from .verify import verify


@dataclass
class CheckResult:
    records: list[dict[str, Any]]  # one per artifact: file, bytes, precision, recomputed parity
    failures: list[dict[str, str]]  # conversions the build recorded as failed, and problems of the release
    digest: str  # of the release as it is now
    judged_by: str  # where the tolerances came from, in words

    @property
    def passed(self) -> bool:
        return not self.failures and all(r["parity"]["passed"] for r in self.records)


def check(folder: Path, profile: str | None = None, recorded_tolerances: bool = False,
          expect: str | None = None) -> CheckResult:
    """Every check recomputed, nothing read back: files against their recorded sha256, parity against the
    recorded reference outputs within the profile's tolerances, and (with `expect`) the release digest."""
    manifest = package.read_manifest(folder)
    target = None if recorded_tolerances and not profile else \
        targets.for_build(manifest["target"].get("builtin"), profile, str(folder))
    runtime = target.runtime if target else Runtime()
    hashes = package.listed_hashes(folder, manifest)  # each file read once, for the digest and the checks
    digest = package.release_digest(manifest, hashes)
    failures = list(manifest["failures"])
    if not manifest["artifacts"]:
        failures.append({"stage": "check", "format": "-", "error": "the manifest lists no artifacts"})
    if expect and expect != digest:
        failures.append({"stage": "check", "format": "-", "error": f"release digest {digest} is not the expected "
                                                                   f"{expect}: the folder changed since it was pinned"})
    evidence_problem = _evidence_problem(manifest, hashes)
    if evidence_problem is None:
        names = [spec["name"] for spec in manifest["model_io"]["inputs"]]
        inputs, labels, reference = package.read_parity_data(folder, names)
    records = []
    for entry in manifest["artifacts"]:
        path = package.inside(folder, entry["file"], "artifacts[].file")
        if evidence_problem:
            parity = ParityResult(error=evidence_problem)
        elif hashes[entry["file"]] == "missing":
            parity = ParityResult(error="the file is missing")
        elif hashes[entry["file"]] != entry["sha256"]:
            parity = ParityResult(error="its sha256 differs from the manifest: the file changed after the build")
        else:
            tolerance = judged_by(manifest, entry, target)
            parity = verify(path, entry["format"], runtime, artifact_io(entry), inputs, reference, tolerance, labels,
                            output_kinds(manifest)).parity
        size = path.stat().st_size if path.is_file() else 0
        records.append({"file": entry["file"], "bytes": size, "precision": entry["precision"],
                        "parity": {**parity.to_dict(), "failures": parity.failures()}})
    source = "the tolerances recorded in the folder" if target is None else f"profile {target.source}"
    return CheckResult(records, failures, digest, source)


def output_kinds(manifest: dict[str, Any]) -> dict[str, OutputKind]:
    return {spec["name"]: OutputKind.from_dict(spec["kind"]) for spec in manifest["model_io"]["outputs"]
            if "kind" in spec}


def judged_by(manifest: dict[str, Any], entry: dict[str, Any], target: Target | None) -> dict[str, Tolerance]:
    """The limits each output of an artifact is judged by: the profile's, or (target None) the ones recorded."""
    names = [spec["name"] for spec in manifest["model_io"]["outputs"]]
    if target is None:
        recorded = entry.get("output_tolerances") or {}
        return {name: Tolerance(**recorded.get(name, entry["tolerance"])) for name in names}
    kinds = output_kinds(manifest)
    return {name: target.output_tolerance(entry["precision"], name, kinds[name].kind if name in kinds else "values")
            for name in names}


def artifact_io(entry: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An artifact's inputs and outputs as its manifest entry records them (names, runtime names, layouts)."""
    return tuple([TensorSpec.from_dict(d) for d in entry[kind]] for kind in ("inputs", "outputs"))


def _evidence_problem(manifest: dict[str, Any], hashes: dict[str, str]) -> str | None:
    """The held-out inputs and reference outputs must be exactly the ones the build recorded."""
    for key in ("inputs", "reference_outputs"):
        record = manifest["evaluation"][key]
        if hashes[record["file"]] != record["sha256"]:
            return f"parity data {record['file']} is missing or changed since the build"
    return None
