"""OTLP/protobuf bytes for finished spans, written directly: the SDK's encoder builds a protobuf
object per attribute (about 5 µs each)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, SpanContext, SpanKind

from otel_responses.telemetry.sdk_private import attribute_items

log = logging.getLogger("otel_responses.telemetry")

# Field tags, (field number << 3) | wire type, from opentelemetry-proto's trace.proto and
# common.proto. Every message below is written in field-number order, as protobuf does.
_KIND = {SpanKind.INTERNAL: b"\x30\x01", SpanKind.SERVER: b"\x30\x02",
         SpanKind.CLIENT: b"\x30\x03", SpanKind.PRODUCER: b"\x30\x04",
         SpanKind.CONSUMER: b"\x30\x05"}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_INT64 = range(-(1 << 63), 1 << 63)
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_SHORT = 1 << 14  # varints of one or two bytes are looked up, not computed (~0.7 MB, once)
# Attribute keys recur on every span: their encoded KeyValue.key field is kept, up to this many.
_KEY_CACHE_SIZE = 8192


def _compute_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_compute_varint(n) for n in range(_SHORT)]


def _varint(n: int) -> bytes:
    return _VARINTS[n] if n < _SHORT else _compute_varint(n)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message (its oneof members are written even when they hold a default)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _delimited(b"\x0a", value.encode())
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _delimited(b"\x3a", value)
    if isinstance(value, Sequence):
        return _delimited(b"\x2a", b"".join([_delimited(b"\x0a", _any_value(v))
                                              for v in value]))
    if isinstance(value, Mapping):
        return _delimited(b"\x32", b"".join([_delimited(b"\x0a", _key_value(str(k), v))
                                              for k, v in value.items()]))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


class _Keys(dict[str, bytes]):
    def __missing__(self, key: str) -> bytes:
        if len(self) >= _KEY_CACHE_SIZE:
            self.clear()
        field = self[key] = _delimited(b"\x0a", key.encode())
        return field


_keys = _Keys()


def _key_value(key: str, value: Any) -> bytes:
    return _keys[key] + _delimited(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None, owner: Any = None) -> list[bytes]:
    """The repeated KeyValue field `tag`; an attribute that cannot be encoded
    is logged and left out, as the SDK's encoder does. `owner`: the span, for its store."""
    fields = []
    for key, value in attribute_items(owner, attributes):
        try:
            fields.append(_delimited(tag, _key_value(key, value)))
        except Exception as error:
            log.exception("Failed to encode key %s: %s", key, error)
    return fields


def _flags(context: SpanContext | None) -> bytes:
    remote = context is not None and context.is_remote
    return _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE if remote else _HAS_IS_REMOTE)


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    text = ",".join(f"{k}={v}" for k, v in state.items()) if state is not None else ""
    return _delimited(b"\x1a", text.encode()) if text else b""


def _count(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


def _event(event: Event) -> bytes:
    parts = [b"\x09" + _pack_fixed64(event.timestamp)] if event.timestamp else []
    if event.name:
        parts.append(_delimited(b"\x12", event.name.encode()))
    parts += _attributes(b"\x1a", event.attributes)
    parts.append(_count(b"\x20", event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link) -> bytes:
    context = link.context
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
             b"\x12\x08" + context.span_id.to_bytes(8, "big"),
             *_attributes(b"\x22", link.attributes),
             _count(b"\x28", link.dropped_attributes),
             b"\x35" + _flags(context)]
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parts = [b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
             b"\x12\x08" + context.span_id.to_bytes(8, "big"),
             _trace_state(context)]
    if span.parent is not None:
        parts.append(b"\x22\x08" + span.parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_delimited(b"\x2a", span.name.encode()))
    parts.append(_KIND[span.kind])
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    parts += _attributes(b"\x4a", span.attributes, span)
    parts.append(_count(b"\x50", span.dropped_attributes))
    parts += [_delimited(b"\x5a", _event(e)) for e in span.events]
    parts.append(_count(b"\x60", span.dropped_events))
    parts += [_delimited(b"\x6a", _link(link)) for link in span.links]
    parts.append(_count(b"\x70", span.dropped_links))
    if span.status is not None:
        status = _delimited(b"\x12", span.status.description.encode()) \
            if span.status.description else b""
        status += _count(b"\x18", span.status.status_code.value)
        parts.append(_delimited(b"\x7a", status))
    parts.append(b"\x85\x01" + _flags(span.parent))
    return b"".join(parts)


def span_field(span: ReadableSpan) -> bytes:
    """The span as the field of a ScopeSpans message: what `encode_requests` assembles."""
    return _delimited(b"\x12", _span(span))


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """A serialized ExportTraceServiceRequest, grouped by resource and then by instrumentation
    scope, as the SDK's `encode_spans(spans).SerializeToString()` gives."""
    return _request([(span, span_field(span)) for span in spans])


def encode_requests(fields: Iterable[tuple[ReadableSpan, bytes]],
                    max_bytes: int) -> list[bytes]:
    """Spans with their `span_field`, in order, as serialized requests whose spans take at
    most `max_bytes` each (resource and scope add a few hundred bytes); a larger span goes
    alone."""
    chunks: list[list[tuple[ReadableSpan, bytes]]] = []
    size = max_bytes + 1  # the first span opens a chunk
    for span, field in fields:
        if size + len(field) > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append((span, field))
        size += len(field)
    return [_request(chunk) for chunk in chunks]


def _request(encoded_spans: list[tuple[ReadableSpan, bytes]]) -> bytes:
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    resource: Any = object()
    scope: Any = object()
    for span, field in encoded_spans:
        # Spans nearly always share their resource and scope objects: hash them (a JSON dump
        # of the resource's attributes) only when the object changes.
        if span.resource is not resource:
            resource, scope = span.resource, object()
            by_scope = groups.setdefault(resource, {})
        if (span.instrumentation_scope or None) is not scope:
            scope = span.instrumentation_scope or None
            encoded = by_scope.setdefault(scope, [])
        encoded.append(field)
    out = []
    for resource, by_scope in groups.items():
        parts = [_delimited(b"\x0a", b"".join(_attributes(b"\x0a", resource.attributes)))]
        for scope, encoded in by_scope.items():
            scope_fields = []
            if scope is not None:
                if scope.name:
                    scope_fields.append(_delimited(b"\x0a", scope.name.encode()))
                if scope.version:
                    scope_fields.append(_delimited(b"\x12", scope.version.encode()))
                scope_fields += _attributes(b"\x1a", scope.attributes)
            body = [_delimited(b"\x0a", b"".join(scope_fields)), *encoded]
            if scope is not None and scope.schema_url:
                body.append(_delimited(b"\x1a", scope.schema_url.encode()))
            parts.append(_delimited(b"\x12", b"".join(body)))
        if resource.schema_url:
            parts.append(_delimited(b"\x1a", resource.schema_url.encode()))
        out.append(_delimited(b"\x0a", b"".join(parts)))
    return b"".join(out)
