"""The command line. Thin: parse, make a Recipe, call the API, print. Bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MACHINE_ERRNOS, Terminated, UserError, machine_error
from .formats import FORMATS

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour codes some libraries put in their messages


def main(argv: list[str] | None = None) -> int:
    previous = _terminate_like_ctrl_c()
    try:
        args = _parser().parse_args(argv)
        return args.handler(args)
    except UserError as err:
        return _error(str(err))
    except OSError as err:
        if machine_error(err) is not err:
            raise
        where = f" ({err.filename})" if err.filename else ""
        return _error(f"{err.strerror}{where}: {MACHINE_ERRNOS[err.errno]}; nothing was left half-written")
    except MemoryError:
        return _error("out of memory: lower --calib-samples, the input shape or the model size, or use a machine "
                      "with more memory; nothing was left half-written")
    except KeyboardInterrupt:
        print("edgekit: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    except Terminated:
        print("edgekit: terminated (SIGTERM); nothing was left half-written", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _error(message: str) -> int:
    """One line on stderr, exit code 2: library text can bring colour codes and line breaks."""
    print(f"edgekit: error: {' '.join(ANSI_ESCAPE.sub('', message).split())}", file=sys.stderr)
    return 2


def _terminate_like_ctrl_c():
    """Make SIGTERM unwind like Ctrl-C (staging removed, children stopped); the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminated)


