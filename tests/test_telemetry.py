"""Spans recorded through the proxy: every recording, stream endings, context, masking, export."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from otel_responses.outcome import Outcome
from otel_responses.protocol import body as body_module
from otel_responses.protocol.attributes import request_attributes, response_attributes
from otel_responses.telemetry.masking import REDACTED, MaskingConfig, mask
from otel_responses.telemetry.middleware import FINISH_DELAY, ResponsesTelemetryMiddleware
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.spans import SpanWriter
from tests.recordings import (
    TERMINAL,
    Recording,
    expected_input_roles,
    final_response,
    load_recordings,
    need,
    recordings_params,
    sse_payloads,
)
from tests.spans import SpanSink, indexed, message_text, tool_calls, traced_proxy
from tests.upstreams import RawUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream(recordings={r.name: r for r in load_recordings()}, seed=11)
    with raw.running():
        yield raw


@pytest.fixture(scope="module")
def traced(upstream: RawUpstream) -> Iterator[tuple[str, SpanSink]]:
    with traced_proxy(upstream.url + "/v1") as pair:
        yield pair


@pytest.fixture
def proxy(traced: tuple[str, SpanSink]) -> Iterator[tuple[str, SpanSink]]:
    traced[1].clear()
    yield traced


def _send(base: str, rec: Recording, **headers: str) -> httpx.Response:
    body = json.dumps(rec.request_body).encode() if rec.request_body is not None else b"{}"
    with httpx.Client(timeout=10) as client:
        return client.post(base + "/v1/responses", content=body, headers={
            "x-scenario": f"replay:{rec.name}", "content-type": "application/json", **headers})


def _expected_text(rec: Recording, final: dict[str, Any]) -> str:
    if rec.is_sse:
        return "".join(e["delta"] for e in sse_payloads(rec.body)
                       if e.get("type") == "response.output_text.delta")
    return "".join(part["text"] for item in final["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


@pytest.mark.parametrize("rec", recordings_params())
def test_span_matches_what_the_recording_implies(rec: Recording | None,
                                                 proxy: tuple[str, SpanSink]) -> None:
    rec = need(rec)
    base, sink = proxy
    assert _send(base, rec).status_code == rec.status
    span = sink.one()
    attrs = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert attrs["openinference.span.kind"] == "LLM"
    assert attrs["llm.system"] == "openai"
    request = rec.request_body if isinstance(rec.request_body, dict) else None
    if request is not None:
        assert span.name == f"chat {request['model']}"
        assert attrs["llm.request.model_name"] == request["model"]
        inputs = indexed(attrs, "llm.input_messages")
        assert [m["message.role"] for m in inputs] == expected_input_roles(request)
        tools = indexed(attrs, "llm.tools")
        assert [json.loads(t["tool.json_schema"]) for t in tools] == request.get("tools", [])
        assert json.loads(attrs["input.value"]) == request
    final = final_response(rec)
    if final is None:
        assert span.status.status_code is StatusCode.ERROR
        assert str(rec.status) in (span.status.description or "")
        assert attrs["error.type"] == str(rec.status)
        return
    assert span.status.status_code is StatusCode.OK
    assert attrs["llm.model_name"] == final["model"]
    assert attrs["llm.response.model_name"] == final["model"]
    assert json.loads(attrs["output.value"]) == final
    usage = final.get("usage")
    if usage:
        assert attrs["llm.token_count.prompt"] == usage["input_tokens"]
        assert attrs["llm.token_count.completion"] == usage["output_tokens"]
        assert attrs["llm.token_count.total"] == usage["total_tokens"]
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            assert attrs["llm.token_count.prompt_details.cache_read"] == cached
        reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
        if reasoning is not None:
            assert attrs["llm.token_count.completion_details.reasoning"] == reasoning
    outputs = indexed(attrs, "llm.output_messages")
    # The model's messages, reasoning and client calls; server-run tool items are not words.
    spoken = {"message", "reasoning", "function_call", "custom_tool_call"}
    assert len(outputs) == sum(item["type"] in spoken for item in final["output"])
    assert {m["message.role"] for m in outputs} <= {"assistant"}
    assert "".join(message_text(m) for m in outputs) == _expected_text(rec, final)
    expected_calls = [(i["name"], i["arguments"]) for i in final["output"]
                      if i["type"] == "function_call"]
    got_calls = [c for m in outputs for c in tool_calls(m)
                 if c[0] in {name for name, _ in expected_calls}]
    assert got_calls == expected_calls
    client_calls = [i for i in final["output"]
                    if i["type"] in ("function_call", "custom_tool_call")]
    expected_finish = {"completed": "tool_call" if client_calls else "stop",
                       "incomplete": "length"}.get(final["status"])
    if expected_finish:
        assert attrs["llm.finish_reason"] == expected_finish
    if rec.is_sse:
        events = [e.name for e in span.events]
        assert events[-1] in TERMINAL
        if any(e.get("type", "").endswith(".delta") for e in sse_payloads(rec.body)):
            assert events[0] == "First Token Stream Event"


def test_first_token_event_is_at_the_first_delta_not_created(
        proxy: tuple[str, SpanSink]) -> None:
    recs = [r for r in load_recordings() if r.name == "dd-trace-py__stream_text"]
    rec = need(recs[0] if recs else None)
    base, sink = proxy
    _send(base, rec)
    span = sink.one()
    first = next(e for e in span.events if e.name == "First Token Stream Event")
    terminal = next(e for e in span.events if e.name == "response.completed")
    assert span.start_time < first.timestamp <= terminal.timestamp <= span.end_time


# -- stream endings ------------------------------------------------------------------------

def test_upstream_cut_gives_error_span_with_partial_output(
        proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    with pytest.raises(httpx.RemoteProtocolError):  # the client's body is cut too
        httpx.post(base + "/v1/responses", content=b'{"model":"m","input":"x","stream":true}',
                   headers={"x-scenario": "cut"})
    span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert "without a terminal event" in (span.status.description or "")
    assert span.attributes["error.type"] == "upstream_cut"


def test_client_disconnect_gives_error_span(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    with httpx.stream("POST", base + "/v1/responses", content=b'{"model":"m","input":"x"}',
                      headers={"x-scenario": "drip"}) as resp:
        next(resp.iter_raw())
    span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "client disconnected"


def test_upstream_unreachable_gives_error_span() -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with traced_proxy(f"http://127.0.0.1:{sock.getsockname()[1]}/v1") as (base, sink):
            httpx.post(base + "/v1/responses", content=b'{"model":"m","input":"x"}')
            span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert "upstream_unreachable" in (span.status.description or "")
    assert span.attributes["error.type"] == "502"


def test_other_routes_record_no_span(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    httpx.get(base + "/v1/models", headers={"x-scenario": "echo"})
    httpx.get(base + "/v1/responses/resp_1", headers={"x-scenario": "echo"})
    time.sleep(0.2)
    assert sink.spans() == []


# -- context: sessions, users, metadata, links, trace propagation -------------------------

def _echo_call(base: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    resp = httpx.post(base + "/v1/responses", json=body, headers={"x-scenario": "echo", **headers})
    return resp.json()


def test_the_access_log_and_the_span_share_one_parse_of_the_request(
        proxy: tuple[str, SpanSink], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    base, sink = proxy
    parses: list[bytes] = []
    real = body_module.json_object
    monkeypatch.setattr(body_module, "json_object", lambda raw: parses.append(raw) or real(raw))
    with caplog.at_level(logging.INFO, "otel_responses.access"):
        _echo_call(base, {"model": "m-shared", "input": "x"})
        attrs = sink.one().attributes or {}
    access = [r.access for r in caplog.records if r.name == "otel_responses.access"]  # type: ignore[attr-defined]
    assert [a["model"] for a in access] == [attrs["llm.model_name"]] == ["m-shared"]
    assert len(parses) == 1, parses


def test_session_user_and_metadata(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    _echo_call(base, {"model": "m", "input": "x", "metadata": {"team": "a"}, "user": "u-body"},
               **{"x-session-id": "sess-h", "x-user-id": "u-head"})
    attrs = sink.one().attributes
    assert attrs["session.id"] == "sess-h"
    assert attrs["user.id"] == "u-head"
    assert json.loads(attrs["metadata"]) == {"team": "a"}
    sink.clear()
    _echo_call(base, {"model": "m", "input": "x", "conversation": {"id": "conv_1"},
                      "safety_identifier": "safe-1"})
    attrs = sink.one().attributes
    assert attrs["session.id"] == "conv_1"
    assert attrs["user.id"] == "safe-1"


def test_previous_response_id_chain_shares_a_session_and_links_spans(
        proxy: tuple[str, SpanSink]) -> None:
    recs = {r.name: r for r in load_recordings()}
    if "ruby-openai__simple_text" not in recs:
        need(None)
    base, sink = proxy
    first = recs["ruby-openai__simple_text"]
    _send(base, first)
    first_span = sink.one()
    first_id = json.loads(first.body)["id"]
    assert first_span.attributes["session.id"] == first_id
    sink.clear()
    body = {"model": "m", "input": "more", "previous_response_id": first_id}
    httpx.post(base + "/v1/responses", json=body, headers={"x-scenario": "echo"})
    second = sink.one()
    assert second.attributes["session.id"] == first_id
    assert [link.context.span_id for link in second.links] == [first_span.context.span_id]


def test_trace_context_is_continued_and_injected_upstream(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    inbound = f"00-{trace_id}-b7ad6b7169203331-01"
    echo = _echo_call(base, {"model": "m", "input": "x"}, traceparent=inbound,
                      baggage="k=v")
    span = sink.one()
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["traceparent"] == f"00-{trace_id}-{span.context.span_id:016x}-01"
    assert sent["baggage"] == "k=v"


def test_trace_root_ignores_inbound_context(upstream: RawUpstream) -> None:
    options = TelemetryOptions(trace_root=True)
    with traced_proxy(upstream.url + "/v1", telemetry=options) as (base, sink):
        inbound = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        echo = _echo_call(base, {"model": "m", "input": "x"}, traceparent=inbound)
        span = sink.one()
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != "0af7651916cd43dd8448eb211c80319c"
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["traceparent"].split("-")[2] == format(span.context.span_id, "016x")


def test_genai_semconv_on_request(upstream: RawUpstream) -> None:
    recs = {r.name: r for r in load_recordings()}
    rec = need(recs.get("dd-trace-py__cached_tokens"))
    options = TelemetryOptions(genai_semconv=True)
    with traced_proxy(upstream.url + "/v1", telemetry=options) as (base, sink):
        _send(base, rec)
        attrs = sink.one().attributes
    final = json.loads(rec.body)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == rec.request_body["model"]
    assert attrs["gen_ai.response.model"] == final["model"]
    assert attrs["gen_ai.response.id"] == final["id"]
    assert attrs["gen_ai.usage.input_tokens"] == final["usage"]["input_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == final["usage"]["output_tokens"]
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == \
        final["usage"]["input_tokens_details"]["cached_tokens"]
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["openai.api.type"] == "responses"


def test_genai_semconv_off_by_default(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    _echo_call(base, {"model": "m", "input": "x"})
    assert not any(k.startswith("gen_ai.") for k in sink.one().attributes)


# -- telemetry never breaks a request -----------------------------------------------------

def test_a_telemetry_bug_is_counted_and_the_response_is_unaffected(
        upstream: RawUpstream, proxy: tuple[str, SpanSink]) -> None:
    from otel_responses.app import create_app
    from otel_responses.config import Settings
    from tests.servers import serve_asgi

    def broken_sink(record: object) -> None:
        raise RuntimeError("boom")

    app = create_app(Settings(upstream=upstream.url + "/v1"), tracer_provider=proxy[1].provider)
    app.sinks = (broken_sink,)
    with serve_asgi(app) as base:
        resp = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                          headers={"x-scenario": "echo"})
        assert resp.status_code == 200
        deadline = time.monotonic() + 2
        while app.telemetry_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert app.telemetry_errors == 1


def _answer_then(after_last_byte: Any) -> Any:
    """An ASGI app that answers `{}` and calls `after_last_byte()` once the last byte is sent."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
        after_last_byte()
    return app


