"""One call's observations, gathered chunk by chunk after each is sent, then a CallRecord."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from otel_responses.caller import Caller
from otel_responses.outcome import HTTP_ERRORS, SUCCESSES, Outcome
from otel_responses.protocol.attributes import Attributes
from otel_responses.protocol.body import ParsedBody
from otel_responses.protocol.encoding import ContentDecoder, DecodedBody, decoder
from otel_responses.protocol.sse import is_event_stream
from otel_responses.protocol.stream import ResponseStream
from otel_responses.protocol.tools import ToolRun, tool_runs
from otel_responses.protocol.window import BodyWindow
from otel_responses.telemetry.cost import CostBreakdown, Pricing

# A Responses status or terminal event → how the call ended (streams: else how the bytes
# stopped).
_STATUS_OUTCOMES = {"completed": Outcome.COMPLETED, "incomplete": Outcome.INCOMPLETE,
                    "failed": Outcome.FAILED, "cancelled": Outcome.CANCELLED,
                    "error": Outcome.ERROR_EVENT, "queued": Outcome.QUEUED,
                    "in_progress": Outcome.QUEUED}
# Request bodies past this are not kept for parsing (the bytes still flow upstream), and
# compressed ones are decoded up to it, once the call has ended (off the request's way).
MAX_KEPT_BODY = 64 * 1024 * 1024
# Response bodies are never kept whole (streams are parsed as they pass, other bodies keep a
# `BodyWindow`), so decoding a compressed one costs CPU, not memory: it may decode this much,
# plus DECODE_RATIO bytes per coded byte. Real bodies compress 3-50:1 and decode to their end
# (a long stream's terminal event, a big answer's usage); a bomb (~1000:1) stops near the base.
RESPONSE_DECODE_BASE = 8 * 1024 * 1024
DECODE_RATIO = 200


@dataclass(slots=True)
class CallRecord:
    """Everything telemetry needs about one finished Responses call."""

    request_raw: bytes
    request: dict[str, Any] | None
    status: int
    stream: bool
    response: dict[str, Any] | None
    error: dict[str, Any] | None
    outcome: Outcome
    start_ns: int
    end_ns: int
    first_token_ns: int | None = None
    terminal_event: str | None = None
    terminal_ns: int | None = None
    events: int = 0
    malformed_events: int = 0
    # Why a body could not be read (an unknown coding, corrupt data), and whether only a
    # part of it was kept (a request past MAX_KEPT_BODY, a response past the window's head).
    request_unreadable: str | None = None
    response_unreadable: str | None = None
    request_truncated: bool = False
    response_truncated: bool = False
    # The response's tool call items: those the upstream ran, timed, and those the client runs.
    tools: list[ToolRun] = field(default_factory=list)
    # Set by the middleware's pricer before the span and the sinks see the call.
    cost: Pricing = None
    notes: Attributes = field(default_factory=dict)  # span attributes the endpoint added
    caller: Caller | None = None  # the authenticated key's identity, when the guard is on

    @property
    def cost_usd(self) -> float | None:
        """What the call cost in USD (``llm.cost.total``), None when it was not priced."""
        return self.cost.total if isinstance(self.cost, CostBreakdown) else None

    @property
    def is_error(self) -> bool:
        return self.outcome not in SUCCESSES

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.start_ns) / 1e9


class CallRecorder:
    """Fed by the middleware's receive/send wrappers; per-chunk work is O(chunk)."""

    # Slots: one lives as long as each held stream, and an instance dict is ~4x their size.
    __slots__ = ("_app_error", "_body", "_decoded", "_decoder", "_disconnected", "_end_ns",
                 "_first_token_ns", "_request", "_request_headers", "_request_kept",
                 "_request_size", "_response_size", "_status", "_stream", "_terminal_ns",
                 "notes", "parsed", "start_ns")

    def __init__(self, start_ns: int, parsed: ParsedBody | None = None,
                 request_headers: list[tuple[bytes, bytes]] | None = None,
                 decoded: DecodedBody | None = None) -> None:
        self.start_ns = start_ns
        self.parsed = parsed or ParsedBody()
        self.notes: Attributes = {}
        self._request: list[bytes] = []
        self._request_size = 0
        self._request_kept = 0
        self._request_headers = request_headers or []
        # Shared with the guard and the adapter: a compressed body is decoded once for all.
        self._decoded = decoded or DecodedBody()
        self._decoder: ContentDecoder | None = None
        self._status = 0
        self._stream: ResponseStream | None = None
        self._body = BodyWindow()
        self._response_size = 0
        self._first_token_ns: int | None = None
        self._terminal_ns: int | None = None
        self._end_ns: int | None = None
        self._disconnected = False
        self._app_error: BaseException | None = None

    def request_chunk(self, chunk: bytes) -> None:
        self._request_size += len(chunk)
        if self._request_kept + len(chunk) <= MAX_KEPT_BODY:
            self._request.append(chunk)
            self._request_kept += len(chunk)
        else:
            self._request_kept = MAX_KEPT_BODY + 1  # a prefix only: later chunks not kept

    def client_disconnected(self) -> None:
        if self._end_ns is None:
            self._disconnected = True

    def app_failed(self, exc: BaseException) -> None:
        self._app_error = exc

    def response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        if is_event_stream(headers):
            self._stream = ResponseStream()
        self._decoder = decoder(headers, RESPONSE_DECODE_BASE, DECODE_RATIO)

    @property
    def bytes_seen(self) -> int:
        return self._request_size + self._response_size

    def response_chunk(self, chunk: bytes, more_body: bool) -> None:
        if self._decoder is not None:
            chunk = self._decoder.feed(chunk)
        self._response_size += len(chunk)
        stream = self._stream
        if stream is not None:
            if chunk:
                stream.feed(chunk)
                acc = stream.accumulator  # its attributes, not the stream's properties: per chunk
                now = 0  # one clock reading for all this chunk brought, read only if needed
                if self._first_token_ns is None and acc.delta_count:
                    self._first_token_ns = now = time.time_ns()
                if self._terminal_ns is None and acc.outcome is not None:
                    self._terminal_ns = now = now or time.time_ns()
                if acc.unstamped:  # an item (a tool call) began or ended in this chunk
                    acc.stamp(now or time.time_ns())
        else:
            self._body.feed(chunk)
        if not more_body:
            self._end_ns = time.time_ns()

    def finish(self) -> CallRecord:
        """Called once, after the last byte went out (or the app gave up)."""
        end_ns = self._end_ns or time.time_ns()
        raw = b"".join(self._request)
        decoded = self._decoded.decode(self._request_headers, raw, MAX_KEPT_BODY)
        if decoded is not None:
            raw = decoded.body
        record = CallRecord(
            request_raw=raw, request=self.parsed.object(raw), status=self._status,
            stream=self._stream is not None, response=None, error=None, outcome=Outcome.COMPLETED,
            start_ns=self.start_ns, end_ns=end_ns, first_token_ns=self._first_token_ns,
            terminal_ns=self._terminal_ns,
            request_truncated=self._request_kept > MAX_KEPT_BODY,
            response_truncated=not self._body.whole, notes=self.notes,
        )
        if decoded is not None:
            record.request_unreadable = decoded.unreadable
            record.request_truncated |= decoded.truncated
        if self._decoder is not None:
            record.response_unreadable = self._decoder.unreadable
            record.response_truncated |= self._decoder.truncated
        if self._stream is not None:
            self._finish_stream(record, self._stream)
        else:
            self._finish_body(record, self._body.object())
        if self._end_ns is None:
            # The response never completed: say why, over whatever the bytes suggested.
            if self._app_error is not None and self._status:
                # Raised after the response started: the server drops the connection, so the
                # client's body is cut (the proxy does this when the upstream ends early).
                if record.outcome not in HTTP_ERRORS:
                    record.outcome = Outcome.UPSTREAM_CUT
            elif self._app_error is not None:
                record.outcome = Outcome.APP_ERROR
                record.error = record.error or {"type": type(self._app_error).__name__,
                                                "message": str(self._app_error)}
            elif self._disconnected:
                record.outcome = Outcome.CLIENT_DISCONNECT
        return record

    def _finish_stream(self, record: CallRecord, stream: ResponseStream) -> None:
        stream.close()
        record.response = stream.result()
        record.error = stream.error
        record.events = stream.events
        record.malformed_events = stream.malformed
        record.terminal_event = stream.outcome
        record.tools = tool_runs(record.response, stream.accumulator.item_times(),
                                 record.start_ns, record.end_ns, stream.accumulator.has_final)
        if stream.outcome is not None:
            record.outcome = _STATUS_OUTCOMES.get(stream.outcome, Outcome.COMPLETED)
        elif self._disconnected:
            record.outcome = Outcome.CLIENT_DISCONNECT
        else:
            record.outcome = Outcome.UPSTREAM_CUT
        if record.status >= 400:
            record.outcome = Outcome.of_status(record.status)

    def _finish_body(self, record: CallRecord, body: dict[str, Any] | None) -> None:
        if record.status >= 400 or self._status == 0:
            record.outcome = Outcome.of_status(record.status) if self._status \
                else Outcome.APP_ERROR
            error = body.get("error") if body else None
            record.error = error if isinstance(error, dict) else {
                "message": f"HTTP {record.status}", "type": None, "code": None}
            return
        record.response = body
        record.tools = tool_runs(body, {}, record.start_ns, record.end_ns, final=True)
        status = body.get("status") if body else None
        record.outcome = _STATUS_OUTCOMES.get(status, Outcome.COMPLETED) \
            if isinstance(status, str) else Outcome.COMPLETED
        error = body.get("error") if body is not None else None
        if record.outcome == Outcome.FAILED and isinstance(error, dict):
            record.error = error