class _Parser(argparse.ArgumentParser):
    """Bad flags are bad input like any other: one line and exit 2 (argparse prints usage and exits itself)."""

    def error(self, message: str):
        raise UserError(f"{message}: see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgekit", description="Take a trained vision model to edge devices, "
                                     "and prove the result is right.")
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="export, quantize, verify and package a model for targets")
    _model_and_data_flags(build)
    build.add_argument("--target", action="append", help="target profile name or .yaml path; repeat or "
                       "comma-separate for several (default: arm64)")
    build.add_argument("--recipe", help="edgekit.yaml recipe; flags override it")
    build.add_argument("--quantize", choices=["int8", "fp16", "none"], help="the reduced precision built beside "
                       "fp32 (default: all the target's)")
    build.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"])
    build.add_argument("--exclude-node", action="append", help="ONNX node name to keep in float (repeatable)")
    build.add_argument("--prune", type=float, metavar="RATIO", help="remove this fraction of channels from every "
                       "prunable layer (Torch-Pruning), then recover")
    build.add_argument("--prune-method", choices=["l1", "l2", "bn", "taylor"], help="channel importance (default l1)")
    build.add_argument("--sparsity", type=float, help="also zero this fraction of weights (unstructured; saves "
                       "package bytes, not CPU time)")
    build.add_argument("--cluster", type=int, metavar="K", help="share weights: K values per conv/linear layer "
                       "(k-means, snapped to the int8 grid, fine-tuned by distillation; shrinks the compressed "
                       "package, not the raw files or latency)")
    build.add_argument("--student", metavar="FILE.py:FACTORY", help="distil the model into this smaller network "
                       "(untrained) on unlabeled images, then build the student; the budget flags apply")
    build.add_argument("--distill-steps", type=_count, help="distillation steps for --student (default 1000)")
    build.add_argument("--distill-data", help="unlabeled images for --student (default: the calibration data)")
    build.add_argument("--recover", help="comma-separated recovery after pruning: bn, kd, or none (default bn,kd)")
    build.add_argument("--recover-steps", type=_count, help="distillation steps (default 300)")
    build.add_argument("--max-accuracy-drop", type=float, help="pruning budget in percentage points (needs "
                       "labeled --eval data); without --prune, search the ratio")
    build.add_argument("--min-agreement", type=float, help="pruning budget without labels: top-1 agreement "
                       "with the original, 0..1")
    build.add_argument("--float-fallback", help="INT8 layers to keep in float in every format: 'auto' (the fewest "
                       "that meet the target's SNR budget) or comma-separated PyTorch module paths / ONNX nodes")
    build.add_argument("--require-gpu", action="store_true", default=None, help="fail (exit 2) instead of "
                       "skipping the GPU steps of a GPU target when no usable GPU stack is installed")
    build.add_argument("--bench", action="store_true", default=None, help="also run `edgekit bench` on each "
                       "target's artifacts before packaging")
    _bench_flags(build)
    build.set_defaults(handler=_build)

    convert = commands.add_parser("convert", help="only the lowering: a model to one format's files, with parity")
    _model_and_data_flags(convert)
    convert.add_argument("--to", choices=[name for name in FORMATS if name != "onnx"], required=True,
                         help="the format (the float ONNX is made as the hub, not shipped)")
    convert.add_argument("--precision", help="comma-separated, e.g. fp32,fp16,dynamic_int8,int8 for tflite "
                         "(default: the target's)")
    convert.add_argument("--target", dest="convert_target", default="arm64", help="profile whose format "
                         "settings and tolerances apply (default: arm64); the output is OUT/<target>-<format>")
    convert.set_defaults(handler=_convert, target=None, quantize=None, calib_method=None, exclude_node=None,
                         bench=None, require_gpu=None, float_fallback=None, prune=None, prune_method=None,
                         sparsity=None, cluster=None, student=None, distill_steps=None, distill_data=None,
                         recover=None, recover_steps=None, max_accuracy_drop=None,
                         min_agreement=None)

    bench = commands.add_parser("bench", help="latency and on-target parity of a build folder or an artifact")
    bench.add_argument("path", help="a build folder (every artifact, with on-target parity), or one "
                       ".onnx / .tflite file (latency only, on random inputs, unless it is inside a build folder)")
    bench.add_argument("--target", help="profile whose bench settings apply (default: the built-in profile the "
                       "build names, else arm64; a build folder never chooses its runner)")
    _bench_flags(bench)
    bench.add_argument("--samples", type=_count, help="held-out samples for on-target parity (default: all)")
    bench.add_argument("--energy", action="store_true", help="also measure joules per inference where the machine "
                       "that runs it exposes power readings (NVML, RAPL, a board's power monitor rails), over a "
                       "several-second window, idle subtracted")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)

    debug = commands.add_parser("debug", help="per-layer divergence of a build's artifacts from the reference")
    debug.add_argument("path", help="a build folder, or one artifact inside it")
    debug.add_argument("--reference", choices=["torch", "onnx"], help="compare against the PyTorch model or the "
                       "float ONNX graph (default: torch when --model is given)")
    debug.add_argument("--model", help="the PyTorch model the build was made from (file.py:factory); a build "
                       "folder never names code to run, so the torch reference needs it here")
    debug.add_argument("--weights", help="its state_dict checkpoint")
    debug.add_argument("--inputs", help=".npz of inputs (default: the build's held-out inputs)")
    debug.add_argument("--samples", type=_count, default=32, help="how many inputs to run (default 32)")
    debug.add_argument("--json", action="store_true")
    debug.set_defaults(handler=_debug)

    check = commands.add_parser("check", help="re-run the parity gate on a build folder (exit 0 only if all pass)")
    check.add_argument("folder", help="a folder written by `edgekit build`, e.g. build/arm64")
    check.add_argument("--target", help="profile whose tolerances judge the folder: a built-in name or a .yaml "
                       "path (default: the built-in profile the build names; a folder never sets its own limits)")
    check.add_argument("--recorded-tolerances", action="store_true", help="judge by the tolerances recorded in "
                       "the folder instead (only for a folder you trust)")
    check.add_argument("--expect", metavar="DIGEST", help="the release digest `edgekit build` printed: fail "
                       "unless the folder is byte for byte that release")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_check)

    listing = commands.add_parser("targets", help="list the target profiles")
    listing.set_defaults(handler=_targets)

    inspect = commands.add_parser("inspect", help="inputs, outputs, parameters, MACs, operators of a model")
    inspect.add_argument("model")
    inspect.add_argument("--weights")
    inspect.add_argument("--input-shape", type=_shape)
    inspect.add_argument("--nodes", action="store_true", help="also list every ONNX node name")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)
    return parser


def _model_and_data_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", nargs="?", help="model.onnx, program.pt2, TorchScript file, or file.py:factory / "
                         "package.module:factory (default: the bundled example)")
    command.add_argument("--weights", help="state_dict checkpoint for a factory model")
    command.add_argument("--out", help="output folder (default: build); each target gets OUT/<target>")
    command.add_argument("--input-shape", type=_shape, help="fixed input shape, e.g. 1,3,224,224")
    command.add_argument("--calib", help="calibration data: .npy, .npz or a folder of images")
    command.add_argument("--calib-samples", type=_count, help="use at most this many calibration samples")
    command.add_argument("--random-calib", action="store_true", default=None,
                         help="calibrate on random inputs when you have no data (recorded in the manifest)")
    command.add_argument("--eval", help="held-out data for parity and accuracy (.npz with x and y, or a folder "
                         "of images per class); default: the last 20%% of --calib")
    command.add_argument("--keep-going", action="store_true", default=None,
                         help="package artifacts even when they fail parity or a conversion fails")
    command.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                         help="make every stage afresh instead of reusing the stage cache's results")
    command.add_argument("--json", action="store_true", help="print the manifests as JSON on stdout")
    command.add_argument("--quiet", action="store_true", help="no progress lines")


