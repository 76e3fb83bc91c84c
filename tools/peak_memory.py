"""Peak resident memory of `edgekit build` on a 640x640, ~3 M-parameter detector, as a table (goal: under 4 GB).

The detector (MobileNetV2 backbone to stride 32, FPN-lite neck, score and box heads at strides 8, 16 and 32)
is defined here with deterministic random weights. It is built in a child process on smooth random images
(48 for calibration, 32 held out) under `/usr/bin/time -v`, whose "Maximum resident set size" is the
largest single process of the build; the build's own report.json splits it into edgekit and its converters.
arm64 (ONNX + TFLite, onnx2tf in a child process) takes about 6 minutes here, x86_64 (ONNX only) about 1.

    python tools/peak_memory.py [--size 640] [--target arm64|x86_64] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.example.model import IMAGENET_SETTINGS, InvertedResidual, conv_bn_act

SIZE_VARIABLE = "EDGEKIT_PEAK_MEMORY_SIZE"  # the input size, from the tool to the factory in the build process
CALIB_SAMPLES, EVAL_SAMPLES = 48, 32
LAST = 1280  # MobileNetV2's last 1x1 convolution
TAPS = {3: 32, 5: 96, 8: LAST}  # backbone stage -> its channels, feeding the neck: strides 8, 16 and 32
NECK, ANCHORS = 192, 3
LIMIT_GB = 4  # decimal gigabytes (10^9 bytes), the stricter reading of "4 GB"; sizes below are MiB
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


class Detector(nn.Module):
    """Anchor-based single-shot detector; outputs (scores (1, N, 1) after a sigmoid, boxes (1, N, 4))."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([conv_bn_act(3, 32, stride=2)])
        cin = 32
        for expansion, cout, repeats, stride in IMAGENET_SETTINGS:
            self.stages.append(nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                                expansion) for i in range(repeats)]))
            cin = cout
        self.stages.append(conv_bn_act(cin, LAST, kernel=1))
        self.lateral = nn.ModuleList([conv_bn_act(width, NECK, kernel=1) for width in TAPS.values()])
        self.smooth = nn.ModuleList([separable(NECK, NECK) for _ in TAPS])
        self.towers = nn.ModuleList([nn.Sequential(separable(NECK, NECK), separable(NECK, NECK)) for _ in TAPS])
        self.scores = nn.ModuleList([nn.Conv2d(NECK, ANCHORS, 1) for _ in TAPS])
        self.boxes = nn.ModuleList([nn.Conv2d(NECK, ANCHORS * 4, 1) for _ in TAPS])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        taps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in TAPS:
                taps.append(x)
        levels = [lateral(tap) for lateral, tap in zip(self.lateral, taps)]
        for i in range(len(levels) - 2, -1, -1):  # top-down
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="nearest")
        scores, boxes = [], []
        for level, smooth, tower, score, box in zip(levels, self.smooth, self.towers, self.scores, self.boxes):
            features = tower(smooth(level))
            scores.append(flatten_anchors(score(features), 1))
            boxes.append(flatten_anchors(box(features), 4))
        return torch.sigmoid(torch.cat(scores, 1)), torch.cat(boxes, 1)


def separable(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_act(cin, cin, groups=cin), conv_bn_act(cin, cout, kernel=1))


def flatten_anchors(x: torch.Tensor, values: int) -> torch.Tensor:
    """(B, A * values, H, W) -> (B, H * W * A, values)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, values)


def smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """Image-like inputs: noise at a few scales, upsampled and summed, in [0, 1], ImageNet-normalised."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        image = sum(F.interpolate(torch.randn(1, 3, cells, cells, generator=generator), size=(size, size),
                                  mode="bicubic", align_corners=False) / (1 + i)
                    for i, cells in enumerate((4, 16, 64)))
        image = torch.sigmoid(image)[0]
        images.append(((image - MEAN[:, None, None]) / STD[:, None, None]).numpy())
    return np.stack(images).astype(np.float32)


