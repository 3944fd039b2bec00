"""Non-streamed chat completions and upstream error bodies as Responses objects."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from otel_responses.protocol.chat import (
    new_id,
    translate_completion,
    translate_request,
    upstream_error,
)
from tests.adapter_checks import validate_response

RID = "resp_nonstream"


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}], **extra}


def translate(message: dict[str, Any], finish: str = "stop", body: dict[str, Any] | None = None,
              **extra: Any) -> dict[str, Any]:
    call = translate_request({"model": "m", "input": "x", **(body or {})})
    response = translate_completion(call, completion(message, finish, **extra), RID, 5)
    validate_response(response)
    return response


def test_full_response_fields_and_echoed_settings() -> None:
    body = {"instructions": "sys", "temperature": 0.3, "top_p": 0.8, "max_output_tokens": 9,
            "metadata": {"k": "v"}, "parallel_tool_calls": False, "store": True,
            "text": {"format": {"type": "json_object"}},
            "tools": [{"type": "function", "name": "f"}], "tool_choice": "required"}
    r = translate({"content": "{}"}, body=body,
                  usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    assert (r["id"], r["object"], r["created_at"], r["status"], r["model"], r["error"]) == (
        RID, "response", 5, "completed", "up", None)
    echoed = {k: r[k] for k in ("instructions", "temperature", "top_p", "max_output_tokens",
                                "metadata", "parallel_tool_calls", "text", "tool_choice",
                                "previous_response_id")}
    assert echoed == {"instructions": "sys", "temperature": 0.3, "top_p": 0.8,
                      "max_output_tokens": 9, "metadata": {"k": "v"},
                      "parallel_tool_calls": False, "text": {"format": {"type": "json_object"}},
                      "tool_choice": "required", "previous_response_id": None}
    assert r["tools"] == [{"type": "function", "name": "f", "description": None,
                           "parameters": None, "strict": None}]
    assert r["store"] is False  # nothing is stored: the echo does not pretend otherwise
    assert r["output"][0]["content"] == [{"type": "output_text", "annotations": [],
                                          "logprobs": [], "text": "{}"}]


def test_order_reasoning_message_calls_and_custom_tools() -> None:
    tools = [{"type": "function", "name": "f"}, {"type": "custom", "name": "patch"}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
             {"id": "c2", "type": "function",
              "function": {"name": "patch", "arguments": json.dumps({"input": "diff"})}}]
    r = translate({"content": "ok", "reasoning_content": "hmm", "tool_calls": calls},
                  "tool_calls", {"tools": tools})
    assert [i["type"] for i in r["output"]] == ["reasoning", "message", "function_call",
                                                "custom_tool_call"]
    assert r["output"][0]["summary"] == [{"type": "summary_text", "text": "hmm"}]
    assert (r["output"][3]["call_id"], r["output"][3]["input"]) == ("c2", "diff")
    assert len({i["id"] for i in r["output"]}) == 4


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter")])
def test_finish_reasons(finish: str, status: str, reason: str | None) -> None:
    r = translate({"content": "x"}, finish)
    assert (r["status"], r["incomplete_details"]) == (
        status, {"reason": reason} if reason else None)
    assert r["output"][0]["status"] == status


def test_refusal_and_cached_reasoning_tokens() -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28,
             "prompt_cache_hit_tokens": 16, "completion_tokens_details": {"reasoning_tokens": 6}}
    r = translate({"content": None, "refusal": "No."}, usage=usage)
    assert r["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]
    assert r["usage"]["input_tokens_details"]["cached_tokens"] == 16
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] == 6


def test_no_choices_is_failed() -> None:
    call = translate_request({"model": "m", "input": "x"})
    r = translate_completion(call, {"model": "up", "choices": []}, RID, 5)
    validate_response(r)
    assert r["status"] == "failed" and r["error"]["code"] == "server_error"


@pytest.mark.parametrize(("status", "body", "message", "code", "type_"), [
    (401, b'{"error": {"message": "bad key", "type": "invalid_request_error", "param": null,'
          b' "code": "invalid_api_key"}}', "bad key", "invalid_api_key", "invalid_request_error"),
    (429, b'{"error": {"message": "Rate limited", "code": 429, "metadata": {}}}',
     "Rate limited", "429", "invalid_request_error"),
    (400, b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}',
     "too long", "400", "BadRequestError"),
    (500, b'{"error": "model crashed"}', "model crashed", None, "server_error"),
    (502, b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", None, "server_error"),
    (503, b"", "The upstream returned an error (HTTP 503).", None, "server_error"),
])
def test_upstream_error_shapes(status: int, body: bytes, message: str, code: str | None,
                               type_: str) -> None:
    assert upstream_error(status, body) == {"error": {"message": message, "type": type_,
                                                      "param": None, "code": code}}


def test_raw_reasoning_is_reasoning_text_content() -> None:
    call = translate_request({"model": "m", "input": "x"}, raw_reasoning=True)
    r = translate_completion(call, completion({"content": "a", "reasoning": "hmm"}), RID, 5)
    validate_response(r)
    assert (r["output"][0]["summary"], r["output"][0]["content"]) == (
        [], [{"type": "reasoning_text", "text": "hmm"}])


def test_fresh_ids_are_their_prefix_and_32_hex_digits_never_repeated() -> None:
    """The one id maker of adapter mode: Response ids, and the stored input items' ids."""
    ids = {new_id("resp_") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch("resp_[0-9a-f]{32}", i) for i in ids)
