"""ResponsesTelemetryMiddleware: a pure ASGI tee that records one LLM span per Responses call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from opentelemetry import context, trace
from opentelemetry.trace import Span, TracerProvider, set_span_in_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_responses import __version__
from otel_responses.caller import caller_of
from otel_responses.protocol.body import SCOPE_KEY, ParsedBody
from otel_responses.protocol.encoding import SCOPE_KEY as DECODED_KEY
from otel_responses.protocol.encoding import DecodedBody
from otel_responses.protocol.notes import NOTES_KEY
from otel_responses.telemetry.cost import Pricer
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord, CallRecorder
from otel_responses.telemetry.spans import SpanWriter

log = logging.getLogger("otel_responses.telemetry")

CallSink = Callable[[CallRecord], None]
# Calls whose request and response together exceed this are finished off the event loop.
OFFLOAD_BYTES = 256 * 1024
# Bytes before telemetry: a client that sends its next request as soon as it has the response
# gets it read and forwarded before this call's span is built (asyncio has no priorities).
FINISH_DELAY = 0.0005


def is_responses_create(scope: Scope) -> bool:
    """``POST …/responses``: also under a mount or prefix (``/openai/v1/responses``)."""
    return (scope["type"] == "http" and scope["method"] == "POST"
            and scope["path"].rstrip("/").endswith("/responses"))


class ResponsesTelemetryMiddleware:
    """Wrap any ASGI app that serves ``POST /v1/responses``; other requests pass untouched.

    Every chunk is passed on first and observed after, so recording never holds or delays a
    byte; the span is built shortly after the last byte has gone (`FINISH_DELAY`). The span is
    current while the app runs and while the ``sinks`` get the finished call (metrics take
    exemplars from it). With ``tracing=False`` no span is made and only the sinks record. With
    a ``pricer``, each call's `CallRecord.cost` is set before the span and the sinks see it. A
    telemetry failure is logged and counted in ``telemetry_errors``, never raised into the
    request.
    """

    def __init__(self, app: ASGIApp, *, tracer_provider: TracerProvider | None = None,
                 options: TelemetryOptions | None = None,
                 sinks: tuple[CallSink, ...] = (), tracing: bool = True,
                 pricer: Pricer | None = None) -> None:
        self.app = app
        self.pricer = pricer
        self.options = options or TelemetryOptions()
        provider = tracer_provider or trace.get_tracer_provider()
        self.spans = SpanWriter(provider.get_tracer("otel_responses", __version__),
                                self.options) if tracing else None
        self.sinks = sinks
        self.telemetry_errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_responses_create(scope):
            await self.app(scope, receive, send)
            return
        await _RecordingResponder(self, scope)(receive, send)

    def failed(self, what: str) -> None:
        """Count and log a telemetry fault; it is never raised into the request."""
        self.telemetry_errors += 1
        log.exception("telemetry error while %s (the request is unaffected)", what)


class _RecordingResponder:
    """One Responses call: runs the app with ``receive`` and ``send`` teed into a
    `CallRecorder`, under the call's span, then finishes the span (Starlette's responder shape,
    as in its GZipMiddleware)."""

    __slots__ = ("call", "middleware", "receive", "scope", "send", "span")

    def __init__(self, middleware: ResponsesTelemetryMiddleware, scope: Scope) -> None:
        self.middleware = middleware
        parsed = scope.get(SCOPE_KEY)
        if not isinstance(parsed, ParsedBody):  # else a guard in front parsed it already
            parsed = ParsedBody()
        decoded = DecodedBody.shared(scope)
        self.call = CallRecorder(time.time_ns(), parsed, scope["headers"], decoded)
        # The app's access log reuses the parsed body, the adapter the decoded one; an endpoint
        # may add span attributes.
        self.scope = {**scope, SCOPE_KEY: parsed, DECODED_KEY: decoded,
                      NOTES_KEY: self.call.notes}
        self.span: Span | None = None
        self.receive: Receive
        self.send: Send

    async def __call__(self, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        middleware, scope = self.middleware, self.scope
        token = None
        try:
            if middleware.spans is not None:
                self.span, scope["headers"] = middleware.spans.start(scope["headers"],
                                                                     self.call.start_ns)
                token = context.attach(set_span_in_context(self.span))
        except Exception:
            middleware.failed("starting the span")
        try:
            await middleware.app(scope, self.receive_teed, self.send_teed)
        except BaseException as exc:
            self.call.app_failed(exc)
            self.finish()
            raise
        else:
            try:
                await asyncio.sleep(FINISH_DELAY)
            except asyncio.CancelledError:  # the server is stopping: finish the span now
                self.finish()
                raise
            if self.call.bytes_seen > OFFLOAD_BYTES:
                # Mapping a huge call takes long enough to stall every other stream on the
                # loop; a worker thread lets the GIL switch back to the loop meanwhile.
                await asyncio.to_thread(self.finish)
            else:
                self.finish()
        finally:
            if token is not None:
                context.detach(token)

    async def receive_teed(self) -> Message:
        message = await self.receive()
        try:
            if message["type"] == "http.request":
                self.call.request_chunk(message.get("body", b""))
            elif message["type"] == "http.disconnect":
                self.call.client_disconnected()
        except Exception:
            self.middleware.failed("reading the request")
        return message

    async def send_teed(self, message: Message) -> None:
        await self.send(message)  # passed on first, observed after: recording never delays it
        try:
            if message["type"] == "http.response.body":
                self.call.response_chunk(message.get("body", b""),
                                         message.get("more_body", False))
            elif message["type"] == "http.response.start":
                self.call.response_start(message["status"], message.get("headers", []))
        except Exception:
            self.middleware.failed("reading the response")

    def finish(self) -> None:
        middleware, span = self.middleware, self.span
        try:
            record = self.call.finish()
            record.caller = caller_of(self.scope)
            if middleware.pricer is not None:
                record.cost = middleware.pricer.price(record.request, record.response,
                                                      record.start_ns)
            if span is not None and middleware.spans is not None:
                middleware.spans.finish(span, record, self.scope["headers"])
            for sink in middleware.sinks:
                sink(record)
        except Exception:
            middleware.failed("finishing the span")
            if span is not None and span.is_recording():
                span.end()
