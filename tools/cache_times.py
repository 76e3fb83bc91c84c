"""Wall time of the bundled example's arm64 build: cold, re-run with nothing changed, with only a tolerance
changed, and with only the calibration method changed, through one fresh stage cache. Prints a table.

    python tools/cache_times.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(out: Path, env: dict[str, str], *flags: str) -> tuple[float, list[str], str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgekit", "build", "--out", str(out), "--quiet", *flags],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(done.stderr)
    target = flags[flags.index("--target") + 1]
    report = json.loads((out / Path(target).stem / "report.json").read_text())
    passed = not report["failures"] and all(a["parity"]["passed"] for a in report["artifacts"])
    return seconds, report["cached_stages"], "pass" if passed else "FAIL"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-cache-times-") as scratch:
        root = Path(scratch)
        env = {**os.environ, "EDGEKIT_STAGE_CACHE": str(root / "cache")}
        strict = root / "arm64-strict.yaml"
        strict.write_text("extends: arm64\ndescription: arm64 with a tighter INT8 cosine\n"
                          "output_tolerances: {output: {int8: {min_cosine: 0.99999}}}\n")
        runs = [("cold (empty cache)", ["--target", "arm64"]),
                ("nothing changed", ["--target", "arm64"]),
                ("only a tolerance changed", ["--target", str(strict), "--keep-going"]),
                ("only the calibration method changed", ["--target", "arm64", "--calib-method", "percentile"])]
        print(f"{'run':<38} {'wall s':>7}  {'gate':<5} stages from the cache")
        for index, (name, flags) in enumerate(runs):
            seconds, cached, gate = build(root / f"out{index}", env, *flags)
            print(f"{name:<38} {seconds:7.1f}  {gate:<5} {'; '.join(cached) or '-'}")


if __name__ == "__main__":
    main()
