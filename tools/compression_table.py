"""The Deep Compression pipeline (prune -> share weights -> INT8), one row per step, with raw and compressed sizes
(zip, zstd) against the fp32 model and the held-out accuracy; with --student, the model distilled into a
smaller network too.

    python tools/compression_table.py [--prune 0.3] [--clusters 16] [--student]
    python tools/compression_table.py --model mobilenet_v2 [--train-steps 600] [--student]

`example`: the bundled example. `mobilenet_v2`: a full MobileNetV2 (the paper's blocks, 1280 last channels,
10 classes: 2.2 M parameters) on 3x64x64 inputs, first trained here on the test zoo's labeled synthetic images
(tests/zoo.py: class-dependent stripes and colour casts over random textures), which need no download; its
student is the same network at half the channels. Each row is a real `edgekit build` in a fresh process, stage
cache off, for an x86_64 profile with the ONNX format only; sizes are the shipped ONNX files, compressed as app
stores (zip) and OTA updates (zstd) would.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.package import compressed_sizes

ROOT = Path(__file__).resolve().parent.parent
MOBILENET_V2 = '''from edgekit.example.model import IMAGENET_SETTINGS, MobileNetV2Style


def make():
    return MobileNetV2Style(in_channels=3, num_classes=10, stem=32, settings=IMAGENET_SETTINGS,
                            last_channels=1280, stem_stride=2, dropout=0.2)


def make_student():
    """Half the channels of every layer."""
    half = [(t, c // 2, n, s) for t, c, n, s in IMAGENET_SETTINGS]
    return MobileNetV2Style(in_channels=3, num_classes=10, stem=16, settings=half, last_channels=640,
                            stem_stride=2, dropout=0.2)
'''
SHAPE = (1, 3, 64, 64)


def build(out: Path, profile: Path, *flags: str) -> dict:
    subprocess.run([sys.executable, "-m", "edgekit", "build", "--target", str(profile), "--no-cache",
                    "--out", str(out), *flags], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stderr=subprocess.DEVNULL)
    return json.loads((out / profile.stem / "manifest.json").read_text())


def row(step: str, folder: Path, manifest: dict, file: str) -> dict:
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    return {"step": step, "file": file, "raw": entry["bytes"], **compressed_sizes(folder / file),
            "accuracy": entry["parity"]["accuracy"]}


def mobilenet_v2(folder: Path, steps: int) -> list[str]:
    """Train the MobileNetV2 and write its factory, weights and data into `folder`; the build's model flags."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import zoo

    (folder / "mobilenet.py").write_text(MOBILENET_V2)
    sys.path.insert(0, str(folder))
    from mobilenet import make

    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    started = time.perf_counter()
    model.train()
    for step in range(steps):  # fresh samples each step: seeds from 100 on (0 and 1 are calibration and test)
        x, y = zoo.labeled_images(SHAPE, 64, 100 + step)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    calib, _ = zoo.labeled_images(SHAPE, 128, 0)
    x, y = zoo.labeled_images(SHAPE, 360, 1)
    np.savez(folder / "calib.npz", x=calib)
    np.savez(folder / "test.npz", x=x, y=y)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    print(f"trained MobileNetV2 for {steps} steps in {time.perf_counter() - started:.0f} s: "
          f"{accuracy:.2%} on the 360 test images", file=sys.stderr)
    return [f"{folder / 'mobilenet.py'}:make", "--weights", str(folder / "weights.pt"), "--calib",
            str(folder / "calib.npz"), "--eval", str(folder / "test.npz"), "--input-shape", "1,3,64,64"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["example", "mobilenet_v2"], default="example")
    parser.add_argument("--prune", default="0.3")
    parser.add_argument("--clusters", default="16")
    parser.add_argument("--train-steps", type=int, default=600, help="mobilenet_v2: training steps of batch 64")
    parser.add_argument("--student", action="store_true", help="also distil into the smaller network")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        profile = scratch / "x86_64-onnx.yaml"
        profile.write_text("extends: x86_64\ndescription: x86_64, ONNX only\nformats: [onnx]\n")
        model = mobilenet_v2(scratch, args.train_steps) if args.model == "mobilenet_v2" else []
        student = (f"{scratch / 'mobilenet.py'}:make_student" if args.model == "mobilenet_v2"
                   else "edgekit.example.model:make_student")
        steps = [("fp32", []), (f"pruned {args.prune}", ["--prune", args.prune]),
                 (f"+ {args.clusters} shared values per layer", ["--prune", args.prune, "--cluster", args.clusters])]
        for i, (name, flags) in enumerate(steps):
            out = scratch / str(i)
            manifest = build(out, profile, *model, *flags)
            rows.append(row(name, out / profile.stem, manifest, "model.fp32.onnx"))
        rows.append(row("+ INT8", out / profile.stem, manifest, "model.int8.onnx"))
        if args.student:
            out = scratch / "student"
            manifest = build(out, profile, *model, "--student", student, "--distill-steps", "1000")
            report = manifest["pruning"]
            rows.append(row(f"student ({report['macs_ratio']:.2f}x the MACs, top-1 agreement "
                            f"{report['final']['top1_agreement']:.1%})", out / profile.stem, manifest,
                            "model.fp32.onnx"))
            rows.append(row("student + INT8", out / profile.stem, manifest, "model.int8.onnx"))
    base = rows[0]
    print(f"{'step':<52} {'raw KB':>8} {'x fp32':>7} {'zip KB':>8} {'x fp32':>7} {'zstd KB':>8} {'x fp32':>7} "
          f"{'accuracy':>9}")
    for r in rows:
        print(f"{r['step']:<52} {r['raw'] / 1024:8.1f} {r['raw'] / base['raw']:7.3f} {r['zip'] / 1024:8.1f} "
              f"{r['zip'] / base['zip']:7.3f} {r['zstd'] / 1024:8.1f} {r['zstd'] / base['zstd']:7.3f} "
              f"{r['accuracy']:8.2f}%")


if __name__ == "__main__":
    main()