def make_detector() -> Detector:
    """Factory for `edgekit build`: random weights, BatchNorm statistics from one forward on calibration images.

    Depthwise kernels are a blur plus noise: zero-mean random ones are high-pass filters whose rounding noise
    BatchNorm amplifies layer after layer (bfloat16 outputs then agree with float32 at cosine 0.5, not 0.99).
    """
    size = int(os.environ.get(SIZE_VARIABLE, 640))
    torch.manual_seed(0)
    model = Detector()
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            taps = module.weight[0].numel()
            nn.init.normal_(module.weight, 1 / taps, 1 / taps)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: after one forward, that batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(smooth_images(2, size, seed=0)))
    model.input_shape = (1, 3, size, size)
    return model.eval()


def write_data(folder: Path, size: int) -> tuple[Path, Path]:
    calib, evaluation = folder / "calib.npz", folder / "eval.npz"
    np.savez(calib, x=smooth_images(CALIB_SAMPLES, size, seed=0))
    np.savez(evaluation, x=smooth_images(EVAL_SAMPLES, size, seed=1))
    return calib, evaluation


def run_build(calib: Path, evaluation: Path, target: str, out: Path, size: int) -> tuple[float, float, str]:
    """The build in a child process; returns its wall time (s), its peak RSS (MiB) and how that was measured."""
    command = [sys.executable, "-m", "edgekit", "build", f"{Path(__file__).resolve()}:make_detector",
               "--calib", str(calib), "--eval", str(evaluation), "--target", target, "--out", str(out),
               "--keep-going", "--quiet"]
    timer = shutil.which("time", path="/usr/bin")
    usage = out.parent / "time.txt"
    if timer:
        command = [timer, "-v", "-o", str(usage), *command]
    start = time.perf_counter()
    subprocess.run(command, env={**os.environ, SIZE_VARIABLE: str(size)}, check=False)
    wall = time.perf_counter() - start
    if timer:
        line = next(line for line in usage.read_text().splitlines() if "Maximum resident set size" in line)
        return wall, int(line.rsplit(":", 1)[1]) / 1024, "/usr/bin/time -v"
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "getrusage(RUSAGE_CHILDREN)"


def verdict(record: dict) -> str:
    parity = record["parity"]
    return "pass" if parity["passed"] else f"FAIL: {'; '.join(parity['failures'])[:110]}"


def print_table(size: int, folder: Path, wall: float, peak: float, how: str) -> None:
    if not (folder / "report.json").is_file():
        sys.exit(f"the build made no {folder} (its error is above)")
    manifest = json.loads((folder / "manifest.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    outputs = ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in manifest["model_io"]["outputs"])
    rows = [("model", f"detector {size}x{size}: {outputs}"),
            ("parameters", f"{sum(p.numel() for p in Detector().parameters()):,}"),
            ("MACs", f"{manifest['artifacts'][0]['details']['macs']:,}"),
            ("target", manifest["target"]["name"]),
            ("wall time", f"{wall:.0f} s"),
            (f"peak RSS, largest process ({how})", f"{peak:,.0f} MiB"),
            ("report.json peak_rss_mb edgekit", f"{report['peak_rss_mb']['edgekit']:,.0f} MiB"),
            ("report.json peak_rss_mb converters", f"{report['peak_rss_mb']['converters']:,.0f} MiB"),
            ("layerwise samples", str(manifest["layerwise"].get("samples", manifest["layerwise"].get("why"))))]
    rows += [(f"parity {record['file']}", verdict(record)) for record in manifest["artifacts"]]
    rows += [(f"not made: {failure['format']} ({failure['stage']})", failure["error"][:110])
             for failure in manifest["failures"]]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    gigabytes = peak * 2**20 / 1e9
    print(f"\npeak {gigabytes:.2f} GB ({peak / 1024:.2f} GiB): {'under' if gigabytes < LIMIT_GB else 'OVER'} "
          f"the {LIMIT_GB} GB bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="input height and width (default 640)")
    parser.add_argument("--target", default="arm64", help="arm64 (ONNX + TFLite) or x86_64 (ONNX only, faster)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the data and the build output in DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-peak-memory-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        calib, evaluation = write_data(folder, args.size)
        wall, peak, how = run_build(calib, evaluation, args.target, folder / "build", args.size)
        print_table(args.size, folder / "build" / args.target, wall, peak, how)


if __name__ == "__main__":
    main()
