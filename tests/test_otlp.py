"""The direct OTLP encoder gives the very bytes of the SDK's own encoder, for any spans."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from otel_responses.telemetry.otlp import encode_requests, encode_spans, span_field

_KEYS = st.text(min_size=1, max_size=12)
_INTS = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                  st.sampled_from([0, -1, 1 << 63, -(1 << 64)]))
_SCALARS = st.one_of(st.text(max_size=40), st.booleans(), _INTS, st.floats(allow_nan=False),
                     st.sampled_from([math.inf, -math.inf, -0.0]))
_VALUES = st.one_of(
    _SCALARS,
    st.lists(st.text(max_size=8), max_size=4), st.lists(st.booleans(), max_size=4),
    st.lists(_INTS, max_size=4), st.lists(st.floats(allow_nan=False), max_size=4),
    st.text(min_size=200, max_size=20_000),  # varints of two and three bytes
)
_ATTRIBUTES = st.dictionaries(_KEYS, _VALUES, max_size=8)
_IDS = st.tuples(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1))


@st.composite
def _span_specs(draw: Any) -> dict[str, Any]:
    return {
        "name": draw(st.text(max_size=20)),
        "kind": draw(st.sampled_from(list(SpanKind))),
        "attributes": draw(_ATTRIBUTES),
        "events": draw(st.lists(st.tuples(st.text(max_size=10), _ATTRIBUTES,
                                          st.integers(0, 1 << 62)), max_size=3)),
        "links": draw(st.lists(st.tuples(_IDS, st.booleans(), _ATTRIBUTES), max_size=2)),
        "parent": draw(st.one_of(st.none(), st.tuples(_IDS, st.booleans()))),
        "trace_state": draw(st.sampled_from([None, [("vendor", "x")], [("a", "1"), ("b", "2")]])),
        "status": draw(st.sampled_from([None, (StatusCode.OK, None), (StatusCode.ERROR, None),
                                        (StatusCode.ERROR, "it broke: ünïcode")])),
        "times": draw(st.tuples(st.integers(0, 1 << 62), st.integers(0, 1 << 20))),
        "scope": draw(st.integers(0, 2)),
    }


_SCOPES = [("otel_responses", "1.0", None, None), ("other", None, "https://schema/1", {"k": 1}),
           ("", None, None, None)]


class _SequentialIds(IdGenerator):
    """IDs without the random module, which hypothesis wants left alone."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        return self.generate_span_id() << 64


def _make(specs: list[dict[str, Any]], resources: list[Resource]) -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    _ids = _SequentialIds()
    for n, spec in enumerate(specs):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=resources[n % len(resources)], id_generator=_ids,
                                  span_limits=SpanLimits(max_attributes=4, max_events=2,
                                                         max_links=1, max_span_attributes=6))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        name, version, schema, scope_attributes = _SCOPES[spec["scope"]]
        tracer = provider.get_tracer(name, version, schema, scope_attributes)
        context = None
        if spec["parent"] is not None:
            (trace_id, span_id), remote = spec["parent"]
            state = TraceState(spec["trace_state"]) if spec["trace_state"] else None
            context = set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, span_id, remote, TraceFlags(1), state)))
        links = [Link(SpanContext(t, s, remote, TraceFlags(1)), attrs)
                 for (t, s), remote, attrs in spec["links"]]
        start, length = spec["times"]
        span = tracer.start_span(spec["name"], context, spec["kind"], links=links,
                                 start_time=start or None)
        span.set_attributes(spec["attributes"])
        for event_name, attrs, at in spec["events"]:
            span.add_event(event_name, attrs, at)
        if spec["status"] is not None:
            span.set_status(Status(*spec["status"]))
        span.end(end_time=(start + length) if start else None)
        spans += exporter.get_finished_spans()
    return spans


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(_span_specs(), min_size=1, max_size=5),
       resources=st.lists(_ATTRIBUTES, min_size=1, max_size=2))
def test_the_same_bytes_as_the_sdk_encoder(specs: list[dict[str, Any]],
                                           resources: list[dict[str, Any]]) -> None:
    # Strategies draw plain data; SDK objects are built here.
    spans = _make(specs, [Resource.create(r) for r in resources])
    assert encode_spans(spans) == sdk_encode(spans).SerializeToString()


def test_attributes_the_sdk_cannot_encode_are_left_out_alike() -> None:
    spans = _make([{"name": "s", "kind": SpanKind.CLIENT, "events": [], "links": [],
                    "parent": None, "trace_state": None, "status": None, "times": (0, 0),
                    "scope": 0, "attributes": {"big": 1 << 64, "lone": "\ud800", "ok": "yes"}}],
                  [Resource.create({})])
    encoded = encode_spans(spans)
    assert encoded == sdk_encode(spans).SerializeToString()
    assert b"yes" in encoded and b"big" not in encoded


def _span_ids(request: bytes) -> list[bytes]:
    decoded = ExportTraceServiceRequest.FromString(request)
    return [span.span_id for rs in decoded.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
       limit=st.integers(500, 5000))
def test_requests_split_a_batch_in_order_under_the_limit(sizes: list[int], limit: int) -> None:
    spans = _make([{"name": "s", "kind": SpanKind.CLIENT, "events": [], "links": [],
                    "parent": None, "trace_state": None, "status": None, "times": (0, 0),
                    "scope": n % 2, "attributes": {"v": "x" * size}}
                   for n, size in enumerate(sizes)], [Resource.create({})])
    requests = encode_requests([(span, span_field(span)) for span in spans], limit)
    order = [span.context.span_id.to_bytes(8, "big") for span in spans]
    # Each request holds the next spans of the batch (grouped by scope inside it).
    taken = 0
    for request in requests:
        ids = _span_ids(request)
        assert sorted(ids) == sorted(order[taken:taken + len(ids)])
        taken += len(ids)
        # Resource (the SDK's telemetry.sdk.* attributes) and two scopes add under 400 bytes.
        assert len(ids) == 1 or len(request) <= limit + 400
    assert taken == len(spans)
