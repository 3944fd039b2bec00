"""Export through the CLI-built provider to real OTLP receivers, and the middleware on its own."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from otel_responses.demo.app import create_demo_app
from otel_responses.telemetry import otlp_exporter
from otel_responses.telemetry.export import (
    SHUTDOWN_FLUSH_SECONDS,
    SpanPipeline,
    build_tracer_provider,
    exporter_names,
    span_pipelines,
)
from otel_responses.telemetry.metrics import ProxyMetrics
from otel_responses.telemetry.middleware import ResponsesTelemetryMiddleware
from otel_responses.telemetry.otlp_exporter import DirectOTLPSpanExporter
from tests.otlp import black_hole, otlp_grpc_receiver, otlp_http_receiver
from tests.servers import run_cli, serve_asgi
from tests.spans import SpanSink, indexed, message_text

SECRET = "sk-live-very-secret-1234"
COOKIE = "session=cookie-secret-5678"


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with serve_asgi(create_demo_app()) as base:
        yield base


def _call(base: str, stream: bool) -> httpx.Response:
    return httpx.post(base + "/v1/responses",
                      json={"model": "demo", "input": "export me", "stream": stream},
                      headers={"authorization": f"Bearer {SECRET}", "cookie": COOKIE,
                               "api-key": SECRET}, timeout=10)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_cli_exports_spans_over_otlp(protocol: str, demo: str) -> None:
    receiver_cm = otlp_http_receiver() if protocol == "http/protobuf" else otlp_grpc_receiver()
    with receiver_cm as receiver:
        env = {"OTEL_TRACES_EXPORTER": "otlp",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_BSP_SCHEDULE_DELAY": "100",
               "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
        with run_cli("--upstream", demo + "/v1", "--upstream-api-key", SECRET,
                     env=env) as (base, proc):
            assert _call(base, stream=False).status_code == 200
            assert _call(base, stream=True).status_code == 200
            spans = receiver.wait_for(2)
            proc.terminate()
            out, _ = proc.communicate(timeout=15)
    assert {s.name for s in spans} == {"chat demo"}
    assert all(s.kind == PbSpan.SPAN_KIND_CLIENT for s in spans)
    assert spans[0].resource["service.name"] == "otel-responses"
    assert spans[0].resource["deployment.environment"] == "test"
    for span in spans:
        assert span.attributes["openinference.span.kind"] == "LLM"
        assert span.attributes["llm.token_count.total"] > 0
        outputs = indexed(span.attributes, "llm.output_messages")
        assert message_text(outputs[0])
    exported = b"".join(receiver.raw)
    for secret in (SECRET.encode(), b"cookie-secret", b"Bearer"):
        assert secret not in exported
        assert secret.decode() not in out


def test_flush_on_shutdown_exports_queued_spans(demo: str) -> None:
    with otlp_http_receiver() as receiver:
        # A schedule delay far longer than the test: only the shutdown flush can deliver it.
        env = {"OTEL_TRACES_EXPORTER": "otlp",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "600000"}
        with run_cli("--upstream", demo + "/v1", env=env) as (base, proc):
            assert _call(base, stream=False).status_code == 200
            time.sleep(0.3)
            assert receiver.spans == []
            proc.terminate()
            proc.wait(15)
        assert len(receiver.spans) == 1


def _median_latency(base: str, n: int = 30) -> float:
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.post(base + "/v1/responses", json={"model": "demo", "input": "x"})
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_collector_down_or_black_holed_does_not_slow_requests(demo: str) -> None:
    """No request waits on an export: with a dead collector (refused, retried with backoff
    from 1 s) or a hung one (held for the 5 s export timeout), each would take a second or
    more if it did. The medians are printed beside the live collector's; the speed itself is
    the benchmark's (bench/NOTES.md), not this test's."""
    with otlp_http_receiver() as receiver, black_hole() as hole:
        closed = "http://127.0.0.1:9"  # nothing listens on the discard port on loopback
        latencies = {}
        for name, endpoint in (("up", receiver.endpoint), ("down", closed),
                               ("black_hole", hole)):
            env = {"OTEL_TRACES_EXPORTER": "otlp",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint + "/v1/traces"
                   if name != "up" else endpoint,
                   "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_EXPORTER_OTLP_TIMEOUT": "5"}
            with run_cli("--upstream", demo + "/v1", "--log-level", "critical",
                         env=env) as (base, _):
                _median_latency(base, 5)  # warm up
                latencies[name] = _median_latency(base)
        assert len(receiver.spans) >= 30
    print("median latency by collector:", latencies)
    for name in ("down", "black_hole"):
        # Half the shortest wait an export could impose: far above any machine's noise.
        assert latencies[name] < 0.5, f"collector {name}: requests wait on it ({latencies})"


def test_a_dead_collector_does_not_hold_shutdown(demo: str) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}
    with run_cli("--upstream", demo + "/v1", env=env) as (base, proc):
        assert _call(base, stream=False).status_code == 200
        started = time.monotonic()
        proc.terminate()
        proc.wait(30)
    assert time.monotonic() - started < SHUTDOWN_FLUSH_SECONDS + 3


def test_span_attribute_count_limit_is_raised_unless_set() -> None:
    from otel_responses.telemetry.export import DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT

    def limit(env: dict[str, str]) -> int | None:
        return build_tracer_provider(env)._span_limits.max_span_attributes

    assert limit({"OTEL_TRACES_EXPORTER": "none"}) == DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT > 128
    # The standard variable wins; the SDK reads it when the explicit limit is left unset.
    os_limit = {"OTEL_TRACES_EXPORTER": "none", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "500"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "500")
        assert limit(os_limit) == 500


def test_exporter_selection_follows_otel_traces_exporter() -> None:
    assert exporter_names({}, demo=False) == ["otlp"]
    assert exporter_names({}, demo=True) == ["log"]
    assert exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, demo=True) == ["otlp"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console,otlp"}, demo=False) == \
        ["console", "otlp"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}, demo=False) == []
    with pytest.raises(ValueError, match="zipkin"):
        build_tracer_provider({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_otlp_http_exporter_encodes_spans_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    with otlp_http_receiver() as receiver:
        for name, value in {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}.items():
            monkeypatch.setenv(name, value)
        provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "otlp"})
        exporters = [p.exporter for p in span_pipelines(provider)]
        # The installed SDK exporter has the HTTP client the direct encoding needs.
        assert [(type(e), e.direct) for e in exporters] == [(DirectOTLPSpanExporter, True)]
        with provider.get_tracer("t").start_as_current_span("direct", attributes={"k": "v"}):
            pass
        provider.shutdown()
        (span,) = receiver.wait_for(1)
    assert (span.name, span.attributes, span.resource["service.name"]) == \
        ("direct", {"k": "v"}, "otel-responses")


def test_a_large_batch_goes_out_in_several_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_exporter, "REQUEST_BYTES", 3000)
    with otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "otlp"})
        for n in range(6):
            provider.get_tracer("t").start_span(f"s{n}", attributes={"v": "x" * 1000}).end()
        provider.shutdown()
        spans = receiver.wait_for(6)
    assert [s.name for s in spans] == [f"s{n}" for n in range(6)]
    assert len(receiver.raw) == 3 and all(len(r) < 3300 for r in receiver.raw)


def test_spans_are_encoded_once_as_they_end(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    real = otlp_exporter.span_field
    monkeypatch.setattr(otlp_exporter, "span_field",
                        lambda span: encoded.append(span.name) or real(span))
    with otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "otlp"})
        tracer = provider.get_tracer("t")
        for n in range(3):
            tracer.start_span(f"s{n}").end()
            assert encoded == [f"s{i}" for i in range(n + 1)]  # by the thread that ended it
        provider.shutdown()
        assert [s.name for s in receiver.wait_for(3)] == ["s0", "s1", "s2"]
    assert len(encoded) == 3  # not again at export
    (exporter,) = [p.exporter for p in span_pipelines(provider)]
    assert exporter._prepared == {}


def test_past_the_prepared_bytes_spans_are_encoded_at_export(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_exporter, "PREPARED_BYTES", 1)  # room for one span ahead
    with otlp_http_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "otlp"})
        for n in range(3):
            provider.get_tracer("t").start_span(f"s{n}").end()
        (exporter,) = [p.exporter for p in span_pipelines(provider)]
        assert len(exporter._prepared) == 1
        provider.shutdown()
        assert [s.name for s in receiver.wait_for(3)] == ["s0", "s1", "s2"]
    assert (exporter._prepared, exporter._prepared_bytes) == ({}, 0)


def test_span_pipelines_of_built_providers() -> None:
    provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "console,log,otlp",
                                      "OTEL_BSP_MAX_QUEUE_SIZE": "1000"})
    assert [(p.name, p.capacity) for p in span_pipelines(provider)] == \
        [("console", 1000), ("otlp", 1000)]  # the log processor has no queue
    assert span_pipelines(TracerProvider()) == ()  # someone else's provider: not ours to count
    assert span_pipelines(None) == ()
    with pytest.raises(ValueError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        build_tracer_provider({"OTEL_TRACES_EXPORTER": "console",
                               "OTEL_BSP_MAX_QUEUE_SIZE": "lots"})


class _ScriptedExporter(SpanExporter):
    """Holds its first batch until ``release``, then answers each batch from ``results``
    (an exception is raised)."""

    def __init__(self, *results: SpanExportResult | Exception) -> None:
        self.results = list(results)
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        assert self.release.wait(10)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def _pipeline(monkeypatch: pytest.MonkeyPatch, exporter: SpanExporter,
              capacity: int) -> tuple[SpanPipeline, TracerProvider]:
    # Batches of 2, sent only when full (or on flush): the test decides when the worker runs.
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    pipeline = SpanPipeline(exporter, "test", capacity)
    provider = TracerProvider()
    provider.add_span_processor(pipeline)
    return pipeline, provider


def _end_spans(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("test")
    for _ in range(n):
        tracer.start_span("s").end()


def test_every_span_is_exported_dropped_or_queued(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    exporter = _ScriptedExporter(SpanExportResult.SUCCESS, SpanExportResult.FAILURE,
                                 RuntimeError("collector exploded"))
    pipeline, provider = _pipeline(monkeypatch, exporter, capacity=4)
    metrics = ProxyMetrics()
    metrics.watch(in_flight=lambda: 0, telemetry_errors=lambda: 0, span_pipelines=[pipeline])

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"exporter": "test", **labels})

    _end_spans(provider, 2)  # a full batch: the worker takes it and hangs in the exporter
    assert exporter.entered.wait(10)
    _end_spans(provider, 4 + 3)  # the queue fills up; the last three find it full
    assert (pipeline.queued, pipeline.exported, pipeline.dropped) == \
        (4, 0, {"queue_full": 3, "export_failed": 0, "unencodable": 0})
    assert sample("otel_responses_span_queue_size") == 4
    assert sample("otel_responses_span_queue_capacity") == 4
    assert sample("otel_responses_spans_dropped_total", reason="queue_full") == 3
    assert [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()] == [
        "span export queue full (4 spans, exporter test): 1 spans dropped since the last "
        "report; see otel_responses_spans_dropped_total"]  # once, not per span

    exporter.release.set()  # then: success, failure, an exception
    assert provider.force_flush()
    assert (pipeline.queued, pipeline.exported, pipeline.dropped) == \
        (0, 2, {"queue_full": 3, "export_failed": 4, "unencodable": 0})
    assert sample("otel_responses_spans_exported_total") == 2
    assert sample("otel_responses_spans_dropped_total", reason="export_failed") == 4
    assert sample("otel_responses_span_queue_size") == 0
    provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_an_empty_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = _ScriptedExporter(SpanExportResult.SUCCESS, SpanExportResult.SUCCESS)
    pipeline, provider = _pipeline(monkeypatch, exporter, capacity=4)
    _end_spans(provider, 2)
    assert exporter.entered.wait(10)
    _end_spans(provider, 1)
    assert pipeline.queued == 1
    read, write = os.pipe()
    if (pid := os.fork()) == 0:  # the child: the SDK emptied its copy of the queue
        os.write(write, str(pipeline.queued).encode())
        os._exit(0)
    os.close(write)
    assert os.read(read, 16) == b"0"
    os.close(read)
    os.waitpid(pid, 0)
    assert pipeline.queued == 1  # the parent's is untouched
    exporter.release.set()
    provider.shutdown()


def test_demo_mode_logs_a_summary_line_per_call() -> None:
    with run_cli(env={"OTEL_TRACES_EXPORTER": ""}) as (base, proc):
        resp = httpx.post(base + "/v1/responses",
                          json={"model": "demo", "input": "hi", "stream": True}, timeout=10)
        assert resp.status_code == 200
        time.sleep(0.3)
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    lines = out.splitlines()
    assert "demo upstream" in lines[0]
    summary = [line for line in lines if "chat demo: model=demo" in line]
    assert len(summary) == 1
    assert "ttft=" in summary[0] and "trace_id=" in summary[0] and "tokens=" in summary[0]


# -- the middleware on an app that answers /v1/responses itself ---------------------------

FINAL = {"id": "resp_own", "object": "response", "model": "own-model", "status": "completed",
         "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": "Hello there",
                                  "annotations": []}]}],
         "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}


def _events() -> list[dict]:
    base = {**FINAL, "status": "in_progress", "output": [], "usage": None}
    return [
        {"type": "response.created", "sequence_number": 0, "response": base},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
         "item": {**FINAL["output"][0], "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "sequence_number": 2, "output_index": 0,
         "item_id": "msg_1", "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", "sequence_number": 3, "output_index": 0,
         "item_id": "msg_1", "content_index": 0, "delta": "Hello"},
        {"type": "response.output_text.delta", "sequence_number": 4, "output_index": 0,
         "item_id": "msg_1", "content_index": 0, "delta": " there"},
        {"type": "response.completed", "sequence_number": 5, "response": FINAL},
    ]


async def own_responses(request: Request) -> JSONResponse | StreamingResponse:
    body = await request.json()
    if not body.get("stream"):
        return JSONResponse(FINAL)

    async def sse() -> Iterator[bytes]:
        for event in _events():
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()

    return StreamingResponse(sse(), media_type="text/event-stream")


@pytest.mark.parametrize("stream", [False, True])
def test_middleware_on_a_plain_starlette_app(stream: bool) -> None:
    sink = SpanSink()
    app = ResponsesTelemetryMiddleware(
        Starlette(routes=[Route("/v1/responses", own_responses, methods=["POST"])]),
        tracer_provider=sink.provider)
    with serve_asgi(app) as base:
        resp = httpx.post(base + "/v1/responses",
                          json={"model": "own-model", "input": "hi", "stream": stream})
        assert resp.status_code == 200
        span = sink.one()
    attrs = span.attributes
    assert span.name == "chat own-model"
    assert attrs["llm.response.model_name"] == "own-model"
    assert attrs["llm.token_count.total"] == 5
    assert message_text(indexed(attrs, "llm.output_messages")[0]) == "Hello there"
    assert [m["message.role"] for m in indexed(attrs, "llm.input_messages")] == ["user"]
    assert json.loads(attrs["output.value"]) == FINAL
