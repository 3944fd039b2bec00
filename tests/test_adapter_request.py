"""Responses → Chat Completions request translation: each mapping rule and each refusal."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.protocol.chat import AdapterRequestError, translate_request, with_max_tokens
from tests.recordings import codex_request, expected_input_roles

FN = {"type": "function", "name": "get_weather", "description": "Weather in a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
      "strict": True}


def chat(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return translate_request({"model": "m", **body}, **kw).request


def refused(body: dict[str, Any], **kw: Any) -> AdapterRequestError:
    with pytest.raises(AdapterRequestError) as info:
        translate_request({"model": "m", **body}, **kw)
    err = info.value
    assert err.status == 400
    return err


def test_string_input_and_instructions() -> None:
    req = chat({"input": "hello", "instructions": "be brief"})
    assert req == {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "hello"}]}


def test_roles_developer_becomes_system() -> None:
    items = [{"role": r, "content": r} for r in ("developer", "system", "user", "assistant")]
    req = chat({"input": items})
    assert [m["role"] for m in req["messages"]] == ["system", "system", "user", "assistant"]
    assert [m["content"] for m in req["messages"]] == ["developer", "system", "user",
                                                       "assistant"]


def test_content_parts() -> None:
    parts = [{"type": "input_text", "text": "look"},
             {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
             {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
             {"type": "input_file", "file_data": "data:application/pdf;base64,AA",
              "filename": "a.pdf"}]
    req = chat({"input": [{"type": "message", "role": "user", "content": parts}]})
    assert req["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA",
                                  "filename": "a.pdf"}},
    ]


def test_text_only_messages_collapse_to_one_string() -> None:
    """System and tool messages take text only: their parts become one string (some servers
    take nothing else there); a user's several text parts stay parts."""
    two = [{"type": "input_text", "text": "first"}, {"type": "input_text", "text": "second"}]
    req = chat({"input": [{"role": "developer", "content": two},
                          {"role": "user", "content": two},
                          {"type": "function_call", "call_id": "c", "name": "get_weather",
                           "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c", "output": two}],
                "tools": [FN]})
    system, user, _, tool = req["messages"]
    assert system["content"] == tool["content"] == "first\n\nsecond"
    assert user["content"] == [{"type": "text", "text": "first"},
                               {"type": "text", "text": "second"}]


@pytest.mark.parametrize(("part", "param"), [
    ({"type": "input_file", "file_url": "https://x/a.pdf"}, "input[0].content[1].file_url"),
    ({"type": "input_image", "file_id": "file_1"}, "input[0].content[1].file_id"),
    ({"type": "input_audio", "input_audio": {}}, "input[0].content[1].type"),
])
def test_unrepresentable_parts_are_refused(part: dict[str, Any], param: str) -> None:
    content = [{"type": "input_text", "text": "x"}, part]
    assert refused({"input": [{"role": "user", "content": content}]}).param == param


def test_system_message_takes_text_only() -> None:
    content = [{"type": "input_image", "image_url": "https://x/y.png"}]
    err = refused({"input": [{"role": "developer", "content": content}]})
    assert err.param == "input[0].content[0].type"


def test_assistant_history_output_text_and_refusal() -> None:
    items = [{"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "a", "annotations": []},
                          {"type": "output_text", "text": "b", "annotations": []}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "refusal", "refusal": "no"}]}]
    assert chat({"input": items})["messages"] == [
        {"role": "assistant", "content": "ab"},
        {"role": "assistant", "content": None, "refusal": "no"}]


def test_function_calls_merge_and_outputs_become_tool_messages() -> None:
    items = [
        {"role": "user", "content": "weather?"},
        {"type": "message", "role": "assistant", "content": "checking"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "function_call", "call_id": "c3", "name": "get_weather", "arguments": "{}"},
    ]
    msgs = chat({"input": items, "tools": [FN]})["messages"]

    def call(id_: str, arguments: str) -> dict[str, Any]:
        return {"id": id_, "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}

    assert msgs == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "checking",
         "tool_calls": [call("c1", "{}"), call("c2", "{\"a\":1}")]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "", "tool_calls": [call("c3", "{}")]},
    ]


def test_reasoning_items_are_dropped_and_counted_when_readable() -> None:
    items = [{"role": "user", "content": "q"},
             {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
             {"type": "reasoning", "id": "rs_2",
              "summary": [{"type": "summary_text", "text": "thought"}]},
             {"type": "message", "role": "assistant", "content": "a"}]
    call = translate_request({"model": "m", "input": items})
    assert [m["role"] for m in call.request["messages"]] == ["user", "assistant"]
    assert call.dropped_reasoning == 1


def test_function_tools_nested_with_strict() -> None:
    req = chat({"input": "x", "tools": [FN, {"type": "function", "name": "bare"}]})
    assert req["tools"] == [
        {"type": "function", "function": {"name": "get_weather",
                                          "description": "Weather in a city",
                                          "parameters": FN["parameters"], "strict": True}},
        {"type": "function", "function": {"name": "bare"}}]


def test_namespace_tools_flattened_and_mapped_back() -> None:
    ns = {"type": "namespace", "name": "crm", "description": "CRM",
          "tools": [{"type": "function", "name": "find", "parameters": {"type": "object"}}]}
    call = translate_request({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "c", "name": "find", "namespace": "crm",
         "arguments": "{}"}], "tools": [ns]})
    assert [t["function"]["name"] for t in call.request["tools"]] == ["crm__find"]
    assert call.request["messages"][1]["tool_calls"][0]["function"]["name"] == "crm__find"
    assert call.tool_names["crm__find"].name == "find"
    assert call.tool_names["crm__find"].namespace == "crm"


