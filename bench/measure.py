"""One measured run of one configuration, reduced to the figures the report needs."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import loadgen
import payloads
from servers import Server, get, machine_busy_seconds


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class RunRecord:
    scenario: str
    concurrency: int
    config: str
    rep: int
    requests: int
    errors: int
    elapsed_s: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    events: int
    overhead_p50_ms: float  # the proxy's own x-otel-responses-overhead-ms, when it sends it
    server_cpu_s: float  # the configuration's server, warm-up and span export included
    server_requests: int  # requests that CPU paid for (warm-up + measured + failed)
    upstream_cpu_s: float
    client_cpu_s: float
    spans_missing: int = 0  # traced configuration: spans not at the sink after the drain wait
    foreign_cpu_s: float = 0.0  # CPU used meanwhile by processes that are not the benchmark's
    wall_s: float = 0.0
    pause_s: float = 0.0  # each connection's wait after a reply before its next request

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class SpanLedger:
    """Counts spans the traced proxies owe the sink, and waits for them after each run."""

    def __init__(self, sink: Server) -> None:
        self.sink = sink
        self.expected = 0

    def received(self) -> int:
        _, body = get(self.sink.port, "/stats")
        return int(json.loads(body)["spans"])

    def drain(self, timeout: float) -> int:
        """Wait until every span is exported or ``timeout``; returns how many are missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.expected - self.received()
            if missing <= 0 or time.monotonic() > deadline:
                return max(missing, 0)
            time.sleep(0.05)


def run_once(loop: asyncio.AbstractEventLoop, *, scenario: payloads.Scenario, config: str,
             server: Server, upstream: Server, concurrency: int, rep: int, seconds: float,
             max_requests: int, warmup_seconds: float, ledger: SpanLedger | None,
             drain_timeout: float, ours: list[Server],
             grace_seconds: float = 10.0, pause_s: float = 0.0, request: bytes | None = None,
             marks: loadgen.Marks = loadgen.RESPONSES) -> RunRecord:
    """``ours``: every server the suite started, so the CPU of anything else on the machine
    during the run (another user's job) can be reported instead of silently skewing it.
    ``request`` (the scenario's POST /v1/responses by default) and ``marks``: for a server
    spoken to in another API."""
    request = request or payloads.http_request("127.0.0.1", server.port, scenario.body)
    cpu0, up0 = server.cpu_seconds(), upstream.cpu_seconds()
    busy0, ours0, self0, wall0 = (machine_busy_seconds(), _cpu_of(ours), loadgen.own_cpu(),
                                  time.monotonic())
    result = loop.run_until_complete(loadgen.closed_loop(
        "127.0.0.1", server.port, request, concurrency=concurrency, max_requests=max_requests,
        max_seconds=seconds, warmup_requests=max(50, 20 * concurrency),
        warmup_seconds=warmup_seconds, grace_seconds=grace_seconds, pause_s=pause_s,
        marks=marks))
    sent = result.requests + result.warmup_requests + result.errors
    missing = 0
    if ledger is not None:
        # The span export belongs to this run's CPU: wait for it before reading the clock.
        ledger.expected += sent
        missing = ledger.drain(drain_timeout)
    cpu, up = server.cpu_seconds() - cpu0, upstream.cpu_seconds() - up0
    foreign = (machine_busy_seconds() - busy0) - (_cpu_of(ours) - ours0) \
        - (loadgen.own_cpu() - self0)
    replies = result.replies
    latency = [(r.done - r.started) / 1e6 for r in replies]
    ttft = [(r.first_delta - r.started) / 1e6 for r in replies if r.first_delta]
    overhead = [r.overhead_ms for r in replies if r.overhead_ms is not None]
    events = sorted(r.events for r in replies)
    return RunRecord(
        scenario=scenario.name, concurrency=concurrency, config=config, rep=rep,
        requests=result.requests, errors=result.errors, elapsed_s=result.elapsed_s,
        throughput=result.throughput, p50_ms=percentile(latency, 50),
        p95_ms=percentile(latency, 95), p99_ms=percentile(latency, 99),
        ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
        events=events[len(events) // 2] if events else 0,
        overhead_p50_ms=percentile(overhead, 50), server_cpu_s=cpu, server_requests=sent,
        upstream_cpu_s=up, client_cpu_s=result.client_cpu_s, spans_missing=missing,
        foreign_cpu_s=max(foreign, 0.0), wall_s=time.monotonic() - wall0, pause_s=pause_s)


class QuietGate:
    """Before a run, wait (within a budget) until the machine is free of other work.

    The machine may be shared: a test suite or an install elsewhere steals one of only two
    cores and skews whichever configuration happens to run then.
    """

    def __init__(self, ours: list[Server], budget_s: float, max_wait_s: float = 5.0,
                 threshold_cores: float = 0.2) -> None:
        self.ours, self.budget, self.max_wait = ours, budget_s, max_wait_s
        self.threshold = threshold_cores
        self.waited = 0.0

    def foreign_cores(self, window: float = 0.3) -> float:
        busy0, ours0 = machine_busy_seconds(), _cpu_of(self.ours)
        time.sleep(window)
        return ((machine_busy_seconds() - busy0) - (_cpu_of(self.ours) - ours0)) / window

    def wait(self) -> None:
        start = time.monotonic()
        while self.budget - self.waited > 0 and time.monotonic() - start < self.max_wait:
            if self.foreign_cores() < self.threshold:
                break
        self.waited += time.monotonic() - start


def _cpu_of(servers: list[Server]) -> float:
    return sum(s.cpu_seconds() for s in servers if s.alive())


@dataclass
class MemoryRecord:
    config: str
    requested: int
    opened: int
    failed: int
    open_s: float
    rss_before_kb: int
    rss_open_kb: int

    @property
    def per_stream_kb(self) -> float:
        return (self.rss_open_kb - self.rss_before_kb) / self.opened if self.opened else 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "per_stream_kb": self.per_stream_kb}


def hold(loop: asyncio.AbstractEventLoop, *, config: str, server: Server, body: bytes,
         streams: int, open_timeout: float, warm_streams: int = 20) -> MemoryRecord:
    """RSS growth of ``server`` while ``streams`` slow streams are held open through it."""
    request = payloads.http_request("127.0.0.1", server.port, body)

    async def settle(_: int) -> None:
        await asyncio.sleep(0.3)

    # Warm the code paths (imports, pools, first-use caches) so the growth is per stream.
    loop.run_until_complete(loadgen.hold_streams(
        "127.0.0.1", server.port, request, warm_streams, open_timeout=open_timeout,
        while_open=settle))
    time.sleep(1.0)
    before = server.rss_kb()
    peak = before

    async def sample(_: int) -> None:
        nonlocal peak
        for _ in range(10):
            peak = max(peak, server.rss_kb())
            await asyncio.sleep(0.1)

    held = loop.run_until_complete(loadgen.hold_streams(
        "127.0.0.1", server.port, request, streams, open_timeout=open_timeout,
        while_open=sample))
    time.sleep(1.0)  # let the proxy see the disconnects before the next configuration runs
    return MemoryRecord(config, streams, held.opened, held.failed, held.open_seconds, before,
                        peak)
