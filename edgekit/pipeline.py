"""`edgekit build`: load, export, quantize, verify and package, one folder per target."""
from __future__ import annotations

import copy
import dataclasses
import datetime
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, formats, package, resources, sources, targets
from .data import BuildData, load_build_data
from .energy import estimate_all as estimate_energy
from .error_split import ConversionJudge, float32_first
from .errors import UserError, first_line
from .gpu import gpu_status, require_gpu, trtexec_command, verified_on
from .html_report import write_report
from .isolation import Converters
from .manifest import ArtifactEntry, Failure, Manifest, TargetRecord
from .output_kinds import OutputKind
from .parity import accuracy, classifier_output, range_problems
from .precision_plan import make_plan
from .recipe import Recipe
from .report import Progress
from .runners import open_runner, run_dataset, runtime_errors
from .sources import SourceModel, sha256_file
from .spec import TensorSpec
from .speed import compare_with_fp32, host_record, host_timing
from .cache import StageCache, dataset_hash, default_root, model_fingerprint
from .stages import Artifact, StageContext, validate_order
from .stages.export_onnx import EXPORT_VERSION, export_onnx
from .stages.runner import StageRunner
from .targets import Target, Tolerance
from .verify import Verification, verify


LAYERWISE_SAMPLES = 16  # held-out samples for the per-layer SNR every build records, at most
# Bytes of intermediate tensors one capture may hold (a few captures are held at once): a 640x640 detector
# gets fewer samples than a 32x32 classifier, so its memory stays bounded.
LAYERWISE_CAPTURE_BYTES = 256 << 20
ORIGINAL_FINGERPRINT_SAMPLES = 8  # the original model's outputs on these key its export in the stage cache


@dataclass
class BuildInputs:
    """What every target's build shares: the model, its data and the reference outputs."""
    recipe: Recipe
    source: SourceModel
    data: BuildData
    reference: dict[str, np.ndarray]  # the source model's outputs on the held-out inputs
    reference_engine: dict[str, Any]
    pruning: dict[str, Any] | None  # the prune stage's report; the pruned model is the reference
    original: SourceModel | None  # the model before pruning, weight sharing or distillation; None without them
    scratch: Path  # where the float ONNX hubs are exported
    cache: StageCache
    converters: Converters
    child_modules: list[str]  # what the formats' conversion children import
    hubs: dict[int, Artifact] = dataclasses.field(default_factory=dict)  # per opset, shared by its targets
    originals: dict[int, Artifact] = dataclasses.field(default_factory=dict)  # the same for `original`
    cached_hubs: set[int] = dataclasses.field(default_factory=set)  # the opsets whose hub came from the cache

    @property
    def model_io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Names, shapes and layouts every artifact's inputs and outputs are fed and compared in."""
        batch = self.source.inputs[0].shape[0]
        return self.source.inputs, [dataclasses.replace(spec, shape=(batch, *self.reference[spec.name].shape[1:]))
                                    for spec in self.source.outputs]


@dataclass
class TargetResult:
    target: str
    manifest: Manifest
    folder: Path | None  # None when the build failed parity and was not packaged
    archive: Path | None
    digest: str | None  # package.release_digest of the published folder, for `edgekit check --expect`
    cached: list[str] = dataclasses.field(default_factory=list)  # stages whose artifacts came from the cache
    benchmarks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.manifest.passed


class ParityFailed(Exception):
    """Raised inside the staging folder so that a failing target is not published."""

    def __init__(self, manifest: Manifest):
        super().__init__("parity failed")
        self.manifest = manifest


