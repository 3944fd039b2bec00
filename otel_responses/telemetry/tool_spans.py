"""TOOL child spans for the calls the upstream ran, and span links from a client's tool output
to the span whose response asked for the call (whose session it continues): built with the LLM
span, after the response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from openinference.semconv.trace import SpanAttributes
from opentelemetry.context import Context
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)

from otel_responses.protocol.attributes import Attributes
from otel_responses.protocol.body import MAX_DEPTH, cut_depth
from otel_responses.protocol.messages import mapping, str_or_none
from otel_responses.protocol.text import capped, encodable
from otel_responses.protocol.tools import (
    COMPLETED,
    INCOMPLETE,
    ToolRun,
    answered_calls,
    asked_calls,
    genai_tool_attributes,
    tool_attributes,
)
from otel_responses.telemetry.masking import mask
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.sessions import RecentIndex

CALL_IDS = "openai.tool_call.ids"
"""On a link from a request's span to the span that asked for calls: the call ids answered."""


@dataclass(frozen=True, slots=True)
class Asked:
    """A call id handed to a client: the session and span of the call that asked for it."""

    session_id: str | None  # None: that call had none (no response id)
    span_context: SpanContext
    linked: bool = False  # an answer has linked to it already


@dataclass(frozen=True, slots=True)
class Answers:
    """What a request answers: the spans that asked (each linked once, with the call ids it
    answers first), and the session they ran in."""

    links: list[tuple[SpanContext, list[str]]]
    session_id: str | None


class ToolSpans:
    """Writes a call's TOOL spans under its LLM span and links it to the spans it answers.

    ``asked`` remembers, per process, the session and span of each call id handed to a client
    (an LRU of ``session_cache_size`` ids). A call id links once, from the first request
    answering it: a stateless client resends every earlier output, which must not link again
    each turn; each such request still continues the session.
    """

    def __init__(self, tracer: Tracer, options: TelemetryOptions) -> None:
        self.tracer = tracer
        self.options = options
        self.asked: RecentIndex[Asked] = RecentIndex(options.session_cache_size)

    def answers(self, request: Mapping[str, Any] | None) -> Answers:
        """The calls whose tools ``request`` answers (marked linked from now on)."""
        # By span id: a SpanContext is a tuple, but its TraceState cannot be hashed.
        by_span: dict[int, tuple[SpanContext, list[str]]] = {}
        session = None
        for call_id in answered_calls(request):
            asked = self.asked.get(call_id)
            if asked is None:
                continue
            session = session or asked.session_id
            if not asked.linked:
                self.asked.remember(call_id, replace(asked, linked=True))
                context = asked.span_context
                by_span.setdefault(context.span_id, (context, []))[1].append(call_id)
        return Answers(list(by_span.values()), session)

    def finish(self, span: Span, record: CallRecord, context: Attributes,
               answers: Answers) -> None:
        """Link ``span`` to the calls it answers, remember what it asks itself (with its
        session), and write its TOOL spans (``context``: the session and user attributes)."""
        limit = self.options.max_attribute_length
        for asking, ids in answers.links:
            span.add_link(asking, {CALL_IDS: [encodable(capped(i, limit)) for i in ids]})
        session = context.get(SpanAttributes.SESSION_ID)
        asking = Asked(session if isinstance(session, str) else None, span.get_span_context())
        for call_id in asked_calls(record.tools):
            self.asked.remember(call_id, asking)
        if not span.is_recording():
            return  # sampled out: so are its children
        parent = set_span_in_context(span)
        for run in record.tools:
            if run.server:
                self._write(parent, run, record, context)

    def _write(self, parent: Context, run: ToolRun, record: CallRecord,
               context: Attributes) -> None:
        try:
            attrs = tool_attributes(run, record.request, record.response)
        except RecursionError:  # a payload nested deeper than the encoders' stack: cut
            attrs = tool_attributes(replace(run, item=cut_depth(run.item, MAX_DEPTH)[0]),
                                    None, None)
        if self.options.genai_semconv:
            attrs.update(genai_tool_attributes(run))
        if run.status != COMPLETED:
            attrs["error.type"] = run.status
        attrs.update(context)
        masking, limit = self.options.masking, self.options.max_attribute_length
        attrs = {key: encodable(capped(value, limit)) if isinstance(value, str) else value
                 for key, value in mask(attrs, masking).items()}
        child = self.tracer.start_span(encodable(capped(run.name, 256)), context=parent,
                                       kind=SpanKind.INTERNAL, start_time=run.start_ns,
                                       attributes=attrs)
        if run.status == COMPLETED:
            child.set_status(Status(StatusCode.OK))
        else:
            child.set_status(Status(StatusCode.ERROR, encodable(capped(
                _describe(run, with_message=not masking.hides_content), limit))))
        child.end(end_time=run.end_ns)


def _describe(run: ToolRun, with_message: bool) -> str:
    """``<type> failed[: message]``, or why it never finished."""
    if run.status == INCOMPLETE:
        return f"{run.type} did not complete (status {run.item.get('status') or 'unknown'})"
    error = run.item.get("error")
    message = str_or_none(error) or str_or_none(mapping(error).get("message"))
    return f"{run.type} failed: {message}" if message and with_message else f"{run.type} failed"
