"""The OpenTelemetry SDK privates the proxy leans on (all in telemetry/sdk_private.py) are
there in the installed SDK: an upgrade that takes one away fails here, by name, rather than
quietly falling back to the slow path."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_responses.telemetry.sdk_private import (
    attribute_items,
    attribute_store,
    exporter_client,
)


def test_the_http_exporter_has_the_sender_the_direct_encoding_needs() -> None:
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    client = exporter_client(exporter)
    assert client is not None, "OTLPSpanExporter lost _client.export / _max_request_size / " \
                               "_shutdown: the proxy falls back to the SDK's slower encoder"
    assert client.max_request_size >= 0
    assert client.shut_down is False
    exporter.shutdown()
    assert client.shut_down is True


def test_spans_keep_their_attributes_in_a_bounded_store_with_a_plain_dict() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=3))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("s", attributes={"a": 1})
    store = attribute_store(span)
    assert store is not None, "Span._attributes is no longer a BoundedAttributes"
    assert store.maxlen == 3
    store.dropped += 2  # what the proxy adds for attributes it never set (count limit)
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.dropped_attributes == 2
    # The encoder reads the plain dict inside the store, not the Mapping interface.
    assert isinstance(getattr(finished._attributes, "_dict", None), dict), \
        "BoundedAttributes._dict is gone: the encoder falls back to the slower Mapping"
    assert list(attribute_items(finished, finished.attributes)) == [("a", 1)]


def test_objects_without_the_privates_fall_back_to_public_interfaces() -> None:
    class Plain:
        pass

    assert exporter_client(Plain()) is None  # type: ignore[arg-type]
    assert attribute_store(Plain()) is None
    assert list(attribute_items(Plain(), {"k": "v"})) == [("k", "v")]
