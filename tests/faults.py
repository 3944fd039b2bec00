"""Fault-injection helpers: a misbehaving upstream with its own accounting, and leak probes.

``FaultUpstream`` is a raw asyncio HTTP/1.1 server in a thread. Each request names its
behaviour in the ``x-fault`` header (a JSON-encoded :class:`Fault`, forwarded by the proxy), so
one upstream serves healthy streams and every kind of failure side by side. It counts open
connections, requests being answered, bytes it managed to flush per request and when each
request's handling ended, so tests can prove the proxy closed or paused it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.proxy.forward import Proxy
from otel_responses.telemetry.middleware import ResponsesTelemetryMiddleware
from tests.servers import serve_asgi, serve_tcp
from tests.spans import SpanSink

# -- deterministic bodies ------------------------------------------------------------------

# Multi-byte UTF-8, JSON escapes and SSE-significant characters, so random splits land inside
# code points and escapes.
_WORDS = ("Hello", " world", " é", " 日本語", " 🙂", ' "q"', " \\", " new\nline", " data:", " ::",
          " \r", " tab\t", " ä" * 3, " end.")


@dataclass(frozen=True)
class SSEBody:
    """A complete, valid Responses event stream and what a recorder should make of it."""

    body: bytes
    text: str
    terminal_at: int  # offset where the response.completed event starts


def sse_stream(seed: int, deltas: int, delta_size: int = 0) -> SSEBody:
    """created → item/part added → ``deltas`` text deltas → done events → completed."""
    rng = random.Random(seed)
    pieces = ["x" * delta_size if delta_size else rng.choice(_WORDS) for _ in range(deltas)]
    rid, mid = f"resp_f{seed}", f"msg_f{seed}"
    text = "".join(pieces)
    item = {"id": mid, "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    snapshot = {"id": rid, "object": "response", "model": "fault-model",
                "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": snapshot},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "output_index": 0, "item_id": mid,
         "content_index": 0, "part": part},
        *({"type": "response.output_text.delta", "output_index": 0, "item_id": mid,
           "content_index": 0, "delta": p} for p in pieces),
        {"type": "response.output_text.done", "output_index": 0, "item_id": mid,
         "content_index": 0, "text": text},
    ]
    done_item = {**item, "status": "completed",
                 "content": [{"type": "output_text", "text": text, "annotations": []}]}
    events.append({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    final = {**snapshot, "status": "completed", "output": [done_item],
             "usage": {"input_tokens": 3, "output_tokens": deltas, "total_tokens": 3 + deltas}}
    head = b"".join(_event(e, i) for i, e in enumerate(events))
    tail = _event({"type": "response.completed", "response": final}, len(events))
    return SSEBody(head + tail, text, len(head))


def _event(event: dict[str, Any], seq: int) -> bytes:
    event = {"type": event["type"], "sequence_number": seq,
             **{k: v for k, v in event.items() if k != "type"}}
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def deltas_in(prefix: bytes) -> str:
    """The text of the output_text deltas whose events are complete within ``prefix``."""
    blocks = prefix.split(b"\n\n")[:-1]
    out = []
    for block in blocks:
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("type") == "response.output_text.delta":
                    out.append(event["delta"])
    return "".join(out)


def junk_stream(seed: int, size: int) -> bytes:
    """Bytes no Responses server would send: broken events, invalid UTF-8, NULs, lone CRs."""
    rng = random.Random(seed)
    parts = [b"\xef\xbb\xbf", b"event: response.created\ndata: {\"type\":\"response.cre\n\n",
             b"data: [1,2\n\n", b"data: \xff\xfe\xfd\n\n", b"\x00\x00data: x\r\r",
             b"event: \ndata: null\n\n", b": comment \xc3\n", b"data: {\"type\": 5}\n\n",
             b"retry: 99999999999999999999\n", b"id: \x00\n\n", b"data:" + b"{" * 5000 + b"\n\n",
             b"event: response.completed\n", b"data: " + b"7" * 3000 + b"\r\n\r\n"]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            out += rng.choice(parts)
        else:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(out[:size])


@functools.lru_cache(maxsize=4)
def json_response(size: int) -> bytes:
    """A non-stream Response object of exactly ``size`` bytes (``size`` ≥ 200)."""
    def build(n: int) -> bytes:
        return json.dumps({"id": "resp_huge", "object": "response", "model": "fault-model",
                           "status": "completed", "output": [
                               {"id": "msg_huge", "type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": "y" * n}]}],
                           "usage": {"input_tokens": 1, "output_tokens": 1,
                                     "total_tokens": 2}}).encode()
    overhead = len(build(0))
    body = build(size - overhead)
    assert len(body) == size
    return body


def openai_error(status: int) -> bytes:
    return json.dumps({"error": {"message": f"upstream says {status}", "type": "server_error",
                                 "param": None, "code": f"e{status}"}}).encode()


# -- the upstream ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """What the upstream does for one request; travels in the ``x-fault`` header.

    kind: ``ok`` (SSE), ``held`` (SSE paused after its first event until released),
    ``json`` (small fixed body), ``echo``, ``cut`` (SSE then ``how``: fin/rst/stall/badchunk,
    or ``clean`` for a proper end, after ``at`` body bytes), ``cutfixed`` (fixed-length body,
    FIN after ``at``), ``prehead`` (``how``: fin/rst/stall/garbage/partial before any response),
    ``error`` (``status`` with an OpenAI error body, or HTML when ``how="html"``), ``junk``
    (``size`` bytes of junk as SSE), ``flood`` (``size`` bytes of SSE as fast as the socket
    takes them), ``huge`` (fixed-length JSON of ``size`` bytes), ``gzipstream`` (a whole SSE
    stream gzipped, with ``size`` bytes of hex comment lines after its first event; with
    ``how="json"``, a gzipped JSON Response whose text is ``size`` bytes of hex).
    """

    kind: str
    id: str = ""
    seed: int = 0
    deltas: int = 20
    at: int = 0
    how: str = ""
    status: int = 200
    size: int = 0
    delay: float = 0.0

    def header(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v},
                          separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str) -> Fault:
        return cls(**json.loads(raw))

    def sse(self) -> SSEBody:
        return sse_stream(self.seed, self.deltas)


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    idle: bool = True


@dataclass
class FaultUpstream:
    """Serve in a background thread; read the accounting from the test thread."""

    port: int = 0
    open: int = 0  # connections currently open
    active: int = 0  # requests currently being answered
    written: dict[str, int] = field(default_factory=dict)  # bytes flushed, per fault id
    ended: dict[str, float] = field(default_factory=dict)  # monotonic end of handling, per id
    seen: list[list[tuple[str, str]]] = field(default_factory=list)  # request headers
    _conns: set[_Conn] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _gate: asyncio.Event | None = None  # ``held`` streams wait for it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultUpstream]:
        def setup() -> None:
            self._gate = asyncio.Event()
            self._gate.set()

        with serve_tcp(self._connection, setup) as (self.port, self._loop):
            yield self

    def hold(self, held: bool) -> None:
        """``held`` streams wait after their first event until ``hold(False)``."""
        assert self._loop is not None and self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.clear if held else self._gate.set)

    def close_idle(self) -> None:
        """Close every keep-alive connection waiting for its next request."""
        assert self._loop is not None

        def close() -> None:
            for conn in list(self._conns):
                if conn.idle:
                    conn.writer.close()
        self._loop.call_soon_threadsafe(close)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        self.open += 1
        try:
            while True:
                conn.idle = True
                request = await _read_request(reader)
                conn.idle = False
                if request is None:
                    return
                headers, body = request
                self.seen.append(headers)
                raw = next((v for k, v in headers if k.lower() == "x-fault"), None)
                fault = Fault.parse(raw) if raw else Fault("json")
                self.active += 1
                try:
                    keep = await self._respond(fault, body, headers, reader, writer)
                finally:
                    self.active -= 1
                    self.ended[fault.id] = time.monotonic()
                if not keep:
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError,
                asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self._conns.discard(conn)
            writer.close()
            self.open -= 1

    def _count(self, fault: Fault, n: int) -> None:
        self.written[fault.id] = self.written.get(fault.id, 0) + n

    async def _write(self, fault: Fault, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self._count(fault, len(data))

    async def _chunks(self, fault: Fault, writer: asyncio.StreamWriter, data: bytes,
                      rng: random.Random) -> None:
        """``data`` as chunked-encoding chunks of random sizes, with random short pauses."""
        i = 0
        while i < len(data):
            piece = data[i:i + rng.randint(1, 700)]
            i += len(piece)
            await self._write(fault, writer, b"%x\r\n%s\r\n" % (len(piece), piece))
            if fault.delay:
                await asyncio.sleep(rng.random() * fault.delay)

    async def _respond(self, fault: Fault, body: bytes, headers: list[tuple[str, str]],
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        rng = random.Random(f"{fault.seed}:{fault.kind}:{fault.at}")
        kind = fault.kind
        if kind == "prehead":
            return await self._prehead(fault, reader, writer, rng)
        if kind == "json":
            await self._write(fault, writer, _fixed(200, b'{"object":"list","data":[]}'))
            return True
        if kind == "echo":
            echo = json.dumps({"headers": headers,
                               "body_b64": base64.b64encode(body).decode()}).encode()
            await self._write(fault, writer, _fixed(200, echo))
            return True
        if kind == "error":
            html = fault.how == "html"
            payload = b"<html><body>Bad gateway</body></html>" if html else \
                openai_error(fault.status)
            ctype = "text/html" if html else "application/json"
            await self._write(fault, writer, _fixed(fault.status, payload, ctype))
            return True
        if kind == "huge":
            data = json_response(fault.size)
            await self._write(fault, writer, _head(200, "application/json", len(data)))
            for i in range(0, len(data), 1 << 16):
                await self._write(fault, writer, data[i:i + (1 << 16)])
            return True
        if kind == "cutfixed":
            data = json_response(max(fault.size, 4096))
            await self._write(fault, writer, _head(200, "application/json", len(data)))
            await self._write(fault, writer, data[:fault.at])
            return False
        if kind == "flood":
            await self._flood(fault, writer)
            return True
        if kind == "gzipstream":
            data = gzip_stream(fault)
            head = _head(200, "application/json" if fault.how == "json" else "text/event-stream",
                         len(data))
            await self._write(fault, writer, head.replace(b"\r\n\r\n",
                                                          b"\r\nContent-Encoding: gzip\r\n\r\n"))
            for i in range(0, len(data), 1 << 16):
                await self._write(fault, writer, data[i:i + (1 << 16)])
            return True
        await self._write(fault, writer, _head(200, "text/event-stream"))
        if kind == "junk":
            await self._chunks(fault, writer, junk_stream(fault.seed, fault.size), rng)
            await self._write(fault, writer, b"0\r\n\r\n")
            return True
        sse = fault.sse().body
        if kind == "held":
            first = sse.index(b"\n\n") + 2
            await self._write(fault, writer, b"%x\r\n%s\r\n" % (first, sse[:first]))
            assert self._gate is not None
            await self._gate.wait()
            await self._chunks(fault, writer, sse[first:], rng)
            await self._write(fault, writer, b"0\r\n\r\n")
            return True
        if kind == "ok":
            if fault.how == "pause-end":  # the whole body at once, then the end after ``delay``
                await self._write(fault, writer, b"%x\r\n%s\r\n" % (len(sse), sse))
                await asyncio.sleep(fault.delay)
            else:
                await self._chunks(fault, writer, sse, rng)
            await self._write(fault, writer, b"0\r\n\r\n")
            return True
        assert kind == "cut", kind
        await self._chunks(fault, writer, sse[:fault.at], rng)
        if fault.how == "rst":
            _reset(writer)
        elif fault.how == "badchunk":
            await self._write(fault, writer, b"zz\r\nnot a chunk\r\n")
        elif fault.how == "stall":
            await _until_peer_closes(reader)
        elif fault.how == "clean":  # a truncated event stream, ended properly
            await self._write(fault, writer, b"0\r\n\r\n")
            return True
        return False

    async def _prehead(self, fault: Fault, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, rng: random.Random) -> bool:
        if fault.how == "rst":
            _reset(writer)
        elif fault.how == "garbage":
            await self._write(fault, writer, bytes(rng.randrange(256) for _ in range(300)))
        elif fault.how == "partial":
            await self._write(fault, writer, b"HTTP/1.1 200 OK\r\nContent-Ty")
        elif fault.how == "stall":
            await _until_peer_closes(reader)
        return False

    async def _flood(self, fault: Fault, writer: asyncio.StreamWriter) -> None:
        """``size`` bytes of one repeated big delta event, as fast as the socket drains."""
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        writer.transport.set_write_buffer_limits(high=16 * 1024, low=4 * 1024)
        opening, event, count = flood_parts(fault)
        await self._write(fault, writer, _head(200, "text/event-stream"))
        await self._write(fault, writer, b"%x\r\n%s\r\n" % (len(opening), opening))
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        for _ in range(count):
            await self._write(fault, writer, chunk)
        await self._write(fault, writer, b"0\r\n\r\n")


def flood_parts(fault: Fault) -> tuple[bytes, bytes, int]:
    """A ``flood`` body: an opening, then one 16 kB delta event repeated to ``size`` bytes."""
    head = sse_stream(fault.seed, 0).body
    opening = head[:head.index(b"event: response.output_text.done")]
    event = _event({"type": "response.output_text.delta", "output_index": 0,
                    "item_id": f"msg_f{fault.seed}", "content_index": 0,
                    "delta": "z" * 16000}, 9)
    count = max(0, -(-(fault.size - len(opening)) // len(event)))
    return opening, event, count


@functools.lru_cache(maxsize=2)
def gzip_stream(fault: Fault) -> bytes:
    """A ``gzipstream`` body: ``size`` bytes of random hex (about 2:1 under gzip, far from a
    bomb) as comment lines after the first event of the fault's SSE stream, or with
    ``how="json"`` as the text of a JSON Response (usage last); gzipped."""
    noise = random.Random(fault.seed).randbytes(fault.size // 2).hex()
    if fault.how == "json":
        return gzip.compress(json.dumps({
            "id": "resp_gz", "object": "response", "model": "fault-model", "status": "completed",
            "output": [{"id": "msg_gz", "type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": noise}]}],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}).encode(),
            compresslevel=1)
    sse = fault.sse().body
    first = sse.index(b"\n\n") + 2
    line = 1 << 16
    comments = "".join(f": {noise[i:i + line]}\n" for i in range(0, len(noise), line))
    return gzip.compress(sse[:first] + comments.encode() + b"\n" + sse[first:], compresslevel=1)


def flood_length(fault: Fault) -> int:
    """Body bytes a ``flood`` fault sends."""
    opening, event, count = flood_parts(fault)
    return len(opening) + count * len(event)


def _head(status: int, ctype: str, length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n{framing}\r\n\r\n").encode()


def _fixed(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    return _head(status, ctype, len(body)) + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _until_peer_closes(reader: asyncio.StreamReader, cap: float = 30.0) -> None:
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(cap):
            while await reader.read(65536):
                pass


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[list[tuple[str, str]], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines[1:] if line)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return headers, body


# -- the proxy under test, and what it holds ---------------------------------------------

class LoopProbe:
    """ASGI pass-through that remembers the server's event loop (seen at lifespan startup)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