def build(recipe: Recipe, progress: Progress, profiles: list[Target] | None = None) -> list[TargetResult]:
    """Build for `profiles`, or for the recipe's targets when none are given."""
    profiles = profiles or [targets.load(name) for name in recipe.targets]
    if recipe.require_gpu:
        for target in profiles:
            require_gpu(target)
    out = Path(recipe.out)
    package.check_writable(out)
    names = [target.name for target in profiles]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"target '{twice[0]}' is named twice: each target builds into its own folder OUT/<name>")
    for name in names:
        package.check_replaceable(out, name)
    resources.check(None, recipe, out)
    with progress.step("load model"):
        source = sources.load(recipe.model, recipe.weights, recipe.input_shape)
        resources.check(source, recipe, out)
    with progress.step("load calibration and held-out data"):
        data = load_build_data(recipe, source.inputs)
    for warning in data.warnings():
        progress.note(f"warning: {warning}")
    pruning, original = None, source
    # With a student, a prune section holding only the budget is the student's budget, not a prune request.
    prune_asked = recipe.prune is not None and (not recipe.distill or recipe.prune.ratio is not None
                                                or bool(recipe.prune.sparsity))
    compressing = recipe.cluster or prune_asked
    if recipe.distill and compressing:
        raise UserError("a student and pruning or weight sharing in one build: build the student first, then "
                        "prune it in a second build")
    if recipe.distill:
        with progress.step(f"distil into the student {recipe.distill.student}"):
            source, pruning = _distill(source, data, recipe)
    if compressing:
        with progress.step("prune, share weights and recover" if recipe.cluster else "prune and recover"):
            source, pruning = _prune(source, data, recipe, profiles)
    with progress.step(f"reference outputs on {len(data.evaluation)} held-out samples"):
        reference, engine = _reference_outputs(source, data.evaluation.inputs,
                                               f"the held-out data ({data.evaluation.source})")
    package.create_folder(out)
    results = []
    hubs = tempfile.TemporaryDirectory(prefix="edgekit-hub-")
    cache = StageCache(default_root() if recipe.cache else None)
    modules = sorted({module for target in profiles for name in target.formats
                      for module in formats.get(name).child_modules})
    with hubs, Converters() as converters:
        shared = BuildInputs(recipe, source, data, reference, engine, pruning, original if pruning else None,
                             Path(hubs.name), cache, converters, modules)
        for target in profiles:
            results.append(_publish(shared, target, out, progress))
    return results


def _publish(shared: BuildInputs, target: Target, out: Path, progress: Progress) -> TargetResult:
    """Build one target in staging and publish it, or, when it fails parity, publish nothing."""
    recipe = shared.recipe
    package.remove_stale_staging(out, target.name)
    try:
        with package.staging(out, target.name, lambda built: write_report(built, package.read_manifest(built))) \
                as folder:
            digest, cached = _build_target(shared, target, folder, progress)
            benchmarks = _bench(recipe.bench, target, folder, progress) if recipe.bench else []
            manifest = package.read_manifest(folder)
            if not manifest.passed and not recipe.keep_going:
                raise ParityFailed(manifest)
    except ParityFailed as failure:
        return TargetResult(target.name, failure.manifest, None, None, None)
    return TargetResult(target.name, manifest, out / target.name, out / f"{target.name}.tar.gz", digest, cached,
                        benchmarks)


def _bench(request, target: Target, folder: Path, progress: Progress) -> list[dict[str, Any]]:
    from .bench import bench_folder

    runner = request.runner or target.bench.runner
    with progress.step(f"[{target.name}] bench on {runner}"):
        return bench_folder(folder, target, request.runner, request.runs, request.warmup, request.threads,
                            request.samples)


def _distill(source: SourceModel, data: BuildData, recipe: Recipe):
    """The student, trained from the source model, replaces it: it is what gets exported and the parity
    reference; its agreement with the teacher is in the report."""
    import hashlib
    import json

    from . import data as datasets
    from .stages.prune import PruneConfig, distill_student

    import torch

    from .stages.prune.config import SEED

    config = recipe.distill
    if not isinstance(source.module, torch.nn.Module) or isinstance(source.module, torch.jit.ScriptModule) \
            or len(source.inputs) != 1:
        raise UserError(f"distillation needs a plain torch.nn.Module teacher with one input, and {source.reference} "
                        f"is not: give the model as `file.py:factory --weights W`, or drop --student")
    torch.manual_seed(SEED)  # the student's initial weights, so the same build makes the same student
    student = sources.load(config.student, None, list(source.inputs[0].shape))
    if not isinstance(student.module, torch.nn.Module) or isinstance(student.module, torch.jit.ScriptModule) \
            or [s.shape for s in student.inputs] != [s.shape for s in source.inputs]:
        raise UserError(f"the student {config.student} must be a PyTorch factory (a torch.nn.Module) taking the "
                        f"teacher's input {list(source.inputs[0].shape)}")
    name = source.inputs[0].name
    if config.data:
        unlabeled = datasets.load(config.data, source.inputs, recipe.preprocess).inputs[name]
    elif recipe.calibration.data is None:
        raise UserError("distillation learns from unlabeled images, and --random-calib has none: pass --calib "
                        "or --distill-data")
    else:
        unlabeled = data.calibration.inputs[name]
    budget = recipe.prune or PruneConfig()
    result = distill_student(source.module, student.module, source.inputs[0].shape, config, budget, unlabeled,
                             (data.evaluation.inputs[name], data.evaluation.labels))
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    digest = hashlib.sha256(f"{source.sha256}{student.sha256}{settings}".encode()).hexdigest()
    trained = dataclasses.replace(student, module=result.module, sha256=digest,
                                  reference=f"{student.reference} (distilled from {source.reference})")
    return trained, result.report


