"""What a person reads: progress on the long steps and the summary table of a build or check."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

from .device import runner as device_runner


class Progress:
    """Prints each step as it starts and ends (on stderr) and keeps the timings for report.json."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        # Held here: a stage that silences a library swaps sys.stderr while a background stage still reports.
        self.stream = sys.stderr

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self._print(f"  {label} ...")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[label] = round(seconds, 3)
        self._print(f"  {label} done in {seconds:.1f} s")

    def note(self, text: str) -> None:
        self._print(f"  {text}")

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)


@dataclass(frozen=True)
class Column:
    """One column of the per-artifact table, for the terminal summary and report.html alike."""
    header: str
    cell: Callable[[dict[str, Any], dict[str, float]], str]  # (artifact record, its worst metrics) -> text
    kind: Literal["text", "number", "verdict"] = "text"  # report.html right-aligns numbers, colours verdicts
    terminal: bool = True  # False: only report.html shows it, the terminal summary stays narrow


ARTIFACT_COLUMNS = [
    Column("artifact", lambda record, worst: record["file"]),
    Column("format", lambda record, worst: record["format"], terminal=False),
    Column("precision", lambda record, worst: record["precision"], terminal=False),
    Column("size", lambda record, worst: human_size(record["bytes"]), "number"),
    Column("parity", lambda record, worst: verdict(record["parity"]["passed"]), "verdict"),
    Column("max abs err", lambda record, worst: _number(worst.get("max_abs_error"), "{:.2e}"), "number"),
    Column("cosine", lambda record, worst: _number(worst.get("cosine"), "{:.6f}"), "number"),
    Column("SNR dB", lambda record, worst: _number(worst.get("snr_db"), "{:.1f}"), "number"),
    Column("top-1 agree", lambda record, worst: _number(worst.get("top1_agreement"), "{:.1%}"), "number"),
    Column("accuracy", lambda record, worst: _number(record["parity"].get("accuracy"), "{:.2f}%"), "number"),
    Column("host p50 ms", lambda record, worst: _number(_host_p50(record), "{:.3f}"), "number"),
    Column("energy est. µJ", lambda record, worst: _number(record.get("details", {}).get("energy_estimate", {})
                                                          .get("microjoules"), "{:.2f}"), "number"),
    Column("verified on", lambda record, worst: record.get("verified_on", "-"), terminal=False),
    Column("accelerated", lambda record, worst: delegation_text(record) or "-", terminal=False),
]


def _host_p50(record: dict[str, Any]) -> float | None:
    """The build's own timing of an artifact on the build host (runner "build"), if it was timed."""
    return next((b["latency_ms"]["p50"] for b in record.get("benchmarks", []) if b["runner"] == "build"), None)


def delegation_text(record: dict[str, Any]) -> str | None:
    """What the delegate or execution provider took of an artifact and what it left, where the build recorded it."""
    delegation = record.get("details", {}).get("delegation")
    return device_runner.delegation_text(delegation) if delegation else None


def artifact_rows(artifacts: list[dict[str, Any]], terminal: bool = True) -> tuple[list[Column], list[list[str]]]:
    """The per-artifact table as plain text cells: one row per artifact, each metric at its worst over the
    outputs. `terminal` leaves out the columns only report.html shows."""
    columns = [column for column in ARTIFACT_COLUMNS if column.terminal or not terminal]
    rows = []
    for record in artifacts:
        worst = worst_outputs(record["parity"].get("outputs", {}))
        rows.append([column.cell(record, worst) for column in columns])
    return columns, rows