def _find(root: Any, kind: type, depth: int = 8) -> Any:
    """The first ``kind`` reachable through ``.app``/``.routes``/``.endpoint``/``.proxy``."""
    todo: list[tuple[Any, int]] = [(root, 0)]
    seen: set[int] = set()
    while todo:
        obj, level = todo.pop(0)
        if id(obj) in seen or level > depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, kind):
            return obj
        for name in ("app", "endpoint", "proxy", "router"):
            child = getattr(obj, name, None)
            if child is not None:
                todo.append((child, level + 1))
        for route in getattr(obj, "routes", None) or ():
            todo.append((route, level + 1))
    return None


@dataclass
class Served:
    """A proxy served by uvicorn in a thread, with handles on its loop, proxy and middleware."""

    base: str
    sink: SpanSink | None
    probe: LoopProbe

    @property
    def proxy(self) -> Proxy:
        found = _find(self.probe.app, Proxy)
        assert found is not None, "no Proxy reachable from the app"
        return found

    @property
    def middleware(self) -> ResponsesTelemetryMiddleware:
        found = _find(self.probe.app, ResponsesTelemetryMiddleware)
        assert found is not None, "no telemetry middleware in the app"
        return found

    def tasks(self) -> int:
        """Tasks alive on the server's event loop (the counting task included)."""
        assert self.probe.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks())
        return asyncio.run_coroutine_threadsafe(count(), self.probe.loop).result(5)


