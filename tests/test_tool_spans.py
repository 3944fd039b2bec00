"""TOOL spans through the proxy, over real sockets: one per tool call the upstream ran, under
the call's LLM span and timed by its stream; failed and cut calls; masking; span links across
an agent loop; the tool metrics; and the OTLP bytes of children and links."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_responses.demo.app import create_demo_app
from otel_responses.telemetry.metrics import ProxyMetrics
from otel_responses.telemetry.middleware import ResponsesTelemetryMiddleware
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.otlp import encode_spans
from tests.recordings import (
    Recording,
    final_response,
    load_recordings,
    need,
    recordings_params,
    sse_payloads,
)
from tests.servers import serve_asgi
from tests.spans import SpanSink, indexed, traced_proxy
from tests.test_metrics import metered_proxy, send, value, wait_for
from tests.test_tool_calls import (
    MCP_REQUEST,
    MCP_RESPONSE,
    MIXED_RESPONSE,
    SERVER_TOOLS,
    SHELL_OUTPUT,
    message_events,
    tool_events,
)
from tests.upstreams import RawUpstream

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
MCP = Recording(name="synthetic__mcp", request_method="POST", request_path="/v1/responses",
                request_headers={}, request_body=MCP_REQUEST, status=200,
                headers={"content-type": "application/json"}, body=json.dumps(MCP_RESPONSE))


def _with_server_tools(rec: Recording) -> bool:
    return any(f'"{kind}"' in rec.body for kind in SERVER_TOOLS)


def _cut_in_the_search(rec: Recording) -> Recording:
    """``rec``'s stream up to its web search's ``in_progress`` event: the search never ends."""
    blocks = rec.body.replace("\r\n", "\n").split("\n\n")
    at = next(i for i, b in enumerate(blocks) if '"response.web_search_call.in_progress"' in b)
    return replace(rec, name=rec.name + "__cut", body="\n\n".join(blocks[:at + 1]) + "\n\n")


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    recordings = load_recordings()
    cut = [_cut_in_the_search(r) for r in recordings if r.name == "mirascope__stream_web_search"]
    raw = RawUpstream(recordings={r.name: r for r in [*recordings, *cut, MCP]}, seed=7)
    with raw.running():
        yield raw


def _kind(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get("openinference.span.kind")


def _llm_and_tools(sink: SpanSink, tools: int) -> tuple[ReadableSpan, list[ReadableSpan]]:
    spans = sink.wait(1 + tools)
    assert len(spans) == 1 + tools
    (llm,) = [s for s in spans if _kind(s) == "LLM"]
    children = [s for s in spans if _kind(s) == "TOOL"]
    for child in children:
        assert child.parent is not None and child.parent.span_id == llm.context.span_id
        assert child.context.trace_id == llm.context.trace_id
        assert child.kind == SpanKind.INTERNAL
        assert llm.start_time <= child.start_time <= child.end_time <= llm.end_time
    return llm, sorted(children, key=lambda s: s.attributes["tool.id"])


def _first_delta_after(rec: Recording, item_id: str) -> bool:
    """Whether the recorded stream's first content delta comes after the tool completed."""
    kinds = [(e.get("type", ""), e.get("item_id")) for e in sse_payloads(rec.body)]
    done = next(i for i, (t, who) in enumerate(kinds) if t.endswith("_call.completed")
                and who == item_id)
    return all(not t.endswith(".delta") for t, _ in kinds[:done + 1])


def _recorded(rec: Recording | None) -> tuple[Recording, dict[str, Any]]:
    """The recording of a parametrized test and the Response it ends with."""
    rec = need(rec)
    final = final_response(rec)
    assert final is not None
    return rec, final


