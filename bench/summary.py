"""Repeated runs → medians, side-by-side differences against direct, and the target checks.

Differences are taken per repetition (each repetition ran every configuration back to back),
then the median of those differences is reported: drift between repetitions cancels out.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

CONFIGS = ("direct", "traced", "off", "cand-traced", "cand-off", "litellm")
LABELS = {
    "direct": "direct (no proxy)",
    "traced": "otel-responses, OTLP tracing",
    "off": "otel-responses, tracing off",
    "cand-traced": "candidate fix, OTLP tracing",
    "cand-off": "candidate fix, tracing off",
    "litellm": "LiteLLM proxy",
}
Run = dict[str, Any]


def spec(meta: dict[str, Any], scenario: str) -> dict[str, Any]:
    """A scenario's ``stream`` / ``pause_ms`` / ``levels``; results from before
    ``scenario_specs`` was recorded only had the ``stream`` scenario as a stream."""
    default = {"stream": scenario in ("stream", "spaced"), "pause_ms": 0.0, "levels": None}
    return {**default, **meta.get("scenario_specs", {}).get(scenario, {})}


def is_stream(meta: dict[str, Any], scenario: str) -> bool:
    return bool(spec(meta, scenario)["stream"])


def is_paced(meta: dict[str, Any], scenario: str) -> bool:
    """Requests spaced apart: its throughput is set by the pause, not by saturation."""
    return bool(spec(meta, scenario)["pause_ms"])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Cell:
    """One (scenario, concurrency, configuration): medians over repetitions."""

    scenario: str
    concurrency: int
    config: str
    reps: int
    requests: int
    errors: int
    p50: float
    p95: float
    p99: float
    throughput: float
    ttft_p50: float
    ttft_p99: float
    events: int
    overhead_p50: float
    cpu_ms: float  # server CPU per request, over every request of every repetition
    upstream_cpu_ms: float
    client_cpu_ms: float
    spans_missing: int
    foreign_pct: float  # CPU of other processes on the machine during these runs, % of wall
    added_p50: float | None = None  # − direct, per repetition, median
    added_p95: float | None = None
    added_p99: float | None = None
    added_ttft_p50: float | None = None
    added_ttft_p99: float | None = None
    per_event_us: float | None = None  # (stream duration − direct's) / events


def _added(mine: list[Run], direct: list[Run], key: str) -> float | None:
    by_rep = {r["rep"]: r[key] for r in direct}
    diffs = [r[key] - by_rep[r["rep"]] for r in mine if r["rep"] in by_rep and r["requests"]]
    return _median(diffs) if diffs else None


def cells(runs: list[Run]) -> list[Cell]:
    groups: dict[tuple[str, int, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run["scenario"], run["concurrency"], run["config"])].append(run)
    out = []
    for (scenario, conc, config), rs in groups.items():
        ok = [r for r in rs if r["requests"]]
        sent = sum(r["server_requests"] for r in rs) or 1
        measured = sum(r["requests"] for r in rs) or 1
        cell = Cell(
            scenario, conc, config, len(rs), sum(r["requests"] for r in rs),
            sum(r["errors"] for r in rs),
            _median([r["p50_ms"] for r in ok]), _median([r["p95_ms"] for r in ok]),
            _median([r["p99_ms"] for r in ok]), _median([r["throughput"] for r in ok]),
            _median([r["ttft_p50_ms"] for r in ok]), _median([r["ttft_p99_ms"] for r in ok]),
            int(_median([r["events"] for r in ok])), _median([r["overhead_p50_ms"] for r in ok]),
            sum(r["server_cpu_s"] for r in rs) / sent * 1000,
            sum(r["upstream_cpu_s"] for r in rs) / sent * 1000,
            sum(r["client_cpu_s"] for r in rs) / measured * 1000,
            max((r["spans_missing"] for r in rs), default=0),
            _median([r.get("foreign_cpu_s", 0) / r["wall_s"] * 100 for r in rs
                     if r.get("wall_s")]),
        )
        direct = groups.get((scenario, conc, "direct"), [])
        if config != "direct" and direct:
            cell.added_p50 = _added(rs, direct, "p50_ms")
            cell.added_p95 = _added(rs, direct, "p95_ms")
            cell.added_p99 = _added(rs, direct, "p99_ms")
            cell.added_ttft_p50 = _added(rs, direct, "ttft_p50_ms")
            cell.added_ttft_p99 = _added(rs, direct, "ttft_p99_ms")
            events = _median([r["events"] for r in direct if r["events"]])
            if events and cell.added_p50 is not None and cell.ttft_p50:
                cell.per_event_us = cell.added_p50 / events * 1000
        out.append(cell)
    order = {c: i for i, c in enumerate(CONFIGS)}
    out.sort(key=lambda c: (c.scenario, c.concurrency, order.get(c.config, 99)))
    return out


def find(all_cells: list[Cell], scenario: str, conc: int, config: str) -> Cell | None:
    return next((c for c in all_cells if (c.scenario, c.concurrency, c.config)
                 == (scenario, conc, config)), None)


def saturation(all_cells: list[Cell], scenario: str, config: str) -> float:
    """Throughput at saturation: the best median throughput over the concurrency levels."""
    values = [c.throughput for c in all_cells if c.scenario == scenario and c.config == config]
    return max(values, default=0.0)


@dataclass
class Target:
    figure: str
    target: str
    measured: float | None
    unit: str
    met: bool | None  # None: not measured in this run


def _check(figure: str, target: str, measured: float | None, unit: str, limit: float,
           at_least: bool = False) -> Target:
    if measured is None:
        return Target(figure, target, None, unit, None)
    met = measured >= limit if at_least else measured <= limit
    return Target(figure, target, measured, unit, met)


def targets(all_cells: list[Cell], memory: list[dict[str, Any]],
            prefix: str = "") -> list[Target]:
    """The issue's targets for ``traced`` (or, with prefix ``cand-``, for the candidate)."""
    traced_key, off_key = prefix + "traced", prefix + "off"

    def value(scenario: str, conc: int, attr: str) -> float | None:
        cell = find(all_cells, scenario, conc, traced_key)
        return getattr(cell, attr) if cell else None

    small_cpu = [c for c in all_cells if c.scenario == "small" and c.config == traced_key]
    cpu = (sum(c.cpu_ms * c.requests for c in small_cpu) / sum(c.requests for c in small_cpu)
           if small_cpu and sum(c.requests for c in small_cpu) else None)
    traced = saturation(all_cells, "small", traced_key)
    off = saturation(all_cells, "small", off_key)
    litellm = saturation(all_cells, "small", "litellm")
    mem = next((m for m in memory if m["config"] == traced_key and m["opened"]), None)
    return [
        _check("added latency p50, c=1 (small, non-stream)", "≤ 0.5 ms",
               value("small", 1, "added_p50"), "ms", 0.5),
        _check("added latency p99, c=1 (small, non-stream)", "≤ 2 ms",
               value("small", 1, "added_p99"), "ms", 2.0),
        _check("added latency p50, c=10 (small, non-stream)", "≤ 2 ms",
               value("small", 10, "added_p50"), "ms", 2.0),
        _check("proxy CPU per non-stream request (small, all c)", "≤ 0.35 ms", cpu, "ms", 0.35),
        _check("TTFT added p50, c=1 (stream)", "≤ 1 ms", value("stream", 1, "added_ttft_p50"),
               "ms", 1.0),
        _check("TTFT added p50, c=1, streams 5 ms apart (spaced)", "≤ 1 ms",
               value("spaced", 1, "added_ttft_p50"), "ms", 1.0),
        _check("throughput at saturation ÷ LiteLLM's (small)", "≥ 5×",
               traced / litellm if litellm and traced else None, "×", 5.0, at_least=True),
        _check("throughput lost to tracing (small, saturation)", "≤ 15 %",
               (1 - traced / off) * 100 if off and traced else None, "%", 15.0),
        _check("RSS growth per open stream (1,000 streams)", "≤ 30 KB",
               mem["per_stream_kb"] if mem else None, "KB", 30.0),
    ]
