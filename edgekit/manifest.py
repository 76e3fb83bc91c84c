"""manifest.json as a typed object: what a build records, what bench adds, what check, bench and debug read.

`Manifest.from_dict` validates a document against the JSON Schema (manifest_schema) before it reads a
value; `to_dict` writes it. The parts code reads or edits are typed (artifacts, tensors, failures, the
target); free-form records (the recipe, the profile, versions, per-layer rows) stay JSON objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .manifest_schema import validate
from .output_kinds import OutputKind
from .spec import TensorSpec

SCHEMA = 1


@dataclass
class FileRecord:
    file: str  # relative to the build folder
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileRecord":
        return cls(data["file"], data["sha256"], data["bytes"])


@dataclass
class Failure:
    stage: str
    format: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class ArtifactEntry:
    """One shipped file: what it is, how it is fed, how it was judged and what it measured."""
    file: FileRecord
    format: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tolerance: dict[str, float | None]
    parity: dict[str, Any]  # ParityResult.to_dict() plus its failures and hints
    runtime: dict[str, Any] = field(default_factory=dict)
    verified_on: str | None = None
    output_tolerances: dict[str, dict[str, float | None]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # what the stage that made it recorded
    layers: list[dict[str, Any]] | None = None  # per-layer SNR against the float ONNX
    first_divergence: str | None = None
    trtexec: dict[str, Any] | None = None
    benchmarks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.file.file

    def record_benchmark(self, record: dict[str, Any]) -> None:
        """Keep one benchmark per runner: a new run on the same runner replaces the old one."""
        self.benchmarks = [b for b in self.benchmarks if b["runner"] != record["runner"]] + [record]

    def to_dict(self, benchmarks: bool = True) -> dict[str, Any]:
        data = {**self.file.to_dict(), "format": self.format, "precision": self.precision,
                "inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs],
                "runtime": self.runtime, "verified_on": self.verified_on, "tolerance": self.tolerance,
                "output_tolerances": self.output_tolerances, "parity": self.parity, "details": self.details}
        if self.layers is not None:  # measured: first_divergence None then means no layer diverged
            data.update(layers=self.layers, first_divergence=self.first_divergence)
        if self.trtexec is not None:
            data["trtexec"] = self.trtexec
        if benchmarks and self.benchmarks:
            data["benchmarks"] = self.benchmarks
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArtifactEntry":
        return cls(FileRecord.from_dict(data), data["format"], data["precision"],
                   [TensorSpec.from_dict(s) for s in data["inputs"]], [TensorSpec.from_dict(s) for s in data["outputs"]],
                   data["tolerance"], data["parity"], data.get("runtime", {}), data.get("verified_on"),
                   data.get("output_tolerances", {}), data.get("details", {}), data.get("layers"),
                   data.get("first_divergence"), data.get("trtexec"), data.get("benchmarks", []))


@dataclass
class TargetRecord:
    name: str
    description: str
    builtin: str | None  # the built-in profile it was built with: what check and bench judge by
    profile: dict[str, Any]  # the whole profile, for the reader (never read back to decide anything)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TargetRecord":
        return cls(data["name"], data.get("description", ""), data.get("builtin"), data["profile"])


@dataclass
class Manifest:
    created: str
    target: TargetRecord
    source_model: dict[str, Any]  # reference, kind, sha256, files
    inputs: list[TensorSpec]  # the model's inputs and outputs, in the reference layout
    outputs: list[TensorSpec]
    output_kinds: dict[str, OutputKind]  # how each output is compared; an output without one is "values"
    evaluation: dict[str, Any]  # source, samples, labeled
    parity_inputs: FileRecord  # the held-out inputs and reference outputs check recomputes parity with
    parity_reference: FileRecord
    artifacts: list[ArtifactEntry]
    failures: list[Failure]
    versions: dict[str, str]
    preprocessing: dict[str, Any] | None = None
    labels: list[str] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)  # the engine that made the reference outputs
    pruning: dict[str, Any] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    precision_plan: dict[str, Any] | None = None
    layerwise: dict[str, Any] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # formats this build cannot make, and why

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def passed(self) -> bool:
        return not self.failures and all(entry.parity["passed"] for entry in self.artifacts)

    def artifact(self, file: str) -> ArtifactEntry | None:
        return next((entry for entry in self.artifacts if entry.name == file), None)

    def to_dict(self, benchmarks: bool = True) -> dict[str, Any]:
        """The JSON document; without `benchmarks`, what the release digest covers (bench adds them later)."""
        return {
            "schema": SCHEMA,
            "created": self.created,
            "target": self.target.to_dict(),
            "source_model": self.source_model,
            "model_io": {"inputs": [s.to_dict() for s in self.inputs],
                         "outputs": [{**s.to_dict(), **({"kind": self.output_kinds[s.name].to_dict()}
                                                        if s.name in self.output_kinds else {})}
                                     for s in self.outputs]},
            "preprocessing": self.preprocessing,
            "labels": self.labels,
            "calibration": self.calibration,
            "warnings": self.warnings,
            "evaluation": {**self.evaluation, "inputs": self.parity_inputs.to_dict(),
                           "reference_outputs": self.parity_reference.to_dict()},
            "reference": self.reference,
            "pruning": self.pruning,
            "artifacts": [entry.to_dict(benchmarks) for entry in self.artifacts],
            "failures": [failure.to_dict() for failure in self.failures],
            "recipe": self.recipe,
            "versions": self.versions,
            "gpu": self.gpu,
            "precision_plan": self.precision_plan,
            "layerwise": self.layerwise,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Manifest":
        """A manifest read from a build folder; a UserError naming the key when it does not fit the schema."""
        validate(data, where)
        io, evaluation = data["model_io"], data["evaluation"]
        outputs = [TensorSpec.from_dict({k: v for k, v in spec.items() if k != "kind"}) for spec in io["outputs"]]
        return cls(
            created=data.get("created", ""),
            target=TargetRecord.from_dict(data["target"]),
            source_model=data["source_model"],
            inputs=[TensorSpec.from_dict(spec) for spec in io["inputs"]],
            outputs=outputs,
            output_kinds={spec["name"]: OutputKind.from_dict(spec["kind"]) for spec in io["outputs"] if "kind" in spec},
            evaluation={k: v for k, v in evaluation.items() if k not in ("inputs", "reference_outputs")},
            parity_inputs=FileRecord.from_dict(evaluation["inputs"]),
            parity_reference=FileRecord.from_dict(evaluation["reference_outputs"]),
            artifacts=[ArtifactEntry.from_dict(entry) for entry in data["artifacts"]],
            failures=[Failure(**failure) for failure in data["failures"]],
            versions=data["versions"],
            preprocessing=data.get("preprocessing"),
            labels=data.get("labels"),
            calibration=data.get("calibration", {}),
            warnings=data.get("warnings", []),
            reference=data.get("reference", {}),
            pruning=data.get("pruning"),
            recipe=data.get("recipe", {}),
            gpu=data.get("gpu"),
            precision_plan=data.get("precision_plan"),
            layerwise=data.get("layerwise"),
            skipped=data.get("skipped", []),
        )