@contextlib.contextmanager
def faulty_proxy(upstream_url: str, *, tracer_provider: Any = None,
                 **settings: Any) -> Iterator[Served]:
    """``create_app`` for ``upstream_url`` under real uvicorn; spans into memory by default."""
    sink = SpanSink() if tracer_provider is None else None
    provider = tracer_provider if sink is None else sink.provider
    app = create_app(Settings(upstream=upstream_url, **settings), tracer_provider=provider)
    probe = LoopProbe(app)
    with serve_asgi(probe) as base:
        yield Served(base, sink, probe)


@contextlib.contextmanager
def loop_lag(served: Served, period: float = 0.01) -> Iterator[list[float]]:
    """Track how late the server's loop runs a ``period`` sleep; yields ``[worst lag]``."""
    assert served.probe.loop is not None
    worst = [0.0]

    async def heartbeat() -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(period)
            worst[0] = max(worst[0], time.monotonic() - started - period)

    task = asyncio.run_coroutine_threadsafe(heartbeat(), served.probe.loop)
    try:
        yield worst
    finally:
        task.cancel()


def _tcp_roles(ports: dict[int, str]) -> dict[str, str]:
    """Socket inode → role (``<name> listen``, ``<name> accepted`` or ``to <name>``) of the
    TCP sockets whose local or remote port is one of ``ports``."""
    roles = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                if local in ports:
                    kind = "listen" if remote == 0 else "accepted"
                    roles[fields[9]] = f"{ports[local]} {kind}"
                elif remote in ports:
                    roles[fields[9]] = f"to {ports[remote]}"
    return roles


