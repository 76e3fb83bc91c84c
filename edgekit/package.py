"""The build folder: artifacts, held-out parity data, manifest.json with checksums, and a .tar.gz.

A folder is assembled in a hidden staging folder beside its final place and moved there only when
complete, so a failed or interrupted build never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import tarfile
import threading
import uuid
import zlib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from .errors import UserError, first_line
from .manifest import FileRecord, Manifest
from .sources import sha256_file

MANIFEST = "manifest.json"
PARITY_INPUTS = "parity/inputs.npz"
PARITY_REFERENCE = "parity/reference.npz"


STAGING_MARK = ".edgekit-staging"  # inside every staging folder: what the stale-folder cleanup may remove
OWN_FILES = {MANIFEST, "report.json", "report.html", PARITY_INPUTS, PARITY_REFERENCE}
OWN_FOLDERS = {"parity", "report"}  # report/ holds report.html's figures as .png files
REPORT = ("report.html", "report")  # written last, from the finished manifest
# Bytes per zlib call while archiving: long calls outside the GIL, so the compressing thread rarely waits on it.
ARCHIVE_CHUNK = 4 << 20


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot be created or written; creates nothing itself."""
    if out.resolve() == Path(out.resolve().anchor):
        raise UserError(f"--out {out} is the filesystem root: give a folder for the builds, e.g. --out build")
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


def check_replaceable(out: Path, name: str) -> None:
    """`out/name` and `out/name.tar.gz` may be replaced only when edgekit made them: anything else is the
    user's, and the build stops before any work rather than delete it."""
    folder, archive_path = out / name, out / f"{name}.tar.gz"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder} exists and is not an edgekit build folder: move it away or choose another --out")
    if folder.is_dir():
        stranger = _foreign_file(folder)
        if stranger:
            raise UserError(f"{folder} exists and {stranger}: edgekit replaces only its own builds; move it away "
                            f"or choose another --out")
    if archive_path.is_symlink() or (archive_path.exists() and not _is_own_archive(archive_path, name)):
        raise UserError(f"{archive_path} exists and is not an edgekit build archive: move it away or choose "
                        f"another --out")


def _foreign_file(folder: Path) -> str | None:
    """Why `folder` is not wholly an edgekit build (None: every path in it is part of the build its manifest
    describes)."""
    try:
        manifest = read_manifest(folder)
    except UserError:
        return f"is not an edgekit build (no valid {MANIFEST})"
    listed = OWN_FILES | {entry.name for entry in manifest.artifacts}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        own = relative in OWN_FOLDERS if path.is_dir() else \
            relative in listed or (relative.startswith("report/") and path.suffix == ".png")
        if path.is_symlink() or not own:
            return f"holds {relative}, which edgekit did not make"
    return None


def _is_own_archive(path: Path, name: str) -> bool:
    """A gzipped tar whose every member lies in `name/` and which holds `name/manifest.json`."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getnames()
    except (tarfile.TarError, OSError, EOFError):
        return False
    return f"{name}/{MANIFEST}" in members and all(m == name or m.startswith(f"{name}/") for m in members)


def remove_stale_staging(out: Path, name: str) -> None:
    """Staging folders of `name` left by builds that were killed (SIGKILL, power loss): only folders edgekit
    marked as its own, and only when the process that made them is gone."""
    for stage in out.glob(f".{name}.partial-*"):
        mark = stage / STAGING_MARK
        if stage.is_symlink() or not stage.is_dir() or mark.is_symlink() or not mark.is_file():
            continue
        owner = mark.read_text().strip()
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def staging(out: Path, name: str, report: Callable[[Path], object]) -> Iterator[Path]:
    """Yield an empty build folder inside a staging folder in `out`. On success `report` writes the folder's
    report while its archive is made (see `archive`), and the folder and its archive replace `out/name` and
    `out/name.tar.gz`; on any failure or signal nothing is published and the staging folder is removed."""
    stage = out / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        (stage / STAGING_MARK).write_text(f"{os.getpid()}\n")
        folder = stage / name
        folder.mkdir()
        yield folder
        archive(folder, stage / f"{name}.tar.gz", report)
        check_replaceable(out, name)  # again: the user may have put something there during the build
        if (out / name).exists():
            (out / name).rename(stage / "replaced")
        folder.rename(out / name)
        os.replace(stage / f"{name}.tar.gz", out / f"{name}.tar.gz")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_parity_data(folder: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None,
                      reference: dict[str, np.ndarray]) -> None:
    (folder / "parity").mkdir()
    extra = {} if labels is None else {"y": labels}
    np.savez_compressed(folder / PARITY_INPUTS, **inputs, **extra)
    np.savez_compressed(folder / PARITY_REFERENCE, **reference)


def read_parity_data(folder: Path, input_names: list[str]):
    """The held-out inputs (and labels) and reference outputs a build recorded; plain arrays only."""
    inputs_file = _read_arrays(folder, PARITY_INPUTS)
    missing = [name for name in input_names if name not in inputs_file]
    if missing:
        raise UserError(f"{folder / PARITY_INPUTS} has no array '{missing[0]}' for the model input of that name: "
                        f"rebuild the folder with `edgekit build`")
    inputs = {name: inputs_file[name] for name in input_names}
    return inputs, inputs_file.get("y"), _read_arrays(folder, PARITY_REFERENCE)


def _read_arrays(folder: Path, relative: str) -> dict[str, np.ndarray]:
    path = inside(folder, relative, relative)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as err:  # object (pickled) arrays, or not an .npz at all
        reason = "it holds pickled objects, which are never loaded" if "allow_pickle" in str(err) else first_line(err)
        raise UserError(f"{path} cannot be read as parity data ({reason}): rebuild the folder") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} cannot be read as parity data ({first_line(err)}): rebuild the folder") from None


def inside(folder: Path, relative: str, key: str) -> Path:
    """`folder/relative` for a path a manifest names: refused unless it stays inside the folder with no
    symbolic link on the way (edgekit never makes links, and a link could lead anywhere)."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise UserError(f"{folder / MANIFEST}: '{key}' is {relative!r}, which leaves the build folder: rebuild it")
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link, and edgekit builds hold none: rebuild the folder")
    return path