def _call(app: Any) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"model":"m","input":"x"}'}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/responses", "headers": []}
    return app(scope, receive, send)


def test_work_ready_soon_after_the_response_runs_before_the_span_is_built() -> None:
    sink = SpanSink()
    before: list[int] = []

    def after_last_byte() -> None:
        # Stands for the client's next request arriving just after it has this response.
        asyncio.get_running_loop().call_later(FINISH_DELAY / 5,
                                              lambda: before.append(len(sink.spans())))

    app = ResponsesTelemetryMiddleware(_answer_then(after_last_byte),
                                       tracer_provider=sink.provider)
    asyncio.run(_call(app))
    assert before == [0]
    assert len(sink.spans()) == 1


def test_a_call_cancelled_after_its_response_still_ends_its_span() -> None:
    sink = SpanSink()

    async def main() -> None:
        task = asyncio.ensure_future(_call(ResponsesTelemetryMiddleware(
            _answer_then(lambda: task.cancel()), tracer_provider=sink.provider)))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [s.status.status_code for s in sink.spans()] == [StatusCode.OK]


def test_an_endpoint_failing_before_it_answers_is_a_500_on_both_sides(
        upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_responses.proxy.forward import Proxy

    async def broken(self: Proxy, *args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Proxy, "_forward", broken)
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        resp = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"})
        span = sink.one()
    assert resp.status_code == 500
    # The client's 500 went through the telemetry tee, so the span says what the client saw.
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "500"


# -- masking ------------------------------------------------------------------------------

def _masked_span(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                 body: dict[str, Any], scenario: str = "echo") -> dict[str, Any]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        httpx.post(base + "/v1/responses", json=body, headers={"x-scenario": scenario})
        return dict(sink.one().attributes)


def _rich_request() -> dict[str, Any]:
    image = "data:image/png;base64," + "A" * 40_000
    return {
        "model": "m", "instructions": "be secret", "temperature": 0.5,
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hidden words"},
                                         {"type": "input_image", "image_url": image}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":"arg"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "tool says hi"},
        ],
    }


