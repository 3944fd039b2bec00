"""Responses request/response JSON → OpenInference attributes: recordings, every item type, fuzz."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.protocol.attributes import (
    finish_reason,
    request_attributes,
    response_attributes,
)
from tests.recordings import (
    Recording,
    codex_request,
    expected_input_roles,
    need,
    recordings_params,
)
from tests.spans import indexed

IN, OUT = "llm.input_messages", "llm.output_messages"


# ---- plain readers, independent of the code under test ------------------------------------

def final_response(rec: Recording) -> dict[str, Any] | None:
    """The recorded Response object: the JSON body, or the last SSE snapshot carrying one."""
    if not rec.is_sse:
        body = json.loads(rec.body) if rec.body.strip().startswith("{") else {}
        return body if body.get("object") == "response" or "output" in body else None
    found = None
    for line in rec.body.splitlines():
        if line.startswith("data:"):
            event = json.loads(line[5:])
            if isinstance(event.get("response"), dict):
                found = event["response"]
    return found


def _nested(message: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    return indexed({k: v for k, v in message.items() if k.startswith(prefix + ".")}, prefix)


def contents(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _nested(message, "message.contents")


def calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _nested(message, "message.tool_calls")


def messages(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Messages with their contents and tool calls checked for dense indexes too."""
    found = indexed(attrs, prefix)
    for message in found:
        contents(message)
        calls(message)
    return found


def only_message(attrs: Mapping[str, Any], prefix: str = IN) -> dict[str, Any]:
    found = messages(attrs, prefix)
    assert len(found) == 1, found
    return found[0]


def request_of(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "input": list(items), **extra}


def input_messages(*items: Any, **extra: Any) -> list[dict[str, Any]]:
    return messages(request_attributes(request_of(*items, **extra)), IN)


def output_text(response: Mapping[str, Any]) -> str:
    return "".join(part["text"] for item in response.get("output") or []
                   if item.get("type") == "message"
                   for part in item["content"] if part["type"] == "output_text")


def message_texts(message: Mapping[str, Any]) -> str:
    if "message.content" in message:
        return message["message.content"]
    return "".join(c["message_content.text"] for c in contents(message)
                   if c["message_content.type"] == "text")


def part_of(value: Any, sent: Any) -> bool:
    """``value`` is ``sent``, or an object keeping some of ``sent``'s fields, each a part."""
    if isinstance(value, dict) and isinstance(sent, dict):
        return all(k in sent and part_of(v, sent[k]) for k, v in value.items())
    return value == sent


# ---- every recording ----------------------------------------------------------------------

@pytest.mark.parametrize("rec", recordings_params(lambda r: r.request_body is not None))
def test_request_attributes_of_recording(rec: Recording | None) -> None:
    rec = need(rec)
    body = rec.request_body
    raw = json.dumps(body)
    attrs = request_attributes(body, raw)
    assert attrs["openinference.span.kind"] == "LLM"
    assert attrs["llm.system"] == "openai"
    assert attrs["llm.request.model_name"] == attrs["llm.model_name"] == body["model"]
    assert attrs["input.value"] == raw
    assert attrs["input.mime_type"] == "application/json"
    params = json.loads(attrs["llm.invocation_parameters"])
    assert params["model"] == body["model"]
    assert part_of(params, body)  # settings as sent, or the settings part of an object
    assert not {"input", "instructions", "tools", "metadata", "user"} & set(params)
    tools = [json.loads(t["tool.json_schema"]) for t in indexed(attrs, "llm.tools")]
    assert tools == body.get("tools", [])

    found = messages(attrs, IN)
    assert [m["message.role"] for m in found] == expected_input_roles(body)
    items = body["input"] if isinstance(body["input"], list) else [body["input"]]
    offset = 1 if body.get("instructions") else 0
    for item, message in zip(items, found[offset:], strict=True):
        if isinstance(item, str):
            assert message["message.content"] == item
        elif item.get("type") == "function_call":
            (call,) = calls(message)
            assert call == {"tool_call.id": item["call_id"],
                            "tool_call.function.name": item["name"],
                            "tool_call.function.arguments": item["arguments"]}
        elif item.get("type") == "function_call_output":
            assert message["message.tool_call_id"] == item["call_id"]
            assert message["message.content"] == item["output"]
        elif item.get("type") == "reasoning":
            (part,) = contents(message)
            assert part["message_content.type"] == "reasoning"
            assert part["message_content.id"] == item["id"]
            assert part["message_content.encrypted_content"] == item["encrypted_content"]
            assert part["message_content.text"] == "\n".join(s["text"] for s in item["summary"])
        elif isinstance(item["content"], str):
            assert message["message.content"] == item["content"]
        else:
            texts = [p["text"] for p in item["content"] if p["type"] == "input_text"]
            assert [c.get("message_content.text") for c in contents(message)
                    if c["message_content.type"] == "text"] == texts
    if body.get("instructions"):
        assert found[0]["message.content"] == body["instructions"]


