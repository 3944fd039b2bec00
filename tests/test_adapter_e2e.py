"""Adapter mode against a real model: llama.cpp's server with SmolLM2-135M (Chat Completions
only) behind ``--upstream-api chat``, driven by the openai SDK, the openai-agents SDK and the
Codex CLI. The tiny model's wording is never asserted; the protocol is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.adapter_checks import validate_response
from tests.e2e import Llama, run_agent, run_codex
from tests.spans import SpanSink, indexed, message_text, tool_calls, traced_proxy

UPSTREAM_API = "otel_responses.upstream.api"


@pytest.fixture(scope="module")
def adapted(llama: Llama) -> Iterator[tuple[str, SpanSink]]:
    with traced_proxy(llama.base + "/v1", upstream_api="chat") as served:
        yield served


def test_openai_sdk_non_stream_and_strict_stream(llama: Llama,
                                                 adapted: tuple[str, SpanSink]) -> None:
    base, sink = adapted
    sink.clear()
    with openai.OpenAI(base_url=base + "/v1", api_key="sk-none", max_retries=0,
                       timeout=240) as client:
        response = client.responses.create(model=llama.model, input="Say hi.", temperature=0)
        with client.responses.stream(model=llama.model, input="Say hi.",
                                     temperature=0) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    validate_response(response.model_dump(mode="json"))
    assert response.status == final.status == "completed"
    assert response.model == final.model == llama.model
    assert response.output_text.strip() and final.output_text == "".join(deltas)
    usage = response.usage  # llama.cpp reports usage on non-streamed answers only
    assert usage is not None and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert final.usage is None  # its streams carry none: none is reported, never a made-up one
    first, second = sorted(sink.wait(2), key=lambda s: s.start_time or 0)
    for span, answer in ((first, response), (second, final)):
        attrs = span.attributes or {}
        assert attrs[UPSTREAM_API] == "chat" and attrs["llm.model_name"] == llama.model
        (out,) = indexed(attrs, "llm.output_messages")
        assert message_text(out) == answer.output_text
    assert (first.attributes or {})["llm.token_count.total"] == usage.total_tokens
    assert "llm.token_count.total" not in (second.attributes or {})
    assert any(e.name == "First Token Stream Event" for e in second.events)


def test_agents_sdk_runs_an_agent_with_a_tool(llama: Llama,
                                              adapted: tuple[str, SpanSink]) -> None:
    base, sink = adapted
    sink.clear()
    result = run_agent(base + "/v1", "stream", llama.model, timeout=400)
    assert [i["type"] for i in result["items"]] == [
        "tool_call_item", "tool_call_output_item", "message_output_item"]
    assert len(result["tool_calls"]) == 1 and isinstance(result["final_output"], str)
    assert "response.function_call_arguments.delta" in result["events"]
    calls, answers = sorted(sink.wait(2), key=lambda s: s.start_time or 0)
    (out,) = indexed(calls.attributes or {}, "llm.output_messages")
    ((name, arguments),) = tool_calls(out)
    assert name == "get_weather" and json.loads(arguments) == result["tool_calls"][0]
    # The second call carried the tool's output back, and the model answered.
    *_, tool_message = indexed(answers.attributes or {}, "llm.input_messages")
    assert tool_message["message.role"] == "tool"
    assert tool_message["message.content"].startswith("It is sunny in")


def test_codex_exec_completes_a_turn_on_the_real_model(tmp_path: Path) -> None:
    run = run_codex(tmp_path, "Say hi.", timeout=400, chat=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.interfaces == ["lo"]
    assert run.of_type("turn.completed"), run.events
    assert run.items("agent_message"), run.events
    (span, *_) = run.spans
    assert span.attributes[UPSTREAM_API] == "chat"
    # Codex always sends web_search, which a chat server cannot run: dropped, and said so.
    assert list(span.attributes["otel_responses.adapter.dropped_tools"]) == ["web_search"]
