"""Per-layer divergence of a build folder's artifacts against a reference: PyTorch or the float ONNX.

Tensors are mapped once per build: reference -> float ONNX (identity, or PyTorch module path by value),
float ONNX -> float TFLite (by value, then structure), float TFLite -> each other TFLite (same op sequence), and
each artifact's per-layer numbers are computed against the reference on the same inputs. A layer diverges below
its artifact's precision's SNR limit (the profile's min_snr_db: 60 dB for float32, 15 dB for INT8 by default).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from .. import package
from ..errors import UserError
from ..formats import FORMATS, get
from ..manifest import Manifest
from .capture import Capture, capture_onnx, capture_torch
from .compare import compare_layers, compose, first_divergence, largest_drop
from .mapping import map_tflite_onnx, map_torch_onnx, node_coverage

FLOAT_ONNX = FORMATS["onnx"].file("fp32")  # the hub every format's layers are mapped through
DEFAULT_THRESHOLD_DB = 15.0


def divergence(folder: Path, manifest: Manifest, reference: str, inputs: dict[str, np.ndarray],
               only: Collection[str] | None = None, model: tuple[str | None, str | None] = (None, None),
               captures: dict[str, Capture] | None = None) -> dict[str, Any]:
    """Rows per artifact (in network order, of the artifacts named in `only` when given), first divergence,
    largest drop, and mapping coverage. `model`: the PyTorch model and weights the user names for the torch
    reference; `captures`: file -> its capture on `inputs`, made already."""
    import onnx

    if not package.inside(folder, FLOAT_ONNX, FLOAT_ONNX).is_file():
        raise UserError(f"{folder} has no {FLOAT_ONNX}: per-layer debugging maps every format through the float "
                        f"ONNX graph, so build with 'onnx' among the target's formats")
    captured = dict(captures or {})  # file -> its capture, made once
    graph = onnx.load(str(folder / FLOAT_ONNX))
    onnx_capture = captured[FLOAT_ONNX] if FLOAT_ONNX in captured else capture_onnx(graph, inputs)
    coverage: dict[str, Any] = {}
    if reference == "torch":
        reference_capture = capture_torch(_torch_module(manifest, *model), inputs, batch=len(next(iter(inputs.values()))))
        to_onnx = map_torch_onnx(reference_capture, onnx_capture, graph).pairs
        coverage["onnx_nodes_to_pytorch_modules"] = node_coverage(graph, set(to_onnx.values()))
    else:
        reference_capture, to_onnx = onnx_capture, {name: name for name in onnx_capture.tensors}
    entries = {entry.name: entry for entry in manifest.artifacts}
    # Two at a time: the runtimes and numpy's sums work outside the GIL, so two artifacts use two cores. A
    # format's fp32 file is captured first, beside the first of the files mapped through it.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgekit-layers")

    def through(fmt) -> tuple[Capture, dict[str, str]]:
        """The fp32 file of a format matched by value: its capture, and hub tensor -> its tensor."""
        floats = fmt.file("fp32")
        capture = fmt.capture(folder / floats, inputs, (entries[floats].inputs, entries[floats].outputs))
        return capture, map_tflite_onnx(onnx_capture, capture).pairs

    def mapped_through(fmt, capture: Capture) -> dict[str, str]:
        """Reference tensor -> `capture`'s tensor, through the fp32 file of its format."""
        floats, pairs = through_float[fmt.name].result()
        return compose(compose(to_onnx, pairs), align_lowerings(floats, capture, fmt.bookkeeping_ops))

    try:
        through_float = {fmt.name: pool.submit(through, fmt) for fmt in FORMATS.values()
                         if fmt.capture and not fmt.hub_names and fmt.file("fp32") in entries
                         and package.inside(folder, fmt.file("fp32"), fmt.file("fp32")).is_file()}
        thresholds = {entry.precision: _threshold(manifest, entry.precision) for entry in manifest.artifacts}
        not_mapped = {}
        work = []  # (artifact, what maps the reference's tensors to its own), in the manifest's order
        for entry in manifest.artifacts:
            if (only is not None and entry.name not in only) or (reference == "onnx" and entry.name == FLOAT_ONNX):
                continue
            fmt = get(entry.format)
            if fmt.capture is None:
                not_mapped[entry.name] = f"{fmt.label} has no per-layer capture in edgekit yet"
            elif fmt.hub_names:
                work.append((entry, lambda capture: to_onnx))
            elif fmt.name in through_float:  # else: no fp32 file of its format to map it through
                work.append((entry, lambda capture, fmt=fmt: mapped_through(fmt, capture)))

        def rows_of(entry, mapping) -> dict[str, Any]:
            candidate = captured.pop(entry.name, None)  # each file is compared once: its capture is let go after
            if candidate is None and entry.format in through_float and entry.name == get(entry.format).file("fp32"):
                candidate = through_float[entry.format].result()[0]  # captured already, to map its format through
            if candidate is None:
                candidate = get(entry.format).capture(package.inside(folder, entry.name, "artifacts[].file"),
                                                      inputs, (entry.inputs, entry.outputs))
            rows = compare_layers(reference_capture, candidate, mapping(candidate))
            threshold = thresholds[entry.precision]
            first, drop = first_divergence(rows, threshold), largest_drop(rows)
            return {"rows": [r.to_dict() for r in rows], "threshold_db": threshold,
                    "first_divergence": first.to_dict() if first else None,
                    "largest_drop": drop.to_dict() if drop else None}

        results = dict(zip((entry.name for entry, _ in work), pool.map(lambda job: rows_of(*job), work)))
        for name, job in through_float.items():
            coverage[f"onnx_nodes_to_{name}_tensors"] = node_coverage(graph, set(job.result()[1]),
                                                                     fusable=get(name).fused_ops)
    finally:  # on Ctrl-C or an error, the artifacts not yet started are not captured
        pool.shutdown(cancel_futures=True)
    return {"reference": reference, "thresholds_db": thresholds, "samples": len(next(iter(inputs.values()))),
            "coverage": coverage, "artifacts": results, "not_mapped": not_mapped}