def _prune(source: SourceModel, data: BuildData, recipe: Recipe, profiles: list[Target]):
    """The pruned and recovered model replaces the source: it is what gets exported and the parity reference."""
    import hashlib
    import json
    import math

    from .stages.prune import PruneConfig, prune

    if source.kind != "torch":
        raise UserError(f"pruning needs the PyTorch model, and {source.reference} is ONNX: give the model as "
                        f"`file.py:factory --weights W`, or drop the prune settings")
    config = dataclasses.replace(recipe.prune or PruneConfig(), cluster=recipe.cluster)
    if len(source.inputs) > 1:
        raise UserError(f"pruning feeds the model one input, and {source.reference} takes {len(source.inputs)}: "
                        f"drop the prune settings")
    if recipe.calibration.data is None and config.recover:
        raise UserError("pruning recovery learns from the calibration images, and --random-calib has none: "
                        "pass --calib, or --recover none")
    if config.round_to == 1:
        config = dataclasses.replace(config, round_to=math.lcm(*(t.pruning.channel_multiple for t in profiles)))
    name = source.inputs[0].name
    result = prune(source.module, source.inputs[0].shape, config, data.calibration.inputs[name],
                   (data.evaluation.inputs[name], data.evaluation.labels))
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    digest = hashlib.sha256(f"{source.sha256}{settings}".encode()).hexdigest()
    pruned = dataclasses.replace(source, module=result.module, sha256=digest, reference=f"{source.reference} (pruned)")
    return pruned, result.report


