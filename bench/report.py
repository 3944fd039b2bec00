"""Writes docs/benchmarks.md from a results dict (see run.py) — tables only, no judgement
beyond the target checks; the human-written analysis is bench/NOTES.md, included verbatim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import summary
from summary import LABELS, Cell

BENCH = Path(__file__).resolve().parent


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def _measured(t: summary.Target) -> str:
    if t.measured is None:
        return "not measured"
    digits = 0 if t.unit == "%" else 2
    mark = "✅" if t.met else "❌"
    return f"{mark} {t.measured:.{digits}f} {t.unit}"


def _targets(results: dict[str, Any], cells: list[Cell]) -> list[str]:
    current = summary.targets(cells, results["memory"])
    candidate = (summary.targets(cells, results["memory"], "cand-")
                 if any(c.config.startswith("cand-") for c in cells) else None)
    head = "| figure (full OTLP tracing) | target | otel-responses |"
    rule = "|---|---|---|"
    if candidate:
        head, rule = head + " candidate fix |", rule + "---|"
    lines = [head, rule]
    for i, t in enumerate(current):
        row = f"| {t.figure} | {t.target} | {_measured(t)} |"
        if candidate:
            row += f" {_measured(candidate[i])} |"
        lines.append(row)
    return lines


def _nonstream(cells: list[Cell], scenario: str) -> list[str]:
    lines = ["| c | configuration | p50 ms | p95 ms | p99 ms | added p50 / p95 / p99 ms "
             "| p50 × direct | req/s | req/s × direct | server CPU s / 1k req | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (c for c in cells if c.scenario == scenario):
        direct = summary.find(cells, scenario, c.concurrency, "direct")
        added = ("–" if c.added_p50 is None else
                 f"{_f(c.added_p50, 3, True)} / {_f(c.added_p95, 3, True)} / "
                 f"{_f(c.added_p99, 3, True)}")
        lines.append(
            f"| {c.concurrency} | {LABELS[c.config]} | {_f(c.p50, 3)} | {_f(c.p95, 3)} "
            f"| {_f(c.p99, 3)} | {added} | {_ratio(c.p50, direct.p50 if direct else None)} "
            f"| {c.throughput:.0f} | {_ratio(c.throughput, direct.throughput if direct else None)}"
            f" | {c.cpu_ms:.3f} | {c.errors} |")
    return lines


def _stream(cells: list[Cell], scenario: str) -> list[str]:
    lines = ["| c | configuration | TTFT p50 ms | TTFT p99 ms | added TTFT p50 / p99 ms "
             "| stream p50 ms | added stream p50 ms | per-event µs | streams/s "
             "| server CPU s / 1k streams | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (c for c in cells if c.scenario == scenario):
        added_ttft = ("–" if c.added_ttft_p50 is None else
                      f"{_f(c.added_ttft_p50, 3, True)} / {_f(c.added_ttft_p99, 3, True)}")
        lines.append(
            f"| {c.concurrency} | {LABELS[c.config]} | {_f(c.ttft_p50, 3)} "
            f"| {_f(c.ttft_p99, 3)} | {added_ttft} | {_f(c.p50, 3)} "
            f"| {_f(c.added_p50, 3, True)} | {_f(c.per_event_us, 1, True)} "
            f"| {c.throughput:.0f} | {c.cpu_ms:.3f} | {c.errors} |")
    return lines


def _saturation(cells: list[Cell], meta: dict[str, Any]) -> list[str]:
    scenarios: dict[str, str] = meta["scenarios"]
    configs = [k for k in summary.CONFIGS if any(c.config == k for c in cells)]
    head = " | ".join(LABELS[k] for k in configs)
    lines = [f"| scenario | {head} | tracing ÷ off | tracing ÷ LiteLLM |",
             "|---" * (len(configs) + 3) + "|"]
    for name, title in scenarios.items():
        if summary.is_paced(meta, name):
            continue
        sat = {k: summary.saturation(cells, name, k) for k in configs}
        row = " | ".join(f"{sat[k]:.0f}" for k in configs)
        lines.append(f"| {title} | {row} | {_ratio(sat.get('traced'), sat.get('off'))} "
                     f"| {_ratio(sat.get('traced'), sat.get('litellm'))} |")
    return lines


def _memory(memory: list[dict[str, Any]]) -> list[str]:
    lines = ["| configuration | streams open / asked | time to open s | RSS before MB "
             "| RSS with streams open MB | growth per open stream KB |",
             "|---|---|---|---|---|---|"]
    for m in memory:
        lines.append(
            f"| {LABELS[m['config']]} | {m['opened']} / {m['requested']} | {m['open_s']:.1f} "
            f"| {m['rss_before_kb'] / 1024:.1f} | {m['rss_open_kb'] / 1024:.1f} "
            f"| {m['per_stream_kb']:.1f} |")
    return lines


def write(results: dict[str, Any], path: Path, png_name: str) -> None:
    cells = summary.cells(results["runs"])
    meta = results["meta"]
    scenarios = meta["scenarios"]
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} — {meta['machine']}; "
        f"otel-responses {meta['package']}. Every configuration ran side by side in this one "
        "run, against the same upstream, interleaved (the order rotates each repetition); "
        f"each figure is the median of {meta['repeats']} repetitions. Do not edit by hand: "
        "re-run the suite (the analysis below comes from `bench/NOTES.md`).",
        "",
        f"![latency percentiles, throughput and CPU per configuration]({png_name})",
        "",
        "## Targets",
        "",
        *_targets(results, cells),
        "",
        "## How it was measured",
        "",
        *[f"- {line}" for line in meta["method"]],
        "",
        "**Reproduce:** `python bench/run.py` (≈10 min; `--quick` ≈2 min, one repetition, "
        "shorter runs, 300 streams; `--no-litellm` skips the peer; `--help` for the rest). "
        "It installs matplotlib, py-spy and LiteLLM into `bench/.venv-*` on first use, starts "
        "every server itself and writes this page, the plot and `bench/out/results.json`.",
        "",
    ]
    streams = [n for n in scenarios if summary.is_stream(meta, n)]
    for name, title in scenarios.items():
        if name in streams:
            continue
        out += [f"## {title[0].upper()}{title[1:]}", "", *_nonstream(cells, name), ""]
    for i, name in enumerate(streams):
        title, spec = scenarios[name], summary.spec(meta, name)
        text = []
        if i == 0:
            text.append("TTFT: from the request's first byte written to the first "
                        "`response.output_text.delta` read. Per-event overhead: added stream "
                        "duration ÷ events in the stream.")
        if spec["pause_ms"]:
            text.append(f"One stream at a time, each sent {spec['pause_ms']:g} ms after the "
                        "previous one ended, to measure the proxy's own latency rather than "
                        "three processes contending for the CPU; streams/s is set by the pause."
                        )
        out += [f"## {title[0].upper()}{title[1:]}", "",
                *([" ".join(text), ""] if text else []), *_stream(cells, name), ""]
    out += ["## Throughput at saturation (req/s, best over the concurrency levels)", "",
            *_saturation(cells, meta), ""]
    if results["memory"]:
        out += [f"## Memory: {meta['streams']:,} open streams (slow upstream, "
                f"{meta['slow_token_delay']} s between deltas)", "",
                "Fresh servers, warmed with 20 streams; RSS of the server process (and any "
                "children) before and while every stream is held open.", "",
                *_memory(results["memory"]), ""]
    if meta.get("notes"):
        out += ["## Run notes", "", *[f"- {n}" for n in meta["notes"]], ""]
    notes = BENCH / "NOTES.md"
    if notes.exists():
        out += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(out))
