"""Turns a CallRecord into one OpenInference LLM span: started on arrival, filled in at the end."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from openinference.semconv.trace import OpenInferenceSpanKindValues, SpanAttributes
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context

from otel_responses.outcome import HTTP_ERRORS, Outcome
from otel_responses.protocol.attributes import (
    Attributes,
    AttributeValue,
    genai_attributes,
    request_attributes,
    response_attributes,
)
from otel_responses.protocol.body import MAX_DEPTH, cut_depth
from otel_responses.protocol.messages import str_or_none
from otel_responses.protocol.notes import CHAIN_ROOT
from otel_responses.protocol.text import capped, encodable
from otel_responses.telemetry.cost import CostBreakdown, cost_attributes
from otel_responses.telemetry.masking import mask, masked_request
from otel_responses.telemetry.options import TelemetryOptions, genai_provider_name
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.sdk_private import attribute_store
from otel_responses.telemetry.sessions import ChainLink, SessionIndex
from otel_responses.telemetry.tool_spans import Answers, ToolSpans

FIRST_TOKEN_EVENT = "First Token Stream Event"  # the OpenInference name, fired at the first delta
# The inbound API key's name and team (never the key), when the guard authenticated the call.
KEY_NAME = "otel_responses.api_key.name"
KEY_TEAM = "otel_responses.api_key.team"
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
# When the span attribute count limit bites, the SDK evicts the attributes set FIRST (and a key
# set again moves to the end): set the oldest input messages first and the small identifying
# ones last, so a long conversation loses its oldest turns, never who/what/how much.
_INPUT_MESSAGES = "llm.input_messages."
_LATE_PREFIXES = ("llm.output_messages.", "llm.tools.", "output.value", "input.value")  # in turn


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k == name), None)


class SpanWriter:
    def __init__(self, tracer: Tracer, options: TelemetryOptions) -> None:
        self.tracer = tracer
        self.options = options
        self.sessions = SessionIndex(options.session_cache_size)
        self.tools = ToolSpans(tracer, options)
        # Several may be named, first present wins: Codex, for one, sends `session-id`.
        self._session_headers = tuple(h.strip().lower().encode()
                                      for h in options.session_header.split(",") if h.strip())
        self._user_header = options.user_header.lower().encode()
        start: Attributes = {
            SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.LLM.value,
            SpanAttributes.LLM_SYSTEM: "openai",
        }
        if options.llm_provider:
            start[SpanAttributes.LLM_PROVIDER] = options.llm_provider
        self._start_attributes = start

    def start(self, headers: list[tuple[bytes, bytes]],
              start_ns: int) -> tuple[Span, list[tuple[bytes, bytes]]]:
        """Start the span; return it with the request headers carrying its own trace context."""
        parent: Context | None = None
        if not self.options.trace_root:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
            parent = propagate.extract(carrier)
        span = self.tracer.start_span("chat", context=parent, kind=SpanKind.CLIENT,
                                      start_time=start_ns, attributes=self._start_attributes)
        injected: dict[str, str] = {}
        propagate.inject(injected, context=set_span_in_context(span))
        names = {k.lower().encode() for k in injected} | _TRACE_HEADERS
        forwarded = [(k, v) for k, v in headers if k not in names]
        forwarded.extend((k.lower().encode(), v.encode("latin-1")) for k, v in injected.items())
        return span, forwarded

    def finish(self, span: Span, record: CallRecord, headers: list[tuple[bytes, bytes]]) -> None:
        answers = self.tools.answers(record.request)
        context = self._context(record, headers, span, answers)  # sampled or not: sessions chain on
        if span.is_recording():  # else sampled out: the attributes would go nowhere
            try:
                attrs = self._attributes(record, context)
            except RecursionError:
                # A payload nested deeper than the encoders' stack: recorded cut, flagged.
                attrs = self._attributes(_shallower(record), context)
            attrs = mask(attrs, self.options.masking)
            span.set_attributes(_within_count_limit(
                _ordered(attrs, self.options.max_attribute_length), span))
        model = record.request.get("model") if record.request else None
        if isinstance(model, str):
            span.update_name(encodable(f"chat {model}"))
        if record.first_token_ns is not None:
            span.add_event(FIRST_TOKEN_EVENT, timestamp=record.first_token_ns)
        if record.terminal_event is not None:
            span.add_event(_terminal_event_name(record.terminal_event),
                           timestamp=record.terminal_ns or record.end_ns)
        if record.is_error:
            span.set_status(Status(StatusCode.ERROR, encodable(_describe_error(
                record, with_message=not self.options.masking.hides_content))))
        else:
            span.set_status(Status(StatusCode.OK))
        # Tool calls: links to the spans this request answers, TOOL spans for those the
        # upstream ran (last: the LLM span is complete should they fail).
        self.tools.finish(span, record, context, answers)
        span.end(end_time=record.end_ns)

    def _attributes(self, record: CallRecord, context: Attributes) -> Attributes:
        request, response = record.request, record.response
        attrs: Attributes = dict(self._start_attributes)
        if request is not None:
            request, raw = masked_request(record.request_raw, request, self.options.masking)
            attrs.update(request_attributes(request, raw))
        elif record.request_raw:
            attrs[SpanAttributes.INPUT_VALUE] = masked_request(record.request_raw, None,
                                                               self.options.masking)[1]
            attrs[SpanAttributes.INPUT_MIME_TYPE] = "text/plain"
        if response is not None:
            attrs.update(response_attributes(response))
        if isinstance(record.cost, CostBreakdown):
            attrs.update(cost_attributes(record.cost))
        if self.options.genai_semconv:
            attrs.update(genai_attributes(request, response))
            attrs["gen_ai.provider.name"] = genai_provider_name(self.options.llm_provider)
            if self.options.upstream_host:
                attrs["server.address"] = self.options.upstream_host
                if self.options.upstream_port:
                    attrs["server.port"] = self.options.upstream_port
            if record.ttft_s is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = record.ttft_s
        if record.is_error:
            attrs["error.type"] = error_type(record)
        # Bodies not (wholly) read: a coding that could not be decoded, or a kept prefix.
        for side, unreadable, truncated in (
                ("request", record.request_unreadable, record.request_truncated),
                ("response", record.response_unreadable, record.response_truncated)):
            if unreadable:
                attrs[f"otel_responses.{side}.unreadable"] = unreadable
            if truncated:
                attrs[f"otel_responses.{side}.truncated"] = True
        attrs.update(record.notes)
        attrs.update(context)
        return attrs

    def _context(self, record: CallRecord, headers: list[tuple[bytes, bytes]], span: Span,
                 answers: Answers) -> Attributes:
        """session.id, user.id and metadata; remembers this response for later chain links.

        A stateless agent loop (each request resending the history with the tools' outputs,
        no ``previous_response_id``) stays in the session of the call that asked for the tools.
        """
        request = record.request or {}
        out: Attributes = {}
        previous = request.get("previous_response_id")
        link = self.sessions.get(previous) if isinstance(previous, str) else None
        if link is not None:
            span.add_link(link.span_context, {"openai.previous_response_id": encodable(previous)})
        response_id = (record.response or {}).get("id")
        session = (next(filter(None, (_header(headers, h) for h in self._session_headers)), None)
                   or _conversation_id(request)
                   or (link.session_id if link else None)
                   or str_or_none(record.notes.get(CHAIN_ROOT))  # a stored chain's first response
                   or (previous if isinstance(previous, str) else None)
                   or answers.session_id
                   or (response_id if isinstance(response_id, str) else None))
        if session:
            out[SpanAttributes.SESSION_ID] = session
            if isinstance(response_id, str):
                self.sessions.remember(response_id, ChainLink(session, span.get_span_context()))
        user = (_header(headers, self._user_header) or str_or_none(request.get("user"))
                or str_or_none(request.get("safety_identifier")))
        caller = record.caller
        if caller is not None:  # authenticated: who the key says, not what the client claims
            user = caller.user_id
            out[KEY_NAME] = caller.name
            if caller.team is not None:
                out[KEY_TEAM] = caller.team
        if user:
            out[SpanAttributes.USER_ID] = user
        metadata = request.get("metadata")
        if isinstance(metadata, dict) and metadata:
            try:
                out[SpanAttributes.METADATA] = json.dumps(metadata, ensure_ascii=False)
            except RecursionError:  # absurdly nested: recorded cut (copied only then)
                out[SpanAttributes.METADATA] = json.dumps(cut_depth(metadata, MAX_DEPTH)[0],
                                                          ensure_ascii=False)
        return out


def _conversation_id(request: dict[str, Any]) -> str | None:
    conversation = request.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return str_or_none(conversation)


def _terminal_event_name(outcome: str) -> str:
    return "error" if outcome == "error" else f"response.{outcome}"


def _scalar(value: Any) -> str | None:
    """An error field as text: upstreams send strings (or numbers); anything else is junk."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value) or None
    return None


