"""report.html: one self-contained page per build folder, with the figures also saved under report/.

The page needs nothing but itself: CSS is inline, figures are base64 PNG data URIs, there is no
JavaScript and no link to anything outside the file, so opening it makes no network request.
"""
from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure  # Figure.savefig renders with Agg; pyplot's global state is never touched

from .manifest import Manifest
from .package import inside
from .report import artifact_rows, human_size, verdict

REPORT = "report.html"
FIGURES = "report"
KIND_STYLE = {  # emulated timings must never pass for real ones: own colour, hatching and label
    "native": {"color": "#2b6cb0", "hatch": "", "label": "native"},
    "device": {"color": "#2f855a", "hatch": "", "label": "on device"},
    "host": {"color": "#4a5568", "hatch": "", "label": "build host (in-process)"},
    "emulated": {"color": "#c05621", "hatch": "//", "label": "EMULATED (not device latency)"},
}
PRECISION_COLOR = {"fp32": "#2b6cb0", "fp16": "#805ad5", "int8": "#c53030"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1a202c; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #cbd5e0; padding: 0.3em 0.6em; text-align: left; }
th { background: #edf2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #276749; font-weight: bold; } .fail { color: #c53030; font-weight: bold; }
.emulated { color: #c05621; font-weight: bold; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #e2e8f0; }
p.none { color: #718096; font-style: italic; }
"""


def write_report(folder: Path, built: Manifest) -> Path:
    """Write `folder/report.html` and `folder/report/<figure>.png` from a build's manifest (the page renders
    its JSON document, as manifest.json holds it).

    Per-layer SNR comes from each artifact's `layers` entry: [{"name": ..., "snr_db": ...}, ...] in
    network order.
    """
    folder, manifest = Path(folder), built.to_dict()
    for written in ("report.html", FIGURES):  # a link planted in a downloaded folder must not redirect writes
        inside(folder, written, written)
    artifacts = manifest.get("artifacts", [])
    layers = {a["file"]: a["layers"] for a in artifacts if a.get("layers")}
    figures: list[tuple[str, str, Callable[..., str | None]]] = [
        ("size", "Size per artifact", lambda fig: _size_figure(fig, artifacts)),
        ("latency", "Latency per artifact (p50, whiskers to p90)", lambda fig: _latency_figure(fig, artifacts)),
        ("accuracy", "Quality per artifact against the reference", lambda fig: _quality_figure(fig, manifest)),
        ("tradeoff", "Quality against latency, per precision", lambda fig: _tradeoff_figure(fig, manifest)),
        ("energy", "Quality against estimated energy per inference (an estimate, not a measurement)",
         lambda fig: _energy_figure(fig, manifest)),
        ("layers", "Per-layer SNR along the network", lambda fig: _layers_figure(fig, artifacts, layers)),
    ]
    (folder / FIGURES).mkdir(exist_ok=True)
    sections = []
    for name, title, draw in figures:
        fig = Figure(figsize=(9, 4.5), layout="constrained")
        missing = draw(fig)  # a drawer returns a sentence instead of drawing when it has no data
        if missing:
            (folder / FIGURES / f"{name}.png").unlink(missing_ok=True)
            sections.append(f"<h3>{_e(title)}</h3><p class='none'>{_e(missing)}</p>")
            continue
        png = _png(fig)
        (folder / FIGURES / f"{name}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        sections.append(f"<figure id='fig-{name}'><h3>{_e(title)}</h3>"
                        f"<img alt='{_e(title)}' src='data:image/png;base64,{data}'></figure>")
    path = folder / REPORT
    path.write_text(_page(manifest, sections), encoding="utf-8")
    return path


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _float(value: Any) -> float | None:
    """Manifest numbers may be None or the string "inf" (JSON has no infinity)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _first_output(record: dict[str, Any]) -> dict[str, Any]:
    return next(iter(record["parity"].get("outputs", {}).values()), {})


def _quality(manifest: dict[str, Any]) -> tuple[str, float | None, Callable[[dict], float | None]]:
    """Top-1 accuracy when the held-out data is labeled, else cosine to the reference outputs."""
    if manifest.get("reference", {}).get("accuracy") is not None:
        return "accuracy (%)", manifest["reference"]["accuracy"], lambda r: _float(r["parity"].get("accuracy"))
    return "cosine to reference", 1.0, lambda r: _float(_first_output(r).get("cosine"))


def _rows_height(rows: int) -> float:
    return max(2.5, 1.2 + 0.5 * rows)


def _size_figure(fig: Figure, artifacts: list[dict]) -> str | None:
    if not artifacts:
        return "No artifact was built."
    ax = fig.subplots()
    names = [a["file"] for a in artifacts]
    kb = [a["bytes"] / 1024 for a in artifacts]
    bars = ax.barh(names, kb, color=[PRECISION_COLOR.get(a["precision"], "#718096") for a in artifacts])
    ax.bar_label(bars, labels=[human_size(a["bytes"]) for a in artifacts], padding=3)
    ax.set_xlabel("size (KB)")
    ax.invert_yaxis()
    ax.margins(x=0.15)
    fig.set_figheight(_rows_height(len(artifacts)))
    return None


def _latency_figure(fig: Figure, artifacts: list[dict]) -> str | None:
    rows = [(a["file"], b) for a in artifacts for b in a.get("benchmarks", [])]
    if not rows:
        return "Latency not measured: build with --bench (or run `edgekit bench`) to add it."
    kinds = [k for k in KIND_STYLE if any(b["kind"] == k for _, b in rows)]
    # one panel per kind: emulated and real timings never share an axis
    for ax, kind in zip(fig.subplots(len(kinds), 1, squeeze=False)[:, 0], kinds):
        style = KIND_STYLE[kind]
        mine = [(f, b) for f, b in rows if b["kind"] == kind]
        labels = [f"{f}\n{b['runner']}" for f, b in mine]
        p50 = [b["latency_ms"]["p50"] for _, b in mine]
        p90 = [b["latency_ms"]["p90"] - b["latency_ms"]["p50"] for _, b in mine]
        ax.barh(labels, p50, xerr=[[0] * len(p90), p90], color=style["color"], hatch=style["hatch"],
                edgecolor="white" if not style["hatch"] else "black", capsize=4, label=style["label"])
        where = "; ".join(sorted({b["where"] for _, b in mine}))
        ax.set_title(textwrap.fill(f"{style['label']}: {where}", 110), fontsize=9, loc="left", color=style["color"])
        ax.set_xlabel("latency (ms), bar p50, whisker p90" + (", EMULATED" if kind == "emulated" else ""))
        ax.invert_yaxis()
    fig.set_figheight(1.2 + 0.55 * len(rows) + 0.8 * len(kinds))
    return None


def _quality_figure(fig: Figure, manifest: dict) -> str | None:
    label, reference, value = _quality(manifest)
    points = [(a["file"], value(a)) for a in manifest.get("artifacts", [])]
    points = [(f, v) for f, v in points if v is not None]
    if not points:
        return "No accuracy or cosine was measured for any artifact."
    ax = fig.subplots()
    # dots, not bars: the interesting differences are tiny next to the values themselves
    ax.scatter([v for _, v in points], [f for f, _ in points], s=60, color="#2b6cb0", zorder=3)
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", label=f"reference {reference:.4g}")
        ax.legend(loc="lower left")
    ax.set_xlim(*_span([v for _, v in points], reference))
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel(label)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.set_figheight(_rows_height(len(points)))
    return None


def _span(values: list[float], reference: float | None) -> tuple[float, float]:
    """Axis limits around the values and the reference, zoomed in but never to a zero-width range."""
    values = values + ([] if reference is None else [reference])
    low, high = min(values), max(values)
    pad = max((high - low) * 0.2, abs(high) * 1e-4, 1e-9)
    return low - pad, high + pad


def _preferred_benchmark(record: dict) -> dict | None:
    """The most trustworthy timing of an artifact: device, then native, then the build host's, then emulated."""
    order = {"device": 0, "native": 1, "host": 2, "emulated": 3}
    benchmarks = sorted(record.get("benchmarks", []), key=lambda b: order.get(b["kind"], 3))
    return benchmarks[0] if benchmarks else None


def _tradeoff_figure(fig: Figure, manifest: dict) -> str | None:
    def latency(record: dict) -> tuple[float, str] | None:
        bench = _preferred_benchmark(record)
        notes = {"emulated": " (emulated)", "host": " (build host)"}
        return bench and (bench["latency_ms"]["p50"], notes.get(bench["kind"], ""))

    return _quality_against(fig, manifest, latency, "p50 latency (ms)",
                            "Quality against latency needs benchmarks: latency not measured.")


def _energy_figure(fig: Figure, manifest: dict) -> str | None:
    def energy(record: dict) -> tuple[float, str] | None:
        estimate = record.get("details", {}).get("energy_estimate")
        return estimate and (estimate["microjoules"], "")

    return _quality_against(fig, manifest, energy, "estimated energy per inference (µJ, 45 nm figures, an ESTIMATE)",
                            "No energy estimate: the build has no float ONNX graph to count MACs in.")


def _quality_against(fig: Figure, manifest: dict, x_of: Callable[[dict], tuple[float, str] | None], x_label: str,
                     missing: str) -> str | None:
    """A scatter of each artifact's quality against a cost (`x_of`: the value and a note for its label)."""
    label, reference, value = _quality(manifest)
    points = []
    for record in manifest.get("artifacts", []):
        cost, quality = x_of(record), value(record)
        if cost and quality is not None:
            points.append((record, cost, quality))
    if not points:
        return missing
    ax = fig.subplots()
    points.sort(key=lambda p: p[1][0])
    for i, (record, (x, note), quality) in enumerate(points):
        # staggered offsets keep the labels of nearly equal points apart
        ax.annotate(record["file"] + note, (x, quality), textcoords="offset points",
                    xytext=(6, 6 + 12 * (i % 4)), fontsize=8, arrowprops={"arrowstyle": "-", "color": "#a0aec0"})
    for precision in sorted({r["precision"] for r, _, _ in points}):
        mine = [(r, c, q) for r, c, q in points if r["precision"] == precision]
        ax.scatter([c[0] for _, c, _ in mine], [q for _, _, q in mine], s=70, label=precision,
                   color=PRECISION_COLOR.get(precision, "#718096"), zorder=3)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", label="reference")
    notes = {note for _, (_, note), _ in points if note}
    ax.set_xlabel(x_label + (f", {' and '.join(sorted(n.strip(' ()') for n in notes)).upper()} timings" if notes else ""))
    ax.set_ylabel(label)
    low, high = _span([q for _, _, q in points], reference)
    ax.set_ylim(low, high + (high - low) * 0.6)  # headroom for the labels
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.margins(x=0.25)
    ax.legend(title="precision")
    ax.grid(alpha=0.3)
    return None


def _layers_figure(fig: Figure, artifacts: list[dict], layers: dict[str, list[dict]]) -> str | None:
    by_file = {a["file"]: a for a in artifacts}
    # fp32 layers sit near 130 dB and would flatten the quantized curves that matter
    series = {f: rows for f, rows in layers.items() if rows and by_file.get(f, {}).get("precision") != "fp32"}
    if not series:
        return "Per-layer SNR not computed for this build."
    ax = fig.subplots()
    longest: list[str] = []
    for file, rows in series.items():
        # The lower of overall and median per-channel SNR: one huge channel can hide the others' loss.
        worst = [min((v for v in (_float(r["snr_db"]), _float(r.get("channel_snr_db"))) if v is not None),
                     default=math.nan) for r in rows]
        ax.plot(range(len(rows)), worst, marker="o", markersize=3, label=file)
        longest = max(longest, [r["name"] for r in rows], key=len)
    thresholds = {_float(by_file.get(f, {}).get("tolerance", {}).get("min_snr_db")) for f in series} - {None}
    for threshold in sorted(thresholds):
        ax.axhline(threshold, color="#c53030", linestyle="--", label=f"SNR threshold {threshold:g} dB")
    step = max(1, len(longest) // 30)  # keep tick labels readable on deep networks
    ax.set_xticks(range(0, len(longest), step), longest[::step], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SNR (dB) vs fp32, worst of overall / per channel")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.set_figheight(5.5)
    return None


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _verdict(text: str) -> str:
    style = {"pass": " class='pass'", "FAIL": " class='fail'"}.get(text, "")
    return f"<span{style}>{_e(text)}</span>"


def _table(header: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='num'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _artifact_table(artifacts: list[dict]) -> str:
    columns, rows = artifact_rows(artifacts, terminal=False)
    cells = [[_verdict(cell) if column.kind == "verdict" else _e(cell) for column, cell in zip(columns, row)]
             for row in rows]
    return _table([column.header for column in columns], cells,
                  numeric={i for i, column in enumerate(columns) if column.kind == "number"})


def _bench_table(artifacts: list[dict]) -> str:
    rows = []
    for a in artifacts:
        for b in a.get("benchmarks", []):
            latency = b["latency_ms"]
            kind = "<span class='emulated'>emulated</span>" if b["kind"] == "emulated" else _e(b["kind"])
            rows.append([_e(a["file"]), _e(b["runner"]), kind, _e(b["where"]),
                         *(f"{latency[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "min")),
                         _e(b.get("runs", "-")), _measured_energy(b),
                         _verdict(verdict(b["parity"].get("passed"))) if "parity" in b else "-"])
    if not rows:
        return "<p class='none'>Latency not measured: no benchmarks in this build.</p>"
    return _table(["artifact", "runner", "kind", "where measured", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms",
                   "runs", "measured mJ / inference", "on-target parity"], rows, numeric={4, 5, 6, 7, 8, 9, 10})


def _measured_energy(bench: dict) -> str:
    """Joules per inference a bench measured (as mJ), or why it did not, or '-' when it was not asked."""
    energy = bench.get("energy")
    if not energy:
        return "-"
    return f"{energy['joules_per_inference'] * 1e3:.4f}" if energy["measured"] else _e(f"not measured: {energy['why']}")


def _problems(manifest: dict) -> str:
    items = [f"{a['file']}: {p}" for a in manifest.get("artifacts", []) for p in a["parity"].get("failures", [])]
    items += [f"{f.get('stage')} FAILED: {f.get('error')}" for f in manifest.get("failures", [])]
    if not items:
        return "<p>No failures.</p>"
    return "<ul>" + "".join(f"<li class='fail'>{_e(i)}</li>" for i in items) + "</ul>"


def _page(manifest: dict, sections: list[str]) -> str:
    target, reference = manifest.get("target", {}), manifest.get("reference", {})
    accuracy = reference.get("accuracy")
    ref_line = (f"Reference: {_e(reference.get('engine', '?'))} {_e(reference.get('version', ''))} "
                f"({_e(reference.get('provider', ''))})"
                + (f", accuracy {accuracy:.2f}% on the held-out set" if accuracy is not None else ", no labels"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>edgekit report: {_e(target.get('name', ''))}</title><style>{CSS}</style></head>
<body>
<h1>edgekit build report: {_e(target.get('name', '?'))}</h1>
<p>{_e(target.get('description', ''))}<br>Built {_e(manifest.get('created', '?'))}. {ref_line}.</p>
<h2>Artifacts</h2>
{_artifact_table(manifest.get('artifacts', []))}
<h2>Benchmarks</h2>
{_bench_table(manifest.get('artifacts', []))}
<h2>Failures</h2>
{_problems(manifest)}
<h2>Figures</h2>
{''.join(sections)}
</body></html>
"""