def align_lowerings(reference: Capture, candidate: Capture, bookkeeping: tuple[str, ...]) -> dict[str, str]:
    """Tensors of two files of one format lowered from the same graph (float and integer): same op sequence
    once bookkeeping ops ((de)quantize) are set aside, so they pair by position; else by their stable names."""
    def ops(capture: Capture) -> list[tuple[str, str]]:
        return [(name, kind) for name, kind in capture.kinds.items()
                if kind not in bookkeeping and name in capture.tensors]

    ours, theirs = ops(reference), ops(candidate)
    if [kind for _, kind in ours] == [kind for _, kind in theirs]:
        pairs = {a: b for (a, _), (b, _) in zip(ours, theirs)}
    else:
        pairs = {name: name for name in reference.tensors if name in candidate.tensors}
    # A pair whose shapes differ is not one tensor (the integer model names or orders some ops otherwise).
    return {a: b for a, b in pairs.items() if reference.tensors[a].shape == candidate.tensors[b].shape}


def _threshold(manifest: Manifest, precision: str) -> float:
    """The SNR a layer of an artifact of `precision` diverges below: the build profile's limit for its outputs."""
    limits = manifest.target.profile["tolerances"].get(precision) or {}
    return limits.get("min_snr_db") or DEFAULT_THRESHOLD_DB


def _torch_module(manifest: Manifest, model: str | None, weights: str | None):
    """The user's PyTorch model, loaded from what they name on the command line: a build folder may come from
    anywhere, so the model file its manifest records is never imported."""
    from ..sources import load

    if manifest.source_model["kind"] != "torch":
        raise UserError("--reference torch needs a PyTorch source model; this build came from ONNX: "
                        "use --reference onnx")
    if model is None:
        raise UserError("--reference torch needs the model the build was made from: add --model file.py:factory "
                        "--weights W (a build folder never names code to run)")
    source = load(model, weights, list(manifest.inputs[0].shape))
    if source.sha256 != manifest.source_model["sha256"]:
        raise UserError(f"{model} is not the model this build was made from (its digest differs from the "
                        f"manifest's source_model.sha256; a pruned build's model is only in the build): give the "
                        f"same model and weights, or use --reference onnx")
    return source.module


def held_out_inputs(folder: Path, manifest: Manifest, path: str | None, samples: int) -> dict[str, np.ndarray]:
    """The first `samples` of --inputs (an .npz keyed by input name, or 'x'), else of the build's held-out data."""
    names = manifest.input_names
    if path is None:
        inputs = package.read_parity_data(folder, names)[0]
    else:
        try:
            with np.load(path) as archive:
                inputs = {n: archive[n if n in archive.files else "x"] for n in names}
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot read inputs {path}: {err} (give an .npz with one array per input, or 'x')") \
                from None
    # float data as the float32 the models take; integer data (a uint8 image input) as it is
    return {n: v[:samples].astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v[:samples]
            for n, v in inputs.items()}