def test_custom_tool_is_a_one_string_function() -> None:
    custom = {"type": "custom", "name": "apply_patch", "description": "Patch files",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
    call = translate_request({"model": "m", "tools": [custom], "input": [
        {"type": "custom_tool_call", "call_id": "c", "name": "apply_patch", "input": "*** P"},
        {"type": "custom_tool_call_output", "call_id": "c", "output": "ok"}]})
    fn = call.request["tools"][0]["function"]
    assert fn["name"] == "apply_patch" and fn["parameters"]["required"] == ["input"]
    assert "start: /.+/" in fn["parameters"]["properties"]["input"]["description"]
    assert call.tool_names["apply_patch"].custom
    history = call.request["messages"]
    assert history[0]["tool_calls"][0]["function"]["arguments"] == '{"input": "*** P"}'
    assert history[1] == {"role": "tool", "tool_call_id": "c", "content": "ok"}


def test_builtin_tools_drop_or_error() -> None:
    body = {"input": "x", "tools": [{"type": "web_search"}, FN]}
    call = translate_request({"model": "m", **body})
    assert call.dropped_tools == ("web_search",)
    assert [t["function"]["name"] for t in call.request["tools"]] == ["get_weather"]
    assert [t["type"] for t in call.settings["tools"]] == ["function"]
    err = refused(body, unsupported_tools="error")
    assert (err.param, err.code) == ("tools[0]", "unsupported_tool")


def test_all_tools_dropped_sends_no_tool_fields() -> None:
    req = chat({"input": "x", "tools": [{"type": "file_search"}], "tool_choice": "auto",
                "parallel_tool_calls": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(req)
    assert refused({"input": "x", "tools": [{"type": "mcp"}],
                    "tool_choice": "required"}).param == "tool_choice"


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
    ({"type": "allowed_tools", "mode": "required",
      "tools": [{"type": "function", "name": "get_weather"}]},
     {"type": "allowed_tools", "allowed_tools": {
         "mode": "required",
         "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}),
])
def test_tool_choice(choice: Any, expected: Any) -> None:
    req = chat({"input": "x", "tools": [FN], "tool_choice": choice,
                "parallel_tool_calls": False})
    assert req["tool_choice"] == expected
    assert req["parallel_tool_calls"] is False


@pytest.mark.parametrize("choice", [{"type": "web_search"}, {"type": "function", "name": "nope"},
                                    "sometimes"])
def test_tool_choice_refused(choice: Any) -> None:
    assert refused({"input": "x", "tools": [FN], "tool_choice": choice}).param.startswith(
        "tool_choice")


def test_sampling_and_limits() -> None:
    req = chat({"input": "x", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                "user": "u", "safety_identifier": "s", "reasoning": {"effort": "low",
                                                                      "summary": "auto"}})
    assert {k: req[k] for k in ("max_completion_tokens", "temperature", "top_p", "user",
                                "safety_identifier", "reasoning_effort")} == {
        "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.9, "user": "u",
        "safety_identifier": "s", "reasoning_effort": "low"}
    retry = with_max_tokens(req)
    assert retry["max_tokens"] == 50 and "max_completion_tokens" not in retry
    assert req["max_completion_tokens"] == 50  # the original is left alone


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"},
                                             "strict": True}}),
])
def test_text_format(fmt: dict[str, Any], expected: Any) -> None:
    assert chat({"input": "x", "text": {"format": fmt}}).get("response_format") == expected


