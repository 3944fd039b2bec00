"""The upstream HTTP/1.1 client: connections parsed by httptools, keep-alive pooled.

Why not httpx: on the proxy's hot path httpx + httpcore + anyio cost ~1.3 ms of CPU per request
on the benchmark machine (cancel scopes, h11 in pure Python, a pool that polls every idle socket
on each request): several times the rest of the proxy. This client writes each request once,
parses in C and hands body bytes over as they arrive, pausing the socket when the client reads
slower than the upstream writes. It goes through the forward proxy it is given (see
`forward_proxy`: the environment's, read once at start) and honours SSL_CERT_FILE as httpx does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

from otel_responses.transport.connection import Connection, Headers
from otel_responses.transport.errors import (
    NotSent,
    UpstreamError,
    UpstreamInvalid,
    UpstreamTimeout,
)
from otel_responses.transport.forward_proxy import ForwardProxy, open_tunnel
from otel_responses.transport.target import UpstreamTarget

# Idle connections older than this are closed rather than reused: servers close theirs after a
# keep-alive timeout (uvicorn: 5 s), and reusing one they are closing loses the request.
KEEPALIVE_EXPIRY = 4.0
MAX_IDLE = 256
# Methods re-sent after a reused connection failed with no byte of answer, as Go's net/http
# does: safe ones without a body. Any method is re-sent when no byte of it left (NotSent).
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class UpstreamResponse:
    """Status, headers (as received) and the body as an async iterator of raw bytes."""

    __slots__ = ("_conn", "_pool", "headers", "retried", "status")  # lives as long as the stream

    def __init__(self, pool: UpstreamPool, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
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
                 max_idle: int = MAX_IDLE, forward_proxy: ForwardProxy | None = None) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.forward_proxy = forward_proxy
        # Default verification, system CAs; SSL_CERT_FILE / SSL_CERT_DIR are honoured by OpenSSL.
        # One context: an https:// proxy's certificate is verified as the upstream's is.
        tls = (ssl.create_default_context()
               if target.scheme == "https" or (forward_proxy and forward_proxy.tls) else None)
        self._tls = tls if target.scheme == "https" else None
        self._proxy_tls = tls if forward_proxy and forward_proxy.tls else None
        self._host_header = target.origin.split("://", 1)[1].encode("latin-1")
        # Through a plain-http proxy the request line carries the absolute URL.
        self._absolute = self.forward_proxy is not None and self._tls is None
        self._idle: list[Connection] = []

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

    def release(self, conn: Connection) -> None:
        if conn.reusable() and len(self._idle) < self.max_idle:
            conn.idle_since = conn.loop.time()
            conn.received = 0  # anything arriving while idle makes it unfit for reuse
            self._idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()

    def _reuse(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            fresh = conn.loop.time() - conn.idle_since < KEEPALIVE_EXPIRY
            # is_closing: the loop has seen the upstream's FIN or RST, connection_lost is queued
            if (fresh and not conn.closed and not conn.received and conn.transport is not None
                    and not conn.transport.is_closing()):
                return conn
            conn.abort()
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        proxy = self.forward_proxy
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop), self.target.host, self.target.port,
                        ssl=self._tls)
                elif self._tls is not None:
                    conn = Connection(loop)
                    conn.transport = await open_tunnel(loop, proxy, self._proxy_tls,
                                                       self.target, self._tls, conn)
                else:
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop), proxy.host, proxy.port, ssl=self._proxy_tls)
                return conn
        except TimeoutError:
            raise UpstreamTimeout(f"connect timed out after {self.connect_timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            # Which hop failed: the operator's log is where this goes.
            via = f" (via proxy {proxy.host}:{proxy.port})" if proxy else ""
            raise UpstreamError(f"{type(exc).__name__}: {exc}{via}") from exc

    async def _exchange(self, conn: Connection, head: bytes, body: bytes | None,
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
            raise NotSent("upstream connection failed before the request was written")
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


def _may_resend(exc: UpstreamError, conn: Connection, method: str, body: bytes | None) -> bool:
    """Go's net/http rule for a request that failed on a reused (so maybe stale) connection.

    Sent again on a new connection: any request none of which was written; a safe one without
    a body when the connection closed with not a byte of answer. A POST the upstream may have
    read is never sent twice: that could double a billed call.
    """
    if isinstance(exc, NotSent):
        return True
    stale = not isinstance(exc, UpstreamTimeout | UpstreamInvalid) and not conn.received
    return stale and method in _REPLAYABLE and body is None