def _bench_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--runner", help="native, docker, qemu or ssh://[user@]host[:port] (default: the target's)")
    command.add_argument("--runs", type=_count, help="timed runs (default: the target's)")
    command.add_argument("--warmup", type=_count, help="untimed runs first (default: the target's)")
    command.add_argument("--threads", type=_count, help="runtime threads (default: the target's)")


def _count(text: str) -> int:
    """Runs, samples, threads, steps: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _shape(text: str) -> list[int]:
    from .resources import oversized

    try:
        dims = [int(part) for part in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape: write it like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"'{text}' has a non-positive dimension")
    problem = oversized(dims)
    if problem:  # refused here, before a PyTorch model is run once on zeros of this shape
        raise argparse.ArgumentTypeError(f"'{text}' {problem}: lower the input shape")
    return dims


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave, shaped like the recipe file."""
    targets = [t.strip() for value in args.target or [] for t in value.split(",") if t.strip()]
    given = {"model": args.model, "weights": args.weights, "targets": targets or None, "out": args.out,
             "input_shape": args.input_shape, "quantize": args.quantize, "eval": args.eval,
             "keep_going": args.keep_going, "require_gpu": args.require_gpu, "cache": args.cache,
             "float_fallback": _fallback(args.float_fallback)}
    prune = {"ratio": args.prune, "method": args.prune_method, "sparsity": args.sparsity,
             "recover": None if args.recover is None else [r.strip() for r in args.recover.split(",")
                                                           if r.strip() not in ("", "none")],
             "recover_steps": args.recover_steps, "max_accuracy_drop": args.max_accuracy_drop,
             "min_agreement": args.min_agreement}
    if any(v is not None for v in prune.values()):
        given["prune"] = {k: v for k, v in prune.items() if v is not None}
    if args.cluster is not None:
        given["cluster"] = {"clusters": args.cluster}
    distill = {"student": args.student, "steps": args.distill_steps, "data": args.distill_data}
    if any(v is not None for v in distill.values()):
        given["distill"] = {k: v for k, v in distill.items() if v is not None}
    if args.bench:
        given["bench"] = {k: v for k, v in {"runner": args.runner, "runs": args.runs, "warmup": args.warmup,
                                            "threads": args.threads}.items() if v is not None}
    calibration = {"data": args.calib, "method": args.calib_method, "samples": args.calib_samples,
                   "random": args.random_calib, "exclude_nodes": args.exclude_node}
    overrides = {k: v for k, v in given.items() if v is not None}
    calibration = {k: v for k, v in calibration.items() if v is not None}
    if calibration:
        overrides["calibration"] = calibration
    return overrides


def _fallback(value: str | None) -> str | list[str] | None:
    if value is None or value == "auto":
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def _build(args: argparse.Namespace) -> int:
    from . import recipe as recipes

    return _run_build(recipes.make(args.recipe, _overrides(args)), args)


def _convert(args: argparse.Namespace) -> int:
    """A build whose only format is `--to`: the float ONNX is made as the hub but not shipped."""
    import dataclasses

    from . import recipe as recipes
    from . import schema, targets

    recipe = recipes.make(None, _overrides(args))
    target = targets.load(args.convert_target)
    settings = getattr(target, args.to)  # the profile key named after the format
    precisions = [p.strip() for p in args.precision.split(",")] if args.precision else settings.precisions
    settings = schema.build(type(settings), {**dataclasses.asdict(settings), "precisions": precisions}, "--precision")
    profile = dataclasses.replace(target, name=f"{target.name}-{args.to}", formats=[args.to], **{args.to: settings})
    return _run_build(recipe, args, [profile])


