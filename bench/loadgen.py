"""A cheap HTTP/1.1 keep-alive load generator on raw asyncio protocols (uvloop when present).

Why hand-made: the load generator shares 2 cores with the upstream and the proxy, so every
microsecond it spends is taken from what is measured. A raw ``asyncio.Protocol`` sending
pre-built request bytes costs a fraction of an httpx or aiohttp client. Every run is bounded
in requests and in time, and a watchdog closes every socket at the hard deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

DELTA = b"response.output_text.delta"
COMPLETED = b"response.completed"


@dataclass(frozen=True, slots=True)
class Marks:
    """What a stream's first content delta and its successful end contain."""

    delta: bytes
    end: bytes


RESPONSES = Marks(DELTA, COMPLETED)
CHAT = Marks(b'"delta":{"content":', b"data: [DONE]")  # Chat Completions chunks
OVERHEAD_HEADER = b"\r\nx-otel-responses-overhead-ms:"
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"


class ConnectionDropped(Exception):
    pass


@dataclass(slots=True)
class Reply:
    status: int
    started: int  # perf_counter_ns when the request was written
    first_delta: int  # perf_counter_ns of the first output_text.delta (streams), else 0
    done: int
    events: int  # SSE events in the body (streams), else 0
    overhead_ms: float | None  # the proxy's self-reported request-side overhead, if sent
    ok: bool


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``send`` returns a future resolved with a :class:`Reply`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, marks: Marks = RESPONSES) -> None:
        self.loop = loop
        self.marks = marks
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self._reset(0)

    def _reset(self, started: int) -> None:
        self.started = started
        self.buf = bytearray()  # undecoded bytes (headers, then chunk framing)
        self.head: bytes | None = None
        self.status = 0
        self.length = -1  # Content-Length, or -1 for chunked
        self.body = bytearray()
        self.chunk_left = 0  # >0: data bytes left; 0: expect a size line; -1: CRLF; -2: end
        self.first_delta = 0
        self.scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look like one.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionDropped(str(exc or "closed")))

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self._reset(time.perf_counter_ns())
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            self.buf += data
            end = self.buf.find(_HEAD_END)
            if end < 0:
                return
            self._parse_head(end)
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
        if self.length >= 0:
            self.body += data
            if len(self.body) >= self.length:
                self._finish()
        else:
            self._dechunk(data)

    def _parse_head(self, end: int) -> None:
        head = bytes(self.buf[:end]).lower()
        self.head = head
        self.status = int(head[9:12])
        cl = head.find(b"\r\ncontent-length:")
        if cl >= 0:
            stop = head.find(_CRLF, cl + 2)
            self.length = int(head[cl + 17:stop if stop >= 0 else len(head)])
        elif b"transfer-encoding: chunked" not in head:
            self.length = 1 << 62  # delimited by close; never the case for these servers

    def _dechunk(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, size = 0, len(buf)
        while pos < size:
            left = self.chunk_left
            if left > 0:
                take = min(left, size - pos)
                self.body += buf[pos:pos + take]
                pos += take
                self.chunk_left = left - take or -1
            elif left == -1 or left == -2:
                if size - pos < 2:
                    break
                pos += 2
                if left == -2:
                    del buf[:pos]
                    self._scan()
                    self._finish()
                    return
                self.chunk_left = 0
            else:
                eol = buf.find(_CRLF, pos)
                if eol < 0:
                    break
                n = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                pos = eol + 2
                self.chunk_left = n if n else -2
        del buf[:pos]
        self._scan()

    def _scan(self) -> None:
        delta = self.marks.delta
        if self.first_delta == 0 and self.body:
            if self.body.find(delta, self.scan_from) >= 0:
                self.first_delta = time.perf_counter_ns()
            else:
                self.scan_from = max(0, len(self.body) - len(delta))

    def _finish(self) -> None:
        done = time.perf_counter_ns()
        head = self.head or b""
        overhead = None
        at = head.find(OVERHEAD_HEADER)
        if at >= 0:
            stop = head.find(_CRLF, at + 2)
            overhead = float(head[at + len(OVERHEAD_HEADER):stop if stop >= 0 else len(head)])
        stream = self.length < 0
        events = self.body.count(b"\n\n") if stream else 0
        ok = self.status == 200 and (not stream or self.body.rfind(self.marks.end) > 0)
        reply = Reply(self.status, self.started, self.first_delta, done, events, overhead, ok)
        waiter, self.waiter = self.waiter, None
        self.head = b""
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


async def _connect(host: str, port: int, marks: Marks = RESPONSES) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(loop, marks), host, port)
    return conn


