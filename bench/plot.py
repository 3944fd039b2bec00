"""Draws docs/benchmarks.png from bench/out/results.json.

Runs in the tools venv (matplotlib is not a dependency of the project):
``bench/.venv-tools/bin/python bench/plot.py RESULTS.json OUT.png``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import summary

COLORS = {"direct": "#7f7f7f", "traced": "#1f77b4", "off": "#2ca02c", "cand-traced": "#17becf",
          "cand-off": "#bcbd22", "litellm": "#d62728"}


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str,  # type: ignore[no-untyped-def]
          title: str, log: bool = False) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (config, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=summary.LABELS[config], color=COLORS[config])
        for bar, value in zip(bars, values, strict=True):
            if value:
                ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=6, rotation=90,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.25)


def _ttft(cells: list[summary.Cell], scenario: str, config: str) -> tuple[float, float]:
    cell = summary.find(cells, scenario, 1, config)
    return (cell.ttft_p50, cell.ttft_p99) if cell else (0.0, 0.0)


def _wrap(title: str) -> str:
    return textwrap.fill(title, 24)


def main(results_path: Path, out: Path) -> None:
    results = json.loads(results_path.read_text())
    cells = summary.cells(results["runs"])
    configs = [k for k in summary.CONFIGS if any(c.config == k for c in cells)]
    scenarios: dict[str, str] = results["meta"]["scenarios"]
    concs = sorted({c.concurrency for c in cells})
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))

    top = "small" if "small" in scenarios else next(iter(scenarios))
    for ax, conc in zip(axes[0], concs[:3], strict=False):
        series = {}
        for k in configs:
            cell = summary.find(cells, top, conc, k)
            series[k] = [cell.p50, cell.p95, cell.p99] if cell else [0, 0, 0]
        _bars(ax, ["p50", "p95", "p99"], series, "latency (ms, log)",
              f"{scenarios[top]}: latency at c={conc}", log=True)

    meta = results["meta"]
    names = list(scenarios)
    # A paced scenario's throughput is set by its pause, not by saturation: left out there.
    unpaced = [n for n in names if not summary.is_paced(meta, n)]
    _bars(axes[1][0], [_wrap(scenarios[n]) for n in unpaced],
          {k: [summary.saturation(cells, n, k) for n in unpaced] for k in configs},
          "requests / s (log)", "throughput at saturation (best over c)", log=True)
    # TTFT at c=1: the closed-loop stream and, when measured, the same stream 5 ms apart.
    ttft = [n for n in ("stream", "spaced") if n in scenarios] or ["stream"]
    groups = ([f"{n} TTFT {q}" for n in ttft for q in ("p50", "p99")] if len(ttft) > 1
              else ["TTFT p50", "TTFT p99"])
    series = {k: [v for n in ttft for v in _ttft(cells, n, k)] for k in configs}
    title = (f"{scenarios.get(ttft[0], ttft[0])}: time to first delta at c=1" if len(ttft) < 2
             else "time to first delta at c=1: stream vs. spaced (5 ms apart)")
    _bars(axes[1][1], groups, series, "ms (log)", title, log=True)
    cpu = {k: [sum(c.cpu_ms * c.requests for c in cells if c.scenario == n and c.config == k)
               / max(1, sum(c.requests for c in cells if c.scenario == n and c.config == k))
               for n in names] for k in configs}
    _bars(axes[1][2], [_wrap(scenarios[n]) for n in names], cpu,
          "CPU s per 1,000 requests (log)",
          "server CPU per 1,000 requests (all c)", log=True)
    for row in axes:
        for ax in row:
            ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"otel-responses benchmarks — {meta['machine']} — {meta['date']}",
                 y=0.995, fontsize=11)
    fig.legend(handles, labels, loc="upper center", ncol=len(configs), frameon=False,
               bbox_to_anchor=(0.5, 0.965), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
