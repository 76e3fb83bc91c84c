"""The planted fragile layer, end to end: where full INT8 breaks and what the float-fallback plan fixes.

Builds the example with one channel of features.6.block.2.1 scaled x1000 (scaled back where it is read,
so the float model is unchanged) twice for arm64, ONNX and full-integer TFLite: plain INT8, and with
`--float-fallback auto`. Prints accuracy per artifact, the first diverging layer `edgekit debug`
names in each format, and the layers the plan kept in float.

    python tools/fallback_table.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from edgekit import example, package, recipe  # noqa: E402
from edgekit.layerwise.divergence import divergence, held_out_inputs  # noqa: E402
from edgekit.pipeline import build  # noqa: E402
from edgekit.report import Progress  # noqa: E402

PROFILE = "extends: arm64\ndescription: arm64, fp32 and full-integer INT8 TFLite\ntflite: {precisions: [fp32, int8]}\n"
ARTIFACTS = ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.int8.tflite"]


def build_planted(scratch: Path, name: str, fallback: str | None) -> Path:
    profile = scratch / "arm64-int8.yaml"
    profile.write_text(PROFILE)
    made = recipe.make(None, {"model": f"{ROOT / 'tests' / 'models.py'}:planted_digits", "targets": [str(profile)],
                              "input_shape": [1, 1, 32, 32], "out": str(scratch / name), "keep_going": True,
                              "eval": str(example.TEST), "calibration": {"data": str(example.CALIB)},
                              "float_fallback": fallback})
    (result,) = build(made, Progress(quiet=True))
    return result.folder


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-fallback-") as scratch:
        plain = build_planted(Path(scratch), "plain", None)
        planned = build_planted(Path(scratch), "planned", "auto")
        manifests = {"full INT8": package.read_manifest(plain), "INT8 + float fallback": package.read_manifest(planned)}
        found = divergence(plain, manifests["full INT8"], "torch",
                           held_out_inputs(plain, manifests["full INT8"], None, 64))
    print("Planted fragile layer (features.6.block.2.1, one channel x1000), 360 held-out digits\n")
    print(f"{'artifact':<20} {'full INT8 build':>16} {'with fallback':>14}")
    accuracy = {label: {a.name: a.parity["accuracy"] for a in m.artifacts} for label, m in manifests.items()}
    for name in ARTIFACTS:
        print(f"{name:<20} {accuracy['full INT8'][name]:>15.2f}% {accuracy['INT8 + float fallback'][name]:>13.2f}%")
    print()
    for name in ("model.int8.onnx", "model.int8.tflite"):
        first = found["artifacts"][name]["first_divergence"]
        print(f"first divergence in {name:<18}: {first['reference']} (SNR {first['snr_db']:.1f} dB, "
              f"per channel {first['channel_snr_db']:.1f} dB)")
    plan = manifests["INT8 + float fallback"].precision_plan
    search = plan["search"]
    print(f"\nplan ({plan['how']}, {search['evaluations']} candidates scored on {search['samples']} calibration "
          f"samples, {search['seconds']['quantize'] + search['seconds']['search']:.1f} s): "
          f"{search['nodes']['float']} of {search['nodes']['quantized']} quantized ONNX nodes kept float")
    for layer in plan["layers"]:
        print(f"  {layer['onnx_node']:<16} {layer['module'] or '(no PyTorch module of its own)'}")
    coverage = found["coverage"]
    for key, cov in coverage.items():
        print(f"{key.replace('_', ' ')}: {cov['mapped'] + cov['fused']}/{cov['nodes']} ({cov['fraction']:.0%})")


if __name__ == "__main__":
    main()