@dataclass
class RunResult:
    """One closed-loop run: only the measured phase's replies, warm-up excluded."""

    concurrency: int
    replies: list[Reply] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    warmup_requests: int = 0
    client_cpu_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.replies)

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0


def own_cpu() -> float:
    """CPU seconds of this process (the load generator)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def closed_loop(host: str, port: int, request: bytes, *, concurrency: int,
                      max_requests: int, max_seconds: float, warmup_requests: int,
                      warmup_seconds: float, grace_seconds: float = 10.0,
                      pause_s: float = 0.0, marks: Marks = RESPONSES) -> RunResult:
    """``concurrency`` connections each send, wait for the whole reply, and send again.

    With ``pause_s``, each connection waits that long after every reply (warm-up included)
    before sending again, so requests do not queue behind the CPU work of the previous one.
    ``marks`` tell a stream's first delta and its successful end (Responses events by default).
    Stops issuing at ``max_requests`` or ``max_seconds`` (each phase), whichever comes first;
    requests still in flight get ``grace_seconds`` before every socket is closed.
    """
    result = RunResult(concurrency)
    conns = await asyncio.gather(*(_connect(host, port, marks) for _ in range(concurrency)))
    try:
        warm = await _phase(conns, request, warmup_requests, warmup_seconds, grace_seconds,
                            host, port, pause_s)
        result.warmup_requests = len(warm[0])
        gc.collect()
        gc.disable()  # a collector pause in the client would land in someone's p99
        cpu0 = own_cpu()
        start = time.perf_counter_ns()
        replies, errors, last = await _phase(conns, request, max_requests, max_seconds,
                                             grace_seconds, host, port, pause_s)
        result.client_cpu_s = own_cpu() - cpu0
        gc.enable()
        result.replies, result.errors = replies, errors + warm[1]
        result.elapsed_s = max(last - start, 1) / 1e9
    finally:
        gc.enable()
        for conn in conns:
            conn.close()
    return result


async def _phase(conns: list[_Conn], request: bytes, max_requests: int, max_seconds: float,
                 grace_seconds: float, host: str, port: int,
                 pause_s: float = 0.0) -> tuple[list[Reply], int, int]:
    replies: list[Reply] = []
    errors = 0
    issued = 0
    last = time.perf_counter_ns()
    deadline = time.perf_counter() + max_seconds

    async def worker(index: int) -> None:
        nonlocal issued, errors, last
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            conn = conns[index]
            if conn.closed:
                conn = conns[index] = await _connect(host, port, conn.marks)
            try:
                reply = await conn.send(request)
            except ConnectionDropped:
                errors += 1
            else:
                if reply.ok:
                    replies.append(reply)
                else:
                    errors += 1
                last = reply.done
            if pause_s > 0:
                await asyncio.sleep(pause_s)

    tasks = [asyncio.ensure_future(worker(i)) for i in range(len(conns))]
    done, pending = await asyncio.wait(tasks, timeout=max_seconds + grace_seconds)
    for task in pending:
        task.cancel()
    for conn in conns if pending else ():
        conn.close()
    errors += len(pending)
    for task in done:
        if task.exception() is not None:
            errors += 1
    return replies, errors, last


@dataclass
class HoldResult:
    requested: int
    opened: int = 0  # streams that delivered their first delta
    open_seconds: float = 0.0
    failed: int = 0


async def hold_streams(host: str, port: int, request: bytes, n: int, *, open_timeout: float,
                       while_open: Callable[[int], Awaitable[None]]) -> HoldResult:
    """Open ``n`` streams at once, wait until each has delivered a delta (or the timeout),
    await ``while_open(opened)`` with all of them held, then drop every connection."""
    result = HoldResult(n)
    conns: list[_Conn] = []
    start = time.perf_counter()

    async def one() -> None:
        conn = await _connect(host, port)
        conns.append(conn)
        conn.send(request).add_done_callback(_ignore)
        while conn.first_delta == 0 and not conn.closed:
            await asyncio.sleep(0.05)
        if conn.first_delta:
            result.opened += 1
        else:
            result.failed += 1

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=open_timeout)
        for task in pending:
            task.cancel()
        result.failed += len(pending)
        result.open_seconds = time.perf_counter() - start
        await while_open(result.opened)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)
    return result


def _ignore(future: asyncio.Future[Reply]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