# Output items that are calls the model hands to the client (the turn waits for their results),
# written down from the Responses API; every other tool item is run by the upstream itself.
MODEL_CALLS = {"function_call", "custom_tool_call", "computer_call", "local_shell_call",
               "shell_call", "apply_patch_call", "mcp_approval_request"}
SPOKEN = MODEL_CALLS | {"message", "reasoning"}


def expected_finish(response: Mapping[str, Any]) -> str | None:
    status = response.get("status")
    if status == "completed":
        types = {item["type"] for item in response["output"]}
        return "tool_call" if types & MODEL_CALLS else "stop"
    if status == "incomplete":
        return {"max_output_tokens": "length"}[response["incomplete_details"]["reason"]]
    return None  # queued in these recordings


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.status < 400))
def test_response_attributes_of_recording(rec: Recording | None) -> None:
    rec = need(rec)
    response = final_response(rec)
    assert response is not None
    attrs = response_attributes(response)
    assert json.loads(attrs["output.value"]) == response
    assert attrs["output.mime_type"] == "application/json"
    assert attrs["llm.model_name"] == attrs["llm.response.model_name"] == response["model"]
    assert attrs["gen_ai.response.id"] == response["id"]
    assert attrs["openai.response.status"] == response["status"]
    assert attrs.get("openai.response.incomplete_reason") == (
        (response.get("incomplete_details") or {}).get("reason"))
    assert attrs.get("llm.finish_reason") == expected_finish(response)
    assert finish_reason(response) == expected_finish(response)

    usage = response.get("usage")
    tokens = {k: v for k, v in attrs.items() if k.startswith("llm.token_count.")}
    if usage is None:
        assert tokens == {}
    else:
        assert tokens == {
            "llm.token_count.prompt": usage["input_tokens"],
            "llm.token_count.completion": usage["output_tokens"],
            "llm.token_count.total": usage["total_tokens"],
            "llm.token_count.prompt_details.cache_read":
                usage["input_tokens_details"]["cached_tokens"],
            "llm.token_count.completion_details.reasoning":
                usage["output_tokens_details"]["reasoning_tokens"],
        }

    found = messages(attrs, OUT)
    assistant = [m for m in found if m["message.role"] == "assistant"]
    assert "".join(message_texts(m) for m in assistant) == output_text(response)
    expected_calls = [
        (item.get("call_id") or item["id"], item.get("name") or item["type"])
        for item in response["output"] if item["type"] in MODEL_CALLS
    ]
    actual = [(c["tool_call.id"], c["tool_call.function.name"]) for m in found for c in calls(m)]
    assert actual == expected_calls
    arguments = [c["tool_call.function.arguments"] for m in found for c in calls(m)
                 if c["tool_call.id"].startswith("call_")]
    assert arguments == [item["arguments"] if item["type"] == "function_call"
                         else json.dumps({"input": item["input"]}, separators=(",", ":"))
                         for item in response["output"]
                         if item["type"] in ("function_call", "custom_tool_call")]


def test_codex_request_developer_messages_and_every_tool() -> None:
    body = codex_request()
    attrs = request_attributes(body)
    found = messages(attrs, IN)
    assert [m["message.role"] for m in found] == ["developer", "developer", "user", "user"]
    developer = body["input"][0]["content"][0]["text"]
    assert len(developer) > 16_000
    (part,) = contents(found[0])
    assert part == {"message_content.type": "text", "message_content.text": developer}
    assert len(contents(found[1])) == 2
    assert message_texts(found[3]) == "Say hi"
    tools = [json.loads(t["tool.json_schema"]) for t in indexed(attrs, "llm.tools")]
    assert tools == body["tools"]
    assert {"namespace", "web_search", "function"} <= {t["type"] for t in tools}
    assert json.loads(attrs["input.value"]) == body


# ---- every input item type ----------------------------------------------------------------

