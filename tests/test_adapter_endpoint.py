"""Adapter mode over real sockets: the openai SDK → the proxy (``--upstream-api chat``) → a Chat
Completions upstream: the demo, every recorded chat exchange replayed, and a misbehaving one."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import zstandard
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_responses.demo.app import create_demo_app, get_observer
from tests.adapter_checks import (
    check_stream,
    expected_status,
    expected_summary,
    expected_usage,
    output_summary,
    responses_body,
    usage_triple,
    validate_response,
)
from tests.e2e import SIGNATURE
from tests.faults import Fault, FaultUpstream, poll
from tests.recordings import (
    CHAT_DIR,
    Recording,
    chat_outcome,
    load_recordings,
    need,
    recordings_params,
    sse_payloads,
)
from tests.servers import free_port, serve_asgi
from tests.spans import SpanSink, indexed, message_text, tool_calls, traced_proxy
from tests.upstreams import RawUpstream

UPSTREAM_API = "otel_responses.upstream.api"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
TIME = {"type": "function", "name": "get_time", "description": "Time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[str, SpanSink]]:
    """The proxy in chat mode in front of the demo upstream's /v1/chat/completions."""
    with serve_asgi(create_demo_app()) as upstream, \
            traced_proxy(upstream + "/v1", upstream_api="chat") as (base, sink):
        yield base, sink


@pytest.fixture(scope="module")
def replay() -> Iterator[RawUpstream]:
    raw = RawUpstream.replaying(*load_recordings(CHAT_DIR), seed=3)
    with raw.running():
        yield raw


@pytest.fixture(scope="module")
def replayed(replay: RawUpstream) -> Iterator[tuple[str, SpanSink]]:
    with traced_proxy(replay.url + "/v1", upstream_api="chat", read_timeout=2.0) as served:
        yield served


def _client(base: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=30,
                         default_headers=headers or None)


def _raw_events(base: str, body: dict[str, Any], **headers: str) -> list[dict[str, Any]]:
    """A streamed call's events as sent, parsed plainly (not by the SDK)."""
    response = httpx.post(base + "/v1/responses", json={**body, "stream": True},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.text)


def _span(sink: SpanSink) -> dict[str, Any]:
    """The one span of the call just made (then forgotten), as its attributes."""
    span: ReadableSpan = sink.one()
    sink.clear()
    return dict(span.attributes or {}) | {"_status": span.status.status_code,
                                           "_events": [e.name for e in span.events]}


# -- the demo upstream ---------------------------------------------------------------------------

def test_non_stream_call_over_the_demo(demo: tuple[str, SpanSink]) -> None:
    base, sink = demo
    sink.clear()
    with _client(base) as client:
        response = client.responses.create(model="demo", input="hello there",
                                           instructions="Answer briefly.")
    validate_response(response.model_dump(mode="json"))
    assert response.id.startswith("resp_") and response.status == "completed"
    assert SIGNATURE in response.output_text
    assert response.instructions == "Answer briefly."
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    attrs = _span(sink)
    assert attrs[UPSTREAM_API] == "chat"
    assert attrs["llm.token_count.total"] == usage.total_tokens
    (out,) = indexed(attrs, "llm.output_messages")
    assert message_text(out) == response.output_text
    assert attrs["_status"] is StatusCode.OK


def test_strict_stream_helper_over_the_demo(demo: tuple[str, SpanSink]) -> None:
    base, sink = demo
    sink.clear()
    with _client(base) as client, client.responses.stream(model="demo",
                                                          input="hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == final.output_text
    assert SIGNATURE in final.output_text
    attrs = _span(sink)
    assert attrs["llm.token_count.completion"] == final.usage.output_tokens  # type: ignore[union-attr]
    assert "First Token Stream Event" in attrs["_events"]
    assert "response.completed" in attrs["_events"]


def test_parallel_tool_calls_stream_as_separate_items(demo: tuple[str, SpanSink]) -> None:
    base, sink = demo
    body = {"model": "demo", "input": "Use get_weather and get_time for Paris",
            "tools": [WEATHER, TIME]}
    events = _raw_events(base, body)
    final = check_stream(events)
    calls = [item for item in final["output"] if item["type"] == "function_call"]
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["call_id"] for c in calls}) == 2
    sink.wait(1)  # the raw call's span, finished just after its last byte, then forgotten
    sink.clear()
    with _client(base) as client:
        kinds = [e.type for e in client.responses.create(**body, stream=True)]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.function_call_arguments.done") == 2
    attrs = _span(sink)
    names = [name for out in indexed(attrs, "llm.output_messages")
             for name, _ in tool_calls(out)]
    assert names == ["get_weather", "get_time"]