@pytest.mark.parametrize("rec", recordings_params(_with_server_tools))
def test_each_server_tool_call_is_a_tool_span_under_the_llm_span(
        rec: Recording | None, upstream: RawUpstream) -> None:
    rec, final = _recorded(rec)
    tools = sorted((i for i in final["output"] if i["type"] in SERVER_TOOLS),
                   key=lambda i: i["id"])
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        assert send(base, rec).status_code == 200
        llm, children = _llm_and_tools(sink, len(tools))
    first_token = [e.timestamp for e in llm.events if e.name == "First Token Stream Event"]
    for child, item in zip(children, tools, strict=True):
        attrs = child.attributes
        assert (child.name, attrs["tool.name"], attrs["tool.id"]) == (
            item["type"], item["type"], item["id"])
        assert child.status.status_code == StatusCode.OK
        assert "error.type" not in attrs
        assert not [k for k in attrs if k.startswith("gen_ai.")]  # not opted in
        assert attrs["session.id"] == llm.attributes["session.id"]
        assert json.loads(attrs["input.value"])
        if rec.is_sse and _first_delta_after(rec, item["id"]):
            assert child.end_time <= first_token[0]  # searched, then wrote
        if not rec.is_sse:  # no events to time it by: the whole call
            assert (child.start_time, child.end_time) == (llm.start_time, llm.end_time)
    # The LLM span's output messages are what the model said: never a tool's call or payload.
    said = indexed(llm.attributes, "llm.output_messages")
    spoken = [i for i in final["output"] if i["type"] in ("message", "reasoning")]
    assert len(said) == len(spoken)
    assert not [k for m in said for k in m if k.startswith("message.tool_calls")]


CLIENT_CALLS = ("function_call", "custom_tool_call")


def _with_client_calls(rec: Recording) -> bool:
    return rec.status == 200 and any(f'"{kind}"' in rec.body for kind in CLIENT_CALLS)


@pytest.mark.parametrize("rec", recordings_params(_with_client_calls))
def test_calls_handed_to_the_client_stay_tool_calls_of_the_llm_span(
        rec: Recording | None, upstream: RawUpstream) -> None:
    rec, final = _recorded(rec)
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        assert send(base, rec).status_code == 200
        llm = sink.one()
        assert [s.name for s in sink.spans() if _kind(s) == "TOOL"] == []  # ended first
    said = indexed(llm.attributes, "llm.output_messages")
    asked = [m["message.tool_calls.0.tool_call.id"] for m in said
             if "message.tool_calls.0.tool_call.id" in m]
    assert asked == [i["call_id"] for i in final["output"] if i["type"] in CLIENT_CALLS]
    assert asked


def test_a_cut_stream_ends_its_open_tool_call_with_error(upstream: RawUpstream) -> None:
    (rec,) = [r for r in upstream.recordings.values() if r.name.endswith("__cut")]
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        assert send(base, rec).status_code == 200
        llm, (child,) = _llm_and_tools(sink, 1)
    assert llm.status.status_code == child.status.status_code == StatusCode.ERROR
    assert child.attributes["error.type"] == "incomplete"
    assert child.end_time == llm.end_time
    assert child.start_time < child.end_time