ITEM_ROLES: list[tuple[Any, list[str]]] = [
    ({"type": "message", "role": "developer", "content": "be brief"}, ["developer"]),
    ({"role": "user", "content": "hi"}, ["user"]),
    ({"type": "message", "role": "system", "content": []}, ["system"]),
    ({"type": "message", "role": "assistant",
      "content": [{"type": "output_text", "text": "a", "annotations": []}]}, ["assistant"]),
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}, ["assistant"]),
    ({"type": "function_call_output", "call_id": "c1", "output": "ok"}, ["tool"]),
    ({"type": "custom_tool_call", "call_id": "c2", "name": "g", "input": "x"}, ["assistant"]),
    ({"type": "custom_tool_call_output", "call_id": "c2", "output": "y"}, ["tool"]),
    ({"type": "reasoning", "id": "rs_1", "summary": []}, ["assistant"]),
    ({"type": "web_search_call", "id": "ws_1", "status": "completed",
      "action": {"type": "search", "query": "q"}}, ["assistant"]),
    ({"type": "file_search_call", "id": "fs_1", "queries": ["q"], "results": None}, ["assistant"]),
    ({"type": "file_search_call", "id": "fs_2", "queries": ["q"],
      "results": [{"file_id": "f", "text": "t"}]}, ["assistant", "tool"]),
    ({"type": "code_interpreter_call", "id": "ci_1", "code": "1", "container_id": "c",
      "outputs": [{"type": "logs", "logs": "1"}]}, ["assistant", "tool"]),
    ({"type": "mcp_call", "id": "mcp_1", "server_label": "s", "name": "t", "arguments": "{}",
      "output": "done"}, ["assistant", "tool"]),
    ({"type": "mcp_list_tools", "id": "ml_1", "server_label": "s", "tools": []}, ["assistant"]),
    ({"type": "mcp_approval_request", "id": "ar_1", "server_label": "s", "name": "t",
      "arguments": "{}"}, ["assistant"]),
    ({"type": "mcp_approval_response", "approval_request_id": "ar_1", "approve": True},
     ["tool"]),
    ({"type": "computer_call", "id": "cu_1", "call_id": "c3", "action": {"type": "screenshot"},
      "pending_safety_checks": [], "status": "completed"}, ["assistant"]),
    ({"type": "computer_call_output", "call_id": "c3",
      "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA"}},
     ["tool"]),
    ({"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "AAAA"},
     ["assistant"]),
    ({"type": "local_shell_call", "id": "ls_1", "call_id": "c4", "status": "completed",
      "action": {"type": "exec", "command": ["ls"], "env": {}}}, ["assistant"]),
    ({"type": "local_shell_call_output", "id": "c4", "output": "a.txt"}, ["tool"]),
    ({"type": "shell_call", "call_id": "c5", "action": {"commands": ["ls"]}}, ["assistant"]),
    ({"type": "shell_call_output", "call_id": "c5",
      "output": [{"stdout": "a", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]},
     ["tool"]),
    ({"type": "apply_patch_call", "call_id": "c6", "status": "completed",
      "operation": {"type": "delete_file", "path": "a"}}, ["assistant"]),
    ({"type": "apply_patch_call_output", "call_id": "c6", "status": "failed"}, ["tool"]),
    ({"type": "tool_search_call", "call_id": "c7", "arguments": {"q": "x"}}, ["assistant"]),
    ({"type": "tool_search_output", "call_id": "c7", "tools": [{"type": "function"}]}, ["tool"]),
    ({"type": "compaction", "id": "cmp_1", "encrypted_content": "SECRET"}, ["assistant"]),
    ({"type": "program", "id": "p_1", "call_id": "c8", "code": "x", "fingerprint": "f"},
     ["assistant"]),
    ({"type": "program_output", "id": "po_1", "call_id": "c8", "result": "r",
      "status": "completed"}, ["tool"]),
    ({"type": "item_reference", "id": "msg_old"}, ["assistant"]),
    ({"type": "additional_tools", "role": "developer", "tools": []}, ["developer"]),
    ({"type": "brand_new_item", "payload": 1}, ["assistant"]),
    ({"type": "brand_new_item", "role": "user"}, ["user"]),
    ({"no_type": True}, ["assistant"]),
    ("a bare string", ["assistant"]),
    (None, ["assistant"]),
]


def test_every_item_type_in_one_request_keeps_order_and_dense_indexes() -> None:
    items = [item for item, _ in ITEM_ROLES]
    found = input_messages(*items, instructions="sys")
    expected = ["system"] + [role for _, roles in ITEM_ROLES for role in roles]
    assert [m["message.role"] for m in found] == expected


@pytest.mark.parametrize(("item", "roles"), ITEM_ROLES, ids=lambda v: str(v)[:40])
def test_each_item_type_alone(item: Any, roles: list[str]) -> None:
    assert [m["message.role"] for m in input_messages(item)] == roles
    out = messages(response_attributes({"status": "completed", "output": [item]}), OUT)
    # An item without a type is a message when it has a role (EasyInputMessage).
    spoken = isinstance(item, dict) and (item.get("type") in SPOKEN
                                         or ("type" not in item and "role" in item))
    assert [m["message.role"] for m in out] == (roles if spoken else [])


def test_unknown_item_content_is_its_json() -> None:
    item = {"type": "brand_new_item", "payload": [1, {"a": "ü"}]}
    (message,) = input_messages(item)
    assert json.loads(message["message.content"]) == item


def call_of(item: Mapping[str, Any]) -> tuple[str | None, str, Any]:
    (message, *_) = input_messages(item)
    (call,) = calls(message)
    arguments = call.get("tool_call.function.arguments")
    return (call.get("tool_call.id"), call["tool_call.function.name"],
            None if arguments is None else json.loads(arguments))


TOOL_CALLS: list[tuple[dict[str, Any], tuple[str | None, str, Any]]] = [
    ({"type": "function_call", "call_id": "c1", "id": "fc_1", "name": "f", "arguments": "{}"},
     ("c1", "f", {})),
    ({"type": "function_call", "call_id": "c1", "name": "close", "namespace": "agents",
      "arguments": '{"a":1}'}, ("c1", "agents.close", {"a": 1})),
    ({"type": "custom_tool_call", "call_id": "c2", "name": "g", "input": "4 + 4"},
     ("c2", "g", {"input": "4 + 4"})),
    ({"type": "web_search_call", "id": "ws_1", "status": "completed",
      "action": {"type": "search", "query": "q"}},
     ("ws_1", "web_search_call", {"action": {"type": "search", "query": "q"}})),
    ({"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["q"],
      "results": [{"text": "t"}]}, ("fs_1", "file_search_call", {"queries": ["q"]})),
    ({"type": "code_interpreter_call", "id": "ci_1", "code": "print(1)", "container_id": "cn",
      "outputs": None, "status": "completed"},
     ("ci_1", "code_interpreter_call", {"code": "print(1)", "container_id": "cn"})),
    ({"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search",
      "arguments": '{"q":"x"}', "output": "found"}, ("mcp_1", "docs.search", {"q": "x"})),
    ({"type": "mcp_list_tools", "id": "ml_1", "server_label": "docs", "tools": [{"name": "a"}]},
     ("ml_1", "mcp_list_tools", {"server_label": "docs"})),
    ({"type": "mcp_approval_request", "id": "ar_1", "server_label": "docs", "name": "rm",
      "arguments": "{}"}, ("ar_1", "docs.rm", {})),
    ({"type": "computer_call", "id": "cu_1", "call_id": "c3", "status": "completed",
      "action": {"type": "click", "x": 1, "y": 2, "button": "left"},
      "pending_safety_checks": []},
     ("c3", "computer_call", {"action": {"type": "click", "x": 1, "y": 2, "button": "left"},
                              "pending_safety_checks": []})),
    ({"type": "local_shell_call", "id": "ls_1", "call_id": "c4", "status": "completed",
      "action": {"type": "exec", "command": ["ls"], "env": {}}},
     ("c4", "local_shell_call", {"action": {"type": "exec", "command": ["ls"], "env": {}}})),
    ({"type": "shell_call", "call_id": "c5", "action": {"commands": ["ls"]}},
     ("c5", "shell_call", {"action": {"commands": ["ls"]}})),
    ({"type": "apply_patch_call", "call_id": "c6", "status": "completed",
      "operation": {"type": "delete_file", "path": "a"}},
     ("c6", "apply_patch_call", {"operation": {"type": "delete_file", "path": "a"}})),
    ({"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "AAAA",
      "size": "1024x1024", "revised_prompt": "a cat"},
     ("ig_1", "image_generation_call", {"size": "1024x1024", "revised_prompt": "a cat"})),
    ({"type": "tool_search_call", "call_id": "c7", "arguments": {"q": "x"}},
     ("c7", "tool_search_call", {"q": "x"})),
    ({"type": "compaction", "id": "cmp_1", "encrypted_content": "SECRET"},
     ("cmp_1", "compaction", {})),
    ({"type": "program", "id": "p_1", "call_id": "c8", "code": "x", "fingerprint": "f"},
     ("c8", "program", {"code": "x", "fingerprint": "f"})),
    # Nameless, as every other nameless call: named by its type.
    ({"type": "function_call", "call_id": "c9", "arguments": "{}"}, ("c9", "function_call", {})),
    ({"type": "custom_tool_call", "call_id": "c10", "input": "x"},
     ("c10", "custom_tool_call", {"input": "x"})),
]


@pytest.mark.parametrize(("item", "expected"), TOOL_CALLS, ids=lambda v: str(v)[:40])
def test_tool_call_id_name_and_arguments(item: dict[str, Any],
                                         expected: tuple[str | None, str, Any]) -> None:
    assert call_of(item) == expected


def test_empty_arguments_are_kept_verbatim() -> None:
    (message,) = input_messages({"type": "function_call", "call_id": "c", "name": "f",
                                 "arguments": "{}"})
    assert calls(message)[0]["tool_call.function.arguments"] == "{}"


def test_parallel_function_calls_stay_separate_messages() -> None:
    found = input_messages(
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"})
    assert [[c["tool_call.id"] for c in calls(m)] for m in found] == [["a"], ["b"]]


def test_builtin_results_follow_as_tool_messages() -> None:
    call, result = input_messages({"type": "mcp_call", "id": "mcp_1", "server_label": "s",
                                   "name": "t", "arguments": "{}", "output": "done"})
    assert [c["tool_call.id"] for c in calls(call)] == ["mcp_1"]
    assert result == {"message.role": "tool", "message.tool_call_id": "mcp_1",
                      "message.content": "done"}
    _, result = input_messages({"type": "file_search_call", "id": "fs_1", "queries": [],
                                   "results": [{"file_id": "f1", "score": 0.5}]})
    assert result["message.tool_call_id"] == "fs_1"
    assert json.loads(result["message.content"]) == [{"file_id": "f1", "score": 0.5}]
    _, result = input_messages({
        "type": "code_interpreter_call", "id": "ci_1", "code": "", "container_id": "c",
        "outputs": [{"type": "image", "url": "data:image/png;base64,AA"},
                    {"type": "logs", "logs": "hello"}]})
    assert contents(result) == [
        {"message_content.type": "image",
         "message_content.image.image.url": "data:image/png;base64,AA"},
        {"message_content.type": "text", "message_content.text": "hello"}]


def test_compaction_blob_is_not_copied_into_messages() -> None:
    attrs = request_attributes(request_of({"type": "compaction", "id": "c",
                                           "encrypted_content": "SECRET"}))
    assert not any("SECRET" in str(v) for k, v in attrs.items() if k.startswith(IN))


# ---- tool outputs -------------------------------------------------------------------------

def test_function_call_output_string_and_list() -> None:
    text, listed = input_messages(
        {"type": "function_call_output", "call_id": "c1", "output": "72F", "name": "weather"},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_text", "text": "see"},
            {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"}]})
    assert text == {"message.role": "tool", "message.tool_call_id": "c1",
                    "message.content": "72F", "message.name": "weather"}
    assert listed["message.tool_call_id"] == "c2"
    assert contents(listed) == [
        {"message_content.type": "text", "message_content.text": "see"},
        {"message_content.type": "image", "message_content.image.image.url": "https://x/y.png"}]


def test_other_tool_outputs_answer_their_call() -> None:
    found = input_messages(
        {"type": "computer_call_output", "call_id": "c3",
         "output": {"type": "computer_screenshot", "file_id": "file-s"}},
        {"type": "local_shell_call_output", "id": "c4", "output": "a.txt"},
        {"type": "apply_patch_call_output", "call_id": "c6", "status": "failed"},
        {"type": "mcp_approval_response", "approval_request_id": "ar_1", "approve": False,
         "reason": "no"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "8"},
        {"type": "program_output", "id": "po", "call_id": "c8", "result": "r",
         "status": "completed"})
    assert [m["message.tool_call_id"] for m in found] == ["c3", "c4", "c6", "ar_1", "c2", "c8"]
    assert contents(found[0]) == [{"message_content.type": "image",
                                   "message_content.image.image.url": "openai-file:file-s"}]
    assert found[1]["message.content"] == "a.txt"
    assert json.loads(found[2]["message.content"]) == {"status": "failed"}
    assert json.loads(found[3]["message.content"]) == {
        "approval_request_id": "ar_1", "approve": False, "reason": "no"}
    assert found[4]["message.content"] == "8"
    assert found[5]["message.content"] == "r"


# ---- content parts ------------------------------------------------------------------------

def parts_of(*parts: Any, role: str = "user") -> list[dict[str, Any]]:
    (message,) = input_messages({"type": "message", "role": role, "content": list(parts)})
    return contents(message)


def test_refusal_is_distinguishable_from_text() -> None:
    found = parts_of({"type": "output_text", "text": "ok", "annotations": []},
                     {"type": "refusal", "refusal": "I can't"}, role="assistant")
    assert found == [{"message_content.type": "text", "message_content.text": "ok"},
                     {"message_content.type": "refusal", "message_content.text": "I can't"}]
    out = messages(response_attributes({"status": "completed", "output": [
        {"type": "message", "role": "assistant",
         "content": [{"type": "refusal", "refusal": "no"}]}]}), OUT)
    assert contents(out[0]) == [{"message_content.type": "refusal", "message_content.text": "no"}]


def test_images_by_url_data_url_and_file_id() -> None:
    found = parts_of(
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/", "detail": "low"},
        {"type": "input_image", "file_id": "file-123", "detail": "high"})
    assert [p["message_content.type"] for p in found] == ["image"] * 3
    assert [p["message_content.image.image.url"] for p in found] == [
        "https://example.com/a.png", "data:image/jpeg;base64,/9j/", "openai-file:file-123"]


def test_input_files_become_documents() -> None:
    found = parts_of(
        {"type": "input_file", "file_id": "file-9"},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JV"})
    doc = "message_content.document.document."
    assert found == [
        {"message_content.type": "document", doc + "id": "file-9"},
        {"message_content.type": "document", doc + "url": "https://example.com/a.pdf"},
        {"message_content.type": "document", doc + "name": "a.pdf",
         doc + "mime_type": "application/pdf",
         doc + "content": "data:application/pdf;base64,JV"}]


def test_input_audio() -> None:
    (part,) = parts_of({"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}})
    assert part == {"message_content.type": "audio",
                    "message_content.audio.audio.url": "data:audio/wav;base64,UklG",
                    "message_content.audio.audio.mime_type": "audio/wav"}


def test_unknown_and_malformed_parts_keep_their_slot() -> None:
    found = parts_of({"type": "input_video", "url": "v"}, "plain", {"type": "input_text"})
    assert [p["message_content.type"] for p in found] == ["text"] * 3
    assert json.loads(found[0]["message_content.text"]) == {"type": "input_video", "url": "v"}
    assert found[1]["message_content.text"] == "plain"
    assert found[2]["message_content.text"] == ""


def test_non_string_non_list_content_is_json() -> None:
    (message,) = input_messages({"role": "user", "content": {"odd": 1}})
    assert json.loads(message["message.content"]) == {"odd": 1}


def test_reasoning_summary_text_id_and_encrypted_content() -> None:
    (message,) = input_messages({
        "type": "reasoning", "id": "rs_9", "encrypted_content": "gAAA",
        "summary": [{"type": "summary_text", "text": "first"},
                    {"type": "summary_text", "text": "second"}],
        "content": [{"type": "reasoning_text", "text": "raw"}]})
    assert message["message.role"] == "assistant"
    assert contents(message) == [{"message_content.type": "reasoning",
                                  "message_content.text": "first\nsecond\nraw",
                                  "message_content.id": "rs_9",
                                  "message_content.encrypted_content": "gAAA"}]


def test_item_reference_records_the_referenced_id() -> None:
    (message,) = input_messages({"type": "item_reference", "id": "msg_42"})
    assert contents(message) == [{"message_content.type": "item_reference",
                                  "message_content.id": "msg_42"}]


# ---- instructions and string input --------------------------------------------------------

def test_instructions_and_string_input() -> None:
    attrs = request_attributes({"model": "m", "instructions": "be nice", "input": "hello"})
    assert messages(attrs, IN) == [
        {"message.role": "system", "message.content": "be nice"},
        {"message.role": "user", "message.content": "hello"}]


def test_empty_instructions_add_no_message_and_no_gap() -> None:
    attrs = request_attributes({"model": "m", "instructions": "", "input": "hello"})
    assert messages(attrs, IN) == [{"message.role": "user", "message.content": "hello"}]


def test_instructions_as_items() -> None:
    attrs = request_attributes({"model": "m", "input": "q", "instructions": [
        {"type": "message", "role": "developer", "content": "dev"}]})
    assert [m["message.role"] for m in messages(attrs, IN)] == ["developer", "user"]


def test_missing_input_and_model() -> None:
    attrs = request_attributes({"prompt": {"id": "pmpt_1"}})
    assert messages(attrs, IN) == []
    assert "llm.model_name" not in attrs
    assert json.loads(attrs["llm.invocation_parameters"]) == {"prompt": {"id": "pmpt_1"}}


def test_invocation_parameters_are_settings_never_content() -> None:
    body = {
        "model": "gpt-5", "input": "SECRET-input", "instructions": "SECRET-instructions",
        "tools": [{"type": "function", "name": "f", "description": "SECRET-tool"}],
        "temperature": 0.2, "top_p": 1, "max_output_tokens": 50, "max_tool_calls": 3,
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto", "context": "SECRET-future"},
        "text": {"verbosity": "low", "format": {"type": "json_schema", "name": "answer",
                                               "strict": True, "description": "SECRET-desc",
                                               "schema": {"title": "SECRET-schema"}}},
        "store": False, "truncation": "auto", "service_tier": "flex", "stream": True,
        "stream_options": {"include_obfuscation": False}, "background": False,
        "include": ["reasoning.encrypted_content"], "previous_response_id": "resp_0",
        "conversation": {"id": "conv_1", "note": "SECRET-conv"},
        "prompt": {"id": "pmpt_1", "version": "2", "variables": {"city": "SECRET-var"}},
        "metadata": {"k": "v"}, "user": "u-1", "safety_identifier": "s-1",
        "prompt_cache_key": "pck", "brand_new_field": "SECRET-new",
    }
    attrs = request_attributes(body)
    assert json.loads(attrs["llm.invocation_parameters"]) == {
        "model": "gpt-5", "temperature": 0.2, "top_p": 1, "max_output_tokens": 50,
        "max_tool_calls": 3, "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False, "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low", "format": {"type": "json_schema", "name": "answer",
                                                "strict": True}},
        "store": False, "truncation": "auto", "service_tier": "flex", "stream": True,
        "stream_options": {"include_obfuscation": False}, "background": False,
        "include": ["reasoning.encrypted_content"], "previous_response_id": "resp_0",
        "conversation": {"id": "conv_1"}, "prompt": {"id": "pmpt_1", "version": "2"},
        "prompt_cache_key": "pck"}
    assert attrs["prompt.id"] == "pmpt_1"
    assert attrs["prompt.vendor"] == "openai"
    assert attrs["llm.prompt_template.version"] == "2"
    assert json.loads(attrs["llm.prompt_template.variables"]) == {"city": "SECRET-var"}
    plain = request_attributes({"model": "m", "conversation": "conv_2", "input": "hi"})
    assert json.loads(plain["llm.invocation_parameters"]) == {"model": "m",
                                                              "conversation": "conv_2"}


# ---- response specifics -------------------------------------------------------------------

def test_generated_images_are_output_images() -> None:
    attrs = response_attributes({"status": "completed", "output": [
        {"type": "image_generation_call", "id": "ig_1", "result": "iVBO", "status": "completed"},
        {"type": "image_generation_call", "id": "ig_2", "result": "UklG",
         "output_format": "webp", "status": "completed"},
        {"type": "image_generation_call", "id": "ig_3", "result": None, "status": "failed"}]})
    assert indexed(attrs, "output.images") == [
        {"image.url": "data:image/png;base64,iVBO"}, {"image.url": "data:image/webp;base64,UklG"}]
    assert not any("iVBO" in str(v) for k, v in attrs.items() if k.startswith(OUT))


USAGE_CASES: list[tuple[Any, dict[str, int]]] = [
    (None, {}),
    ({}, {}),
    ({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
      "input_tokens_details": None, "output_tokens_details": None},
     {"prompt": 10, "completion": 5, "total": 15}),
    ({"input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
      "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
      "output_tokens_details": {"reasoning_tokens": 40}},
     {"prompt": 100, "completion": 50, "total": 150, "prompt_details.cache_read": 60,
      "prompt_details.cache_write": 30, "completion_details.reasoning": 40}),
    ({"input_tokens": 7, "input_tokens_details": {"cached_tokens": None}}, {"prompt": 7}),
    ({"input_tokens": True, "output_tokens": "5"}, {}),
]


@pytest.mark.parametrize(("usage", "expected"), USAGE_CASES)
def test_token_counts(usage: Any, expected: dict[str, int]) -> None:
    attrs = response_attributes({"status": "completed", "output": [], "usage": usage})
    tokens = {k.removeprefix("llm.token_count."): v for k, v in attrs.items()
              if k.startswith("llm.token_count.")}
    assert tokens == expected


FINISH_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"status": "completed", "output": []}, "stop"),
    ({"status": "completed", "output": [{"type": "message"}, {"type": "web_search_call"}]},
     "stop"),
    ({"status": "completed", "output": [{"type": "reasoning"}, {"type": "function_call"}]},
     "tool_call"),
    ({"status": "completed", "output": [{"type": "custom_tool_call"}]}, "tool_call"),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
    ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
     "content_filter"),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_messages"}}, "max_messages"),
    ({"status": "incomplete", "incomplete_details": None}, None),
    ({"status": "failed", "error": {"code": "server_error"}}, "error"),
    ({"status": "cancelled"}, "error"),
    ({"status": "queued"}, None),
    ({"status": "in_progress"}, None),
    ({}, None),
]


@pytest.mark.parametrize(("response", "expected"), FINISH_CASES)
def test_finish_reason(response: dict[str, Any], expected: str | None) -> None:
    assert finish_reason(response) == expected
    assert response_attributes(response).get("llm.finish_reason") == expected


def test_status_id_and_incomplete_reason() -> None:
    attrs = response_attributes({"id": "resp_1", "status": "incomplete", "model": "m-1",
                                 "incomplete_details": {"reason": "content_filter"}})
    assert attrs["gen_ai.response.id"] == "resp_1"
    assert attrs["openai.response.status"] == "incomplete"
    assert attrs["openai.response.incomplete_reason"] == "content_filter"
    assert attrs["llm.model_name"] == attrs["llm.response.model_name"] == "m-1"


def test_error_body_does_not_crash() -> None:
    body = {"error": {"message": "nope", "code": "invalid_api_key"}}
    attrs = response_attributes(body)
    assert json.loads(attrs["output.value"]) == body
    assert messages(attrs, OUT) == []


def test_json_values_are_compact_with_their_text_as_is() -> None:
    tool = {"type": "function", "name": "f", "description": "caf\u00e9 \u2019q\u2019",
            "parameters": {"x": [1, 2.5, None, True, {"y": "\n"}]}, "n": float("nan")}
    attrs = request_attributes(request_of(tools=[tool]))
    assert attrs["llm.tools.0.tool.json_schema"] == json.dumps(tool, separators=(",", ":"),
                                                                ensure_ascii=False)


def test_large_request_maps_every_item() -> None:
    # Speed is measured in bench/, not here; this checks nothing is lost at scale.
    items = []
    for i in range(10_000):
        items += [{"role": "user", "content": [{"type": "input_text", "text": "x" * 20}]},
                  {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": f"c{i}", "output": "ok"}]
    attrs = request_attributes(request_of(*items))
    inputs = indexed(attrs, IN)
    assert len(inputs) == 30_000
    assert inputs[-1]["message.tool_call_id"] == "c9999"


# ---- fuzz ---------------------------------------------------------------------------------

ITEM_TYPES = sorted({item["type"] for item, _ in ITEM_ROLES if isinstance(item, dict)
                     and "type" in item} | {"message", "input_text", "summary_text"})
PART_TYPES = ["input_text", "output_text", "refusal", "input_image", "input_file",
              "input_audio", "image", "logs", "computer_screenshot", "reasoning_text", "zzz"]
FIELDS = ["role", "content", "summary", "output", "outputs", "results", "result", "arguments",
          "name", "namespace", "server_label", "call_id", "id", "action", "input", "tools",
          "encrypted_content", "approval_request_id", "text", "image_url", "file_id",
          "file_data", "input_audio", "refusal", "output_format", "error", "status"]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars | st.sampled_from(PART_TYPES),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["type", *FIELDS]), children, max_size=4)
    | st.builds(lambda t, d: {**d, "type": t}, st.sampled_from(PART_TYPES),
                st.dictionaries(st.sampled_from(FIELDS), children, max_size=3)),
    max_leaves=12)
items_strategy = st.lists(
    st.builds(lambda t, d: {**d, "type": t}, st.sampled_from(ITEM_TYPES) | st.text(max_size=6)
              | st.none() | st.integers(), st.dictionaries(st.sampled_from(FIELDS), json_values,
                                                          max_size=5))
    | json_values,
    max_size=8)


def assert_valid_values(attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if isinstance(value, list):
            assert all(isinstance(v, str | bool | int | float) for v in value), key
        else:
            assert isinstance(value, str | bool | int | float), key


@given(items=items_strategy, instructions=json_values)
def test_arbitrary_items_never_raise_and_stay_dense(items: list[Any], instructions: Any) -> None:
    request = {"model": "m", "input": items, "instructions": instructions, "tools": items}
    attrs = request_attributes(request)
    assert_valid_values(attrs)
    assert len(messages(attrs, IN)) >= len(items)
    response = {"status": "completed", "output": items, "usage": instructions}
    out = response_attributes(response)
    assert_valid_values(out)
    spoken = [i for i in items if isinstance(i, dict) and isinstance(i.get("type"), str)
              and i["type"] in SPOKEN]
    assert len(messages(out, OUT)) >= len(spoken)
    indexed(out, "output.images")