def error_type(record: CallRecord) -> str:
    """``error.type`` of a failed call: the HTTP status, else the error code, else the outcome."""
    error = record.error or {}
    if record.outcome in HTTP_ERRORS:
        return str(record.status)
    return _scalar(error.get("code")) or _scalar(error.get("type")) or record.outcome


def _describe_error(record: CallRecord, with_message: bool) -> str:
    """The outcome, the error code and, unless content is masked, the error's message."""
    error = record.error or {}
    message = _scalar(error.get("message")) if with_message else None
    code = _scalar(error.get("code")) or _scalar(error.get("type"))
    detail = ": ".join(x for x in (code, message) if x)
    prefix = {
        Outcome.CLIENT_ERROR: f"HTTP {record.status}",
        Outcome.UPSTREAM_ERROR: f"HTTP {record.status}",
        Outcome.FAILED: "response.failed",
        Outcome.CANCELLED: "response cancelled",
        Outcome.ERROR_EVENT: "error event",
        Outcome.UPSTREAM_CUT: "stream ended without a terminal event",
        Outcome.CLIENT_DISCONNECT: "client disconnected",
        Outcome.APP_ERROR: "application error",
    }.get(record.outcome, record.outcome)
    return f"{prefix}: {detail}" if detail else prefix


def _shallower(record: CallRecord) -> CallRecord:
    """``record`` with its request and response cut at `MAX_DEPTH`, flagged truncated if so."""
    request, request_cut = cut_depth(record.request, MAX_DEPTH)
    response, response_cut = cut_depth(record.response, MAX_DEPTH)
    return replace(record, request=request, response=response,
                   request_truncated=record.request_truncated or request_cut,
                   response_truncated=record.response_truncated or response_cut)