def _reference_outputs(source: SourceModel, inputs: dict[str, np.ndarray], where: str = "the held-out data"
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The source model's outputs on `inputs` (`where`: what they are, for the error) and what ran it."""
    try:
        if source.kind == "torch":
            from .runners.torch_runner import TorchRunner

            runner = TorchRunner(source.module, source.inputs, source.outputs)
        else:
            from .runners.onnxrt import OnnxRuntimeRunner

            runner = OnnxRuntimeRunner(source.onnx_path, ["CPUExecutionProvider"])
        outputs = run_dataset(runner, inputs)
    except Exception as err:  # the user's model (its forward, or its graph in ONNX Runtime) may raise anything
        engine = "PyTorch" if source.kind == "torch" else "ONNX Runtime"
        detail = first_line(err)
        raise UserError(f"{engine} cannot run the source model {source.reference} on {where}: "
                        f"{detail[-300:]}") from None
    for name, value in outputs.items():
        if not np.isfinite(value).all():
            raise UserError(f"the source model itself outputs NaN/Inf for '{name}' on {where}: fix the model or "
                            f"the data's preprocessing")
    return outputs, runner.describe()


def _make_artifacts(shared: BuildInputs, target: Target, folder: Path, progress: Progress, label: str,
                    meanwhile: Callable[[Artifact, list[Artifact]], None]
                    ) -> tuple[list[Artifact], StageRunner, StageContext, dict[str, OutputKind]]:
    """The target's artifacts, the runner that made them (the conversions that failed: a format that cannot be
    made does not stop the others, its failure is reported and fails the build; the stages that came from the
    cache), the stages' context (the precision plan, the formats skipped) and the kind of each output.
    `meanwhile(hub, artifacts)` is given the artifacts that will ship, made so far, while a conversion in a
    child process goes on and this process has nothing else to do."""
    recipe, calibration = shared.recipe, shared.data.calibration
    chosen = {name: chosen_precisions(getattr(target, name).precisions, recipe.quantize, formats.get(name).precisions)
              for name in target.formats}
    hub, hub_step = _hub(shared, target.opset, folder, progress, label)  # every artifact is made from it
    kinds = {name: OutputKind.from_dict(data) for name, data in hub.metadata["output_kinds"].items()}
    scheme = target.quantization
    if recipe.calibration.method:
        scheme = dataclasses.replace(scheme, calibration=recipe.calibration.method)
    context = StageContext(hub, target, calibration, scheme, recipe.calibration.exclude_nodes, None, folder,
                           shared.source, converters=shared.converters)
    stages = formats.stages_for(context, chosen)
    validate_order(stages)
    for stage in stages:
        if stage.check:
            stage.check(context)
    if recipe.float_fallback and any("int8" in precisions for precisions in chosen.values()):
        how = "auto" if recipe.float_fallback == "auto" else "named layers"
        with progress.step(f"{label} precision plan ({how})"):
            # The search starts from the INT8 model that ships: the user's excluded nodes stay float in it too.
            excluded = scheme.exclude_nodes + recipe.calibration.exclude_nodes
            context.plan = make_plan(recipe.float_fallback, shared.source, hub,
                                     dataclasses.replace(scheme, exclude_nodes=excluded), calibration,
                                     target.tolerance("int8"))
        # A plan changes what some formats can make (dynamic-range TFLite cannot keep layers float).
        stages = formats.stages_for(context, chosen)
    runner = StageRunner(context, shared.cache, (package.versions(), sha256_file(hub.path),
                                                 dataset_hash(calibration)), progress, label)
    if target.opset in shared.cached_hubs:
        runner.cached.append(hub_step)
    shipped = {f"{name}:{precision}" for name, precisions in chosen.items() for precision in precisions}
    # A copy of what is made: the background stage adds to it meanwhile.
    runner.meanwhile = lambda: meanwhile(hub, [a for a in list(context.made.values()) if a.key in shipped])
    made = runner.run_all(stages)
    artifacts = [artifact for artifact in made if artifact.key in shipped]
    for artifact in [hub, *made]:  # the hub, and the files a format's own were saved from, when not listed
        if artifact.key not in shipped:
            artifact.path.unlink(missing_ok=True)
    return artifacts, runner, context, kinds


def _hub(shared: BuildInputs, opset: int, folder: Path, progress: Progress, label: str) -> tuple[Artifact, str]:
    """The float ONNX at `opset` in `folder` (exported once per build, or taken from the stage cache, and
    copied for each target) and the name of its step."""
    step = export_step(opset)
    if opset not in shared.hubs:
        workdir = shared.scratch / f"opset{opset}"
        workdir.mkdir()
        with progress.step(f"{label} {step}"):
            # Conversions will follow: a child imports their converter while this exports. (On a cache hit
            # they likely come from the cache too, and an import would only run beside the timing.)
            shared.hubs[opset], cached = _exported(shared, shared.source, shared.reference, opset, workdir,
                                                   lambda: shared.converters.warm(shared.child_modules))
            if cached:
                shared.cached_hubs.add(opset)
    exported = shared.hubs[opset]
    shutil.copyfile(exported.path, folder / exported.path.name)
    return (dataclasses.replace(exported, path=folder / exported.path.name, metadata=copy.deepcopy(exported.metadata)),
            step)


def _exported(shared: BuildInputs, source: SourceModel, reference: dict[str, np.ndarray], opset: int, workdir: Path,
              before_export: Callable[[], None] = lambda: None) -> tuple[Artifact, bool]:
    """`source` as float ONNX at `opset` in `workdir`, from the stage cache or exported; and whether it was
    cached. `reference`: its outputs on held-out inputs, part of the cache key."""
    key = shared.cache.key(package.versions(), export_step(opset), EXPORT_VERSION,
                           model_fingerprint(source, reference))
    made = shared.cache.load(key, workdir)
    if made is not None:
        return made[0], True
    before_export()
    made = [export_onnx(source, opset, workdir)]
    shared.cache.store(key, made)
    return made[0], False


def export_step(opset: int) -> str:
    return f"export ONNX (opset {opset}) and simplify"


def _original_timing(shared: BuildInputs, target: Target, entries: list[ArtifactEntry], progress: Progress,
                     label: str) -> dict[str, Any] | None:
    """Host latency of the model before pruning, weight sharing or distillation, as float ONNX in ONNX Runtime:
    what the compressed model's fp32 ONNX is compared with (speed.compare_with_fp32). None when the build
    compressed nothing, ships no fp32 ONNX, or the original cannot be exported or run (said so)."""
    if shared.original is None or not any(e.format == "onnx" and e.precision == "fp32" for e in entries):
        return None
    with progress.step(f"{label} host latency of the original (uncompressed) model as float ONNX"):
        try:
            if target.opset not in shared.originals:
                workdir = shared.scratch / f"original-opset{target.opset}"
                workdir.mkdir()
                inputs = {name: value[:ORIGINAL_FINGERPRINT_SAMPLES]
                          for name, value in shared.data.evaluation.inputs.items()}
                outputs, _ = _reference_outputs(shared.original, inputs)
                shared.originals[target.opset], _ = _exported(shared, shared.original, outputs, target.opset, workdir)
            exported = shared.originals[target.opset]
            runner = open_runner(exported.path, "onnx", target.runtime, None)
            timing = host_timing(runner, shared.data.evaluation.inputs)
        except (UserError, *runtime_errors()) as err:  # a measurement beside the build: without it, no comparison
            progress.note(f"{label} the original model was not timed, so nothing is compared with it: "
                          f"{first_line(err)}")
            return None
    return {**host_record(timing, runner.describe(), target.runtime.threads, target.bench.arch),
            "model": {"macs": exported.metadata["macs"], "nodes": exported.metadata["nodes"]}}


def chosen_precisions(listed: list[str], quantize: str | None, made: tuple[str, ...]) -> list[str]:
    """A format's precisions: the profile's list, or fp32 plus the one `--quantize` names where the format
    makes it (`made`: ExecuTorch programs have no fp16)."""
    if quantize is None:
        return list(listed)
    return ["fp32"] + ([quantize] if quantize != "none" and quantize in made else [])


def _build_target(shared: BuildInputs, target: Target, folder: Path, progress: Progress) -> tuple[str, list[str]]:
    """Make, verify and record the target's artifacts in `folder`; the release digest and the stages that came
    from the cache."""
    label = f"[{target.name}]"
    timings = Progress(progress.quiet)
    gpu = gpu_status(target)
    if gpu and gpu["status"] == "skipped":
        timings.note(f"{label} GPU steps skipped: {gpu['reason']}; to run them: {gpu['install']}")
    captures: dict[str, Any] = {}  # file -> its per-layer capture, made beside a conversion

    def capture_made(hub: Artifact, made: list[Artifact]) -> None:
        with timings.step(f"{label} per-layer SNR: capture the ONNX files while the conversion runs"):
            captures.update(_capture_by_hub_names(_layer_inputs(shared, hub), made))

    artifacts, runner, context, kinds = _make_artifacts(shared, target, folder, timings, label, capture_made)
    evaluation = shared.data.evaluation
    verified, conversions = {}, ConversionJudge()
    for artifact in float32_first(artifacts, lambda a: a.precision):
        with timings.step(f"{label} parity and host latency of {artifact.path.name} on {len(evaluation)} samples"):
            checked = verified[artifact.path.name] = _verified(artifact, target, shared, kinds)
        conversions.add(artifact.path.name, artifact.format, artifact.precision, checked.parity, checked.values)
        checked.values = {}
    entries = [_artifact_entry(folder, artifact, target, shared, gpu, kinds, verified[artifact.path.name])
               for artifact in artifacts]
    compression = shared.pruning and {**shared.pruning,
                                       "original_host_latency": _original_timing(shared, target, entries,
                                                                                 timings, label)}
    compare_with_fp32(entries, compression)
    estimate_energy(entries, folder, context.plan.float_nodes if context.plan else [])
    package.write_parity_data(folder, evaluation.inputs, evaluation.labels, shared.reference)
    manifest = _manifest(shared, target, folder, entries, runner.failures, kinds, compression)
    manifest.gpu = gpu
    manifest.precision_plan = context.plan.to_dict() if context.plan else None
    manifest.skipped = [{"format": name, "reason": reason} for name, reason in context.skipped.items()]
    with timings.step(f"{label} per-layer SNR of the reduced-precision artifacts"):
        manifest.layerwise = _layerwise(folder, manifest, shared.cache, _layer_inputs(shared, context.hub), captures)
    package.write_manifest(folder, manifest)
    written = package.read_manifest(folder)
    digest = package.release_digest(written, package.listed_hashes(folder, written))  # bench's numbers: not part
    package.write_json(folder / "report.json", {"target": target.name, "release_digest": digest,
                                                "cached_stages": runner.cached,
                                                "timings_s": timings.timings, "peak_rss_mb": peak_rss_mb(),
                                                "artifacts": [entry.to_dict() for entry in entries],
                                                "failures": [failure.to_dict() for failure in runner.failures]})
    return digest, runner.cached


def peak_rss_mb() -> dict[str, float]:
    """The largest resident memory so far of this process and of its largest finished child (onnx2tf)."""
    import resource

    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    return {"edgekit": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "converters": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def _layer_inputs(shared: BuildInputs, hub: Artifact) -> dict[str, np.ndarray]:
    """The held-out inputs the per-layer SNR runs on: the first LAYERWISE_SAMPLES, or as many as keep one
    capture under LAYERWISE_CAPTURE_BYTES."""
    per_sample = hub.metadata["activation_bytes"]
    samples = max(1, min(LAYERWISE_SAMPLES, LAYERWISE_CAPTURE_BYTES // max(per_sample, 1)))
    return {name: value[:samples] for name, value in shared.data.evaluation.inputs.items()}  # in the input's dtype


def _capture_by_hub_names(inputs: dict[str, np.ndarray], made: list[Artifact]) -> dict[str, Any]:
    """Per-layer captures of the artifacts whose tensors keep the hub's names (they need no I/O binding, which
    the manifest records later); none when one cannot be made (the per-layer step says why)."""
    by_names = [artifact for artifact in made if formats.get(artifact.format).hub_names]
    try:
        return {artifact.path.name: formats.get(artifact.format).capture(artifact.path, inputs, None)
                for artifact in by_names}
    except UserError:
        return {}


def _layerwise(folder: Path, manifest: Manifest, cache: StageCache, inputs: dict[str, np.ndarray],
               captures: dict[str, Any]) -> dict[str, Any]:
    """Per-layer SNR of every reduced-precision artifact against the float ONNX graph (for report.html and
    a first look; `edgekit debug` goes deeper) on `inputs`, with the `captures` made already. Added to each
    artifact as `layers` and `first_divergence`. A diagnostic, not the gate: cached on the artifacts' bytes, the
    held-out inputs and the library versions."""
    from .layerwise.divergence import divergence

    if manifest.artifact("model.fp32.onnx") is None:
        return {"computed": False, "why": "no float ONNX artifact to map layers through"}
    samples = len(next(iter(inputs.values())))
    key = cache.key("per-layer SNR", 2, samples, manifest.versions, manifest.parity_inputs.sha256,
                    dataclasses.asdict(manifest.target), [(e.name, e.file.sha256) for e in manifest.artifacts])
    result = cache.load_result(key)
    if result is None:
        try:
            result = divergence(folder, manifest, "onnx", inputs, captures=captures,
                                only=[entry.name for entry in manifest.artifacts if entry.precision != "fp32"])
        except UserError as err:  # a diagnostic: a layer map it cannot make must not fail a build that passed
            return {"computed": False, "why": str(err)}
        cache.store_result(key, result)
    for entry in manifest.artifacts:
        data = result["artifacts"].get(entry.name)
        if data and entry.precision != "fp32":
            entry.layers = [{"name": r["reference"], "snr_db": r["snr_db"], "channel_snr_db": r["channel_snr_db"]}
                            for r in data["rows"]]
            entry.first_divergence = data["first_divergence"] and data["first_divergence"]["reference"]
    return {"computed": True, "reference": "float ONNX", "samples": result["samples"],
            "thresholds_db": result["thresholds_db"], "coverage": result["coverage"]}


def _output_limits(target: Target, precision: str, kinds: dict[str, OutputKind]) -> dict[str, Tolerance]:
    return {name: target.output_tolerance(precision, name, kind.kind) for name, kind in kinds.items()}


def _verified(artifact: Artifact, target: Target, shared: BuildInputs, kinds: dict[str, OutputKind]) -> Verification:
    evaluation = shared.data.evaluation
    return verify(artifact.path, artifact.format, target.runtime, artifact.io, evaluation.inputs, shared.reference,
                  _output_limits(target, artifact.precision, kinds), evaluation.labels, kinds, timed=True)


def _artifact_entry(folder: Path, artifact: Artifact, target: Target, shared: BuildInputs,
                    gpu: dict[str, Any] | None, kinds: dict[str, OutputKind], checked: Verification) -> ArtifactEntry:
    tolerance = target.tolerance(artifact.precision)
    per_output = _output_limits(target, artifact.precision, kinds)
    entry = ArtifactEntry(
        package.file_record(folder, artifact.path.name), artifact.format, artifact.precision, checked.inputs,
        checked.outputs, dataclasses.asdict(tolerance),
        {**checked.parity.to_dict(), "failures": checked.parity.failures(),
         "hints": range_problems(shared.reference, checked.outputs, artifact.precision)},
        runtime=checked.runtime, verified_on=verified_on(checked.runtime, artifact.precision, gpu),
        output_tolerances={name: dataclasses.asdict(limits) for name, limits in per_output.items()},
        details={**artifact.metadata, **({"delegation": checked.delegation} if checked.delegation else {})})
    if target.gpu and formats.get(artifact.format).tensorrt:
        entry.trtexec = trtexec_command(target, entry)
    if shared.pruning and any(step["step"] in ("sparsity", "cluster") for step in shared.pruning["steps"]):
        entry.details["compressed_bytes"] = package.compressed_sizes(artifact.path)
    if checked.timing:
        entry.record_benchmark(host_record(checked.timing, checked.runtime, target.runtime.threads, target.bench.arch))
    return entry


def _manifest(shared: BuildInputs, target: Target, folder: Path, entries: list[ArtifactEntry],
              failures: list[Failure], kinds: dict[str, OutputKind], compression: dict[str, Any] | None) -> Manifest:
    recipe, source, data = shared.recipe, shared.source, shared.data
    inputs, outputs = shared.model_io
    return Manifest(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        target=TargetRecord(target.name, target.description, targets.builtin_name(target), dataclasses.asdict(target)),
        source_model={"reference": source.reference, "kind": source.kind, "sha256": source.sha256,
                      "files": source.files},
        inputs=inputs, outputs=outputs, output_kinds=kinds,
        preprocessing=dataclasses.asdict(recipe.preprocess) if recipe.preprocess else None,
        labels=recipe.labels,
        calibration={"source": data.calibration.source, "samples": len(data.calibration),
                     "random": recipe.calibration.random and recipe.calibration.data is None},
        warnings=data.warnings(),
        evaluation={"source": data.evaluation.source, "samples": len(data.evaluation),
                    "labeled": data.evaluation.labels is not None},
        parity_inputs=package.file_record(folder, package.PARITY_INPUTS),
        parity_reference=package.file_record(folder, package.PARITY_REFERENCE),
        reference={**shared.reference_engine, "accuracy": _reference_accuracy(shared, kinds)},
        pruning=compression,
        artifacts=entries,
        failures=failures,
        recipe=recipe.to_dict(),
        versions={**package.versions(), "edgekit": __version__},
    )


def _reference_accuracy(shared: BuildInputs, kinds: dict[str, OutputKind]) -> float | None:
    labels, classifier = shared.data.evaluation.labels, classifier_output(shared.reference, kinds)
    return accuracy(shared.reference[classifier], labels) if labels is not None and classifier else None
