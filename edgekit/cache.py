"""The stage cache: a stage's artifacts stored under a hash of everything they are made from.

The key is the stage's format, precisions and version, the library versions, the bytes of the float ONNX
hub it reads, the calibration data and the settings the stage declares it depends on. The hub itself is
keyed by `model_fingerprint`. Parity and the gate are never cached. An entry is written in a temporary folder and renamed into place, so builds sharing a
cache never see half an entry; the oldest entries go when the cache grows past its cap.

Where: $EDGEKIT_STAGE_CACHE (a folder, or "off"), else ~/.cache/edgekit/stages; cap: $EDGEKIT_CACHE_MB
(default 2048).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact
from .data import Dataset
from .spec import TensorSpec

ENTRY = "entry.json"


def default_root() -> Path | None:
    """The cache folder, or None when the user turned it off."""
    chosen = os.environ.get("EDGEKIT_STAGE_CACHE")
    if chosen == "off":
        return None
    return Path(chosen) if chosen else Path.home() / ".cache" / "edgekit" / "stages"


class StageCache:
    def __init__(self, root: Path | None, cap_bytes: int | None = None):
        self.root = root
        self.cap = cap_bytes if cap_bytes is not None else int(os.environ.get("EDGEKIT_CACHE_MB", "2048")) << 20

    def key(self, *parts: Any) -> str:
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def has(self, key: str) -> bool:
        return self.root is not None and (self.root / key / ENTRY).is_file()

    def load(self, key: str, folder: Path) -> list[Artifact] | None:
        """The entry's artifacts copied into `folder`, or None when there is no such entry."""
        if not self.has(key):
            return None
        entry = self.root / key
        try:
            records = json.loads((entry / ENTRY).read_text())
            artifacts = []
            for record in records:
                name = Path(record["file"]).name
                shutil.copyfile(entry / name, folder / name)
                io = record["io"] and tuple([TensorSpec.from_dict(d) for d in specs] for specs in record["io"])
                artifacts.append(Artifact(folder / name, record["format"], record["precision"], record["metadata"],
                                          io))
            os.utime(entry)  # recently used: evicted last
        except FileNotFoundError:  # evicted by another build or stage while being read: a miss
            return None
        return artifacts

    def store(self, key: str, artifacts: list[Artifact]) -> None:
        records = [{"file": a.path.name, "format": a.format, "precision": a.precision, "metadata": a.metadata,
                    "io": a.io and [[spec.to_dict() for spec in specs] for specs in a.io]} for a in artifacts]
        self._write(key, [a.path for a in artifacts], records)

    def load_result(self, key: str) -> Any | None:
        """A stored JSON result (a step that makes no files, e.g. the per-layer SNR), or None."""
        if not self.has(key):
            return None
        entry = self.root / key / ENTRY
        try:
            os.utime(entry.parent)
            return json.loads(entry.read_text())
        except FileNotFoundError:  # evicted meanwhile
            return None

    def store_result(self, key: str, result: Any) -> None:
        self._write(key, [], result)

    def _write(self, key: str, files: list[Path], record: Any) -> None:
        """One entry, atomically: written beside the cache under a temporary name, then renamed into place."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{key}.partial-{uuid.uuid4().hex[:8]}"
        partial.mkdir()
        try:
            for path in files:
                shutil.copyfile(path, partial / path.name)
            (partial / ENTRY).write_text(json.dumps(record, default=_plain))
            partial.rename(self.root / key)
        except OSError:
            if not (self.root / key / ENTRY).is_file():  # another build storing the same entry first is fine
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self._evict()

    def _evict(self) -> None:
        """Remove the least recently used entries until the cache is under its cap. Another build, or a stage
        running beside this one, may evict at the same time: an entry that is gone counts as removed."""
        entries = []
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                try:
                    entries.append((path.stat().st_mtime, sum(f.stat().st_size for f in path.iterdir()), path))
                except FileNotFoundError:
                    continue
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.cap:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


def dataset_hash(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for name in sorted(dataset.inputs):
        array = np.ascontiguousarray(dataset.inputs[name])
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_fingerprint(source, reference: dict[str, np.ndarray]) -> str:
    """A hash of what an export reads: the model's files, its inputs, every parameter and buffer, its structure,
    and its outputs on the held-out data. Code the files do not hold (a helper imported from elsewhere, an
    attribute forward() reads) shows in the outputs; what would still slip through is caught by the float
    ONNX's parity, which is always recomputed against the live model."""
    digest = hashlib.sha256(source.sha256.encode())
    digest.update(json.dumps([spec.to_dict() for spec in source.inputs + source.outputs]).encode())
    if source.kind == "torch":
        import torch

        for name, tensor in _tensors(source.module):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}{data.dtype}{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(_structure(source.module).encode())
    for name in sorted(reference):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(reference[name]).tobytes())
    return digest.hexdigest()


def _tensors(module) -> list:
    """Named parameters, buffers and tensor constants of an nn.Module, ScriptModule or ExportedProgram."""
    import torch

    named = module.state_dict() if callable(module.state_dict) else {**module.state_dict, **module.constants}
    return sorted((name, value) for name, value in named.items() if isinstance(value, torch.Tensor))


def _structure(module) -> str:
    """The module tree with its hyperparameters; TorchScript's code and an exported program's graph."""
    return getattr(module, "code", None) or str(module)


def _plain(value: Any) -> Any:
    """JSON for the numpy scalars and paths an artifact's metadata may hold."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
