"""Draws docs/benchmarks.png from bench/out/results.json.

Runs in the tools venv (matplotlib is not a dependency of the project):
``bench/.venv-tools/bin/python bench/plot.py RESULTS.json OUT.png``.
"""

from __future__ import annotations

import json
import sys
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


def main(results_path: Path, out: Path) -> None:
    results = json.loads(results_path.read_text())
    cells = summary.cells(results["runs"])
    configs = [k for k in summary.CONFIGS if any(c.config == k for c in cells)]
    scenarios: dict[str, str] = results["meta"]["scenarios"]
    concs = sorted({c.concurrency for c in cells})
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))

    for ax, conc in zip(axes[0], concs[:3], strict=False):
        series = {}
        for k in configs:
            cell = summary.find(cells, "small", conc, k)
            series[k] = [cell.p50, cell.p95, cell.p99] if cell else [0, 0, 0]
        _bars(ax, ["p50", "p95", "p99"], series, "latency (ms, log)",
              f"{scenarios['small']}: latency at c={conc}", log=True)

    names = list(scenarios)
    _bars(axes[1][0], [scenarios[n] for n in names],
          {k: [summary.saturation(cells, n, k) for n in names] for k in configs},
          "requests / s (log)", "throughput at saturation (best over c)", log=True)
    stream = {k: [(cell.ttft_p50, cell.ttft_p99) if (cell := summary.find(
        cells, "stream", 1, k)) else (0, 0)] for k in configs}
    _bars(axes[1][1], ["TTFT p50", "TTFT p99"],
          {k: list(v[0]) for k, v in stream.items()}, "ms (log)",
          f"{scenarios.get('stream', 'stream')}: time to first delta at c=1", log=True)
    cpu = {k: [sum(c.cpu_ms * c.requests for c in cells if c.scenario == n and c.config == k)
               / max(1, sum(c.requests for c in cells if c.scenario == n and c.config == k))
               for n in names] for k in configs}
    _bars(axes[1][2], [scenarios[n] for n in names], cpu, "CPU s per 1,000 requests (log)",
          "server CPU per 1,000 requests (all c)", log=True)
    for row in axes:
        for ax in row:
            ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    meta = results["meta"]
    fig.suptitle(f"otel-responses benchmarks — {meta['machine']} — {meta['date']}",
                 y=0.995, fontsize=11)
    fig.legend(handles, labels, loc="upper center", ncol=len(configs), frameon=False,
               bbox_to_anchor=(0.5, 0.965), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
