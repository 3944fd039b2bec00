"""One bad request never costs anyone else's span: strings that JSON allows but UTF-8 does not
(lone surrogates) are made encodable, and a span that still cannot be encoded goes alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_responses.app import create_app
from otel_responses.config import Settings
from otel_responses.protocol.text import encodable
from otel_responses.telemetry import otlp_exporter
from otel_responses.telemetry.export import build_tracer_provider, shutdown_provider
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.otlp import encode_requests, span_field
from otel_responses.telemetry.recorder import CallRecorder
from otel_responses.telemetry.spans import SpanWriter
from tests.otlp import otlp_http_receiver
from tests.servers import serve_asgi
from tests.test_metrics import scrape, value
from tests.upstreams import RawUpstream

# Valid JSON, invalid UTF-16: a lone high and a lone low surrogate, spelt as JSON escapes.
LONE = "\ud800 and \udfff"


def test_encodable_replaces_only_lone_surrogates() -> None:
    assert encodable("plain") == "plain"
    assert encodable("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"
    assert encodable(LONE) == "\ufffd and \ufffd"
    assert encodable("\ud83d\ude00") == "\ufffd\ufffd"  # a pair as two str chars is two lone
    text = "x\u4e2d\ud800"
    assert encodable(text).encode() == "x\u4e2d\ufffd".encode()


@st.composite
def _texts(draw: st.DrawFn) -> str:
    # Any code point, surrogates included: what a JSON string can hold through \u escapes.
    return draw(st.text(st.characters(codec=None, exclude_categories=()), max_size=8))


@settings(max_examples=100)
@given(text=_texts())
def test_encodable_always_encodes(text: str) -> None:
    clean = encodable(text)
    clean.encode()
    assert len(clean) == len(text)
    if all(not 0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert clean is text


# ---- a batch with one poisoned request ---------------------------------------------------

def _request(text: str) -> dict[str, Any]:
    """``text`` everywhere a request can carry a string that reaches a span."""
    return {
        "model": text, "instructions": text, "user": text, "metadata": {text: text},
        "previous_response_id": text, "conversation": text,
        "prompt": {"id": text, "version": text, "variables": {"v": text}},
        "tools": [{"type": "function", "name": text, "description": text, "parameters": {}}],
        "input": [{"role": text, "content": [{"type": "input_text", "text": text},
                                             {"type": "input_image", "image_url": text}]},
                  {"type": "function_call", "call_id": text, "name": text, "arguments": text},
                  {"type": "function_call_output", "call_id": text, "output": text},
                  {"type": text, "id": text}],
        "text": {"format": {"type": "json_schema", "name": text}}, "reasoning": {"effort": text},
    }


def _response(text: str) -> dict[str, Any]:
    return {"id": text, "object": "response", "status": "completed", "model": text,
            "output": [{"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": text, "annotations": []},
                {"type": "refusal", "refusal": text}]},
                {"type": "function_call", "call_id": text, "name": text, "arguments": text}],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}


def _finished_span(writer: SpanWriter, request: bytes, response: bytes, status: int,
                   headers: list[tuple[bytes, bytes]]) -> None:
    call = CallRecorder(1)
    call.request_chunk(request)
    call.response_start(status, [(b"content-type", b"application/json")])
    call.response_chunk(response, False)
    span, forwarded = writer.start(headers, 1)
    writer.finish(span, call.finish(), forwarded)


def _span_names(payload: bytes) -> list[str]:
    request = ExportTraceServiceRequest.FromString(payload)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts(), status=st.sampled_from([200, 400]),
       header=st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
def test_any_json_string_anywhere_never_costs_another_span(text: str, status: int,
                                                           header: bytes) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=100_000))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    writer = SpanWriter(provider.get_tracer("t"), TelemetryOptions(genai_semconv=True))
    bad_response = (_response(text) if status == 200
                    else {"error": {"message": text, "type": text, "code": text}})
    _finished_span(writer, json.dumps(_request(text)).encode(),
                   json.dumps(bad_response).encode(), status,
                   [(b"x-session-id", header), (b"x-user-id", header)])
    _finished_span(writer, json.dumps(_request("ok")).encode(),
                   json.dumps(_response("ok")).encode(), 200, [])
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    assert len(spans) == 2
    # Our encoder (OTLP/HTTP) and the SDK's (gRPC) both take the batch whole.
    payloads = encode_requests([(s, span_field(s)) for s in spans], 4 << 20)
    assert [n for p in payloads for n in _span_names(p)] == [s.name for s in spans]
    assert _span_names(sdk_encode(spans).SerializeToString()) == [s.name for s in spans]
    assert spans[1].name == "chat ok"


# ---- over real sockets ----------------------------------------------------------------------

@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream(seed=3)
    with raw.running():
        yield raw


def test_a_poisoned_request_keeps_every_span_and_the_metrics(
        upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned = json.dumps(_request(LONE)).encode()  # ensure_ascii: \ud800 escapes, valid JSON
    assert b"\\ud800" in poisoned
    with otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # one batch, at shutdown
        provider = build_tracer_provider()
        app = create_app(Settings(upstream=upstream.url + "/v1"), tracer_provider=provider)
        with serve_asgi(app) as base, httpx.Client(timeout=10) as client:
            for body in (b'{"model":"before","input":"hi"}', poisoned,
                         b'{"model":"after","input":"hi"}'):
                response = client.post(base + "/v1/responses", content=body,
                                       headers={"content-type": "application/json"})
                assert response.status_code == 200
            samples = scrape(base)  # a label with a lone surrogate would fail every scrape
            assert value(samples, "gen_ai_client_operation_duration_seconds_count") == 3
            shutdown_provider(provider)
            spans = receiver.wait_for(3)
            assert len(receiver.raw) == 1  # the three came as one batch
    names = sorted(s.name for s in spans)
    assert names == sorted(["chat before", "chat \ufffd and \ufffd", "chat after"])
    (bad,) = [s for s in spans if "\ufffd" in s.name]
    assert bad.attributes["llm.request.model_name"] == "\ufffd and \ufffd"
    assert bad.attributes["metadata"] == json.dumps({"\ufffd and \ufffd": "\ufffd and \ufffd"},
                                                    ensure_ascii=False)


def test_a_span_that_cannot_be_encoded_is_dropped_alone_and_counted(
        upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    real = otlp_exporter.span_field

    def field(span: ReadableSpan) -> bytes:
        if span.name == "chat poison":  # whatever the cause: the encoder fails on this one
            raise ValueError("cannot encode")
        return real(span)

    monkeypatch.setattr(otlp_exporter, "span_field", field)
    with otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
        provider = build_tracer_provider()
        app = create_app(Settings(upstream=upstream.url + "/v1"), tracer_provider=provider)
        with serve_asgi(app) as base, httpx.Client(timeout=10) as client:
            for model in ("before", "poison", "after"):
                client.post(base + "/v1/responses", json={"model": model, "input": "hi"})
            provider.force_flush()
            samples = scrape(base)
        shutdown_provider(provider)
        assert sorted(s.name for s in receiver.wait_for(2)) == ["chat after", "chat before"]
    assert value(samples, "otel_responses_spans_dropped_total", reason="unencodable") == 1
    assert value(samples, "otel_responses_spans_dropped_total", reason="export_failed") == 0
    assert value(samples, "otel_responses_spans_exported_total") == 2