def file_record(folder: Path, relative: str) -> FileRecord:
    path = folder / relative
    return FileRecord(relative, sha256_file(path), path.stat().st_size)


def listed_hashes(folder: Path, manifest: Manifest) -> dict[str, str]:
    """The sha256 of every artifact and parity file the manifest lists, as the folder holds them now
    ("missing" where a file is absent)."""
    listed = [entry.name for entry in manifest.artifacts] + [manifest.parity_inputs.file, manifest.parity_reference.file]
    hashes = {}
    for relative in sorted(set(listed)):
        path = inside(folder, relative, relative)
        hashes[relative] = sha256_file(path) if path.is_file() else "missing"
    return hashes


def release_digest(manifest: Manifest, files: dict[str, str]) -> str:
    """One sha256 over a whole release: the manifest (less the measurements `bench` adds later) and the bytes
    of every artifact and parity file it lists (`listed_hashes`). Any changed byte or key changes it."""
    recorded = manifest.to_dict(benchmarks=False)
    text = json.dumps(_finite({"manifest": recorded, "files": files}), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


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


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """manifest.json, replaced in one step (bench rewrites it in a published folder)."""
    partial = folder / f".{MANIFEST}.partial"
    write_json(partial, manifest.to_dict())
    partial.replace(folder / MANIFEST)


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is not a build folder: give the folder `edgekit build` wrote, e.g. build/arm64")
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: give the folder `edgekit build` wrote, e.g. build/arm64")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): rebuild the folder with `edgekit build`") from None
    return Manifest.from_dict(data, str(path))


def refresh_archive(folder: Path, report: Callable[[Path], object]) -> None:
    """Write the report of `folder` after its manifest changed, and the archive beside it again if edgekit
    made one there."""
    beside = folder.parent / f"{folder.name}.tar.gz"
    if not beside.is_symlink() and beside.is_file() and _is_own_archive(beside, folder.name):
        archive(folder, beside, report)
    else:
        report(folder)


def compressed_sizes(path: Path) -> dict[str, int]:
    """Bytes of a file compressed as it travels: zstd (level 3, its default; OTA updates) and deflate (level 6,
    zip's default; app stores). Shared or zeroed weights shrink these, not the file itself."""
    import zstandard

    data = path.read_bytes()
    return {"zstd": len(zstandard.ZstdCompressor(level=3).compress(data)), "zip": len(zlib.compress(data, 6))}


def archive(folder: Path, destination: Path, report: Callable[[Path], object]) -> None:
    """A .tar.gz of `folder` at `destination`, written under a temporary name and then moved into place.
    `report(folder)` writes the report files (REPORT) while the others are compressed in a thread (zlib works
    outside the GIL); they go in last."""
    partial = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()

    def add(names: list[str]) -> None:
        for name in names:
            if not stop.is_set():
                tar.add(folder / name, arcname=f"{folder.name}/{name}")

    try:
        with tarfile.open(partial, "w:gz") as tar:
            tar.copybufsize = ARCHIVE_CHUNK
            tar.add(folder, arcname=folder.name, recursive=False)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-archive") as pool:
                compressing = pool.submit(add, sorted(set(os.listdir(folder)) - set(REPORT)))
                try:
                    report(folder)
                except BaseException:
                    stop.set()  # the file being compressed is finished, the others are not started
                    raise
                compressing.result()
            add(sorted(set(os.listdir(folder)) & set(REPORT)))
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
