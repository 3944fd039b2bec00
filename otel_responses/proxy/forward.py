"""The forwarding endpoint: requests go upstream as received, responses come back unbuffered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from otel_responses.caller import Caller, caller_of
from otel_responses.config import Settings
from otel_responses.outcome import Outcome
from otel_responses.protocol.body import SCOPE_KEY, ParsedBody
from otel_responses.protocol.sse import is_event_stream
from otel_responses.proxy import errors
from otel_responses.proxy.headers import client_response_headers, upstream_request_headers
from otel_responses.transport import (
    ForwardProxy,
    Headers,
    UpstreamError,
    UpstreamHeadTooLarge,
    UpstreamInvalid,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTarget,
    UpstreamTimeout,
)

log = logging.getLogger("otel_responses.proxy")
access_log = logging.getLogger("otel_responses.access")

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class UpstreamCut(Exception):
    """The upstream ended a body early: raised so the server drops the client's connection.

    Ending the body cleanly (a terminating chunk) would make the truncated answer look
    complete to every HTTP client; an ASGI server aborts the connection instead when the app
    raises after the response started (uvicorn: closes it, no terminating chunk).
    """


class _CutLoggedOnce(logging.Filter):
    """Drops the server's traceback for an UpstreamCut: the proxy logged it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UpstreamCut))


_CUT_LOGGED_ONCE = _CutLoggedOnce()
# Most specific first: what the client is told for each upstream failure.
_FAILURES: tuple[tuple[type[UpstreamError], Callable[[], errors.ProxyError]], ...] = (
    (UpstreamTimeout, errors.upstream_timeout),
    (UpstreamHeadTooLarge, errors.upstream_headers_too_large),
    (UpstreamInvalid, errors.upstream_invalid_response),
    (UpstreamError, errors.upstream_unreachable),
)


