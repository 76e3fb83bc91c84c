"""The Deep Compression pipeline on the bundled example: prune -> share weights (cluster) -> INT8, one row per
step, with raw and compressed sizes (zip, zstd) against the fp32 model and the held-out accuracy.

    python tools/compression_table.py [--prune 0.3] [--clusters 16]

Each step is a real `edgekit build --target x86_64` in a fresh process (stage cache off); sizes are the
shipped ONNX files, compressed as app stores (zip) and OTA updates (zstd) would.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.package import compressed_sizes


def build(out: Path, *flags: str) -> dict:
    subprocess.run([sys.executable, "-m", "edgekit", "build", "--target", "x86_64", "--no-cache", "--out", str(out),
                    *flags], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    return json.loads((out / "x86_64" / "manifest.json").read_text())


def row(step: str, folder: Path, manifest: dict, file: str) -> dict:
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    return {"step": step, "file": file, "raw": entry["bytes"], **compressed_sizes(folder / file),
            "accuracy": entry["parity"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", default="0.3")
    parser.add_argument("--clusters", default="16")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        steps = [("fp32", []), (f"pruned {args.prune}", ["--prune", args.prune]),
                 (f"+ shared {args.clusters} values", ["--prune", args.prune, "--cluster", args.clusters])]
        for i, (name, flags) in enumerate(steps):
            out = Path(scratch) / str(i)
            manifest = build(out, *flags)
            rows.append(row(name, out / "x86_64", manifest, "model.fp32.onnx"))
        rows.append(row(f"{steps[-1][0]} + INT8", out / "x86_64", manifest, "model.int8.onnx"))
    base = rows[0]
    print(f"{'step':<32} {'raw KB':>8} {'x fp32':>7} {'zip KB':>8} {'x fp32':>7} {'zstd KB':>8} {'x fp32':>7} "
          f"{'accuracy':>9}")
    for r in rows:
        print(f"{r['step']:<32} {r['raw'] / 1024:8.1f} {r['raw'] / base['raw']:7.3f} {r['zip'] / 1024:8.1f} "
              f"{r['zip'] / base['zip']:7.3f} {r['zstd'] / 1024:8.1f} {r['zstd'] / base['zstd']:7.3f} "
              f"{r['accuracy']:8.2f}%")


if __name__ == "__main__":
    main()
