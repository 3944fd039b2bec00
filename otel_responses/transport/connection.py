"""One upstream HTTP/1.1 connection: an asyncio protocol parsed by httptools, holding the
response being read on it; anything it does not fully understand closes it."""

from __future__ import annotations

import asyncio

import httptools

from otel_responses.transport.errors import (
    UpstreamError,
    UpstreamHeadTooLarge,
    UpstreamInvalid,
    UpstreamTimeout,
)

Headers = list[tuple[bytes, bytes]]
# Past this many unread body bytes the socket is paused: the client is slower than upstream.
HIGH_WATER = 256 * 1024
# Bounds on a response head (informational heads count too), as Envoy's defaults.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# Informational (1xx) heads skipped before the answer; past this the upstream is looping (Go's).
MAX_INFORMATIONAL = 5


class Connection(asyncio.Protocol):
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