def test_logprobs() -> None:
    req = chat({"input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 3})
    assert (req["logprobs"], req["top_logprobs"]) == (True, 3)
    assert "logprobs" not in chat({"input": "x", "include": ["reasoning.encrypted_content"]})


def test_stream_asks_for_usage() -> None:
    req = chat({"input": "x", "stream": True, "stream_options": {"include_obfuscation": False}})
    assert (req["stream"], req["stream_options"]) == (True, {"include_usage": True})
    assert "stream" not in chat({"input": "x", "stream": False})


def test_kept_on_our_side() -> None:
    call = translate_request({"model": "m", "input": "x", "metadata": {"k": "v"},
                              "prompt_cache_key": "p", "client_metadata": {"a": "b"}})
    assert set(call.request) == {"model", "messages"}
    assert (call.settings["metadata"], call.prompt_cache_key, call.client_metadata) == (
        {"k": "v"}, "p", {"a": "b"})


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "max_tool_calls": 3}, "max_tool_calls"),
    ({"input": "x", "service_tier": "flex"}, "service_tier"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "include": ["file_search_call.everything"]}, "include[0]"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "critic", "content": "x"}]}, "input[0].role"),
    ({"input": "x", "tools": [{"type": "hologram"}]}, "tools[0].type"),
    ({"input": "x", "tools": [FN, FN]}, "tools[1]"),
    ({}, "input"),
])
def test_refusals_name_the_parameter(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_model_is_kept_and_required() -> None:
    assert translate_request({"model": "llama-3", "input": "x"}).request["model"] == "llama-3"
    with pytest.raises(AdapterRequestError) as info:
        translate_request({"input": "x"})
    assert info.value.param == "model"


def test_codex_turn_translates() -> None:
    body = codex_request()
    call = translate_request(body)
    req = call.request
    assert req["model"] == body["model"] and req["stream"] is True
    assert [m["role"] for m in req["messages"]] == [
        "system" if r == "developer" else r for r in expected_input_roles(body)]
    namespaced = [(ns["name"], t["name"]) for ns in body["tools"] if ns["type"] == "namespace"
                  for t in ns["tools"]]
    flat = [t["name"] for t in body["tools"] if t["type"] == "function"]
    sent = [t["function"]["name"] for t in req["tools"]]
    assert sorted(sent) == sorted(flat + [f"{ns}__{n}" for ns, n in namespaced])
    assert call.dropped_tools == tuple(t["type"] for t in body["tools"]
                                       if t["type"] not in ("function", "namespace", "custom"))
    assert call.prompt_cache_key == body["prompt_cache_key"]
    assert call.client_metadata == body["client_metadata"]
    assert not {"prompt_cache_key", "client_metadata", "include", "store"} & set(req)


@pytest.mark.parametrize("body", [
    {"input": [{"type": "message", "role": "user", "content": "Say hello."}], "stream": False},
    {"input": [{"type": "message", "role": "system", "content": "Be a pirate."},
               {"type": "message", "role": "user", "content": "Hello."}], "stream": True},
    {"input": [{"type": "message", "role": "user", "content": "Weather?"}],
     "tools": [{"type": "function", "name": "get_weather", "description": "d",
                "parameters": {"type": "object", "properties": {}, "required": []}}]},
    {"input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]},
    {"input": [{"type": "message", "role": "user", "content": "I am Alice."},
               {"type": "message", "role": "assistant", "content": "Hello Alice!"},
               {"type": "message", "role": "user", "content": "Who am I?"}]},
], ids=["basic", "system-prompt", "tool", "image", "multi-turn"])
def test_open_responses_request_shapes(body: dict[str, Any]) -> None:
    """The request shapes of the Open Responses compliance checks all translate."""
    req = chat(body)
    assert len(req["messages"]) == len(body["input"])


@given(st.lists(st.sampled_from(["user", "assistant", "call", "output", "reasoning"]),
                max_size=20))
def test_any_history_keeps_calls_in_order_before_their_results(kinds: list[str]) -> None:
    items: list[dict[str, Any]] = []
    calls = 0
    for kind in kinds:
        if kind in ("user", "assistant"):
            items.append({"role": kind, "content": kind})
        elif kind == "call":
            calls += 1
            items.append({"type": "function_call", "call_id": f"c{calls}",
                          "name": "get_weather", "arguments": "{}"})
        elif kind == "output" and calls:
            items.append({"type": "function_call_output", "call_id": f"c{calls}",
                          "output": "ok"})
        elif kind == "reasoning":
            items.append({"type": "reasoning", "summary": [], "encrypted_content": "x"})
    msgs = chat({"input": items, "tools": [FN]})["messages"]
    sent = [c["id"] for m in msgs for c in m.get("tool_calls", [])]
    assert sent == [f"c{n}" for n in range(1, calls + 1)]
    for i, m in enumerate(msgs):
        if m["role"] == "tool":  # answers a call made earlier
            assert any(c["id"] == m["tool_call_id"] for prev in msgs[:i]
                       for c in prev.get("tool_calls", []))
        if i and m.get("tool_calls") and m["content"] == "":  # calls merge into the turn
            assert msgs[i - 1]["role"] != "assistant"
    kept = [i for i in items if i.get("type") != "reasoning"]
    merged = sum(b.get("type") == "function_call"
                 and (a.get("type") == "function_call" or a.get("role") == "assistant")
                 for a, b in itertools.pairwise(kept))
    assert len(msgs) == len(kept) - merged


def test_request_body_is_left_untouched() -> None:
    body = codex_request()
    before = copy.deepcopy(body)
    call = translate_request(body)
    assert body == before
    with_max_tokens(call.request)
    assert body == before