# -- every recorded chat exchange, replayed as the upstream ---------------------------------------

@pytest.mark.parametrize("rec", recordings_params(folder=CHAT_DIR))
def test_recorded_exchange_through_the_adapter(rec: Recording | None, replay: RawUpstream,
                                               replayed: tuple[str, SpanSink]) -> None:
    rec = need(rec, CHAT_DIR)
    base, sink = replayed
    body = responses_body(rec.request_body)
    scenario = {"x-scenario": f"replay:{rec.name}"}
    sink.clear()
    if rec.status >= 400:
        response = httpx.post(base + "/v1/responses", json=body, headers=scenario, timeout=30)
        assert response.status_code == rec.status
        error = response.json()["error"]
        assert error["message"] == json.loads(rec.body)["error"]["message"]
        assert _span(sink)["error.type"] == str(rec.status)
        return
    outcome = chat_outcome(rec)
    status, reason = expected_status(outcome)
    if body["stream"]:
        final = check_stream(_raw_events(base, body, **scenario))
    else:
        with _client(base, **scenario) as client:
            final = client.responses.create(**body).model_dump(mode="json")
    assert replay.seen[-1].target == "/v1/chat/completions"
    assert json.loads(replay.seen[-1].body).get("stream", False) is body["stream"]
    assert (final["status"], (final["incomplete_details"] or {}).get("reason")) == (status,
                                                                                     reason)
    assert output_summary(final) == expected_summary(outcome)
    assert usage_triple(final) == expected_usage(outcome)
    attrs = _span(sink)
    assert attrs[UPSTREAM_API] == "chat"
    assert attrs.get("llm.token_count.total") == (usage_triple(final) or [None])[-1]
    if not rec.is_sse:  # a stream asked of a server that answers JSON: streamed at once
        streamed = check_stream(_raw_events(base, body, **scenario))
        assert output_summary(streamed) == output_summary(final)
        assert (streamed["status"], usage_triple(streamed)) == (status, usage_triple(final))
        _span(sink)
    elif body["stream"] and status == "completed":
        # The strict helper consumes the same stream.
        sink.clear()
        with _client(base, **scenario) as client, client.responses.stream(**{
                k: v for k, v in body.items() if k != "stream"}) as stream:
            assert stream.get_final_response().output_text == outcome.text
        _span(sink)
    elif status == "failed":  # the SDK raises the stream's error event
        with _client(base, **scenario) as client, pytest.raises(openai.APIError):
            list(client.responses.create(**body))
        assert _span(sink)["_status"] is StatusCode.ERROR


# -- upstream faults -----------------------------------------------------------------------------

STREAMED = "pydantic-ai__stream_text_include_usage"


def test_upstream_error_status_and_message_are_kept() -> None:
    upstream = FaultUpstream()
    with upstream.running(), traced_proxy(upstream.url + "/v1", upstream_api="chat") as (
            base, sink):
        response = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                              headers={"x-fault": Fault("error", status=503).header()})
        attrs = _span(sink)
    assert response.status_code == 503
    assert response.json() == {"error": {"message": "upstream says 503", "type": "server_error",
                                         "param": None, "code": "e503"}}
    assert attrs["error.type"] == "503" and attrs[UPSTREAM_API] == "chat"


