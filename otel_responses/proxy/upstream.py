"""The upstream HTTP/1.1 client: an asyncio protocol parsed by httptools, keep-alive pooled.

Why not httpx: on the proxy's hot path httpx + httpcore + anyio cost ~1.3 ms of CPU per request
on the benchmark machine (cancel scopes, h11 in pure Python, a pool that polls every idle socket
on each request): several times the rest of the proxy. This client writes each request once,
parses in C and hands body bytes over as they arrive, pausing the socket when the client reads
slower than the upstream writes. It honours HTTP(S)_PROXY / NO_PROXY and SSL_CERT_FILE as httpx
does.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

from otel_responses.proxy.target import UpstreamTarget

Headers = list[tuple[bytes, bytes]]
# Past this many unread body bytes the socket is paused: the client is slower than upstream.
HIGH_WATER = 256 * 1024
# Idle connections older than this are closed rather than reused: servers close theirs after a
# keep-alive timeout (uvicorn: 5 s), and reusing one they are closing loses the request.
KEEPALIVE_EXPIRY = 4.0
MAX_IDLE = 256
# Bounds on a response head (informational heads count too), as Envoy's defaults.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# Informational (1xx) heads skipped before the answer; past this the upstream is looping (Go's).
MAX_INFORMATIONAL = 5
# Methods re-sent after a reused connection failed with no byte of answer, as Go's net/http
# does: safe ones without a body. Any method is re-sent when no byte of it left (_NotSent).
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# A proxy's answer to CONNECT is a short head; anything longer is not an HTTP proxy.
_MAX_TUNNEL_HEAD = 64 * 1024


class UpstreamError(Exception):
    """Connection refused or reset, invalid HTTP, or closed before a complete response."""

    retried = False  # set on the error of a request that was sent a second time


class UpstreamTimeout(UpstreamError):
    """Connecting, or waiting for the next bytes of the response, took too long."""


class UpstreamInvalid(UpstreamError):
    """The response is not HTTP/1.1 the proxy understands fully; its connection is closed."""


class UpstreamHeadTooLarge(UpstreamInvalid):
    """The response head is over MAX_HEAD_BYTES (1xx heads included) or MAX_HEADERS."""


class _NotSent(UpstreamError):
    """The connection failed before a byte of the request was written: safe to send again."""


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An HTTP proxy from HTTP(S)_PROXY: CONNECT tunnels for https, absolute URLs for http."""

    host: str
    port: int
    authorization: bytes | None  # Proxy-Authorization value, from user:password in the URL

    @classmethod
    def for_target(cls, target: UpstreamTarget) -> ForwardProxy | None:
        """The proxy the environment names for ``target``, as httpx's ``trust_env`` finds it."""
        scheme = target.origin.split("://", 1)[0]
        url = urllib.request.getproxies_environment().get(scheme)
        if not url or urllib.request.proxy_bypass_environment(f"{target.host}:{target.port}"):
            return None
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"unsupported {scheme}_proxy {url!r}: only http:// proxies")
        auth = None
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = b"Basic " + base64.b64encode(user_pass.encode())
        return cls(parts.hostname, parts.port or 80, auth)