def _run_build(recipe, args: argparse.Namespace, profiles=None) -> int:
    from .pipeline import build
    from .report import Progress, bench_table, plan_line, pruning_line, summary_table

    names = [p.name for p in profiles] if profiles else recipe.targets
    if not args.quiet:
        print(f"edgekit {__version__}: building {recipe.model} for {', '.join(names)}", file=sys.stderr)
    results = build(recipe, Progress(quiet=args.quiet), profiles)
    for result in results:
        manifest = result.manifest.to_dict()  # the summary renders the document the folder holds
        accuracy = manifest["reference"].get("accuracy")
        reference = f", reference accuracy {accuracy:.2f}%" if accuracy is not None else ""
        where = result.folder if result.folder else "not packaged: it failed (--keep-going packages anyway)"
        print(f"\n{result.target} -> {where}{reference}", file=sys.stderr)
        if manifest.get("pruning"):
            print(pruning_line(manifest["pruning"]), file=sys.stderr)
        print(summary_table(manifest["artifacts"], manifest["failures"]), file=sys.stderr)
        if manifest.get("precision_plan"):
            print(plan_line(manifest["precision_plan"]), file=sys.stderr)
        for skipped in manifest["skipped"]:
            print(f"{skipped['format']} not made: {skipped['reason']}", file=sys.stderr)
        for warning in manifest.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        if result.benchmarks:
            print(bench_table(result.benchmarks), file=sys.stderr)
        gpu = manifest.get("gpu")
        if gpu and gpu["status"] == "skipped":
            print(f"GPU steps skipped: {gpu['reason']}. To run them: {gpu['install']}", file=sys.stderr)
        if gpu:
            print("verified on: " + "; ".join(sorted({a["verified_on"] for a in manifest["artifacts"]})),
                  file=sys.stderr)
        if result.cached:
            print(f"from the stage cache: {'; '.join(result.cached)}", file=sys.stderr)
        if result.archive:
            print(f"archive: {result.archive}", file=sys.stderr)
        if result.digest:
            print(f"release digest: {result.digest} (pin it: edgekit check {result.folder} --expect DIGEST)",
                  file=sys.stderr)
    if args.json:
        print(json.dumps([{**r.manifest.to_dict(), "release_digest": r.digest} for r in results], indent=2, default=str))
    failed = [r for r in results if not r.passed]
    if failed and not recipe.keep_going:
        return 1
    if failed:
        print("warning: packaged although parity or a conversion failed (--keep-going); `edgekit check` will fail",
              file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import package, targets
    from .bench import bench_file, bench_folder
    from .report import bench_table

    path = Path(args.path)
    folder = path if path.is_dir() else path.parent
    in_build = (folder / package.MANIFEST).is_file()
    if not path.exists():
        raise UserError(f"{path} does not exist: give a build folder or an .onnx / .tflite file")
    if in_build:
        builtin = package.read_manifest(folder).target.builtin
        target = targets.for_build(builtin, args.target, str(folder))  # never the folder's own profile copy
        records = bench_folder(folder, target, args.runner, args.runs, args.warmup, args.threads, args.samples,
                               only=None if path.is_dir() else path.name, energy=args.energy)
    else:
        records = bench_file(path, targets.load(args.target or "arm64"), args.runner, args.runs, args.warmup,
                             args.threads, args.energy)
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        print(bench_table(records))
    on_target = [r["parity"]["passed"] for r in records if r["parity"]["passed"] is not None]
    return 0 if all(on_target) else 1


def _debug(args: argparse.Namespace) -> int:
    from . import package
    from .layerwise.divergence import divergence, held_out_inputs
    from .report import divergence_table

    path = Path(args.path)
    folder = path if path.is_dir() else path.parent
    manifest = package.read_manifest(folder)
    reference = args.reference or ("torch" if args.model else "onnx")
    inputs = held_out_inputs(folder, manifest, args.inputs, args.samples)
    result = divergence(folder, manifest, reference, inputs, only=None if path.is_dir() else {path.name},
                        model=(args.model, args.weights))
    print(json.dumps(result, indent=2, default=str) if args.json else divergence_table(result))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check
    from .report import summary_table

    result = check(Path(args.folder), args.target, args.recorded_tolerances, args.expect)
    failures = [failure.to_dict() for failure in result.failures]
    if args.json:
        print(json.dumps({"passed": result.passed, "digest": result.digest, "judged_by": result.judged_by,
                          "machine_notes": result.machine_notes, "artifacts": result.records, "failures": failures}, indent=2, default=str))
    else:
        print(summary_table(result.records, failures))
        for note in result.machine_notes:
            print(f"  {note}")
        print(f"\njudged by {result.judged_by}\nrelease digest: {result.digest}"
              f"{' (as expected)' if args.expect and args.expect == result.digest else ''}")
        print(f"{args.folder}: {'PASS' if result.passed else 'FAIL'} ({len(result.records)} artifacts)")
    return 0 if result.passed else 1


def _targets(args: argparse.Namespace) -> int:
    from . import targets

    for name in targets.available():
        profile = targets.load(name)
        print(f"{name:<10} {profile.description}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import format_inspection, inspect_model

    info = inspect_model(args.model, args.weights, args.input_shape)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_inspection(info, args.nodes))
    return 0