def test_mcp_calls_failed_or_not_and_masking(upstream: RawUpstream,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with traced_proxy(upstream.url + "/v1") as (base, sink):
        assert send(base, MCP).status_code == 200
        _, (call, failed, listing) = _llm_and_tools(sink, 3)  # the approval request: none
    assert [s.name for s in (call, failed, listing)] == ["wiki.ask", "wiki.ask", "mcp_list_tools"]
    assert call.attributes["tool.description"] == "Ask the wiki."
    assert call.attributes["output.value"] == "Otters hold hands."
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "mcp_call failed: Server unreachable"
    assert call.status.status_code == listing.status.status_code == StatusCode.OK

    for hidden, kept in (("INPUTS", "output.value"), ("OUTPUTS", "input.value")):
        monkeypatch.setenv(f"OPENINFERENCE_HIDE_{hidden}", "true")
        with traced_proxy(upstream.url + "/v1") as (base, sink):
            assert send(base, MCP).status_code == 200
            _, (call, failed, _) = _llm_and_tools(sink, 3)
        monkeypatch.delenv(f"OPENINFERENCE_HIDE_{hidden}")
        masked = "input.value" if hidden == "INPUTS" else "output.value"
        assert {k for k, v in call.attributes.items() if v == "__REDACTED__"} == {masked}
        assert call.attributes[kept] != "__REDACTED__"
        # The listing's description and schema are the tools' definitions: hidden as inputs.
        assert ("tool.parameters" in call.attributes) == (hidden == "OUTPUTS")
        assert failed.status.description == "mcp_call failed"  # the message may echo content


def _demo_call(base: str, sink: SpanSink, body: dict[str, Any]) -> tuple[Any, ReadableSpan]:
    before = len(sink.spans())
    response = httpx.post(base + "/v1/responses", json={"model": "demo", **body}, timeout=10)
    assert response.status_code == 200
    return response.json(), sink.wait(before + 1)[before]


def test_a_function_output_links_its_span_to_the_span_that_asked() -> None:
    """An agent loop, stateless as the Agents SDK runs it: each turn resends the history."""
    with serve_asgi(create_demo_app()) as demo, \
            metered_proxy(demo + "/v1") as (base, sink, _):
        history: list[Any] = [{"role": "user", "content": "Call get_weather for Oslo"}]
        first, asking = _demo_call(base, sink, {"input": history, "tools": [WEATHER_TOOL]})
        (call,) = first["output"]
        history += [call, {"type": "function_call_output", "call_id": call["call_id"],
                           "output": "Sunny"}]
        second, answering = _demo_call(base, sink, {"input": history, "tools": [WEATHER_TOOL]})
        history += [*second["output"], {"role": "user", "content": "Thanks"}]
        _, later = _demo_call(base, sink, {"input": history})
        other, unrelated = _demo_call(base, sink, {"input": "An unrelated question"})
        samples = wait_for(base, lambda s: value(s, "otel_responses_tool_calls_total") >= 1)
        spans = sink.spans()
    (link,) = answering.links
    assert link.context == asking.context
    assert link.attributes["openai.tool_call.ids"] == (call["call_id"],)
    assert not asking.links and not later.links  # the answer resent later links no more
    # One session for the whole loop, named after its first response (no header, no chain):
    # the answer continues the asking call's session, and so does the turn resending it.
    assert [s.attributes["session.id"] for s in (asking, answering, later)] == [first["id"]] * 3
    assert unrelated.attributes["session.id"] == other["id"] != first["id"]
    assert value(samples, "otel_responses_tool_calls_total", type="function_call",
                 status="completed") == 1

    # Our OTLP bytes are the SDK encoder's, and carry the link.
    assert encode_spans(spans) == sdk_encode(spans).SerializeToString()
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    (exported,) = [s for rs in decoded.resource_spans for ss in rs.scope_spans for s in ss.spans
                   if s.span_id == answering.context.span_id.to_bytes(8, "big")]
    assert [(x.trace_id, x.span_id) for x in exported.links] == [(
        asking.context.trace_id.to_bytes(16, "big"), asking.context.span_id.to_bytes(8, "big"))]


def test_tool_metrics_and_the_otlp_bytes_of_tool_spans(upstream: RawUpstream) -> None:
    recordings = [r for r in upstream.recordings.values() if _with_server_tools(r)
                  and r.status == 200]
    with metered_proxy(upstream.url + "/v1") as (base, sink, _):
        for rec in recordings:
            assert send(base, rec).status_code == 200
        expected = {rec.name: [i for i in (final_response(rec) or {"output": []})["output"]
                               if i["type"] in SERVER_TOOLS] for rec in recordings}
        total = sum(map(len, expected.values()))
        samples = wait_for(base, lambda s: value(s, "otel_responses_tool_calls_total") >= total)
        spans = sink.wait(len(recordings) + total)
    by_type: dict[tuple[str, str], int] = {}
    for rec in recordings:
        cut = rec.name.endswith("__cut")
        for item in expected[rec.name] or [{"type": "web_search_call"}] * cut:
            status = "incomplete" if cut else "failed" if item.get("error") else "completed"
            key = (item["type"], status)
            by_type[key] = by_type.get(key, 0) + 1
    for (kind, status), count in by_type.items():
        assert value(samples, "otel_responses_tool_calls_total", type=kind,
                     status=status) == count
    # Durations: the streamed calls that finished, timed by their events.
    streamed = sum(len(expected[r.name]) for r in recordings if r.is_sse)
    assert value(samples, "otel_responses_tool_call_duration_seconds_count") == streamed > 0

    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert encode_spans(spans) == sdk_encode(spans).SerializeToString()
    exported = {s.span_id: s for rs in decoded.resource_spans for ss in rs.scope_spans
                for s in ss.spans}
    for span in spans:
        if _kind(span) == "TOOL":
            mine = exported[span.context.span_id.to_bytes(8, "big")]
            assert span.parent is not None
            assert mine.parent_span_id == span.parent.span_id.to_bytes(8, "big")


def _tools_then_answering(*tools: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> ASGIApp:
    """An ASGI app streaming tool items (each: its final items, its events), then the answer,
    an event per chunk with pauses."""
    items = [item for done, _ in tools for item in done]
    answer, answer_events = message_events(len(items), ["otters ", "hold hands"])
    response = {"id": "resp_e", "object": "response", "model": "m"}
    events = [{"type": "response.created", "response": {**response, "status": "in_progress"}},
              *(event for _, tool_events in tools for event in tool_events), *answer_events,
              {"type": "response.completed", "response": {
                  **response, "status": "completed", "output": [*items, answer]}}]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            body = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b""})
    return app


