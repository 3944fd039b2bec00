"""Benchmark: what the response store costs adapter mode, per backend, side by side in one run.

    python bench/store.py [--quick] [--requests N] [--reps R]

Part 1 (real processes on 127.0.0.1): the demo's chat upstream (no token delay), a
redis-server, and one untraced proxy per backend (``--upstream-api chat --store memory |
sqlite | redis``). Small non-stream requests in a closed loop at c=1 and c=10, three kinds
interleaved in every repetition: ``store: false`` (the baseline), stored (one write), and
continuing a stored response with ``previous_response_id`` and ``store: false`` (one chain
read). Added latency is each kind's p50/p99 minus the baseline's, in the same repetition (the
median over repetitions is shown); CPU per request is the proxy process's.

Part 2 (in process): how long store work keeps the event loop from anything else. Ten tasks
save records and walk chains (five deep) on one loop, yielding between operations as requests
would; every callback the loop runs is timed (``Handle._run`` wrapped for the measurement), so
the longest is the longest stall: its wall time (GIL waits on the SQLite thread, and other
processes on a shared machine, included) and the loop thread's own CPU time. Records are a small
answer and a 200-delta stream (its events included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_responses.protocol.chat import StreamTranslator, sse_bytes, translate_request
from otel_responses.store.record import StoredResponse
from otel_responses.store.service import Responses
from otel_responses.store.url import StoreSpec

import loadgen
import payloads
from measure import percentile
from servers import Server, free_port, spawn, start_upstream

KINDS = ("unstored", "stored", "chained")
BACKENDS = ("memory", "sqlite", "redis")


# ---- part 1: end to end ----------------------------------------------------------------------

@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    with open(workdir / "redis.log", "wb") as log:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                 "", "--appendonly", "no", "--dir", str(workdir)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), 0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def start_store_proxy(backend: str, store: str, logdir: Path, upstream: Server) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "otel_responses", "serve", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{upstream.port}/v1", "--upstream-api", "chat",
            "--store", store, "--data-dir", str(logdir / f"state-{backend}")]
    return spawn(f"proxy-{backend}", port, argv, logdir, {"OTEL_SDK_DISABLED": "true"})


def create(port: int, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/responses", json.dumps(body),
                     {"content-type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer}")
        return answer
    finally:
        conn.close()


@dataclass
class Sample:
    backend: str
    concurrency: int
    kind: str
    rep: int
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # proxy CPU per request
    requests: int
    errors: int


def measure(loop: asyncio.AbstractEventLoop, proxy: Server, backend: str, concurrency: int,
            rep: int, kind: str, body: bytes, requests: int) -> Sample:
    request = payloads.http_request("127.0.0.1", proxy.port, body)
    cpu0 = proxy.cpu_seconds()
    run = loop.run_until_complete(loadgen.closed_loop(
        "127.0.0.1", proxy.port, request, concurrency=concurrency, max_requests=requests,
        max_seconds=60, warmup_requests=min(200, requests // 5), warmup_seconds=10))
    cpu = proxy.cpu_seconds() - cpu0
    latencies = [(r.done - r.started) / 1e6 for r in run.replies]
    issued = run.requests + run.warmup_requests
    return Sample(backend, concurrency, kind, rep, percentile(latencies, 50),
                  percentile(latencies, 99), cpu / max(issued, 1) * 1000, run.requests,
                  run.errors)


def end_to_end(logdir: Path, requests: int, reps: int) -> list[Sample]:
    samples: list[Sample] = []
    loop = loadgen.new_event_loop()
    upstream = start_upstream("upstream", logdir)
    proxies: list[Server] = [upstream]
    try:
        upstream.wait_ready(30)
        with redis_server(logdir) as redis_url:
            stores = {"memory": "memory", "sqlite": "sqlite:///responses.db",
                      "redis": redis_url}
            for backend in BACKENDS:
                proxy = start_store_proxy(backend, stores[backend], logdir, upstream)
                proxies.append(proxy)
                proxy.wait_ready(30)
                parent = create(proxy.port, payloads.small())["id"]
                bodies = {
                    "unstored": {**payloads.small(), "store": False},
                    "stored": payloads.small(),
                    "chained": {**payloads.small(), "store": False,
                                "previous_response_id": parent},
                }
                for concurrency in (1, 10):
                    for rep in range(reps):
                        order = KINDS[rep % 3:] + KINDS[:rep % 3]  # rotated: no kind always first
                        for kind in order:
                            sample = measure(loop, proxy, backend, concurrency, rep, kind,
                                             json.dumps(bodies[kind]).encode(), requests)
                            samples.append(sample)
                            print(f"  {backend:6} c={concurrency:<2} {kind:8} rep {rep}: "
                                  f"p50 {sample.p50_ms:.3f} ms, p99 {sample.p99_ms:.3f} ms, "
                                  f"CPU {sample.cpu_ms:.3f} ms/req, errors {sample.errors}",
                                  flush=True)
                proxy.stop()
    finally:
        for server in proxies:
            server.stop()
        loop.close()
    return samples


def added(samples: list[Sample], backend: str, concurrency: int, kind: str,
          field: str) -> tuple[float, float]:
    """(median over repetitions of the kind's figure, median of its excess over the
    baseline's in the same repetition)."""
    by_rep = {(s.kind, s.rep): getattr(s, field) for s in samples
              if s.backend == backend and s.concurrency == concurrency}
    reps = sorted({rep for _, rep in by_rep})
    own = [by_rep[kind, r] for r in reps]
    extra = [by_rep[kind, r] - by_rep["unstored", r] for r in reps]
    return statistics.median(own), statistics.median(extra)


def e2e_table(samples: list[Sample]) -> str:
    lines = ["| backend | c | request | p50 ms | added p50 ms | p99 ms | added p99 ms | "
             "proxy CPU ms/req | added CPU ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for backend in BACKENDS:
        for concurrency in (1, 10):
            for kind in KINDS:
                p50, add50 = added(samples, backend, concurrency, kind, "p50_ms")
                p99, add99 = added(samples, backend, concurrency, kind, "p99_ms")
                cpu, addcpu = added(samples, backend, concurrency, kind, "cpu_ms")
                extra = ("–", "–", "–") if kind == "unstored" else \
                    (f"{add50:+.3f}", f"{add99:+.3f}", f"{addcpu:+.3f}")
                lines.append(f"| {backend} | {concurrency} | {kind} | {p50:.3f} | {extra[0]} | "
                             f"{p99:.3f} | {extra[1]} | {cpu:.3f} | {extra[2]} |")
    return "\n".join(lines)


# ---- part 2: event-loop stalls ---------------------------------------------------------------

def streamed_record(deltas: int) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(request, final Response, SSE bytes) of a stream of ``deltas`` content deltas."""
    body = {"model": "demo", "input": "Tell me a story.", "stream": True}
    translator = StreamTranslator(translate_request(body), "resp_bench", 1)
    events = translator.start()
    for i in range(deltas):
        events += translator.feed({"choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                                "finish_reason": None}]})
    events += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 5, "completion_tokens": deltas,
                                         "total_tokens": deltas + 5}})
    events += translator.finish(1)
    return body, translator.response, b"".join(map(sse_bytes, events))


@dataclass
class Stall:
    backend: str
    record: str
    ops_per_s: float
    cpu_p99_ms: float
    cpu_max_ms: float
    wall_p99_ms: float
    wall_max_ms: float
    record_bytes: int


class NullStore:
    """The control: keeps nothing, finds one fixed record. What the harness, the machine and
    the Python runtime cost on their own."""

    def __init__(self, record: StoredResponse) -> None:
        self.record = record

    async def get(self, response_id: str, owner: str | None, *,
                  events: bool = False) -> StoredResponse | None:
        return self.record

    async def put(self, record: StoredResponse) -> None:
        return None

    async def delete(self, response_id: str, owner: str | None) -> bool:
        return False

    async def aclose(self) -> None:
        return None


@contextlib.contextmanager
def callback_times(running: Callable[[], bool]) -> Iterator[list[tuple[float, float]]]:
    """(wall, CPU) ms of every callback the event loop runs meanwhile, each task step
    included. Wall time is how long the callback kept the loop from everything else (GIL
    waits, and the OS running other processes, included); the loop thread's CPU time is its
    own work alone, what the code can be held to on a busy machine. Only callbacks that start
    while ``running()`` count (not the harness's own wrap-up)."""
    times: list[tuple[float, float]] = []
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        counted = running()
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            run(handle)
        finally:
            if counted:
                times.append(((time.perf_counter() - start) * 1000,
                          (time.thread_time() - cpu) * 1000))
    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    try:
        yield times
    finally:
        asyncio.events.Handle._run = run  # type: ignore[method-assign]


async def stall_run(responses: Responses, body: dict[str, Any], response: dict[str, Any],
                    events: bytes | None, ops: int) -> tuple[float, list[tuple[float, float]]]:
    """Ten tasks each save a record continuing the previous one and read the chain back,
    ``ops`` saves in all; returns (seconds, every loop callback's wall and CPU ms)."""
    working = 10

    async def worker(n: int) -> None:
        nonlocal working
        chain: list[str] = []
        try:
            for i in range(ops // 10):
                record = responses.record(
                    {**response, "id": f"resp_{n}_{i}_{time.time_ns()}"},
                    {**body, "previous_response_id": chain[-1] if chain else None}, events,
                    None, chain)
                await responses.save(record)
                await asyncio.sleep(0)  # as between two requests: one operation per step
                await responses.chain(record.id, None)
                await asyncio.sleep(0)
                chain = [*chain, record.id] if i % 5 != 4 else []  # chains of five
        finally:
            working -= 1

    gc.collect()
    gc.disable()  # a collection would land in some callback: not the store's doing
    try:
        with callback_times(lambda: working > 0) as times:
            start = time.perf_counter()
            await asyncio.gather(*(worker(n) for n in range(10)))
            elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed, times


async def stall_backend(spec: StoreSpec | None, body: dict[str, Any],
                        response: dict[str, Any], events: bytes | None,
                        ops: int) -> tuple[float, list[tuple[float, float]]]:
    """One backend's run (``spec`` None: the control)."""
    responses = Responses(ttl=3600)
    if spec is None:
        responses.store = NullStore(responses.record(response, body, events, None))
    else:
        await responses.open(spec, None)
    try:
        await stall_run(responses, body, response, events, ops // 5)  # warm-up
        return await stall_run(responses, body, response, events, ops)
    finally:
        await responses.aclose()


def stalls(logdir: Path, ops: int, reps: int) -> list[Stall]:
    """Each backend and record, ``reps`` runs of ``ops`` saves: medians of their figures."""
    small_body, small_response, _ = streamed_record(8)  # the answer, without its events
    stream_body, stream_response, stream_events = streamed_record(200)
    records = {"small answer": (small_body, small_response, None),
               "200-delta stream": (stream_body, stream_response, stream_events)}
    out: list[Stall] = []
    with redis_server(logdir) as redis_url:
        stores = {"control": None, "memory": "memory", "sqlite": "sqlite:///stall.db",
                  "redis": redis_url}
        for backend, url in stores.items():
            for name, (body, response, events) in records.items():
                spec = None if url is None else StoreSpec.parse(url, str(logdir / "stalls"))
                runs = [asyncio.run(stall_backend(spec, body, response, events, ops))
                        for _ in range(reps)]
                figures = []
                for elapsed, times in runs:
                    wall, cpu = [t[0] for t in times], [t[1] for t in times]
                    figures.append((ops / elapsed, percentile(cpu, 99), max(cpu),
                                    percentile(wall, 99), max(wall)))
                size = len(StoredResponse("x", None, 0, 0, response, [],
                                          events).encode()) + len(events or b"")
                row = Stall(backend, name, *(statistics.median(f) for f in zip(*figures,
                                                                                strict=True)),
                            record_bytes=size)
                out.append(row)
                print(f"  {backend:7} {name:17}: {row.ops_per_s:,.0f} saves+chain reads/s, "
                      f"loop callback CPU p99 {row.cpu_p99_ms:.3f} ms, max "
                      f"{row.cpu_max_ms:.3f} ms; wall p99 {row.wall_p99_ms:.3f} ms, max "
                      f"{row.wall_max_ms:.3f} ms", flush=True)
    return out


def stall_table(rows: list[Stall]) -> str:
    lines = ["| backend | record (bytes) | saves + chain reads per s | loop callback CPU p99 ms "
             "| longest (CPU) ms | wall p99 ms | longest (wall) ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.record} ({r.record_bytes:,}) | {r.ops_per_s:,.0f} | "
              f"{r.cpu_p99_ms:.3f} | {r.cpu_max_ms:.3f} | {r.wall_p99_ms:.3f} | "
              f"{r.wall_max_ms:.3f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer requests")
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--part", choices=("all", "e2e", "stalls"), default="all")
    args = parser.parse_args()
    requests, reps, ops = (200, 1, 200) if args.quick else (args.requests, args.reps, 2000)
    sys.setswitchinterval(0.0005)  # as `otel-responses serve` runs (the stall part, in here)
    with tempfile.TemporaryDirectory(prefix="otel-responses-bench-store-") as tmp:
        logdir = Path(tmp)
        tables = []
        if args.part in ("all", "e2e"):
            print("end to end (untraced proxy, small non-stream requests):", flush=True)
            tables.append(e2e_table(end_to_end(logdir, requests, reps)))
        if args.part in ("all", "stalls"):
            print("event-loop stalls (in process, 10 tasks):", flush=True)
            tables.append(stall_table(stalls(logdir, ops, reps)))
    for table in tables:
        print()
        print(table)


if __name__ == "__main__":
    main()
