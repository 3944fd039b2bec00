"""Profile the traced proxy under load with py-spy: flame graphs plus top-function tables.

    python bench/profile.py                       # the installed otel-responses
    python bench/profile.py --python OTHER/python # e.g. a scratch copy with a candidate fix

For each scenario it starts the demo upstream, the OTLP sink and a traced proxy, drives load
from this process and records the proxy with ``py-spy record`` (all threads, so the span
exporter shows up too). Writes ``bench/out/profile-<scenario>.svg`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import envs
import loadgen
import payloads
import servers

BENCH = Path(__file__).resolve().parent
LOADS = {"small": 10, "large": 1, "stream": 1}  # scenario → concurrency
RATE = 250  # py-spy samples per second: one sample of one busy thread ≈ 4 ms of CPU


# A sample is charged to the first OWNER found anywhere in its stack (code that computes
# something for one purpose: its callees, JSON included, are its cost); failing that, to the
# innermost frame of an INFRASTRUCTURE layer (wrappers such as Starlette's or the metrics
# stream tracker sit above everything, so only their own leaf frames are theirs).
OWNERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("span export (SDK thread: encode + POST)", ("BatchProcessor", "trace_exporter",
                                                 "trace_encoder", "exporter/otlp")),
    ("span attributes + end", ("SpanWriter.finish",)),
    ("span start + propagation", ("SpanWriter.start",)),
    ("Prometheus metrics", ("ProxyMetrics.", "prometheus_client")),
    ("access log", ("Exchange.log",)),
    ("recording (request/response JSON, SSE parsing)", ("CallRecorder", "ResponseStream")),
)
INFRASTRUCTURE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("upstream HTTP client", ("transport/", "httpx/", "httpcore/", "anyio/", "h11/")),
    ("uvicorn (client-side HTTP)", ("uvicorn/",)),
    ("Starlette routing + middleware", ("starlette/",)),
    ("metrics stream tracker", ("telemetry/metrics",)),
    ("telemetry middleware tee", ("telemetry/middleware",)),
    ("proxy forwarding", ("otel_responses/proxy",)),
)


def _charge(frames: list[str]) -> str:
    for name, keys in OWNERS:
        if any(k in frame for frame in frames for k in keys):
            return name
    for frame in reversed(frames):
        for name, keys in INFRASTRUCTURE:
            if any(k in frame for k in keys):
                return name
    return "event loop, other"


def components(raw: Path) -> dict[str, int]:
    out: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        out[_charge(stack.split(";"))] += int(count)
    return dict(out.most_common())


def top(raw: Path, n: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    out = [f"{total} samples (non-idle)", "", "self %  function"]
    out += [f"{c / total * 100:5.1f}  {f}" for f, c in own.most_common(n)]
    out += ["", "incl %  function"]
    out += [f"{c / total * 100:5.1f}  {f}" for f, c in inclusive.most_common(2 * n)
            if c < total]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="interpreter running the proxy")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--scenarios", default="small,large,stream")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="otel-profile-"))
    tools = envs.tools_python(logdir / "install.log")
    if tools is None:
        raise SystemExit("py-spy could not be installed")
    pyspy = str(tools.parent / "py-spy")
    scenarios = payloads.scenarios()
    up = servers.start_upstream("upstream", logdir)
    sink = servers.start_sink(logdir)
    started = [up, sink]
    try:
        up.wait_ready(30)
        sink.wait_ready(30)
        proxy = servers.start_proxy("traced", logdir, up, tracing=True, sink=sink,
                                    bsp_delay_ms=500, python=args.python)
        started.append(proxy)
        proxy.wait_ready(30)
        loop = loadgen.new_event_loop()
        for name in args.scenarios.split(","):
            request = payloads.http_request("127.0.0.1", proxy.port, scenarios[name].body)
            raw = args.out / f"profile-{name}.raw"
            svg = args.out / f"profile-{name}.svg"
            record = ["record", "--pid", str(proxy.pid), "--duration",
                      str(int(args.seconds)), "--rate", "250", "--nonblocking"]
            spy = [subprocess.Popen([pyspy, *record, "--format", fmt, "--output", str(path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for fmt, path in (("raw", raw), ("flamegraph", svg))]
            # Load for as long as py-spy records, plus a margin for its attach time.
            result = loop.run_until_complete(loadgen.closed_loop(
                "127.0.0.1", proxy.port, request, concurrency=LOADS[name],
                max_requests=10**6, max_seconds=args.seconds + 1.5, warmup_requests=20,
                warmup_seconds=0.5))
            for proc in spy:
                proc.wait(timeout=60)
            table = top(raw)
            # Samples ÷ rate ≈ CPU seconds; ÷ requests served while recording ≈ ms each.
            served = result.throughput * args.seconds
            parts = components(raw)
            total = sum(parts.values()) or 1
            table = "\n".join(
                [f"component               (≈ CPU ms per request, {served:.0f} requests)"]
                + [f"{v / total * 100:5.1f} %  {v / RATE / served * 1000:7.3f} ms  {k}"
                   for k, v in parts.items()]) + "\n\n" + table
            (args.out / f"profile-{name}.txt").write_text(table + "\n")
            print(f"== {name} (c={LOADS[name]}, {result.throughput:.0f} req/s) ==")
            print("\n".join(table.splitlines()[:14]), flush=True)
        loop.close()
    finally:
        for server in reversed(started):
            server.stop()


if __name__ == "__main__":
    main()