def _searching() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    search, events = tool_events(0, "web_search_call", "OTTERS")
    return [search], events


def _hosted_shell() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A shell call run in a hosted container, then its output item: two items, one run."""
    call, output = MIXED_RESPONSE["output"][1:3]
    events = []
    for index, item in enumerate((call, output)):
        events += [{"type": "response.output_item.added", "output_index": index,
                    "item": {**item, "status": "in_progress"}},
                   {"type": "response.output_item.done", "output_index": index, "item": item}]
    return [call, output], events


def _one_tool_through_middleware(
        tool: tuple[list[dict[str, Any]], list[dict[str, Any]]], sink: SpanSink,
        **middleware: Any) -> tuple[ReadableSpan, ReadableSpan]:
    """A streamed call through the embeddable middleware: its LLM span and its one TOOL span,
    checked to lie before the answer's first token."""
    app = ResponsesTelemetryMiddleware(_tools_then_answering(tool),
                                       tracer_provider=sink.provider, **middleware)
    with serve_asgi(app, lifespan="off") as base:
        reply = httpx.post(base + "/v1/responses", json={"model": "m", "input": "Well?",
                                                         "stream": True}, timeout=10)
        assert reply.status_code == 200
        llm, (child,) = _llm_and_tools(sink, 1)
    (first_token,) = [e.timestamp for e in llm.events if e.name == "First Token Stream Event"]
    assert llm.start_time < child.start_time < child.end_time <= first_token < llm.end_time
    return llm, child


def test_the_embeddable_middleware_times_a_search_inside_the_call() -> None:
    metrics = ProxyMetrics()
    # Started at its in_progress event, ended at its completed one, before the answer began.
    _, search = _one_tool_through_middleware(
        _searching(), SpanSink(), options=TelemetryOptions(genai_semconv=True),
        sinks=(metrics.observe_call,))
    assert search.attributes["tool.id"] == search.attributes["gen_ai.tool.call.id"] == "web_0"
    assert (search.attributes["gen_ai.operation.name"], search.attributes["gen_ai.tool.name"],
            search.attributes["gen_ai.tool.type"]) == ("execute_tool", "web_search_call",
                                                       "extension")
    assert json.loads(search.attributes["input.value"])["action"]["query"] == "OTTERS"
    assert metrics.tool_calls.labels("web_search_call", "completed")._value.get() == 1
    assert metrics.tool_duration.labels("web_search_call")._sum.get() == \
        (search.end_time - search.start_time) / 1e9


def test_a_shell_run_upstream_is_a_tool_span_until_its_output_item() -> None:
    llm, shell = _one_tool_through_middleware(_hosted_shell(), SpanSink())
    assert (shell.name, shell.attributes["tool.id"]) == ("shell_call", "sh_2")
    assert json.loads(shell.attributes["output.value"]) == SHELL_OUTPUT
    # Not a call handed to the client: the LLM span's output is the answer alone.
    (said,) = indexed(llm.attributes, "llm.output_messages")
    assert "message.tool_calls.0.tool_call.id" not in said
    assert llm.attributes["llm.finish_reason"] == "stop"
