"""The real openai-agents SDK (``Runner.run`` and ``Runner.run_streamed``) through the proxy.

The agent runs in its own virtualenv (``OTEL_RESPONSES_AGENTS_PYTHON``, made by
``.ci/install-e2e``) as ``tests/e2e_agents_driver.py``, against a proxy (in memory spans) in front
of the demo upstream. Its prompt names its one function tool, so the demo model calls it; the SDK
runs the tool and sends its output back; the demo model answers with text quoting it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from otel_responses.demo.app import create_demo_app
from otel_responses.telemetry.otlp import encode_spans
from tests.e2e import SIGNATURE, Exchange, Tap, run_agent
from tests.servers import serve_asgi
from tests.spans import indexed, message_text, tool_calls, traced_proxy


@pytest.mark.parametrize("mode", ["run", "stream"])
def test_agent_with_a_function_tool(mode: str) -> None:
    upstream = Tap(create_demo_app())
    with serve_asgi(upstream) as upstream_url, \
            traced_proxy(upstream_url + "/v1") as (base, sink):
        result = run_agent(base + "/v1", mode)
        spans = sink.wait(2)
    first, second = exchanges = upstream.exchanges
    assert len(spans) == 2
    assert [s.attributes["openinference.span.kind"] for s in spans] == ["LLM", "LLM"]
    assert [x.request.get("stream") is True for x in exchanges] == [mode == "stream"] * 2

    # The SDK ran its tool once, with the arguments the upstream chose, and sent the output back.
    (call,) = first.response["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert result["tool_calls"] == [json.loads(call["arguments"])] == [{"city": "demo"}]
    tool_output = "It is sunny in demo (tool call 1)."  # what the driver's tool returns for it
    *_, sent_call, sent_output = second.request["input"]
    assert (sent_call["type"], sent_call["call_id"]) == ("function_call", call["call_id"])
    assert sent_output == {"call_id": call["call_id"], "output": tool_output,
                           "type": "function_call_output"}
    expected_answer = f"The tool get_weather returned: {tool_output} {SIGNATURE}"
    assert result["final_output"] == expected_answer
    assert [i["type"] for i in result["items"]] == [
        "tool_call_item", "tool_call_output_item", "message_output_item"]
    if mode == "stream":
        assert "response.function_call_arguments.delta" in result["events"]
        assert "response.output_text.delta" in result["events"]

    by_response = {s.attributes["gen_ai.response.id"]: s for s in spans}
    assert set(by_response) == {x.response["id"] for x in exchanges}
    call_span = by_response[first.response["id"]]
    answer_span = by_response[second.response["id"]]

    # Span 1: instructions and prompt in, the tool call out, the tool's definition recorded.
    attrs = call_span.attributes
    messages = indexed(attrs, "llm.input_messages")
    assert [(m["message.role"], message_text(m)) for m in messages] == [
        ("system", result["instructions"]), ("user", result["prompt"])]
    (tool,) = [json.loads(t["tool.json_schema"]) for t in indexed(attrs, "llm.tools")]
    assert tool["type"] == "function" and tool["name"] == "get_weather"
    assert tool["parameters"]["required"] == ["city"]
    assert attrs["llm.finish_reason"] == "tool_call"
    (out,) = indexed(attrs, "llm.output_messages")
    assert tool_calls(out) == [("get_weather", call["arguments"])]
    assert out["message.tool_calls.0.tool_call.id"] == call["call_id"]

    # Span 2: the call and its output in, linked by call_id; the answer out.
    attrs = answer_span.attributes
    *_, assistant, tool_message = indexed(attrs, "llm.input_messages")
    assert tool_calls(assistant) == [("get_weather", call["arguments"])]
    assert assistant["message.tool_calls.0.tool_call.id"] == call["call_id"]
    assert tool_message["message.role"] == "tool"
    assert tool_message["message.tool_call_id"] == call["call_id"]
    assert tool_message["message.content"] == tool_output
    (answer,) = indexed(attrs, "llm.output_messages")
    assert message_text(answer) == expected_answer
    # The agent loop: the span answering the call links to the span that asked for it, in the
    # OTLP bytes exported too.
    (link,) = answer_span.links
    assert link.context == call_span.context
    assert link.attributes["openai.tool_call.ids"] == (call["call_id"],)
    assert not call_span.links
    # Stateless (no previous_response_id): the answer continues the asking call's session.
    assert [s.attributes["session.id"] for s in (call_span, answer_span)] == [
        first.response["id"]] * 2
    (exported,) = [s for s in _exported(spans) if s.span_id == _id(answer_span)]
    assert [x.span_id for x in exported.links] == [_id(call_span)]
    if mode == "stream":
        assert any(e.name == "First Token Stream Event" for e in answer_span.events)

    # Tokens: upstream == span == what the SDK counted, per response and in total.
    for exchange, reported in zip(exchanges, result["responses"], strict=True):
        _check_tokens(exchange, by_response[exchange.response["id"]].attributes, reported)
    totals = {k: sum(x.usage[k] for x in exchanges)
              for k in ("input_tokens", "output_tokens", "total_tokens")}
    assert result["usage"] == {"requests": 2, **totals}
    assert totals["total_tokens"] == totals["input_tokens"] + totals["output_tokens"] > 0


def _exported(spans: list[ReadableSpan]) -> list[Any]:
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    return [s for rs in decoded.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _id(span: ReadableSpan) -> bytes:
    return span.context.span_id.to_bytes(8, "big")


def _check_tokens(exchange: Exchange, attrs: Any, reported: dict[str, Any]) -> None:
    usage = exchange.usage
    assert reported["id"] == exchange.response["id"]
    assert (attrs["llm.token_count.prompt"], attrs["llm.token_count.completion"],
            attrs["llm.token_count.total"]) == (
        usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (
        reported["usage"]["input_tokens"], reported["usage"]["output_tokens"],
        reported["usage"]["total_tokens"])


@pytest.mark.parametrize("mode", ["run", "stream"])
def test_adapter_mode_links_the_agent_loop_alike(mode: str) -> None:
    """Adapter mode (the demo's Chat Completions server upstream): the same two LLM spans, the
    answer linked to the call that asked and in its session."""
    with serve_asgi(create_demo_app()) as upstream_url, \
            traced_proxy(upstream_url + "/v1", upstream_api="chat", store="memory") \
            as (base, sink):
        result = run_agent(base + "/v1", mode)
        call_span, answer_span = sorted(sink.wait(2), key=lambda s: s.start_time or 0)
    assert result["tool_calls"] == [{"city": "demo"}]
    (asked,) = indexed(call_span.attributes, "llm.output_messages")
    call_id = asked["message.tool_calls.0.tool_call.id"]
    *_, tool_message = indexed(answer_span.attributes, "llm.input_messages")
    assert (tool_message["message.role"], tool_message["message.tool_call_id"]) == (
        "tool", call_id)
    (link,) = answer_span.links
    assert link.context == call_span.context
    assert link.attributes["openai.tool_call.ids"] == (call_id,)
    assert [s.attributes["session.id"] for s in (call_span, answer_span)] == [
        call_span.attributes["gen_ai.response.id"]] * 2