@dataclass(slots=True)
class Exchange:
    """What one forwarded request did: for the access log and for exchange observers.

    ``overhead`` is the time the proxy itself spent: from the request reaching the endpoint to
    the upstream request being sent, plus, for every chunk, from the upstream handing it over
    to the client's send returning.
    """

    method: str
    path: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stream: bool = False
    outcome: Outcome = Outcome.OK
    body: bytes = b""
    overhead: float = 0.0
    finished: float = 0.0
    responded: bool = False  # the client has the whole response
    retried: bool = False  # sent upstream a second time (on a new connection)
    parsed: ParsedBody = field(default_factory=ParsedBody)  # shared with telemetry, if there
    caller: Caller | None = None  # set by the guard, when keys are required

    @property
    def duration(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def log(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = {
            "method": self.method, "path": self.path, "route": self.route,
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 2),
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "stream": self.stream,
            "model": self._model(), "outcome": self.outcome,
        }
        if self.caller is not None:  # the key's name and team, never the key
            fields.update(key=self.caller.name, team=self.caller.team)
        access_log.info("%s %s %s", self.method, self.path, self.status, extra={"access": fields})

    def _model(self) -> str | None:
        # Parsed only for the log line, after the response is done; never on the byte path.
        model = (self.parsed.object(self.body) or {}).get("model")
        return model if isinstance(model, str) else None


class UpstreamRequest(NamedTuple):
    method: str
    target: str  # path and query, as sent on the request line
    headers: Headers
    body: bytes | None


ExchangeObserver = Callable[[Exchange], None]
Handler = Callable[[Scope, Receive, Send, Exchange], Awaitable[None]]
OVERHEAD_HEADER = b"x-otel-responses-overhead-ms"


class Proxy:
    """Owns the pooled upstream client; each route gets an ASGI endpoint from :meth:`endpoint`.

    ``observers`` are called with every finished Exchange (metrics hang off this); an
    observer that raises is logged and never affects the request.
    """

    def __init__(self, settings: Settings, observers: Sequence[ExchangeObserver] = ()) -> None:
        if settings.upstream is None:
            raise ValueError("Proxy needs an upstream URL")
        self.settings = settings
        self.target = UpstreamTarget.parse(settings.upstream)
        # Read here, once: a proxy variable the client cannot use stops the start (ValueError).
        self.forward_proxy = ForwardProxy.for_target(self.target)
        self.observers = tuple(observers)
        self.in_flight = 0
        self._client: UpstreamPool | None = None

    @property
    def ready(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        # uvicorn logs an app's exception with its traceback; for a cut that is noise.
        logging.getLogger("uvicorn.error").addFilter(_CUT_LOGGED_ONCE)
        s = self.settings
        self._client = UpstreamPool(self.target, connect_timeout=s.connect_timeout,
                                    read_timeout=s.read_timeout,
                                    forward_proxy=self.forward_proxy)

    async def aclose(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def endpoint(self, route: str) -> Endpoint:
        return Endpoint(self, route)

    async def forward(self, scope: Scope, receive: Receive, send: Send, route: str) -> None:
        await self.run(scope, receive, send, route, self._forward)

    async def run(self, scope: Scope, receive: Receive, send: Send, route: str,
                  handler: Handler) -> None:
        """Run ``handler`` as one exchange of ``route``: counted in flight, then logged and
        observed, however it ends (pass-through and adapter mode share this)."""
        ex = Exchange(scope["method"], scope["path"], route, caller=caller_of(scope))
        parsed = scope.get(SCOPE_KEY)
        if isinstance(parsed, ParsedBody):
            ex.parsed = parsed
        self.in_flight += 1
        try:
            await handler(scope, receive, send, ex)
        finally:
            self.in_flight -= 1
            ex.finished = time.perf_counter()
            ex.log()
            for observe in self.observers:
                try:
                    observe(ex)
                except Exception:
                    log.exception("exchange observer failed (the request is unaffected)")

    async def _forward(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        body = await self.read_request(scope, receive, send, ex)
        if body is None:
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        request = UpstreamRequest(
            scope["method"],
            self.target.path(raw_path.decode("latin-1"), scope["query_string"].decode("latin-1")),
            upstream_request_headers(scope["headers"], self.settings.upstream_api_key, scope),
            body if body or scope["method"] not in _NO_BODY_METHODS else None)
        ex.overhead = time.perf_counter() - ex.started
        await self.watched(receive, ex, self._exchange(request, send, ex))

    async def read_request(self, scope: Scope, receive: Receive, send: Send,
                           ex: Exchange) -> bytes | None:
        """The request body, kept on ``ex``; None when the exchange is over already (the
        client left, or was answered an error such as 413)."""
        try:
            body = await self._read_body(scope, receive)
        except ClientGone:
            ex.outcome = Outcome.CLIENT_DISCONNECT
            return None
        except errors.ProxyError as err:
            await answer(err, send, ex)
            return None
        ex.body, ex.bytes_in = body, len(body)
        return body

    async def watched(self, receive: Receive, ex: Exchange, work: Awaitable[None]) -> None:
        """Await ``work`` in this task; a watcher cancels it if the client leaves, which closes
        the upstream request at once (one task per request, not two)."""
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, ex, task))
        try:
            await work
        except asyncio.CancelledError:
            if ex.outcome != Outcome.CLIENT_DISCONNECT or task.uncancel() > 0:
                raise  # not (only) ours: the server is shutting down
            log.info("client disconnected from %s %s; upstream request closed", ex.method,
                     ex.path)
        finally:
            watcher.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise errors.body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise errors.body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def open(self, request: UpstreamRequest, send: Send,
                   ex: Exchange) -> UpstreamResponse | None:
        """Send ``request`` upstream and return the response once its head is in; None when
        the upstream failed (unreachable, timed out...) and the client has been answered."""
        assert self._client is not None, "Proxy.start() was not awaited"
        try:
            response = await self._client.request(*request)
        except UpstreamError as exc:
            ex.retried = exc.retried
            err = failure(exc)
            log.warning("%s %s: %s (%s)", ex.method, ex.path, err.message, describe(exc))
            await answer(err, send, ex)
            return None
        ex.retried = response.retried
        return response

    async def _exchange(self, request: UpstreamRequest, send: Send, ex: Exchange) -> None:
        response = await self.open(request, send, ex)
        if response is None:
            return
        try:
            await self._relay(response, send, ex)
        finally:
            response.close()

    async def _relay(self, response: UpstreamResponse, send: Send, ex: Exchange) -> None:
        ex.status = response.status
        if ex.status >= 400:
            ex.outcome = Outcome.of_status(ex.status)
        headers = client_response_headers(response.headers)
        ex.stream = is_event_stream(headers)
        if self.settings.overhead_header:
            # Opt-in, for benchmarks: the request-side overhead, known before the body flows.
            headers.append((OVERHEAD_HEADER, f"{ex.overhead * 1000:.3f}".encode()))
        handed = time.perf_counter()
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        ex.overhead += time.perf_counter() - handed
        del headers  # a held stream would keep it alive to the end
        try:
            async for chunk in response.body():
                handed = time.perf_counter()
                ex.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                ex.overhead += time.perf_counter() - handed
        except UpstreamError as exc:
            ex.outcome = Outcome.UPSTREAM_CUT
            log.warning("upstream ended %s %s early after %d bytes: %s; client connection "
                        "dropped", ex.method, ex.path, ex.bytes_out, describe(exc))
            raise UpstreamCut(describe(exc)) from exc
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ex.responded = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pure ASGI endpoint bound to one named route (the route names the metric/log label)."""

    proxy: Proxy
    route: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.forward(scope, receive, send, self.route)


async def _cancel_on_disconnect(receive: Receive, ex: Exchange, task: asyncio.Task[None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if not ex.responded:  # once the client has it all, leaving changes nothing
        ex.outcome = Outcome.CLIENT_DISCONNECT
        task.cancel()


def failure(exc: UpstreamError) -> errors.ProxyError:
    """What the client is told for an upstream failure."""
    return next(answer() for kind, answer in _FAILURES if isinstance(exc, kind))


async def answer(err: errors.ProxyError, send: Send, ex: Exchange) -> None:
    """Answer the client with the proxy's own error, recorded on ``ex``."""
    ex.status, ex.outcome = err.status, err.outcome
    ex.bytes_out = await err.send(send)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