def fd_counts(ports: dict[int, str]) -> tuple[tuple[tuple[str, int], ...], int]:
    """Open sockets to or from ``ports`` by role, and the number of fds that are not sockets.

    Sockets of other components (exporter threads a previous test left retrying, say) are
    not counted, so only what the proxy, the upstream and the test's clients hold is compared.
    """
    roles = _tcp_roles(ports)
    sockets: dict[str, int] = {}
    others = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if not target.startswith("socket:["):
            others += 1
        elif (role := roles.get(target[8:-1])) is not None:
            sockets[role] = sockets.get(role, 0) + 1
    return tuple(sorted(sockets.items())), others


@dataclass(frozen=True)
class Snapshot:
    sockets: tuple[tuple[str, int], ...]  # TCP fds to/from the proxy's or upstream's port
    other_fds: int  # fds that are not sockets (pipes, eventfds, epoll, files)
    tasks: int
    threads: int  # not counting default-executor workers
    upstream_open: int
    in_flight: int
    upstream_active: int

    def within(self, baseline: Snapshot) -> bool:
        before = dict(baseline.sockets)
        return (all(n <= before.get(role, 0) for role, n in self.sockets)
                and self.other_fds <= baseline.other_fds and self.tasks <= baseline.tasks
                and self.threads <= baseline.threads and self.in_flight == 0
                and self.upstream_active == 0
                and self.upstream_open <= max(baseline.upstream_open, 1))