def slower_lines(timings: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One sentence per (artifact, benchmark record) slower than its fp32 sibling: the same format in fp32, or
    for a compressed model's fp32 ONNX, the original model's."""
    lines = []
    for file, record in timings:
        slower = record.get("slower_than_fp32")
        if slower:
            where = "the build host" if record["runner"] == "build" else record["runner"]
            lines.append(f"  {file} is SLOWER than {slower['sibling']} on {where} "
                         f"({record['latency_ms']['p50']:.3f} ms against {slower['sibling_p50_ms']:.3f} ms p50, "
                         f"{record['machine'].get('cpu_model') or 'unknown CPU'}): {slower['why']}")
    return lines


def summary_table(artifacts: list[dict[str, Any]], failures: list[dict[str, str]]) -> str:
    """One row per artifact: size, verdict and the numbers that decided it; then what went wrong."""
    columns, rows = artifact_rows(artifacts)
    lines = _aligned([[column.header for column in columns], *rows])
    problems = [f"  {r['file']}: {problem}" for r in artifacts
                for problem in r["parity"].get("failures", []) + r["parity"].get("hints", [])]
    problems += [f"  {f['stage']} FAILED: {f['error']}" for f in failures]
    delegated = [f"  {r['file']}: {delegation_text(r)}" for r in artifacts if delegation_text(r)]
    timings = [(r["file"], b) for r in artifacts for b in r.get("benchmarks", [])]
    hosts = sorted({f"  host p50: {b['where']}; {b['runs']} runs of one batch after {b['warmup']} warm-up"
                    for _, b in timings if b["runner"] == "build"})
    packed = [f"{r['file']} {human_size(r['details']['compressed_bytes']['zstd'])} / "
              f"{human_size(r['details']['compressed_bytes']['zip'])}" for r in artifacts
              if r.get("details", {}).get("compressed_bytes")]
    compressed = [f"  compressed (zstd / zip): {'; '.join(packed)}"] if packed else []
    energy = ["  energy est. µJ: per inference (one call of the model's input shape), from MACs by precision and "
              "bytes moved (45 nm figures, Horowitz ISSCC 2014): relative between artifacts, not a measurement"] if any(
        r.get("details", {}).get("energy_estimate") for r in artifacts) else []
    # The build's own timings; a bench runner's comparisons are printed under its bench table.
    built = [(file, record) for file, record in timings if record["runner"] == "build"]
    return "\n".join(lines + problems + delegated + compressed + hosts + energy + slower_lines(built))


def verdict(passed: bool | None) -> str:
    """A parity verdict as text; None is parity that was not computed."""
    return "not computed" if passed is None else "pass" if passed else "FAIL"


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def worst_outputs(outputs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each metric at its worst over the outputs (largest error, smallest agreement): one row per artifact."""
    worst: dict[str, float] = {}
    for metrics in outputs.values():
        for key, value in metrics.items():
            value = float(value)  # "inf" from JSON
            worse = max if key.startswith(("max_", "mean_")) else min
            worst[key] = worse(worst[key], value) if key in worst else value
    return worst


def human_size(count: int) -> str:
    """Bytes as B / KB / MB / GB with one decimal."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _number(value: Any, pattern: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" from JSON
        return value
    return pattern.format(value)


def bench_table(records: list[dict[str, Any]]) -> str:
    """Latency and on-target parity per artifact, beside host parity; where it ran is spelled out."""
    header = ["artifact", "runner", "p50 ms", "p90 ms", "p99 ms", "mean ms", "load ms", "peak MB",
              "host parity", "on-target parity"]
    rows = [header]
    for r in records:
        latency, host = r["latency_ms"], r["host_parity"]
        rows.append([r["file"], f"{r['runner']} ({r['kind']})", *(f"{latency[k]:.3f}" for k in ("p50", "p90", "p99", "mean")),
                     f"{r['load_ms']:.0f}", f"{r['peak_rss_mb']:.0f}",
                     "-" if host is None else verdict(host["passed"]), verdict(r["parity"]["passed"])])
    lines = _aligned(rows)
    lines += sorted({f"  {r['runner']}: {r['where']}; {r['runtime'].get('name')} {r['runtime'].get('version')}, "
                     f"{r['runtime'].get('used')}, {r['threads']} thread(s), {r['runs']} runs after {r['warmup']} "
                     f"warm-up" for r in records})
    lines += [f"  {r['file']} on {r['runner']}: {problem}" for r in records for problem in r["parity"].get("failures", [])]
    return "\n".join(lines + energy_lines(records) + slower_lines([(r["file"], r) for r in records]))


def energy_lines(records: list[dict[str, Any]]) -> list[str]:
    """Measured joules per inference, with the window and the source; or, once, why there is no reading."""
    measured = [(r["file"], r["energy"]) for r in records if r.get("energy", {}).get("measured")]
    lines = [f"  {file}: {e['joules_per_inference'] * 1e3:.4f} mJ per inference MEASURED over {e['window_s']:.1f} s "
             f"({e['inferences']} inferences; idle {e['idle_watts']:.2f} W subtracted, active {e['active_watts']:.2f} W; "
             f"{e['source']})" for file, e in measured]
    missing = sorted({r["energy"]["why"] for r in records if r.get("energy") and not r["energy"]["measured"]})
    return lines + [f"  energy not measured: {why}" for why in missing]


def divergence_table(result: dict[str, Any]) -> str:
    """Per artifact: SNR, per-channel SNR, cosine and max error per layer, then where INT8 first breaks."""
    thresholds = ", ".join(f"{precision} {value:g} dB" for precision, value in result["thresholds_db"].items())
    lines = [f"reference: {result['reference']}, {result['samples']} samples, divergence below: {thresholds}"]
    for name, cov in result["coverage"].items():
        lines.append(f"{name.replace('_', ' ')}: {cov['mapped'] + cov['fused']}/{cov['nodes']} mapped "
                     f"({cov['fraction']:.0%})")
    for file, data in result["artifacts"].items():
        lines += ["", f"{file}  ({len(data['rows'])} layers mapped)",
                  f"  {'layer':<36} {'kind':<18} {'SNR dB':>8} {'ch SNR':>8} {'cosine':>9} {'max err':>9}"]
        for row in data["rows"]:
            lines.append(f"  {row['reference'][:36]:<36} {row['kind'][:18]:<18} {_db(row['snr_db'])} "
                         f"{_db(row['channel_snr_db'])} {row['cosine']:9.5f} {row['max_abs_error']:9.3g}")
        first, drop = data["first_divergence"], data["largest_drop"]
        lines.append(f"  first divergence: {first['reference'] if first else 'none'}"
                     + (f" (SNR {_db(first['snr_db']).strip()} dB, per channel {_db(first['channel_snr_db']).strip()} dB)"
                        if first else f" (every layer above {data['threshold_db']:g} dB)"))
        if drop:
            lines.append(f"  largest drop:     {drop['reference']}")
    lines += [f"\n{file}: no per-layer numbers ({why})" for file, why in result["not_mapped"].items()]
    return "\n".join(lines)


def _db(value: float) -> str:
    return f"{value:8.1f}" if value not in (float("inf"), float("-inf")) else f"{str(value):>8}"


def plan_line(plan: dict[str, Any]) -> str:
    """How many nodes the precision plan keeps float, what that bought and what it costs."""
    search = plan.get("search")
    if not search:
        return f"precision plan ({plan['how']}): {len(plan['float_nodes'])} ONNX nodes kept float"
    before, after = search["full_int8"], search["score"]
    line = (f"precision plan (auto): {search['nodes']['float']} of {search['nodes']['quantized']} quantized nodes "
            f"kept float; on {search['samples']} calibration samples SNR {_number(before['snr_db'], '{:.1f}')} -> "
            f"{_number(after['snr_db'], '{:.1f}')} dB")
    if after.get("top1_agreement") is not None:
        line += f", top-1 agreement {before['top1_agreement']:.1%} -> {after['top1_agreement']:.1%}"
    line += f", budget {'met' if search['met'] else 'NOT met'} in {search['evaluations']} evaluations"
    cost = search.get("cost")
    if cost:
        size, latency = cost["bytes"], cost["host_latency_ms"]
        line += (f"; cost: INT8 ONNX {human_size(size['full_int8'])} -> {human_size(size['with_plan'])}, "
                 f"host latency {latency['full_int8']:.2f} -> {latency['with_plan']:.2f} ms ({cost['measured_on']})")
    return line


def pruning_line(report: dict[str, Any]) -> str:
    """MACs, parameters and accuracy before and after pruning + recovery, in one line."""
    before, after, config = report["original"], report["final"], report["config"]
    chosen = report.get("search", {}).get("chosen")
    asked = [f"ratio {chosen} (searched)" if chosen is not None else
             f"ratio {config['ratio']}" if config["ratio"] is not None else None,
             f"sparsity {config['sparsity']}" if config.get("sparsity") else None,
             f"{config['cluster']['clusters']} shared values per layer" if config.get("cluster") else None]
    if config.get("student"):
        asked, what, made = [f"student {config['student']}, {config['steps']} steps"], "distilled", "student"
    else:
        what = made = "pruned" if any(asked[:2]) else "weights shared"
    quality = ""
    if before.get("accuracy") is not None:
        quality = f"; float accuracy: original {before['accuracy']:.2f}%, {made} {after['accuracy']:.2f}%"
    if after.get("top1_agreement") is not None:
        quality += f"; top-1 agreement with the original {after['top1_agreement']:.1%}"
    if after.get("output_cosines"):
        quality += f"; cosine to the original per output {', '.join(f'{c:.4f}' for c in after['output_cosines'])}"
    original = report.get("original_host_latency")
    timing = (f"; the original as fp32 ONNX: {original['latency_ms']['p50']:.3f} ms p50 on the build host"
              if original else "")
    return (f"{what} ({', '.join(a for a in asked if a)}): MACs {before['macs']:,} -> {after['macs']:,} "
            f"({report['macs_ratio']:.2f}x), parameters {before['parameters']:,} -> {after['parameters']:,}{quality}"
            f"{timing}")