class _Connection(asyncio.Protocol):
    """One upstream connection; holds the state of the response being read on it."""

    # Slots: one lives as long as each held stream, and an instance dict is ~4x their size.
    __slots__ = ("buffered", "chunks", "closed", "complete", "error", "head_bytes", "head_done",
                 "headers", "idle_since", "informational", "keep_alive", "loop", "parser",
                 "paused", "received", "status", "transport", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reset()

    def reset(self) -> None:
        """Ready for the next response on this connection."""
        self.status = 0
        self.headers: Headers = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.received = 0
        self.informational = 0
        self.head_bytes = 0
        self.chunks: list[bytes] = []  # a list: a deque's first block costs 0.5 KB per stream
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
            if not self.head_done and self.received > MAX_HEAD_BYTES:
                # httptools buffers a field until it ends: only the bytes read bound an endless one
                raise UpstreamHeadTooLarge(f"no complete head in {self.received} bytes")
        except httptools.HttpParserUpgrade:
            self._invalid(UpstreamInvalid("upstream switched protocols unasked (101)"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised
            self._invalid(cause if isinstance(cause, UpstreamError)
                          else UpstreamInvalid(f"invalid HTTP from upstream: {exc}"))
        except UpstreamError as exc:
            self._invalid(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and self.error is None and exc is None \
                and not self._delimited():
            self.complete = True  # a body without length ends when the upstream's FIN comes
        elif not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection ({exc or 'EOF'})"))
        self._wake()

    # httptools callbacks; what they raise ends the parse and closes the connection
    def on_message_begin(self) -> None:
        if self.head_done:
            # A second answer to one request, or bytes while idle: whatever the upstream meant,
            # the next request on this connection would read it.
            raise UpstreamInvalid("upstream sent bytes after its response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # else a trailer: dropped, never promoted to a header
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        status = self.parser.get_status_code()
        informational = 100 <= status < 200
        # The bytes read so far bound the heads' size: only a big read (or a rare 1xx, which
        # counts too) needs the exact sum.
        if informational or self.received > MAX_HEAD_BYTES:
            self.head_bytes += sum(len(name) + len(value) + 4 for name, value in headers)
        if len(headers) > MAX_HEADERS or self.head_bytes > MAX_HEAD_BYTES:
            raise UpstreamHeadTooLarge(
                f"response head over {MAX_HEADERS} fields or {MAX_HEAD_BYTES} bytes")
        if informational:
            self.informational += 1
            if self.informational > MAX_INFORMATIONAL:
                raise UpstreamInvalid(f"more than {MAX_INFORMATIONAL} informational responses")
            self.headers = []  # 1xx (103 Early Hints): informational, the real head follows
            return
        codings = [c.strip().lower() for n, v in headers
                   if n.lower() == b"transfer-encoding" for c in v.split(b",")]
        if codings and codings != [b"chunked"]:
            # The client would get the body still transfer-coded, labelled as plain bytes.
            raise UpstreamInvalid(f"unsupported transfer coding {b', '.join(codings)!r}")
        self.status = status
        # Asked now: once the message is complete llhttp has reset and always says False.
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._wake()

    # used by the pool and the response
    def _delimited(self) -> bool:
        return any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self.headers)

    def _fail(self, exc: UpstreamError) -> None:
        if self.error is None:
            self.error = exc

    def _invalid(self, exc: UpstreamError) -> None:
        self._fail(exc)
        self.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the parser has news (head, body, end, error), at most ``timeout`` seconds."""
        self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._time_out, self.waiter)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    @staticmethod
    def _time_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout("read timed out"))

    def take(self) -> bytes:
        """Every body byte received so far, as one chunk.

        An upstream that writes one SSE event per HTTP chunk hands over several per read;
        passing them on in one write is still unbuffered (all of it has arrived) and saves a
        send, a syscall and a wake-up of the client per event.
        """
        chunks = self.chunks
        chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return (self.complete and not self.closed and self.error is None and self.keep_alive
                and not self.chunks)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """Status, headers (as received) and the body as an async iterator of raw bytes."""

    __slots__ = ("_conn", "_pool", "headers", "retried", "status")  # lives as long as the stream

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers
        self.retried = False  # sent a second time, on a new connection

    async def body(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: transfer-decoded (chunked), never content-decoded."""
        conn = self._conn
        assert conn is not None, "response already closed"
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._pool.read_timeout)

    def close(self) -> None:
        """Back to the pool if the response was read to its end, else the connection closes."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class UpstreamPool:
    """Keep-alive connections to one upstream origin, reused last-in first-out.

    Open connections are not capped: streams are held for minutes, and a cap would queue
    healthy requests behind them.
    """

    def __init__(self, target: UpstreamTarget, *, connect_timeout: float, read_timeout: float,
                 max_idle: int = MAX_IDLE) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.forward_proxy = ForwardProxy.for_target(target)
        # Default verification, system CAs; SSL_CERT_FILE / SSL_CERT_DIR are honoured by OpenSSL.
        self._tls = ssl.create_default_context() if target.origin.startswith("https:") else None
        self._host_header = target.origin.split("://", 1)[1].encode("latin-1")
        # Through a plain-http proxy the request line carries the absolute URL.
        self._absolute = self.forward_proxy is not None and self._tls is None
        self._idle: list[_Connection] = []

    async def request(self, method: str, target: str, headers: Headers,
                      body: bytes | None) -> UpstreamResponse:
        """Send one request; return once the response head has arrived."""
        if self._absolute:
            target = self.target.origin + target
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"),
                b"host: " + self._host_header + b"\r\n"]
        head.extend(name + b": " + value + b"\r\n" for name, value in headers)
        if self._absolute and self.forward_proxy and self.forward_proxy.authorization:
            head.append(b"proxy-authorization: " + self.forward_proxy.authorization + b"\r\n")
        if body is not None:
            head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"\r\n")
        payload = b"".join(head)
        conn = self._reuse()
        if conn is None:
            return await self._exchange(await self._connect(), payload, body, method)
        try:
            return await self._exchange(conn, payload, body, method)
        except UpstreamError as exc:
            if not _may_resend(exc, conn, method, body):
                raise
        try:
            response = await self._exchange(await self._connect(), payload, body, method)
        except UpstreamError as exc:
            exc.retried = True
            raise
        response.retried = True
        return response

    def release(self, conn: _Connection) -> None:
        if conn.reusable() and len(self._idle) < self.max_idle:
            conn.idle_since = conn.loop.time()
            conn.received = 0  # anything arriving while idle makes it unfit for reuse
            self._idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()

    def _reuse(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            fresh = conn.loop.time() - conn.idle_since < KEEPALIVE_EXPIRY
            # is_closing: the loop has seen the upstream's FIN or RST, connection_lost is queued
            if (fresh and not conn.closed and not conn.received and conn.transport is not None
                    and not conn.transport.is_closing()):
                return conn
            conn.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        proxy = self.forward_proxy
        host, port = (proxy.host, proxy.port) if proxy else (self.target.host, self.target.port)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None and self._tls is not None:
                    return await self._tunnel(loop, proxy)
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), host, port,
                    ssl=None if proxy else self._tls)
                return conn
        except TimeoutError:
            raise UpstreamTimeout(f"connect timed out after {self.connect_timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, proxy: ForwardProxy) -> _Connection:
        """CONNECT through the proxy, then TLS to the upstream inside the tunnel."""
        transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        authority = f"{self.target.host}:{self.target.port}".encode("idna")
        head = b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\n"
        if proxy.authorization:
            head += b"proxy-authorization: " + proxy.authorization + b"\r\n"
        transport.write(head + b"\r\n")
        try:
            status_line = await tunnel.answer
            if not (status_line.startswith(b"HTTP/1.") and status_line[9:10] == b"2"):
                raise UpstreamError(f"proxy refused CONNECT: {status_line.decode('latin-1')}")
            conn = _Connection(loop)
            conn.transport = await loop.start_tls(  # type: ignore[assignment]
                transport, conn, self._tls,  # type: ignore[arg-type]
                server_hostname=self.target.host)
        except BaseException:
            transport.abort()
            raise
        return conn

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | None,
                        method: str) -> UpstreamResponse:
        conn.reset()
        transport = conn.transport
        assert transport is not None
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        if transport.is_closing():
            # The first send failed at once (a reset the loop had not seen yet): a failed send
            # writes nothing, and a partial one leaves the rest buffered, not an error.
            conn.abort()
            raise _NotSent("upstream connection failed before the request was written")
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self.read_timeout)
        except BaseException:
            conn.abort()
            raise
        if method == "HEAD":
            # The parser cannot know a HEAD answer has no body: end it here, never reuse.
            conn.complete = conn.closed = True
        return UpstreamResponse(self, conn)


def _may_resend(exc: UpstreamError, conn: _Connection, method: str, body: bytes | None) -> bool:
    """Go's net/http rule for a request that failed on a reused (so maybe stale) connection.

    Sent again on a new connection: any request none of which was written; a safe one without
    a body when the connection closed with not a byte of answer. A POST the upstream may have
    read is never sent twice: that could double a billed call.
    """
    if isinstance(exc, _NotSent):
        return True
    stale = not isinstance(exc, UpstreamTimeout | UpstreamInvalid) and not conn.received
    return stale and method in _REPLAYABLE and body is None


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: the status line, once the whole head is in."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if self.answer.done():
            return
        if b"\r\n\r\n" in self._head:
            self.answer.set_result(self._head.split(b"\r\n", 1)[0])
        elif len(self._head) > _MAX_TUNNEL_HEAD:
            self.answer.set_exception(UpstreamError("proxy answered CONNECT with no HTTP head"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                UpstreamError(f"proxy closed during CONNECT ({exc or 'EOF'})"))
