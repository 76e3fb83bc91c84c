"""report.html opened in a real headless Chromium: every figure is drawn on the page, and the page asks for
nothing over the network."""
from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from edgekit.cli import main  # noqa: E402
from edgekit.html_report import write_report  # noqa: E402
from edgekit.manifest import Manifest  # noqa: E402

EMBEDDED = re.compile(r"src='data:image/png;base64,([^']+)'")
FIGURE_ID = re.compile(r"<figure id='fig-(\w+)'")
WIDTH, HEIGHT = 1200, 7000  # tall enough for the whole page: the CLI screenshots the viewport only


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Path:
    """x86_64 (the quickest target) built and benchmarked natively, as `edgekit build --bench` leaves it."""
    import torch

    out = tmp_path_factory.mktemp("html_report")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference pass is 20x slower with torch's default threads on a busy 2-core host
    try:
        assert main(["build", "--target", "x86_64", "--bench", "--runner", "native", "--runs", "5", "--out", str(out),
                     "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "x86_64"


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Chromium (apt-get install chromium), or root on Debian to install it")
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    return shutil.which("chromium")


def render(chromium: str, page: Path, work: Path) -> tuple[np.ndarray, list[str]]:
    """Screenshot of `page` and the URLs the page itself asked the network stack for."""
    shot, netlog = work / "screenshot.png", work / "netlog.json"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", "--force-device-scale-factor=1", "--force-color-profile=srgb",
                    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing leaves this machine, yet requests are logged
                    f"--user-data-dir={work / 'profile'}", f"--log-net-log={netlog}", f"--screenshot={shot}",
                    f"--window-size={WIDTH},{HEIGHT}", page.resolve().as_uri()],
                   capture_output=True, check=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB")), page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs requested on the page's behalf. file:// and data: never reach the network stack, so any URL here is a
    network request; Chromium's own background calls (update checks, network time) carry no initiator origin."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and "url" in e.get("params", {}) and e["params"].get("initiator") != "not an origin"]


def packed(pixels: np.ndarray) -> np.ndarray:
    """One integer per RGB pixel, so counting colours is a fast 1-D unique."""
    return pixels[..., 0].astype(np.uint32) << 16 | pixels[..., 1].astype(np.uint32) << 8 | pixels[..., 2]


def locate(screen: np.ndarray, figure: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner where `figure` appears pixel for pixel in `screen` (shown 1:1 in sRGB), or None."""
    colours = packed(figure)
    row = max(range(len(colours)), key=lambda y: len(np.unique(colours[y])))  # the most distinctive row
    needle, haystack, stride = figure[row].tobytes(), screen.tobytes(), screen.shape[1] * 3
    at = haystack.find(needle)
    while at >= 0:
        y, x = divmod(at, stride)
        if x % 3 == 0:
            top, left = y - row, x // 3
            crop = screen[top:top + figure.shape[0], left:left + figure.shape[1]]
            if top >= 0 and crop.shape == figure.shape and np.array_equal(crop, figure):
                return top, left
        at = haystack.find(needle, at + 1)
    return None


def assert_drawn(pixels: np.ndarray, what: str) -> None:
    colours = len(np.unique(packed(pixels)))
    inked = (pixels < 240).any(axis=2).mean()
    assert colours > 50 and inked > 0.01, f"{what} looks blank: {colours} colours, {inked:.1%} non-white"


def test_report_renders_in_chromium_without_network(build, chromium, tmp_path):
    manifest = json.loads((build / "manifest.json").read_text())
    page = write_report(build, Manifest.from_dict(manifest, "manifest.json"))
    assert any(a.get("layers") for a in manifest["artifacts"])  # the build measured per-layer SNR
    html = page.read_text()

    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert all(ref.startswith("data:") for ref in re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)", html, re.I))
    assert not re.search(r"url\(|@import", html, re.I)
    for artifact in manifest["artifacts"]:
        assert artifact["file"] in html and artifact["benchmarks"][0]["where"] in html

    names = FIGURE_ID.findall(html)
    assert names == ["size", "latency", "accuracy", "tradeoff", "energy", "layers"]
    figures = {}
    for name, data in zip(names, EMBEDDED.findall(html), strict=True):
        png = base64.b64decode(data)
        assert (build / "report" / f"{name}.png").read_bytes() == png, f"report/{name}.png differs from the page's"
        figures[name] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert_drawn(figures[name], f"embedded {name}.png")

    screen, requests = render(chromium, page, tmp_path)
    assert requests == [], f"the report made network requests: {requests}"
    assert_drawn(screen[:300], "the page header and tables")
    for name, figure in figures.items():
        corner = locate(screen, figure)
        assert corner is not None, f"{name} figure is not on the rendered page"
        top, left = corner
        assert_drawn(screen[top:top + figure.shape[0], left:left + figure.shape[1]], f"{name} figure on screen")


def test_network_check_sees_a_page_request(chromium, tmp_path):
    """The check above would catch a leak: a page that loads a remote image is reported."""
    page = tmp_path / "leaky.html"
    page.write_text("<!DOCTYPE html><p>leak</p><img src='http://127.0.0.1:9/leak.png'>")
    _, requests = render(chromium, page, tmp_path)
    assert requests == ["http://127.0.0.1:9/leak.png"]


def test_missing_data_reads_as_sentences_and_emulation_is_labeled(build, tmp_path):
    manifest = json.loads((build / "manifest.json").read_text())
    bare = copy.deepcopy(manifest)
    for artifact in bare["artifacts"]:
        artifact.pop("benchmarks", None)
        artifact.pop("layers", None)
    html = write_report(tmp_path, Manifest.from_dict(bare, "bare")).read_text()
    assert FIGURE_ID.findall(html) == ["size", "accuracy", "energy"]  # the energy estimate needs no benchmark
    assert "Latency not measured" in html and "Per-layer SNR not computed" in html
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["accuracy.png", "energy.png", "size.png"]

    emulated = copy.deepcopy(manifest)
    for artifact in emulated["artifacts"]:
        artifact["benchmarks"] = [{**b, "runner": "qemu", "kind": "emulated", "where": "emulated arm64 (QEMU)"}
                                  for b in artifact["benchmarks"]]
    html = write_report(tmp_path, Manifest.from_dict(emulated, "emulated")).read_text()
    assert "<span class='emulated'>emulated</span>" in html and "latency" in FIGURE_ID.findall(html)
