"""Where TTFT goes at c=1: the proxy's own relay times beside what the load generator sees.

    python bench/ttft_trace.py [--requests N] [--traced]

Starts the demo upstream and a proxy whose relay is instrumented, then drives the stream
scenario in a closed loop at c=1 with ``loadgen.py``, first direct and then through the
proxy. The proxy records, on the monotonic clock every process shares, when it hands the
client the response head and the first chunk holding an ``output_text.delta``. Printed as
medians from each request's first byte written: direct TTFT; the proxy's head and
first-delta hand-off; and the TTFT the load generator measured through the proxy. The gap
between the last two is time the client process waited for a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
import payloads
import servers

DELTA = b"output_text.delta"


def serve_instrumented(argv: list[str], marks_path: str) -> None:
    """Run ``otel-responses serve argv`` with the relay's hand-offs timestamped."""
    from otel_responses.cli import main
    from otel_responses.proxy import forward

    marks: list[tuple[str, float]] = []
    relay = forward.Proxy._relay

    async def timed_relay(self: Any, response: Any, send: Any, ex: Any) -> None:
        seen_delta = False

        async def timed_send(message: Any) -> None:
            nonlocal seen_delta
            at = time.perf_counter()
            await send(message)
            if message["type"] == "http.response.start":
                marks.append(("head", at))
            elif not seen_delta and DELTA in message.get("body", b""):
                seen_delta = True
                marks.append(("delta", at))

        await relay(self, response, timed_send, ex)

    def dump(*_: Any) -> None:
        Path(marks_path).write_text(json.dumps(marks))
        sys.exit(0)

    forward.Proxy._relay = timed_relay  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, dump)
    sys.argv = ["otel-responses", "serve", *argv]
    main()


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if servers.get(port, "/healthz")[0] == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _ttft_ms(replies: list[loadgen.Reply]) -> list[float]:
    return [(r.first_delta - r.started) / 1e6 for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--traced", action="store_true",
                        help="trace over OTLP to the bench's sink instead of tracing off")
    parser.add_argument("--serve-instrumented", nargs=2, metavar=("PORT", "MARKS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_instrumented:
        port, marks = args.serve_instrumented
        serve_instrumented(["--port", port, "--upstream", args.upstream], marks)
        return

    logdir = Path(tempfile.mkdtemp(prefix="otel-ttft-"))
    marks_path = logdir / "marks.json"
    upstream = servers.start_upstream("upstream", logdir)
    upstream.wait_ready(30)
    sink = servers.start_sink(logdir) if args.traced else None
    port = servers.free_port()
    env = {**os.environ, "OTEL_SDK_DISABLED": "true"}
    if sink is not None:
        sink.wait_ready(30)
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
               f"http://127.0.0.1:{sink.port}/v1/traces"}
    with open(logdir / "proxy.log", "wb") as log:
        proxy = subprocess.Popen(
            [sys.executable, __file__, "--serve-instrumented", str(port), str(marks_path),
             "--upstream", f"http://127.0.0.1:{upstream.port}/v1"],
            env=env, stdout=log, stderr=log)
    body = payloads.scenarios()["stream"].body
    loop = loadgen.new_event_loop()
    try:
        _wait_for(port)

        def run(target: int) -> list[loadgen.Reply]:
            return loop.run_until_complete(loadgen.closed_loop(
                "127.0.0.1", target, payloads.http_request("127.0.0.1", target, body),
                concurrency=1, max_requests=args.requests, max_seconds=30,
                warmup_requests=30, warmup_seconds=5)).replies

        direct, proxied = run(upstream.port), run(port)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(15)
        upstream.stop()
        if sink is not None:
            sink.stop()
    marks = [(name, at * 1e9) for name, at in json.loads(marks_path.read_text())]
    head, delta = [], []
    for reply in proxied:  # each reply's marks lie between its first byte and its last
        own = {name: at for name, at in reversed(marks) if reply.started <= at <= reply.done}
        if "head" in own and "delta" in own:
            head.append((own["head"] - reply.started) / 1e6)
            delta.append((own["delta"] - reply.started) / 1e6)
    median = statistics.median
    print(f"direct TTFT                             {median(_ttft_ms(direct)):.3f} ms")
    print(f"proxy hands the client the head         {median(head):.3f} ms")
    print(f"proxy hands the client the first delta  {median(delta):.3f} ms")
    print(f"load generator's TTFT through the proxy {median(_ttft_ms(proxied)):.3f} ms")
    print(f"({len(delta)} of {len(proxied)} proxied streams matched to their marks)")


if __name__ == "__main__":
    main()
