"""`edgekit check`: re-run the parity gate on a finished build folder, from its manifest alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import package, targets
from .output_kinds import OutputKind
from .parity import ParityResult
from .sources import sha256_file
from .spec import TensorSpec
from .targets import Tolerance
from .verify import verify


def check(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One record per artifact (file, bytes, parity), every check recomputed, nothing read back; and the
    conversions the build recorded as failed (a release with a missing format does not pass)."""
    manifest = package.read_manifest(folder)
    runtime = targets.from_dict(manifest["target"]["profile"], str(folder)).runtime
    evidence_problem = _evidence_problem(folder, manifest)
    if evidence_problem is None:
        names = [spec["name"] for spec in manifest["model_io"]["inputs"]]
        inputs, labels, reference = package.read_parity_data(folder, names)
    records = []
    for entry in manifest["artifacts"]:
        path = folder / entry["file"]
        if evidence_problem:
            parity = ParityResult(error=evidence_problem)
        elif not path.is_file():
            parity = ParityResult(error="the file is missing")
        elif sha256_file(path) != entry["sha256"]:
            parity = ParityResult(error="its sha256 differs from the manifest: the file changed after the build")
        else:
            tolerance, kinds = judged_by(manifest, entry)
            parity = verify(path, entry["format"], runtime, artifact_io(entry), inputs, reference, tolerance, labels,
                            kinds).parity
        size = path.stat().st_size if path.is_file() else 0
        records.append({"file": entry["file"], "bytes": size, "precision": entry["precision"],
                        "parity": {**parity.to_dict(), "failures": parity.failures()}})
    return records, manifest["failures"]


def judged_by(manifest: dict[str, Any], entry: dict[str, Any]) -> tuple[Tolerance | dict[str, Tolerance],
                                                                       dict[str, OutputKind]]:
    """The recorded limits of an artifact (per output where the build set them) and the kind of each output."""
    per_output = entry.get("output_tolerances")
    tolerance = ({name: Tolerance(**limits) for name, limits in per_output.items()} if per_output
                 else Tolerance(**entry["tolerance"]))
    kinds = {spec["name"]: OutputKind.from_dict(spec["kind"]) for spec in manifest["model_io"]["outputs"]
             if "kind" in spec}
    return tolerance, kinds


def artifact_io(entry: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An artifact's inputs and outputs as its manifest entry records them (names, runtime names, layouts)."""
    return tuple([TensorSpec.from_dict(d) for d in entry[kind]] for kind in ("inputs", "outputs"))


def _evidence_problem(folder: Path, manifest: dict[str, Any]) -> str | None:
    """The held-out inputs and reference outputs must be exactly the ones the build recorded."""
    for key in ("inputs", "reference_outputs"):
        record = manifest["evaluation"][key]
        path = folder / record["file"]
        if not path.is_file() or sha256_file(path) != record["sha256"]:
            return f"parity data {record['file']} is missing or changed since the build"
    return None
