"""Adapter mode side by side: the proxy serving /v1/responses over a chat upstream, the same
chat upstream called directly, and LiteLLM's /v1/responses bridged to the same upstream.

    python bench/adapter.py                 # ~6 min: 5 repetitions, c=1 and c=10
    python bench/adapter.py --no-litellm    # without the peer
    python bench/adapter.py --report-only   # re-print from bench/out/adapter.json

One upstream: the demo's /v1/chat/completions at zero token delay. ``chat`` is that upstream
called directly with the chat request the adapter sends it (so "added" is what adapting
costs); ``adapter`` is otel-responses with ``--upstream-api chat`` and full OTLP tracing to a
counting sink, ``adapter-off`` the same untraced; ``litellm`` is LiteLLM's proxy with the model
``openai/chat_completions/demo`` (its Responses→Chat bridge). Configurations are interleaved,
the order rotating per repetition; figures are medians over repetitions with the
interquartile range, "added" taken per repetition against ``chat``. The per-delta translation
cost is micro_adapter.py's, measured in this process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from otel_responses.protocol.chat import translate_request

import envs
import loadgen
import measure
import micro_adapter
import payloads
import servers
from clients import Spread, _by_rep, _cell, paired, run_dir, save
from run import BENCH, _machine, _package_version

Run = dict[str, Any]
SCENARIOS = ("small", "stream")
TARGET_P50_MS = 1.0  # added p50 at c=1, traced
TARGET_DELTA_US = 10.0  # translation per delta
TARGET_LITELLM = 10.0  # throughput, times LiteLLM's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="repetitions per cell [5]")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run [2.0]")
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,10")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--bsp-delay-ms", type=int, default=500)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", type=Path, default=BENCH / "out" / "adapter.json")
    return p.parse_args(argv)


def _requests(port: int, config: str) -> dict[str, tuple[bytes, loadgen.Marks]]:
    """Per scenario: the exact request bytes ``config`` gets, and how its stream reads."""
    out = {}
    for name in SCENARIOS:
        body = payloads.scenarios()[name].body
        if config == "chat":  # what the adapter itself sends the upstream for this request
            chat = translate_request(json.loads(body)).request
            raw = json.dumps(chat, separators=(",", ":")).encode()
            out[name] = (payloads.http_request("127.0.0.1", port, raw, "/v1/chat/completions"),
                         loadgen.CHAT)
        else:
            out[name] = (payloads.http_request("127.0.0.1", port, body), loadgen.RESPONSES)
    return out


def start(args: argparse.Namespace, rundir: Path,
          notes: list[str]) -> tuple[dict[str, servers.Server], list[servers.Server]]:
    """The upstream, the sink and every configuration, each ready; (configs, all started)."""
    started: list[servers.Server] = []
    litellm_bin = None
    if not args.no_litellm:
        litellm_bin, version = envs.litellm_binary(rundir / "install.log")
        if litellm_bin is None:
            notes.append(f"LiteLLM skipped: {version}.")
        else:
            notes.append(f"LiteLLM {version}, model `openai/chat_completions/demo` (its "
                         "Responses→Chat Completions bridge), default settings.")
    up = servers.start_upstream("upstream", rundir)
    sink = servers.start_sink(rundir)
    started += [up, sink]
    up.wait_ready(30)
    sink.wait_ready(30)
    configs = {"chat": up}
    for name, tracing in (("adapter", True), ("adapter-off", False)):
        configs[name] = servers.start_proxy(name, rundir, up, tracing=tracing, sink=sink,
                                            bsp_delay_ms=args.bsp_delay_ms,
                                            flags=("--upstream-api", "chat"))
        started.append(configs[name])
    if litellm_bin is not None:
        configs["litellm"] = servers.start_litellm("litellm", rundir, up, litellm_bin,
                                                   provider="openai/chat_completions")
        started.append(configs["litellm"])
    for name, server in list(configs.items()):
        try:
            server.wait_ready(120 if name == "litellm" else 30)
        except RuntimeError as exc:
            if name != "litellm":
                raise
            notes.append(f"LiteLLM skipped: {exc}.")
            server.stop()
            del configs[name]
    return configs, started


def matrix(args: argparse.Namespace, configs: dict[str, servers.Server],
           started: list[servers.Server], notes: list[str]) -> list[Run]:
    loop = loadgen.new_event_loop()
    sink = next(s for s in started if s.name == "otlp-sink")
    ledger = measure.SpanLedger(sink)
    requests = {name: _requests(server.port, name) for name, server in configs.items()}
    scenarios = payloads.scenarios()
    names = list(configs)
    gate = measure.QuietGate(started, budget_s=120)
    runs: list[Run] = []
    try:
        for scenario in (scenarios[s] for s in SCENARIOS):
            for conc in (int(c) for c in args.concurrency.split(",")):
                for rep in range(args.repeats):
                    for name in names[rep % len(names):] + names[:rep % len(names)]:
                        request, marks = requests[name][scenario.name]
                        gate.wait()
                        record = measure.run_once(
                            loop, scenario=scenario, config=name, server=configs[name],
                            upstream=configs["chat"], concurrency=conc, rep=rep,
                            seconds=args.seconds, max_requests=args.max_requests,
                            warmup_seconds=0.4, ledger=ledger if name == "adapter" else None,
                            drain_timeout=args.bsp_delay_ms / 1000 + 3, ours=started,
                            request=request, marks=marks)
                        runs.append(record.to_json())
                        print(f"{scenario.name:6s} c={conc:<3d} {name:11s} "
                              f"p50={record.p50_ms:8.3f} ms ttft={record.ttft_p50_ms:8.3f} ms "
                              f"{record.throughput:7.0f}/s err={record.errors} "
                              f"spans missing={record.spans_missing}", flush=True)
    finally:
        loop.close()
    notes.append(f"The quiet gate waited {gate.waited:.0f} s in total before runs.")
    return runs


def _cpu_ms(run: Run) -> float:
    """The configuration's own server CPU per request (for ``chat``, the upstream's)."""
    return run["server_cpu_s"] / max(run["server_requests"], 1) * 1000


def tables(results: dict[str, Any]) -> list[str]:
    runs, meta = results["runs"], results["meta"]
    lines = []
    for scenario in SCENARIOS:
        stream = meta["streams"][scenario]
        lines += [f"**{meta['titles'][scenario]}**", "",
                  "| c | config | p50 ms | added p50 ms | added p99 ms | added TTFT p50 ms "
                  "| requests/s | server CPU ms / request |", "|---|---|---|---|---|---|---|---|"]
        for conc in sorted({r["concurrency"] for r in runs if r["scenario"] == scenario}):
            for name in meta["configs"]:
                mine = [r for r in runs if (r["scenario"], r["concurrency"], r["config"]) ==
                        (scenario, conc, name) and r["requests"]]
                if not mine:
                    continue
                base = name == "chat"
                added = ["–"] * 3 if base else [
                    _cell(paired(runs, scenario, conc, name, "chat", figure), True)
                    for figure in ("p50", "p99", "ttft")]
                if not stream:
                    added[2] = "–"
                p50 = Spread.of(list(_by_rep(runs, scenario, conc, name, "p50").values()))
                rate = Spread.of([r["throughput"] for r in mine])
                cpu = Spread.of([_cpu_ms(r) for r in mine])
                lines.append(f"| {conc} | {name} | {_cell(p50)} | {' | '.join(added)} "
                             f"| {rate.median if rate else 0:.0f} | {_cell(cpu)} |")
        lines.append("")
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    runs, meta = results["runs"], results["meta"]
    added = paired(runs, "small", 1, "adapter", "chat", "p50")
    lines = [f"- per-delta translation: {meta['delta_us']:.2f} µs ({meta['delta_framed_us']:.2f}"
             f" µs SSE-framed) — target ≤ {TARGET_DELTA_US:.0f} µs: "
             f"{'met' if meta['delta_framed_us'] <= TARGET_DELTA_US else 'NOT met'}"]
    if added:
        lines.append(f"- added p50 at c=1, traced, small request: {added.median:+.3f} ms — "
                     f"target ≤ {TARGET_P50_MS:.0f} ms: "
                     f"{'met' if added.median <= TARGET_P50_MS else 'NOT met'}")
    for scenario in SCENARIOS:
        conc = max(int(c) for c in meta["concurrency"].split(","))
        ours = _median_rate(runs, scenario, conc, "adapter")
        theirs = _median_rate(runs, scenario, conc, "litellm")
        if ours and theirs:
            ratio = ours / theirs
            verdict = "met" if ratio >= TARGET_LITELLM else "NOT met"
            lines.append(f"- throughput at c={conc}, {scenario}: {ratio:.1f}× LiteLLM's "
                         f"(traced adapter {ours:.0f}/s, LiteLLM {theirs:.0f}/s) — target ≥ "
                         f"{TARGET_LITELLM:.0f}×: {verdict}")
    return lines


def _median_rate(runs: list[Run], scenario: str, conc: int, config: str) -> float:
    spread = Spread.of([r["throughput"] for r in runs if r["requests"] and
                        (r["scenario"], r["concurrency"], r["config"]) ==
                        (scenario, conc, config)])
    return spread.median if spread else 0.0


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    head = [f"`{meta['command']}` on {meta['date']}, {meta['machine']}; otel-responses "
            f"{meta['package']}; {meta['repeats']} repetitions of {meta['seconds']} s; median "
            "(interquartile range) over repetitions.", "", *[f"- {n}" for n in meta["notes"]],
            ""]
    return "\n".join([*head, *tables(results), "Targets:", "", *targets(results)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.monotonic()
    rundir = run_dir(args, report, "otel-adapter-")
    if rundir is None:
        return
    notes: list[str] = []
    stream = micro_adapter.chunks(200)
    delta_us = micro_adapter.per_delta(micro_adapter.translate, stream, 200, 200)
    framed_us = micro_adapter.per_delta(micro_adapter.translate_and_frame, stream, 200, 200)
    load_before = os.getloadavg()
    configs, started = start(args, rundir, notes)
    try:
        runs = matrix(args, configs, started, notes)
    finally:
        for server in reversed(started):
            server.stop()
    notes.append("Load average (1/5/15 min) before "
                 f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
                 f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}; wall time "
                 f"{(time.monotonic() - began) / 60:.1f} min.")
    missing = sum(r["spans_missing"] for r in runs)
    notes.append(f"Traced adapter: {missing} spans missing at the sink after the drain wait.")
    known = payloads.scenarios()
    results = {
        "meta": {
            "command": ("python bench/adapter.py " + " ".join(
                sys.argv[1:] if argv is None else argv)).strip(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(), "package": _package_version(), "repeats": args.repeats,
            "seconds": args.seconds, "concurrency": args.concurrency,
            "configs": list(configs), "titles": {s: known[s].title for s in SCENARIOS},
            "streams": {s: known[s].stream for s in SCENARIOS}, "delta_us": delta_us,
            "delta_framed_us": framed_us, "notes": notes,
        },
        "runs": runs,
    }
    save(args, results, report)


if __name__ == "__main__":
    main()