def _keys(attrs: dict[str, Any], part: str) -> list[str]:
    return [k for k in attrs if part in k]


def test_mask_nothing_by_default_but_oversized_images(upstream: RawUpstream,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {}, _rich_request())
    assert "hidden words" in attrs["input.value"] or "hidden words" in json.dumps(attrs)
    images = [attrs[k] for k in _keys(attrs, "image.image.url")]
    assert images == [REDACTED]  # 40,000 > OPENINFERENCE_BASE64_IMAGE_MAX_LENGTH default
    assert "AAAA" not in attrs["input.value"]


def test_oversized_images_are_masked_in_the_genai_messages_too(
        upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch,
                         {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"},
                         _rich_request())
    assert "hidden words" in attrs["gen_ai.input.messages"]
    assert [k for k, v in attrs.items() if "AAAAAAAA" in str(v)] == []


def test_base64_image_max_length(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch,
                         {"OPENINFERENCE_BASE64_IMAGE_MAX_LENGTH": "100000"}, _rich_request())
    images = [attrs[k] for k in _keys(attrs, "image.image.url")]
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,AAAA")


def test_hide_inputs(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_INPUTS": "true"},
                         _rich_request())
    assert attrs["input.value"] == REDACTED
    assert "input.mime_type" not in attrs
    assert not _keys(attrs, "llm.input_messages") and not _keys(attrs, "llm.tools")
    assert "output.value" in attrs


def test_hide_outputs(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = {r.name: r for r in load_recordings()}
    rec = need(recs.get("ruby-openai__simple_text"))
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_OUTPUTS": "true"},
                         rec.request_body, f"replay:{rec.name}")
    assert attrs["output.value"] == REDACTED
    assert "output.mime_type" not in attrs
    assert not _keys(attrs, "llm.output_messages")
    assert attrs["llm.token_count.total"] > 0


def test_hide_input_messages(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_INPUT_MESSAGES": "true"},
                         _rich_request())
    assert not _keys(attrs, "llm.input_messages")
    assert attrs["input.value"] == REDACTED  # it holds the same messages
    assert _keys(attrs, "llm.tools")


def test_hide_output_messages(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = {r.name: r for r in load_recordings()}
    rec = need(recs.get("ruby-openai__simple_text"))
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_OUTPUT_MESSAGES": "true"},
                         rec.request_body, f"replay:{rec.name}")
    assert not _keys(attrs, "llm.output_messages")
    assert attrs["output.value"] == REDACTED  # it holds the same messages
    assert attrs["gen_ai.response.id"] == json.loads(rec.body)["id"]


def test_hide_input_images(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _rich_request()
    body["input"][0]["content"][1]["image_url"] = "https://example.com/cat.png"
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_INPUT_IMAGES": "true"}, body)
    assert not _keys(attrs, "image")
    assert "cat.png" not in attrs["input.value"]
    assert "hidden words" in attrs["input.value"]


def test_hide_input_text_hides_it_everywhere(upstream: RawUpstream,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_INPUT_TEXT": "true"},
                         _rich_request())
    dumped = json.dumps(attrs)
    for secret in ("hidden words", "be secret", "tool says hi", '\\"arg\\"'):
        assert secret not in dumped, secret
    assert attrs["input.value"] == REDACTED
    assert _keys(attrs, "llm.input_messages")  # the messages stay, their text does not


def test_hide_output_text_hides_it_everywhere(upstream: RawUpstream,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    recs = {r.name: r for r in load_recordings()}
    rec = need(recs.get("dd-trace-py__function_call"))
    final = json.loads(rec.body)
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_OUTPUT_TEXT": "true"},
                         rec.request_body, f"replay:{rec.name}")
    call = next(i for i in final["output"] if i["type"] == "function_call")
    assert call["arguments"] not in json.dumps(attrs)
    assert attrs["output.value"] == REDACTED
    assert _keys(attrs, "llm.output_messages")


def test_hide_llm_tools(upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_LLM_TOOLS": "true"},
                         _rich_request())
    assert not _keys(attrs, "llm.tools")
    assert _keys(attrs, "llm.input_messages")


def test_hide_llm_invocation_parameters(upstream: RawUpstream,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch,
                         {"OPENINFERENCE_HIDE_LLM_INVOCATION_PARAMETERS": "true"},
                         _rich_request())
    assert "llm.invocation_parameters" not in attrs
    shown = _masked_span(upstream, monkeypatch,
                         {"OPENINFERENCE_HIDE_LLM_INVOCATION_PARAMETERS": "false"},
                         _rich_request())
    assert json.loads(shown["llm.invocation_parameters"])["temperature"] == 0.5


@pytest.mark.parametrize("name", ["OPENINFERENCE_HIDE_PROMPTS", "OPENINFERENCE_HIDE_CHOICES",
                                  "OPENINFERENCE_HIDE_EMBEDDINGS_VECTORS",
                                  "OPENINFERENCE_HIDE_EMBEDDINGS_TEXT",
                                  "OPENINFERENCE_HIDE_RETRIEVAL_DOCUMENTS"])
def test_completions_only_variables_change_nothing_on_responses_spans(
        name: str, upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _masked_span(upstream, monkeypatch, {name: "false"}, _rich_request())
    hidden = _masked_span(upstream, monkeypatch, {name: "true"}, _rich_request())
    assert set(plain) == set(hidden)
    assert not any(k.startswith(("llm.prompts", "llm.choices", "embedding")) for k in hidden)


def test_invalid_masking_value_keeps_the_default(upstream: RawUpstream,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    attrs = _masked_span(upstream, monkeypatch, {"OPENINFERENCE_HIDE_INPUTS": "yes please"},
                         _rich_request())
    assert attrs["input.value"] != REDACTED


def _record(request: dict[str, Any] | bytes,
            response: dict[str, Any] | None = None) -> CallRecord:
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    return CallRecord(request_raw=raw, request=json.loads(raw), status=200, stream=False,
                      response=response, error=None, outcome=Outcome.COMPLETED, start_ns=1,
                      end_ns=2)


def _write(record: CallRecord, limit: int = 100_000) -> ReadableSpan:
    """The span a SpanWriter makes of ``record`` under an attribute count limit."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=limit))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    writer = SpanWriter(provider.get_tracer("test"), TelemetryOptions(masking=MaskingConfig()))
    span, headers = writer.start([(b"x-user-id", b"u-1")], record.start_ns)
    writer.finish(span, record, headers)
    [written] = exporter.get_finished_spans()
    return written


def _conversation() -> CallRecord:
    items: list[dict[str, Any]] = []
    for i in range(12):
        items += [{"role": "user", "content": f"turn {i}"},
                  {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": f"c{i}", "output": f"out {i}"}]
    request = {"model": "m", "instructions": "be brief", "input": items, "metadata": {"k": "v"},
               "tools": [{"type": "function", "name": f"t{i}", "parameters": {}}
                         for i in range(5)]}
    response = {"id": "resp_1", "model": "m-1", "status": "completed",
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": "done"}]}],
                "usage": {"input_tokens": 90, "output_tokens": 2, "total_tokens": 92}}
    return _record(request, response)


def _expendability(key: str) -> tuple[int, int]:
    """The eviction order spans promise, most expendable highest: input messages oldest first,
    then output messages, tools, output.value, input.value; everything else last."""
    if key.startswith("llm.input_messages."):
        return (5, -int(key.split(".")[2]))
    late = ("input.value", "output.value", "llm.tools.", "llm.output_messages.")
    return next(((rank, 0) for rank, prefix in enumerate(late, 1) if key.startswith(prefix)),
                (0, 0))


def test_attributes_are_set_most_expendable_first() -> None:
    keys = list(_write(_conversation()).attributes)
    assert keys == sorted(keys, key=_expendability, reverse=True)
    assert keys[0] == "llm.input_messages.0.message.role"
    assert keys[-2:] == ["user.id", "metadata"]


@pytest.mark.parametrize("limit", [3, 10, 64])
def test_over_the_count_limit_the_span_keeps_what_the_sdk_would(
        limit: int, caplog: pytest.LogCaptureFixture) -> None:
    full = list(_write(_conversation()).attributes.items())
    assert len(full) > 64
    span = _write(_conversation(), limit=limit)
    assert list(span.attributes.items()) == full[-limit:]
    assert span.dropped_attributes == len(full) - limit
    if {"openinference.span.kind", "llm.system"} <= dict(full[-limit:]).keys():
        # The attributes set at start are kept: the SDK has nothing to evict (and log) itself.
        assert not [r for r in caplog.records if "dict is full" in r.getMessage()]


def test_a_sampled_out_call_still_chains_its_session() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # parent-based: an unsampled caller's calls are not recorded
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    writer = SpanWriter(provider.get_tracer("test"), TelemetryOptions(masking=MaskingConfig()))
    unsampled = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")]
    first = _record({"model": "m", "input": "a"}, {"id": "resp_a", "status": "completed"})
    span, headers = writer.start(unsampled, 1)
    assert not span.is_recording()
    writer.finish(span, first, headers)
    second = _record({"model": "m", "input": "b", "previous_response_id": "resp_a"},
                     {"id": "resp_b", "status": "completed"})
    span, headers = writer.start([], 1)
    writer.finish(span, second, headers)
    [recorded] = exporter.get_finished_spans()
    assert recorded.attributes["session.id"] == "resp_a"


def test_input_value_is_the_request_as_sent_when_it_holds_no_image() -> None:
    raw = b'{ "model": "m",\n  "input": "caf\\u00e9 \\"q\\"" }'
    assert _write(_record(raw)).attributes["input.value"] == raw.decode()


def _disguised(how: str) -> bytes:
    raw = json.dumps(_rich_request())
    if how == "escaped letter":
        return raw.replace('"input_image"', '"\\u0069nput_image"').encode()
    if how == "escaped underscore":
        return raw.replace('"input_image"', '"input\\u005Fimage"').encode()
    return raw.encode(how)  # json.loads reads UTF-16 and UTF-32 too


@pytest.mark.parametrize("how", ["escaped letter", "escaped underscore", "utf-16",
                                 "utf-16-le", "utf-32-be"])
def test_a_disguised_input_image_is_masked_all_the_same(how: str) -> None:
    raw = _disguised(how)
    assert b"input_image" not in raw
    value = _write(_record(raw)).attributes["input.value"]
    assert json.loads(value)["input"][0]["content"][1]["image_url"] == REDACTED
    assert "AAAA" not in value


def test_mask_without_hide_variables_gives_what_the_full_rules_give() -> None:
    big = "data:image/png;base64," + "A" * 40_000
    request = _rich_request()
    request["input"].append({"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        {"type": "input_image", "image_url": "https://example.com/" + "a" * 40_000}]})
    generated = {"id": "r", "status": "completed",  # → output.images.0.image.url
                 "output": [{"type": "image_generation_call", "id": "ig", "result": big}]}
    attrs = {**request_attributes(request), **response_attributes(generated),
             "input.images.0.image.url": big, "other.text": big,
             "llm.input_messages.9.message.contents.0.message_content.image.image.url": 7}
    for cfg in (MaskingConfig(), MaskingConfig(base64_image_max_length=10)):
        # A completions-only variable hides nothing on these spans but forces the full rules.
        full_rules = MaskingConfig(hide_prompts=True,
                                   base64_image_max_length=cfg.base64_image_max_length)
        assert not cfg.hides_anything and full_rules.hides_anything
        assert list(mask(attrs, cfg).items()) == list(mask(attrs, full_rules).items())
    assert REDACTED in mask(attrs, MaskingConfig()).values()


def test_attribute_values_are_capped(upstream: RawUpstream) -> None:
    with traced_proxy(upstream.url + "/v1",
                      telemetry=TelemetryOptions(max_attribute_length=500)) as (base, sink):
        _echo_call(base, {"model": "m", "input": "w" * 5000})
        attrs = sink.one().attributes
    assert len(attrs["input.value"]) == 500
    assert attrs["input.value"].endswith("[truncated]")


# -- the openai SDK as client, against the demo upstream ----------------------------------

def test_openai_sdk_stream_through_traced_proxy_to_demo(proxy: tuple[str, SpanSink]) -> None:
    from otel_responses.demo.app import create_demo_app
    from tests.servers import serve_asgi

    with serve_asgi(create_demo_app()) as demo, traced_proxy(demo + "/v1") as (base, sink):
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-secret-key", max_retries=0)
        with client.responses.stream(model="demo", input="hello telemetry") as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        span = sink.one()
    attrs = span.attributes
    assert text == final.output_text
    outputs = indexed(attrs, "llm.output_messages")
    assert message_text(outputs[0]) == text
    assert attrs["llm.token_count.completion"] == final.usage.output_tokens
    assert attrs["llm.token_count.prompt"] == final.usage.input_tokens
    assert "sk-secret-key" not in json.dumps(dict(attrs))


# -- stream endings the recordings lack: failed, error event, cut after deltas --------------

def _sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def _text_events(text: str, seq: int = 0) -> list[dict[str, Any]]:
    snapshot = {"id": "resp_syn", "object": "response", "model": "syn-model",
                "status": "in_progress", "output": [], "usage": None}
    item = {"id": "msg_syn", "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        {"type": "response.created", "sequence_number": seq, "response": snapshot},
        {"type": "response.output_item.added", "sequence_number": seq + 1, "output_index": 0,
         "item": item},
        {"type": "response.content_part.added", "sequence_number": seq + 2, "output_index": 0,
         "item_id": "msg_syn", "content_index": 0, "part": part},
        *({"type": "response.output_text.delta", "sequence_number": seq + 3 + i,
           "output_index": 0, "item_id": "msg_syn", "content_index": 0, "delta": word}
          for i, word in enumerate(text.split("|"))),
    ]


def _synthetic(upstream: RawUpstream, name: str, body: str) -> Recording:
    rec = Recording(name=name, request_method="POST", request_path="/v1/responses",
                    request_headers={}, request_body={"model": "syn", "input": "hi",
                                                      "stream": True},
                    status=200, headers={"Content-Type": "text/event-stream"}, body=body)
    upstream.recordings[name] = rec
    return rec


def test_failed_stream_records_error_and_usage(upstream: RawUpstream,
                                               proxy: tuple[str, SpanSink]) -> None:
    failed = {"id": "resp_syn", "object": "response", "model": "syn-model", "status": "failed",
              "output": [], "error": {"code": "server_error", "message": "model crashed"},
              "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}}
    events = _text_events("Hel|lo")
    body = _sse(*events, {"type": "response.failed", "sequence_number": len(events),
                          "response": failed})
    base, sink = proxy
    _send(base, _synthetic(upstream, "syn_failed", body))
    span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "response.failed: server_error: model crashed"
    assert span.attributes["error.type"] == "server_error"
    assert span.attributes["llm.token_count.total"] == 9
    assert span.attributes["llm.finish_reason"] == "error"
    assert [e.name for e in span.events] == ["First Token Stream Event", "response.failed"]


def test_error_event_keeps_the_partial_output(upstream: RawUpstream,
                                              proxy: tuple[str, SpanSink]) -> None:
    events = _text_events("Partial| answer")
    body = _sse(*events, {"type": "error", "sequence_number": len(events),
                          "code": "rate_limit_exceeded", "message": "slow down", "param": None})
    base, sink = proxy
    _send(base, _synthetic(upstream, "syn_error_event", body))
    span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "error event: rate_limit_exceeded: slow down"
    outputs = indexed(span.attributes, "llm.output_messages")
    assert message_text(outputs[0]) == "Partial answer"


@pytest.mark.parametrize("cut_after", [1, 3, 4])
def test_cut_stream_records_the_deltas_received(upstream: RawUpstream,
                                                proxy: tuple[str, SpanSink],
                                                cut_after: int) -> None:
    words = ["One", " two", " three", " four"]
    events = _text_events("|".join(words))
    body = _sse(*events[:3 + cut_after])
    # A clean end of bytes with no terminal event: the upstream stopped mid-response.
    base, sink = proxy
    _send(base, _synthetic(upstream, f"syn_cut_{cut_after}", body))
    span = sink.one()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "upstream_cut"
    outputs = indexed(span.attributes, "llm.output_messages")
    assert message_text(outputs[0]) == "".join(words[:cut_after])


# -- provider ------------------------------------------------------------------------------

def test_provider_is_inferred_from_the_host_or_set_by_flag(upstream: RawUpstream) -> None:
    from otel_responses.telemetry.options import infer_provider

    assert infer_provider("api.openai.com") == "openai"
    assert infer_provider("my-res.openai.azure.com") == "azure"
    assert infer_provider("127.0.0.1") is None
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        _echo_call(base, {"model": "m", "input": "x"})
        assert "llm.provider" not in sink.one().attributes
    options = TelemetryOptions(provider="ollama")
    with traced_proxy(upstream.url + "/v1", telemetry=options) as (base, sink):
        _echo_call(base, {"model": "m", "input": "x"})
        assert sink.one().attributes["llm.provider"] == "ollama"


def test_session_header_list_first_present_wins(proxy: tuple[str, SpanSink]) -> None:
    base, sink = proxy
    _echo_call(base, {"model": "m", "input": "x"}, **{"session-id": "codex-thread"})
    assert sink.one().attributes["session.id"] == "codex-thread"
    sink.clear()
    _echo_call(base, {"model": "m", "input": "x"},
               **{"session-id": "second", "x-session-id": "first"})
    assert sink.one().attributes["session.id"] == "first"