def _ordered(attrs: Attributes, max_length: int) -> list[tuple[str, AttributeValue]]:
    """Encodable, capped to ``max_length``, most expendable first.

    The input messages, in the order flatten_messages wrote them (oldest first), then the keys
    of each of the ``_LATE_PREFIXES`` in turn, then the rest (identity, counts) as they came.
    Every string is made `encodable` here, the one way into the span: a lone surrogate from a
    request would otherwise fail the encoding of the whole export batch, other calls' included.
    """
    messages: list[tuple[str, AttributeValue]] = []
    late: list[tuple[str, AttributeValue]] = []
    rest: list[tuple[str, AttributeValue]] = []
    for item in attrs.items():
        key, value = item
        if isinstance(value, str):  # keys are ours, ASCII
            value = encodable(capped(value, max_length))
            if value is not item[1]:
                item = (key, value)
        elif isinstance(value, list | tuple):
            item = (key, [encodable(v) if isinstance(v, str) else v for v in value])
        if key.startswith(_INPUT_MESSAGES):
            messages.append(item)
        elif key.startswith(_LATE_PREFIXES):
            late.append(item)
        else:
            rest.append(item)
    late.sort(key=_late_rank)  # stable: the keys of each prefix keep their order
    return messages + late + rest


def _late_rank(item: tuple[str, AttributeValue]) -> int:
    return list(map(item[0].startswith, _LATE_PREFIXES)).index(True)


def _within_count_limit(items: list[tuple[str, AttributeValue]], span: Span) -> Attributes:
    """What the SDK would keep of ``items`` (the last ones) without its costly eviction.

    Past the span's attribute count limit, the SDK evicts the oldest attribute once per extra
    attribute, logging a warning each time. Only the kept ones reach it here, and the span's
    dropped count still counts the others: it ends as the number of attributes set and not
    kept (the SDK's own count would also count those set at start that it evicts early, then
    sets again).
    """
    store = attribute_store(span)
    if store is None or not store.maxlen or len(items) <= store.maxlen:
        return dict(items)
    limit = store.maxlen
    kept = dict(items[-limit:])
    # The SDK evicts (and counts) the span's earlier attributes that are not kept itself.
    earlier = set(store)
    store.dropped += sum(1 for key, _ in items[:-limit] if key not in earlier)
    return kept
