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
from .error_split import ConversionJudge, float32_first
from .manifest import ArtifactEntry, Failure, Manifest
from .parity import ParityResult
from .targets import Runtime, Target, Tolerance
from .verify import verify


@dataclass
class CheckResult:
    records: list[dict[str, Any]]  # one per artifact: file, bytes, precision, recomputed parity
    failures: list[Failure]  # conversions the build recorded as failed, and problems of the release
    digest: str  # of the release as it is now
    judged_by: str  # where the tolerances came from, in words
    machine_notes: list[str]  # artifacts whose verdict was computed here on other kernels than at the build

    @property
    def passed(self) -> bool:
        return not self.failures and all(r["parity"]["passed"] for r in self.records)


def check(folder: Path, profile: str | None = None, recorded_tolerances: bool = False,
          expect: str | None = None) -> CheckResult:
    """Every check recomputed, nothing read back: files against their recorded sha256, parity against the
    recorded reference outputs within the profile's tolerances, and (with `expect`) the release digest."""
    manifest = package.read_manifest(folder)
    target = None if recorded_tolerances and not profile else \
        targets.for_build(manifest.target.builtin, profile, str(folder))
    runtime = target.runtime if target else Runtime(cpu_floor=_recorded_floor(manifest))
    hashes = package.listed_hashes(folder, manifest)  # each file read once, for the digest and the checks
    digest = package.release_digest(manifest, hashes)
    failures = list(manifest.failures)
    if not manifest.artifacts:
        failures.append(Failure("check", "-", "the manifest lists no artifacts"))
    if expect and expect != digest:
        failures.append(Failure("check", "-", f"release digest {digest} is not the expected {expect}: the folder "
                                              f"changed since it was pinned"))
    evidence_problem = _evidence_problem(manifest, hashes)
    if evidence_problem is None:
        inputs, labels, reference = package.read_parity_data(folder, manifest.input_names)
    verdicts, differing, conversions = {}, {}, ConversionJudge()
    for entry in float32_first(manifest.artifacts, lambda e: e.precision):
        path = package.inside(folder, entry.name, "artifacts[].file")
        outputs = {}
        if evidence_problem:
            parity = ParityResult(error=evidence_problem)
        elif hashes[entry.name] == "missing":
            parity = ParityResult(error="the file is missing")
        elif hashes[entry.name] != entry.file.sha256:
            parity = ParityResult(error="its sha256 differs from the manifest: the file changed after the build")
        else:
            checked = verify(path, entry.format, runtime, (entry.inputs, entry.outputs), inputs, reference,
                             judged_by(manifest, entry, target), labels, manifest.output_kinds)
            parity, outputs, kernels = checked.parity, checked.values, checked.runtime.get("kernels")
            paths = kernels and kernel_paths(entry, kernels)
            if paths:
                differing.setdefault(paths, []).append(entry.name)
        conversions.add(entry.name, entry.format, entry.precision, parity, outputs)
        verdicts[entry.name] = path, parity
    records = []
    for entry in manifest.artifacts:  # in the manifest's order
        path, parity = verdicts[entry.name]
        size = path.stat().st_size if path.is_file() else 0
        records.append({"file": entry.name, "bytes": size, "precision": entry.precision,
                        "parity": {**parity.to_dict(), "failures": parity.failures()}})
    source = "the tolerances recorded in the folder" if target is None else f"profile {target.source}"
    notes = [f"{', '.join(names)}: {then}; checked here on {now}" for (then, now), names in differing.items()]
    return CheckResult(records, failures, digest, source, notes)


def kernel_paths(entry: ArtifactEntry, kernels: dict[str, Any]) -> tuple[str, str] | None:
    """What the build recorded computing an artifact and what computed it here, in words, where they differ."""
    recorded = entry.runtime.get("kernels") if isinstance(entry.runtime, dict) else None
    now = _kernel_words(kernels)
    if not isinstance(recorded, dict):
        return "the build recorded no kernel path", now
    then = _kernel_words(recorded)
    return None if then == now else (f"built on {then}", now)


def _kernel_words(kernels: dict[str, Any]) -> str:
    """A kernel path in words; a recorded one is data from the folder, so only short plain text is kept."""
    def text(value: Any) -> str:
        return "".join(c for c in str(value)[:80] if c.isprintable())

    isa = kernels.get("isa") if isinstance(kernels.get("isa"), list) else []
    words = f"{text(kernels.get('cpu_model'))} ({', '.join(text(f) for f in isa[:12]) or 'no listed flags'})"
    if "int8_accumulation" in kernels:
        config = kernels.get("session_config") if isinstance(kernels.get("session_config"), dict) else {}
        words += f", ONNX Runtime INT8 in {text(kernels['int8_accumulation'])}"
        words += "".join(f", {text(k)}={text(v)}" for k, v in list(config.items())[:4])
    return words


def _recorded_floor(manifest: Manifest) -> str | None:
    """The CPU floor the build's profile named, where it is one edgekit knows, else its architecture's default:
    what --recorded-tolerances judges INT8 kernels by, with the rest of the recorded limits."""
    from .int8_kernels import FLOORS, default_floor

    profile = manifest.target.profile if isinstance(manifest.target.profile, dict) else {}
    def section(key: str) -> dict:
        return profile.get(key) if isinstance(profile.get(key), dict) else {}

    floor = section("runtime").get("cpu_floor")
    return floor if floor in FLOORS else default_floor(section("bench").get("arch"), bool(profile.get("gpu")))


def judged_by(manifest: Manifest, entry: ArtifactEntry, target: Target | None) -> dict[str, Tolerance]:
    """The limits each output of an artifact is judged by: the profile's, or (target None) the ones recorded."""
    names = [spec.name for spec in manifest.outputs]
    if target is None:
        return {name: Tolerance(**entry.output_tolerances.get(name, entry.tolerance)) for name in names}
    kinds = manifest.output_kinds
    return {name: target.output_tolerance(entry.precision, name, kinds[name].kind if name in kinds else "values")
            for name in names}


def _evidence_problem(manifest: Manifest, hashes: dict[str, str]) -> str | None:
    """The held-out inputs and reference outputs must be exactly the ones the build recorded."""
    for record in (manifest.parity_inputs, manifest.parity_reference):
        if hashes[record.file] != record.sha256:
            return f"parity data {record.file} is missing or changed since the build"
    return None
