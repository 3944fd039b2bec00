"""The benchmark suite: one command, every configuration side by side, one report.

    python bench/run.py            # full run, ~10 min; writes docs/benchmarks.md + .png
    python bench/run.py --quick    # ~2 min smoke run (1 repetition, short runs, 300 streams)

Run it with the project's own interpreter (the venv where otel-responses is installed): the
servers are started as ``sys.executable -m otel_responses``. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import envs
import loadgen
import measure
import payloads
import report
import servers
from servers import Server

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 repetition, 0.6 s runs, 300 held streams, no LiteLLM memory run")
    p.add_argument("--repeats", type=int, help="repetitions per cell [3; quick 1]")
    p.add_argument("--seconds", type=float, help="measured seconds per run [2.0; quick 0.6]")
    p.add_argument("--max-requests", type=int, default=20_000,
                   help="measured requests per run at most [20000]")
    p.add_argument("--concurrency", default="1,10,100", help="levels [1,10,100]")
    p.add_argument("--scenarios", default="small,large,stream,spaced",
                   help="any of small,large,stream,spaced [all]; spaced runs at c=1 only")
    p.add_argument("--streams", type=int, help="streams held open for memory [1000; quick 300]")
    p.add_argument("--slow-token-delay", type=float, default=1.0,
                   help="seconds between deltas of the memory scenario's upstream [1.0]")
    p.add_argument("--bsp-delay-ms", type=int, default=500,
                   help="OTEL_BSP_SCHEDULE_DELAY of the traced proxy [500]; shorter than the "
                        "SDK's 5000 so each run's export finishes inside its own CPU window")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    p.add_argument("--candidate", metavar="PYTHON",
                   help="also measure otel-responses as installed for this interpreter (a "
                        "scratch copy with a proposed fix), traced and untraced, side by side")
    p.add_argument("--no-memory", action="store_true", help="skip the open-streams scenario")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: re-render the page and plot from --results "
                        "(after editing bench/NOTES.md)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks.png")
    p.add_argument("--results", type=Path, default=BENCH / "out" / "results.json")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.6 if args.quick else 2.0)
    args.streams = args.streams or (300 if args.quick else 1000)
    return args


def _package_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = ""
    from otel_responses import __version__
    return f"{__version__} (git {rev or 'unknown'})"


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as cpuinfo:
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name"))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Python "
            f"{platform.python_version()}")


class Suite:
    def __init__(self, args: argparse.Namespace, rundir: Path) -> None:
        self.args = args
        self.rundir = rundir
        self.notes: list[str] = []
        self.servers: list[Server] = []
        self.litellm_version = ""
        self.loop = loadgen.new_event_loop()
        wanted = [k for k in args.scenarios.split(",") if k]
        known = payloads.scenarios()
        unknown = [k for k in wanted if k not in known]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; "
                             f"known: {', '.join(known)}")
        self.levels = [int(c) for c in args.concurrency.split(",")]
        self.scenarios = {k: v for k, v in known.items() if k in wanted}
        for name, scenario in list(self.scenarios.items()):
            if not scenario.runs_at(self.levels):
                print(f"{name}: runs only at c={scenario.levels}, not in --concurrency "
                      f"{args.concurrency}; skipped", flush=True)
                self.notes.append(f"Scenario {name} skipped: it runs only at c="
                                  f"{','.join(map(str, scenario.levels or ()))}.")
                del self.scenarios[name]

    def _add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def start(self) -> dict[str, Server]:
        """Everything at once (LiteLLM takes ~30 s to start), then wait for each."""
        a, log = self.args, self.rundir
        litellm_bin = None
        if not a.no_litellm:
            litellm_bin, version = envs.litellm_binary(log / "install.log")
            if litellm_bin is None:
                self.notes.append(f"LiteLLM skipped: {version}.")
            else:
                self.litellm_version = version
        up = self._add(servers.start_upstream("upstream", log))
        sink = self._add(servers.start_sink(log))
        slow = None if a.no_memory else self._add(
            servers.start_upstream("upstream-slow", log, a.slow_token_delay))
        up.wait_ready(30)
        sink.wait_ready(30)
        if slow:
            slow.wait_ready(30)
        found = {"upstream": up, "sink": sink}
        pending = [("traced", up, True), ("off", up, False)]
        if slow:
            pending += [("mem-traced", slow, True), ("mem-off", slow, False)]
        if a.candidate:
            pending += [("cand-traced", up, True), ("cand-off", up, False)]
            if slow:
                pending += [("mem-cand-traced", slow, True), ("mem-cand-off", slow, False)]
        for name, upstream, tracing in pending:
            python = a.candidate if "cand" in name else sys.executable
            found[name] = self._add(servers.start_proxy(
                name, log, upstream, tracing=tracing, sink=sink, bsp_delay_ms=a.bsp_delay_ms,
                python=python))
        if litellm_bin is not None:
            found["litellm"] = self._add(servers.start_litellm("litellm", log, up, litellm_bin))
            if slow and not a.quick:  # a second LiteLLM doubles the ~30 s start-up
                found["mem-litellm"] = self._add(
                    servers.start_litellm("mem-litellm", log, slow, litellm_bin))
        if slow:
            found["upstream-slow"] = slow
        for name, server in list(found.items()):
            try:
                server.wait_ready(120 if "litellm" in name else 30)
            except RuntimeError as exc:
                if "litellm" not in name:
                    raise
                self.notes.append(f"LiteLLM skipped: {exc}.")
                server.stop()
                del found[name]
        return found

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.loop.close()

    def sanity(self, configs: dict[str, Server]) -> None:
        """One request of each scenario through each configuration must succeed."""
        for scenario in self.scenarios.values():
            for name, server in configs.items():
                result = self.loop.run_until_complete(loadgen.closed_loop(
                    "127.0.0.1", server.port,
                    payloads.http_request("127.0.0.1", server.port, scenario.body),
                    concurrency=1, max_requests=1, max_seconds=30, warmup_requests=0,
                    warmup_seconds=0))
                if result.requests != 1:
                    raise RuntimeError(f"{name} failed the {scenario.name} request; "
                                       f"see {server.log}")

    def side_by_side(self, configs: dict[str, Server], upstream: Server) -> list[dict[str, Any]]:
        """Wait for ``configs`` (untraced), check each serves every scenario, run the matrix."""
        for server in configs.values():
            server.wait_ready(30)
        self.sanity(configs)
        return self.matrix(configs, upstream, None)

    def matrix(self, configs: dict[str, Server], upstream: Server,
               ledger: measure.SpanLedger | None) -> list[dict[str, Any]]:
        a = self.args
        runs: list[dict[str, Any]] = []
        names = list(configs)
        total = sum(len(s.runs_at(self.levels)) for s in self.scenarios.values()) \
            * a.repeats * len(names)
        done = 0
        gate = measure.QuietGate(self.servers, budget_s=30 if a.quick else 120)
        for scenario in self.scenarios.values():
            for conc in scenario.runs_at(self.levels):
                for rep in range(a.repeats):
                    # Rotate the order so no configuration always runs first (or last).
                    order = names[rep % len(names):] + names[:rep % len(names)]
                    for name in order:
                        gate.wait()
                        record = measure.run_once(
                            self.loop, scenario=scenario, config=name, server=configs[name],
                            upstream=upstream, concurrency=conc, rep=rep, seconds=a.seconds,
                            max_requests=a.max_requests,
                            warmup_seconds=0.15 if a.quick else 0.4,
                            ledger=ledger if name.endswith("traced") else None,
                            drain_timeout=a.bsp_delay_ms / 1000 + 3, ours=self.servers,
                            grace_seconds=3.0 if a.quick else 10.0,
                            pause_s=scenario.pause_s)
                        runs.append(record.to_json())
                        done += 1
                        print(f"[{done:3d}/{total}] {scenario.name:6s} c={conc:<3d} "
                              f"{name:8s} p50={record.p50_ms:8.3f} ms p99={record.p99_ms:8.3f}"
                              f" ms {record.throughput:7.0f}/s cpu="
                              f"{record.server_cpu_s / max(record.server_requests, 1) * 1e3:.3f}"
                              f" ms/req err={record.errors} foreign="
                              f"{record.foreign_cpu_s / max(record.wall_s, 1e-9) * 100:.0f}%",
                              flush=True)
        foreign = sorted(r["foreign_cpu_s"] / r["wall_s"] * 100 for r in runs if r["wall_s"])
        if foreign:
            self.notes.append(
                f"Other processes on the machine used a median {foreign[len(foreign) // 2]:.0f} %"
                f" of one core during the runs (max {foreign[-1]:.0f} %); the suite waited "
                f"{gate.waited:.0f} s in total for quiet before runs.")
        return runs

    def memory(self, found: dict[str, Server]) -> list[dict[str, Any]]:
        body = self.scenarios.get("stream", payloads.scenarios()["stream"]).body
        out = []
        for config in ("traced", "off", "cand-traced", "cand-off", "litellm"):
            server = found.get(f"mem-{config}")
            if server is None:
                continue
            record = measure.hold(self.loop, config=config, server=server, body=body,
                                  streams=self.args.streams, open_timeout=60.0)
            print(f"[memory] {config:8s} opened {record.opened}/{record.requested} in "
                  f"{record.open_s:.1f}s, {record.per_stream_kb:.1f} KB/stream", flush=True)
            out.append(record.to_json())
        return out


def _method(args: argparse.Namespace, suite: Suite) -> list[str]:
    bodies: dict[bytes, str] = {}
    for s in suite.scenarios.values():
        bodies.setdefault(s.body, s.name)  # spaced sends the stream's body: list it once
    sizes = ", ".join(f"{name} {len(body):,} B" for body, name in bodies.items())
    lines = [
        "Configurations: **direct** to the demo upstream; **otel-responses** with OTLP/HTTP "
        "trace export (`OTEL_TRACES_EXPORTER=otlp`) to a local sink that counts and discards "
        f"spans (`OTEL_BSP_SCHEDULE_DELAY={args.bsp_delay_ms}`, SDK defaults otherwise); "
        "otel-responses with `OTEL_SDK_DISABLED=true` (no spans; the Prometheus metrics, and "
        "the request/response recording they feed on, stay on); **LiteLLM** "
        f"{suite.litellm_version or '(skipped)'} proxy (`litellm --config`, one "
        "`openai/demo` model whose `api_base` is the same upstream). Every server is a real "
        "subprocess with default settings (log level info: one access-log line per request). "
        "**candidate fix** (when shown): a scratch copy of the tree with a proposed change, "
        "installed in another venv and passed as `--candidate PYTHON`.",
        "Upstream: `otel-responses demo-upstream` (uvicorn, TCP_NODELAY by default in "
        "asyncio/uvloop), `--token-delay 0`, so the proxy, not the model, is measured.",
        f"Requests: {sizes}. The 102 KB one is a coding-agent turn: 40 tools, ~30 turns of "
        "history with function calls and outputs. The stream answers 201 "
        "`output_text.delta` events (the demo's JSON replies always have an odd count).",
        "Load: `bench/loadgen.py`, raw asyncio protocols on uvloop sending pre-built keep-alive "
        "requests in a closed loop (c connections, each waits for the whole reply before the "
        f"next); each run = warm-up, then {args.seconds:g} s or {args.max_requests:,} requests, "
        "whichever comes first; garbage collection off while measuring.",
        *[f"**{s.name}**: the stream request at c=1 only, each sent {s.pause_s * 1e3:g} ms "
          "after the previous reply ended. In the closed loop at c=1 the next stream starts "
          "the instant the last one ends, so the load generator, the upstream (which spends "
          "CPU on every delta it generates) and the proxy contend for the 2 cores, and the "
          "stream scenario's added TTFT is mostly that contention. Spaced requests avoid it, "
          "but with the machine idle in between every hop runs cold (direct TTFT rises too); "
          "`bench/ttft_trace.py` times the proxy's own share from inside."
          for s in suite.scenarios.values() if s.pause_s],
        "Added latency = configuration − direct, taken per repetition, median over "
        "repetitions. Server CPU = utime + stime from `/proc/<pid>/stat` over the run "
        "(warm-up, measured requests and, for tracing, the wait until the sink has every span), "
        "÷ requests: seconds per 1,000 requests = ms per request.",
        "Errors: non-200 replies, streams without `response.completed`, and requests still "
        "unanswered when a run's grace period ends (10 s after its last request was sent).",
        "The load generator, the upstream and the proxy share the machine's 2 cores: at "
        "c ≥ 10 most added latency is queueing for a CPU, which is why CPU per request is "
        "the figure to watch.",
    ]
    return lines


def render(results_path: Path, out: Path, png: Path, logdir: Path) -> None:
    results = json.loads(results_path.read_text())
    report.write(results, out, os.path.relpath(png, out.parent))
    tools = envs.tools_python(logdir / "install.log")
    if tools is None:
        print("matplotlib could not be installed: no plot", file=sys.stderr)
        return
    subprocess.run([str(tools), str(BENCH / "plot.py"), str(results_path), str(png)],
                   check=True, timeout=300)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        render(args.results, args.out, args.png, Path(tempfile.mkdtemp(prefix="otel-bench-")))
        print(f"wrote {args.out} and {args.png}")
        return
    started = time.monotonic()
    rundir = Path(tempfile.mkdtemp(prefix="otel-bench-"))
    print(f"logs in {rundir}", flush=True)
    suite = Suite(args, rundir)
    memory: list[dict[str, Any]] = []
    try:
        found = suite.start()
        configs = {"direct": found["upstream"], "traced": found["traced"], "off": found["off"]}
        for name in ("cand-traced", "cand-off", "litellm"):
            if name in found:
                configs[name] = found[name]
        ledger = measure.SpanLedger(found["sink"])
        suite.sanity(configs)
        ledger.expected += len(suite.scenarios)
        print(f"servers ready after {time.monotonic() - started:.0f}s", flush=True)
        runs = suite.matrix(configs, found["upstream"], ledger)
        missing = ledger.drain(args.bsp_delay_ms / 1000 + 3)
        spans = f"{ledger.received():,} spans reached the sink, {missing} missing"
        suite.notes.append(f"OTLP sink: {spans}.")
        if not args.no_memory:
            memory = suite.memory(found)
    finally:
        suite.stop()
    elapsed = time.monotonic() - started
    suite.notes.append(f"Suite wall time {elapsed / 60:.1f} min; server logs were in {rundir}.")
    command = "python bench/run.py" + ("" if argv is None and len(sys.argv) == 1
                                       else " " + " ".join(sys.argv[1:] if argv is None
                                                           else argv))
    results = {
        "meta": {
            "command": command.strip(), "machine": _machine(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "package": _package_version(), "repeats": args.repeats,
            "scenarios": {k: v.title for k, v in suite.scenarios.items()},
            "scenario_specs": {k: v.spec() for k, v in suite.scenarios.items()},
            "streams": args.streams, "slow_token_delay": args.slow_token_delay,
            "litellm": suite.litellm_version, "notes": suite.notes,
            "candidate": args.candidate,
            "method": _method(args, suite),
        },
        "runs": runs,
        "memory": memory,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    render(args.results, args.out, args.png, rundir)
    print(f"wrote {args.out} and {args.png} in {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