def _threads() -> int:
    """Threads alive, not counting workers of the loops' default executors (bounded pools that
    keep their threads), which ``asyncio.to_thread`` and DNS lookups use."""
    names = [t.name for t in threading.enumerate()]
    pooled = sum(name.startswith(("asyncio_", "uvloop_")) for name in names)
    assert pooled <= 32, f"{pooled} executor threads"
    return len(names) - pooled


def settle(served: Served, upstream: FaultUpstream | None) -> Snapshot:
    """Bring pools to a canonical state, then measure.

    The upstream closes its idle keep-alive connections; one request through the proxy then
    makes the pool discard them and leaves exactly one idle connection.
    """
    if upstream is not None:
        upstream.close_idle()
        _poll(lambda: not any(c.idle for c in list(upstream._conns)), 3)
        sock = raw_connect(served.base)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
                     b"x-fault: %s\r\n\r\n" % Fault("json", id="settle").header().encode())
        reply = read_until_closed(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    ports = {int(served.base.rsplit(":", 1)[1]): "proxy"}
    if upstream is not None:
        ports[upstream.port] = "upstream"
    sockets, others = fd_counts(ports)
    return Snapshot(sockets, others, served.tasks(), _threads(),
                    upstream.open if upstream else 0, served.proxy.in_flight,
                    upstream.active if upstream else 0)


def assert_no_leaks(served: Served, upstream: FaultUpstream | None, baseline: Snapshot,
                    timeout: float = 5.0) -> None:
    """fds, server tasks, threads and upstream connections back to ``baseline`` (polled).

    ``settle`` leaves exactly one pooled upstream connection either way, so a connection the
    proxy failed to close, a stuck task or an fd leaked anywhere in the process shows here.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = settle(served, upstream)
        ok = now.within(baseline)
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"resources not back to baseline:\n  before {baseline}\n"
                                 f"  after  {now}")
        time.sleep(0.1)


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``condition()`` holds or ``timeout`` passes; return whether it held."""
    return _poll(condition, timeout)


# -- raw sockets and collectors ----------------------------------------------------------------

def raw_connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def raw_post(path: str, body: bytes, fault: Fault | None = None,
             extra: bytes = b"") -> bytes:
    fault_header = f"x-fault: {fault.header()}\r\n".encode() if fault else b""
    return (b"POST %s HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            b"%s%sContent-Length: %d\r\n\r\n%s" % (path.encode(), fault_header, extra,
                                                   len(body), body))


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


def hard_close(sock: socket.socket) -> None:
    """Close with a TCP RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def dechunk_raw(data: bytes) -> tuple[bytes, bool]:
    """The body of a raw chunked HTTP/1.1 response as far as it arrived, and whether it had
    its terminating chunk."""
    pos = data.index(b"\r\n\r\n") + 4
    out = bytearray()
    while (eol := data.find(b"\r\n", pos)) >= 0:
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out), data[eol + 2:].startswith(b"\r\n")
        out += data[eol + 2:eol + 2 + size]
        pos = eol + 4 + size
    return bytes(out), False