def test_max_completion_tokens_refused_is_retried_once_as_max_tokens(
        replay: RawUpstream, replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    sink.clear()
    seen = len(replay.seen)
    with _client(base, **{"x-scenario": f"no-max-completion-tokens:{STREAMED}"}) as client, \
            client.responses.stream(model="m", input="x", max_output_tokens=50) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text
    first, second = (json.loads(r.body) for r in replay.seen[seen:])
    assert first["max_completion_tokens"] == 50 and "max_tokens" not in first
    assert second["max_tokens"] == 50 and "max_completion_tokens" not in second
    assert final.max_output_tokens == 50
    attrs = _span(sink)  # one span for the call, however many upstream requests it took
    assert attrs["otel_responses.adapter.max_tokens_retry"] is True


def test_a_stream_cut_mid_way_fails_and_ends_cleanly(replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    sink.clear()
    events = _raw_events(base, {"model": "m", "input": "x"}, **{"x-scenario": f"cut:{STREAMED}"})
    final = check_stream(events)  # the body ended cleanly: it parsed whole, a terminal last
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    assert events[-2]["code"] == "upstream_cut"
    assert any(e["type"] == "response.output_text.delta" for e in events)  # sent before the cut
    attrs = _span(sink)
    assert attrs["_status"] is StatusCode.ERROR and "response.failed" in attrs["_events"]


def test_each_delta_is_sent_as_soon_as_its_chunk_arrives(replay: RawUpstream,
                                                         replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    replay.release.clear()
    lines = []
    with httpx.stream("POST", base + "/v1/responses", headers={"x-scenario": f"hold:{STREAMED}"},
                      json={"model": "m", "input": "x", "stream": True}, timeout=10) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == "event: response.output_text.delta" and not replay.release.is_set():
                # The upstream holds the second half of its stream: this delta came from the
                # first half, passed on without waiting for more. Now let the rest come.
                replay.release.set()
    final = check_stream(sse_payloads("\n".join(lines) + "\n"))
    # Released only by a delta that came while the upstream held back: the stream completed.
    assert final["status"] == "completed" and replay.release.is_set()
    _span(sink)


def test_an_undecodable_upstream_stream_fails_cleanly(replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    sink.clear()
    events = _raw_events(base, {"model": "m", "input": "x"},
                         **{"x-scenario": f"replay:{STREAMED}", "x-compress": "corrupt"})
    check_stream(events)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_invalid_response"
    _span(sink)


def test_unreachable_and_stalled_upstreams_answer_502_and_504(replay: RawUpstream) -> None:
    with traced_proxy(f"http://127.0.0.1:{free_port()}/v1", upstream_api="chat") as (base, _):
        response = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    with traced_proxy(replay.url + "/v1", upstream_api="chat", read_timeout=0.3) as (base, _):
        response = httpx.post(base + "/v1/responses", json={"model": "m", "input": "x"},
                              headers={"x-scenario": "stall"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_client_disconnect_closes_the_upstream_stream(replay: RawUpstream,
                                                      replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    ended = len(replay.closed_at)
    with httpx.stream("POST", base + "/v1/responses", headers={"x-scenario": "drip"},
                      json={"model": "m", "input": "x", "stream": True}) as response:
        first = next(response.iter_lines())
        assert first == "event: response.created"
    # The upstream drips on forever: only the client's leaving can have ended it.
    assert poll(lambda: len(replay.closed_at) > ended, 5)
    sink.wait(1)
    sink.clear()


# -- request bodies ------------------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_compressed_request_bodies_are_decoded(coding: str, replay: RawUpstream,
                                               replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    sink.clear()
    plain = json.dumps({"model": "m", "input": "compressed hello", "stream": True}).encode()
    data = gzip.compress(plain) if coding == "gzip" else zstandard.compress(plain)
    response = httpx.post(base + "/v1/responses", content=data, timeout=30, headers={
        "content-type": "application/json", "content-encoding": coding,
        "x-scenario": f"replay:{STREAMED}"})
    assert response.status_code == 200, response.text
    check_stream(sse_payloads(response.text))
    sent = replay.seen[-1]
    assert sent.header("content-encoding") is None
    assert json.loads(sent.body)["messages"] == [{"role": "user", "content": "compressed hello"}]
    (message,) = indexed(_span(sink), "llm.input_messages")
    assert message_text(message) == "compressed hello"


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b'{"model": "m"}', "input"),
    (b'{"model": "m", "input": "x", "tools": [{"type": "web_search"}]}', "tools[0]"),
])
def test_bad_requests_get_an_openai_400_and_never_go_upstream(body: bytes, param: str | None,
                                                              replay: RawUpstream) -> None:
    seen = len(replay.seen)
    with traced_proxy(replay.url + "/v1", upstream_api="chat",
                      unsupported_tools="error") as (base, sink):
        response = httpx.post(base + "/v1/responses", content=body,
                              headers={"content-type": "application/json"})
        attrs = _span(sink)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert len(replay.seen) == seen
    assert attrs["error.type"] == "400"


def test_dropped_built_in_tools_are_recorded_on_the_span(replay: RawUpstream,
                                                         replayed: tuple[str, SpanSink]) -> None:
    base, sink = replayed
    sink.clear()
    with _client(base, **{"x-scenario": f"replay:{STREAMED}"}) as client:
        client.responses.create(model="m", input="x", tools=[{"type": "web_search"}, WEATHER])
    sent = json.loads(replay.seen[-1].body)
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    attrs = _span(sink)
    assert list(attrs["otel_responses.adapter.dropped_tools"]) == ["web_search"]


def test_other_paths_are_still_forwarded_verbatim(replay: RawUpstream,
                                                  replayed: tuple[str, SpanSink]) -> None:
    base, _ = replayed
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    response = httpx.post(base + "/v1/chat/completions", content=body,
                          headers={"x-scenario": "echo", "content-type": "application/json"})
    echo = response.json()
    assert (echo["method"], echo["target"]) == ("POST", "/v1/chat/completions")
    assert base64.b64decode(echo["body_b64"]) == body


def test_adapted_calls_feed_the_same_metrics_as_pass_through(
        demo: tuple[str, SpanSink]) -> None:
    base, sink = demo
    before = _metrics(base)
    with _client(base) as client:
        client.responses.create(model="demo", input="hello there")
        with client.responses.stream(model="demo", input="hello there") as stream:
            stream.get_final_response()
    sink.wait(2)
    sink.clear()
    calls = 'otel_responses_requests_total{method="POST",route="responses.create",' \
            'status_class="2xx"}'

    def added(start: str, *having: str) -> float:
        return sum(v - before.get(k, 0) for k, v in _metrics(base).items()
                   if k.startswith(start) and all(h in k for h in having))

    # Metrics are recorded just after each span ends: wait for the second call's.
    assert poll(lambda: added("gen_ai_client_token_usage_count", 'gen_ai_token_type="output"',
                              'gen_ai_response_model="demo"') == 2, 5)
    assert added(calls) == 2
    assert added("gen_ai_client_operation_time_to_first_chunk_seconds_count",
                 'stream="true"') == 1


def _metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("key", [None, "sk-upstream"])
def test_upstream_auth_is_the_clients_key_or_the_proxys(key: str | None,
                                                        replay: RawUpstream) -> None:
    with traced_proxy(replay.url + "/v1", upstream_api="chat", upstream_api_key=key) as (
            base, sink), _client(base, **{"x-scenario": f"replay:{STREAMED}"}) as client:
        client.responses.create(model="m", input="x")
        sink.wait(1)
    sent = replay.seen[-1]
    assert sent.header("authorization") == f"Bearer {key or 'sk-test'}"
    assert sent.header("content-type") == "application/json"
    assert sent.target == "/v1/chat/completions"


# -- the Responses routes a chat server has no operation for ---------------------------------

@pytest.mark.parametrize("store", ["none", "memory"])
def test_routes_a_chat_server_cannot_serve_are_answered_not_forwarded(
        upstream: RawUpstream, store: str) -> None:
    """input_tokens, compact and cancel get a clear 400; with nothing stored, the retrieval
    routes a 404 saying so. None of them reaches the chat server."""
    before = len(upstream.seen)
    with traced_proxy(upstream.url + "/v1", upstream_api="chat", store=store) as (base, _):
        sdk = _client(base)
        for path in ("/responses/input_tokens", "/responses/compact",
                     "/responses/resp_1/cancel"):
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.post(path, cast_to=httpx.Response, body={"model": "m", "input": "x"})
            assert caught.value.code == "unsupported_in_adapter_mode", path
            assert "Chat Completions" in caught.value.message
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.responses.retrieve("resp_1")
        assert missing.value.param == "response_id"
        assert ("--store none" in missing.value.message) == (store == "none")
        for call in (lambda: sdk.responses.delete("resp_1"),
                     lambda: sdk.responses.input_items.list("resp_1")):
            with pytest.raises(openai.NotFoundError):
                call()
    assert len(upstream.seen) == before


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_escape_is_passed_on_as_sent(stream: bool) -> None:
    """``\\ud800`` is valid JSON but no character: it cannot be written as UTF-8, so the
    adapter keeps it escaped, in the chat request, the stored response and its replay."""
    demo = create_demo_app()
    with serve_asgi(demo) as upstream, \
            traced_proxy(upstream + "/v1", upstream_api="chat", store="memory") as (base, _):
        body = b'{"model":"demo","input":"hi \\ud800 there","stream":%s}' % (
            b"true" if stream else b"false")
        reply = httpx.post(base + "/v1/responses", content=body, timeout=30,
                           headers={"content-type": "application/json"})
        assert reply.status_code == 200, reply.text
        final = sse_payloads(reply.text)[-1]["response"] if stream else reply.json()
        stored = httpx.get(f"{base}/v1/responses/{final['id']}/input_items", timeout=30)
        assert stored.status_code == 200, stored.text
        (sent,) = [r for r in get_observer(demo).requests if r.path == "/v1/chat/completions"]
    assert b"\\ud800" in sent.body
    assert sent.json()["messages"][-1]["content"] == "hi \ud800 there"
    assert stored.json()["data"][0]["content"][0]["text"] == "hi \ud800 there"
