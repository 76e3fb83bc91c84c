"""The build folder: artifacts, held-out parity data, manifest.json with checksums, and a .tar.gz.

A folder is assembled in a hidden staging folder beside its final place and moved there only when
complete, so a failed or interrupted build never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import tarfile
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UserError
from .sources import sha256_file

MANIFEST = "manifest.json"
PARITY_INPUTS = "parity/inputs.npz"
PARITY_REFERENCE = "parity/reference.npz"
MANIFEST_SCHEMA = 1


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot be created or written; creates nothing itself."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to output folder {out}: {existing} is a file, not a folder: "
                        f"choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out} is not writable ({existing} does not allow writing): "
                        f"choose another --out or fix its permissions")


def create_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out}: {err.strerror}: choose another --out") from None


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `final`, on any failure it is removed."""
    stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    retired = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(retired)
    stage.rename(final)
    shutil.rmtree(retired, ignore_errors=True)


def write_parity_data(folder: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None,
                      reference: dict[str, np.ndarray]) -> None:
    (folder / "parity").mkdir()
    extra = {} if labels is None else {"y": labels}
    np.savez_compressed(folder / PARITY_INPUTS, **inputs, **extra)
    np.savez_compressed(folder / PARITY_REFERENCE, **reference)


def read_parity_data(folder: Path, input_names: list[str]):
    with np.load(folder / PARITY_INPUTS) as archive:
        inputs = {name: archive[name] for name in input_names}
        labels = archive["y"] if "y" in archive.files else None
    with np.load(folder / PARITY_REFERENCE) as archive:
        reference = {name: archive[name] for name in archive.files}
    return inputs, labels, reference


def file_record(folder: Path, relative: str) -> dict[str, Any]:
    path = folder / relative
    return {"file": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("edgekit", "torch", "onnx", "onnxruntime", "onnxslim", "numpy", "tensorflow", "onnx2tf",
                    "ai-edge-litert", "torch-pruning"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(_finite(data), indent=2) + "\n")


def _finite(value: Any) -> Any:
    """JSON has no infinity: an exact match's SNR is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is not a build folder: give the folder `edgekit build` wrote, e.g. build/arm64")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: give the folder `edgekit build` wrote, e.g. build/arm64")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}): rebuild the folder with `edgekit build`") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise UserError(f"{path} is not an edgekit manifest (schema {MANIFEST_SCHEMA}): rebuild the folder")
    return manifest


def archive(folder: Path) -> Path:
    """`<folder>.tar.gz` beside the folder, written under a temporary name and then moved into place."""
    final = folder.parent / f"{folder.name}.tar.gz"
    partial = folder.parent / f".{folder.name}.tar.gz.partial-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        partial.rename(final)
    finally:
        partial.unlink(missing_ok=True)
    return final
