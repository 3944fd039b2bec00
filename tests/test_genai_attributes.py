"""OTel GenAI semantic-convention attributes for Responses calls: recordings and synthetic cases."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given

from otel_responses.protocol.attributes import genai_attributes
from tests.recordings import Recording, need, recordings_params
from tests.test_attributes import (
    assert_valid_values,
    final_response,
    items_strategy,
    json_values,
    output_text,
)

BASE = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "openai.api.type": "responses"}


def expected_input_roles(body: Mapping[str, Any]) -> list[str]:
    items = body["input"]
    if isinstance(items, str):
        return ["user"]
    table = {"function_call": "assistant", "reasoning": "assistant",
             "function_call_output": "tool"}
    return [item["role"] if item.get("type", "message") == "message" else table[item["type"]]
            for item in items]


def expected_finish(response: Mapping[str, Any]) -> list[str] | None:
    status = response["status"]
    if status == "completed":
        calls = any(i["type"] in ("function_call", "custom_tool_call") for i in response["output"])
        return ["tool_call" if calls else "stop"]
    if status == "incomplete":
        return ["length"]  # every incomplete recording ran out of output tokens
    return None


@pytest.mark.parametrize("rec", recordings_params())
def test_genai_attributes_of_recording(rec: Recording | None) -> None:
    rec = need(rec)
    body, response = rec.request_body, final_response(rec)
    attrs = genai_attributes(body, response)
    assert {k: attrs[k] for k in BASE} == BASE
    if body is not None:
        assert attrs["gen_ai.request.model"] == body["model"]
        assert attrs.get("gen_ai.request.stream") == (True if body.get("stream") else None)
        inputs = json.loads(attrs["gen_ai.input.messages"])
        assert [m["role"] for m in inputs] == expected_input_roles(body)
        if body.get("instructions"):
            assert json.loads(attrs["gen_ai.system_instructions"]) == [
                {"type": "text", "content": body["instructions"]}]
        else:
            assert "gen_ai.system_instructions" not in attrs
        if body.get("tools"):
            assert json.loads(attrs["gen_ai.tool.definitions"]) == [
                {k: t[k] for k in ("type", "name") if k in t} for t in body["tools"]]
    if response is None:
        assert not any(k.startswith(("gen_ai.response.", "gen_ai.usage.")) for k in attrs)
        return
    assert attrs["gen_ai.response.id"] == response["id"]
    assert attrs["gen_ai.response.model"] == response["model"]
    assert attrs.get("gen_ai.response.finish_reasons") == expected_finish(response)
    assert attrs.get("openai.response.service_tier") == response.get("service_tier")
    usage = response.get("usage")
    if usage is not None:
        assert attrs["gen_ai.usage.input_tokens"] == usage["input_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == usage["output_tokens"]
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == (
            usage["input_tokens_details"]["cached_tokens"])
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == (
            usage["output_tokens_details"]["reasoning_tokens"])
    else:
        assert not any(k.startswith("gen_ai.usage.") for k in attrs)
    if response["output"]:
        (message,) = json.loads(attrs["gen_ai.output.messages"])
        assert message["role"] == "assistant"
        assert message["finish_reason"] == expected_finish(response)[0]  # type: ignore[index]
        text = "".join(p["content"] for p in message["parts"] if p["type"] == "text")
        assert text == output_text(response)
    else:
        assert "gen_ai.output.messages" not in attrs


REQUEST_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"max_output_tokens": 50, "temperature": 1, "top_p": 0.5, "stream": True},
     {"gen_ai.request.max_tokens": 50, "gen_ai.request.temperature": 1.0,
      "gen_ai.request.top_p": 0.5, "gen_ai.request.stream": True}),
    ({"stream": False, "max_output_tokens": None, "temperature": None}, {}),
    ({"conversation": "conv_1"}, {"gen_ai.conversation.id": "conv_1"}),
    ({"conversation": {"id": "conv_2"}}, {"gen_ai.conversation.id": "conv_2"}),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}},
     {"gen_ai.output.type": "json"}),
    ({"text": {"format": {"type": "json_object"}}}, {"gen_ai.output.type": "json"}),
    ({"text": {"format": {"type": "text"}}}, {"gen_ai.output.type": "text"}),
    ({"service_tier": "auto"}, {}),
    ({"service_tier": "flex"}, {"openai.request.service_tier": "flex"}),
]


@pytest.mark.parametrize(("extra", "expected"), REQUEST_CASES)
def test_request_parameters(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    attrs = genai_attributes({"model": "gpt-x", **extra}, None)
    assert attrs == {**BASE, "gen_ai.request.model": "gpt-x", **expected}


def test_nothing_known() -> None:
    assert genai_attributes(None, None) == BASE


def test_response_usage_and_conversation() -> None:
    attrs = genai_attributes({"model": "m", "conversation": "conv_req"}, {
        "id": "resp_1", "model": "m-2", "status": "completed", "output": [],
        "service_tier": "priority", "conversation": {"id": "conv_resp"},
        "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
                  "input_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 10},
                  "output_tokens_details": {"reasoning_tokens": 5}}})
    assert attrs["gen_ai.conversation.id"] == "conv_req"
    assert attrs["openai.response.service_tier"] == "priority"
    assert {k: v for k, v in attrs.items() if k.startswith("gen_ai.usage.")} == {
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 40,
        "gen_ai.usage.cache_creation.input_tokens": 10,
        "gen_ai.usage.reasoning.output_tokens": 5}
    only_response = genai_attributes(None, {"conversation": {"id": "conv_resp"}})
    assert only_response["gen_ai.conversation.id"] == "conv_resp"


def inputs(*items: Any, **extra: Any) -> list[dict[str, Any]]:
    attrs = genai_attributes({"model": "m", "input": list(items), **extra}, None)
    return json.loads(attrs["gen_ai.input.messages"])


def test_input_parts_for_media_tool_calls_and_results() -> None:
    found = inputs(
        {"role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://e.com/a.png", "detail": "auto"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "auto"},
            {"type": "input_image", "file_id": "file-1", "detail": "auto"},
            {"type": "input_file", "filename": "a.pdf",
             "file_data": "data:application/pdf;base64,JV"},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "mp3"}}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "ok", "name": "f"},
        {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "hm"}]})
    assert found == [
        {"role": "user", "parts": [
            {"type": "text", "content": "look"},
            {"type": "uri", "modality": "image", "uri": "https://e.com/a.png"},
            {"type": "blob", "modality": "image", "content": "iVBO", "mime_type": "image/png"},
            {"type": "file", "modality": "image", "file_id": "file-1"},
            {"type": "blob", "modality": "document", "content": "JV",
             "mime_type": "application/pdf"},
            {"type": "blob", "modality": "audio", "content": "UklG", "mime_type": "audio/mp3"}]},
        {"role": "assistant", "parts": [{"type": "refusal", "content": "no"}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"a": 1}}]},
        {"role": "tool", "name": "f", "parts": [
            {"type": "tool_call_response", "id": "c1", "response": "ok"}]},
        {"role": "assistant", "parts": [{"type": "reasoning", "content": "hm"}]}]


def test_invalid_json_arguments_stay_a_string() -> None:
    (message,) = inputs({"type": "function_call", "call_id": "c", "name": "f",
                         "arguments": "{not json"})
    assert message["parts"][0]["arguments"] == "{not json"


def test_output_is_one_assistant_message_with_server_tool_parts() -> None:
    attrs = genai_attributes(None, {"status": "completed", "output": [
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "search", "query": "q"}},
        {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "find",
         "arguments": '{"q":"x"}', "output": "found"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "done", "annotations": []}]}]})
    assert json.loads(attrs["gen_ai.output.messages"]) == [{
        "role": "assistant", "finish_reason": "stop", "parts": [
            {"type": "server_tool_call", "id": "ws_1", "name": "web_search",
             "server_tool_call": {"type": "web_search",
                                  "action": {"type": "search", "query": "q"}}},
            {"type": "server_tool_call", "id": "mcp_1", "name": "mcp",
             "server_tool_call": {"type": "mcp", "q": "x"}},
            {"type": "server_tool_call_response", "id": "mcp_1",
             "server_tool_call_response": {"type": "mcp", "output": "found"}},
            {"type": "text", "content": "done"}]}]
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]


def test_cut_short_output_has_error_finish_reason() -> None:
    attrs = genai_attributes(None, {"status": "in_progress", "output": [
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "par"}]}]})
    (message,) = json.loads(attrs["gen_ai.output.messages"])
    assert message["finish_reason"] == "error"
    assert "gen_ai.response.finish_reasons" not in attrs


def test_instructions_as_items_become_system_instruction_parts() -> None:
    attrs = genai_attributes({"model": "m", "input": "q", "instructions": [
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]},
        None)
    assert json.loads(attrs["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "a"}, {"type": "text", "content": "b"}]


@given(items=items_strategy, extra=json_values)
def test_arbitrary_items_never_raise(items: list[Any], extra: Any) -> None:
    request = {"model": "m", "input": items, "instructions": extra, "tools": items,
               "conversation": extra, "text": extra}
    response = {"status": "completed", "output": items, "usage": extra, "conversation": extra}
    attrs = genai_attributes(request, response)
    assert_valid_values(attrs)
    for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.definitions"):
        if key in attrs:
            assert isinstance(json.loads(attrs[key]), list)  # type: ignore[arg-type]
