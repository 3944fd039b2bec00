"""Chat Completions results → Responses objects: output items, usage, the Response object (one
builder for the streamed and the non-streamed path) and OpenAI-shaped upstream errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from otel_responses.protocol.chat.request import ChatCall

COMPLETED, INCOMPLETE, FAILED = "completed", "incomplete", "failed"
# Chat finish reasons that end a Response as incomplete, with the reason it reports.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
_MAX_ERROR_TEXT = 4096  # characters of a non-JSON upstream error body kept as the message


def outcome(finish_reason: str | None) -> tuple[str, str | None]:
    """A chat `finish_reason` as (Response status, incomplete_details reason)."""
    reason = _INCOMPLETE_REASONS.get(finish_reason)  # type: ignore[arg-type]
    return (INCOMPLETE, reason) if reason else (COMPLETED, None)


def new_id(prefix: str) -> str:
    """A fresh id: ``prefix`` (``resp_``, ``msg_``…) and 32 random hex digits."""
    return prefix + uuid.uuid4().hex


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    """A stable, unique id for an output item of the response `response_id`."""
    return f"{prefix}_{response_id.removeprefix('resp_')}{output_index:03d}"


def text_part(kind: str, text: str, logprobs: list[Any] | None = None) -> dict[str, Any]:
    """A part: `output_text`, `refusal`, `reasoning_text` or `summary_text`."""
    if kind == "output_text":
        return {"type": "output_text", "annotations": [], "logprobs": logprobs or [],
                "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": kind, "text": text}


def message_item(id_: str, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": id_, "type": "message", "status": status, "content": parts,
            "role": "assistant"}


def reasoning_item(id_: str, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A reasoning item holding `summary_text` parts in `summary`, `reasoning_text` parts in
    `content` (see `ChatCall.reasoning_part`)."""
    item = {"id": id_, "type": "reasoning", "status": status,
            "summary": [p for p in parts if p["type"] == "summary_text"]}
    content = [p for p in parts if p["type"] == "reasoning_text"]
    if content:
        item["content"] = content
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's free-form input from the {"input": ...} arguments the model wrote (the
    raw arguments if the model wrote something else)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def is_custom(call: ChatCall, chat_name: str) -> bool:
    """Whether the chat function `chat_name` stands for a `custom` tool."""
    tool = call.tool_names.get(chat_name)
    return tool is not None and tool.custom


def call_item_id(call: ChatCall, response_id: str, chat_name: str, output_index: int) -> str:
    return item_id("ctc" if is_custom(call, chat_name) else "fc", response_id, output_index)


def call_item(call: ChatCall, id_: str, call_id: str, chat_name: str, arguments: str,
              status: str) -> dict[str, Any]:
    """A chat tool call as a `function_call` or `custom_tool_call` item, under the name (and
    namespace) the client gave the tool."""
    tool = call.tool_names.get(chat_name)
    if tool is not None and tool.custom:
        item = {"id": id_, "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": tool.name, "input": custom_input(arguments)}
    else:
        item = {"id": id_, "type": "function_call", "status": status, "arguments": arguments,
                "call_id": call_id, "name": tool.name if tool else chat_name}
    if tool is not None and tool.namespace:
        item["namespace"] = tool.namespace
    return item


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(usage: Any) -> dict[str, Any] | None:
    """Chat `usage` as Responses usage; None when the upstream reported none (never made up)."""
    if not isinstance(usage, Mapping) or "prompt_tokens" not in usage:
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    input_tokens, output_tokens = _count(usage.get("prompt_tokens")), _count(
        usage.get("completion_tokens"))
    # DeepSeek reports cache hits outside prompt_tokens_details.
    cached = prompt.get("cached_tokens", usage.get("prompt_cache_hit_tokens"))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": _count(cached),
                                 "cache_write_tokens": _count(prompt.get("cache_write_tokens"))},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": _count(completion.get("reasoning_tokens"))},
        "total_tokens": _count(usage.get("total_tokens")) or input_tokens + output_tokens,
    }


def build_response(call: ChatCall, response_id: str, created_at: int, *, model: str,
                   status: str, output: Iterable[dict[str, Any]] = (),
                   usage: dict[str, Any] | None = None, incomplete_reason: str | None = None,
                   error: dict[str, Any] | None = None,
                   completed_at: int | None = None) -> dict[str, Any]:
    """The Response object: the only place one is built, streamed or not."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at if status == COMPLETED else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": model,
        "output": list(output),
        "usage": usage,
        **call.settings,
    }


def _reasoning_text(message: Mapping[str, Any]) -> str | None:
    text = message.get("reasoning_content")
    if not isinstance(text, str):
        text = message.get("reasoning")  # OpenRouter, Groq, vLLM (newer)
    return text if isinstance(text, str) and text else None


def translate_completion(call: ChatCall, completion: Mapping[str, Any], response_id: str,
                         created_at: int, completed_at: int | None = None) -> dict[str, Any]:
    """A non-streamed chat completion as the Response object."""
    model = completion.get("model") or call.request["model"]
    choices = completion.get("choices") or []
    if not choices:
        return build_response(call, response_id, created_at, model=model, status=FAILED,
                              usage=usage_of(completion.get("usage")),
                              error={"code": "server_error",
                                     "message": "The upstream returned no choices."})
    choice = choices[0]
    message = choice.get("message") or {}
    status, reason = outcome(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    reasoning = _reasoning_text(message)
    if reasoning:
        output.append(reasoning_item(item_id("rs", response_id, 0), status,
                                     [text_part(call.reasoning_part, reasoning)]))
    parts = []
    if isinstance(message.get("content"), str) and message["content"]:
        logprobs = logprobs_of(choice.get("logprobs")) if call.logprobs else None
        parts.append(text_part("output_text", message["content"], logprobs))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(text_part("refusal", message["refusal"]))
    if parts:
        output.append(message_item(item_id("msg", response_id, len(output)), status, parts))
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function") or {}
        index, name = len(output), function.get("name") or ""
        output.append(call_item(call, call_item_id(call, response_id, name, index),
                                tool_call.get("id") or item_id("call", response_id, index),
                                name, function.get("arguments") or "", status))
    return build_response(call, response_id, created_at, model=model, status=status,
                          output=output, usage=usage_of(completion.get("usage")),
                          incomplete_reason=reason, completed_at=completed_at)


def logprobs_of(choice_logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's `logprobs.content` as Responses logprobs."""
    if not isinstance(choice_logprobs, Mapping):
        return []
    return [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
             "bytes": t.get("bytes") or list(t.get("token", "").encode()),
             "top_logprobs": [{"token": a.get("token", ""), "logprob": a.get("logprob", 0.0),
                               "bytes": a.get("bytes") or list(a.get("token", "").encode())}
                              for a in t.get("top_logprobs") or []]}
            for t in choice_logprobs.get("content") or []]


# ---- errors ---------------------------------------------------------------------------------

def _default_type(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def _code(value: Any) -> str | None:
    return None if value is None else str(value)  # OpenRouter sends integer codes


def error_payload(error: Any, status: int = 500) -> dict[str, Any]:
    """An error object (`{"message", "type", "param", "code"}`) from whatever an upstream put
    where OpenAI puts its error: an object, a string, or nothing useful."""
    if isinstance(error, Mapping):
        message = error.get("message")
        return {"message": message if isinstance(message, str) and message
                else f"The upstream returned an error (HTTP {status}).",
                "type": error.get("type") if isinstance(error.get("type"), str)
                else _default_type(status),
                "param": error.get("param") if isinstance(error.get("param"), str) else None,
                "code": _code(error.get("code"))}
    text = error if isinstance(error, str) and error.strip() else \
        f"The upstream returned an error (HTTP {status})."
    return {"message": text.strip()[:_MAX_ERROR_TEXT], "type": _default_type(status),
            "param": None, "code": None}


def upstream_error(status: int, body: bytes | str) -> dict[str, Any]:
    """An upstream's 4xx/5xx body, in any shape (OpenAI's, OpenRouter's, a bare object, plain
    text), as an OpenAI-shaped error body `{"error": {...}}` that keeps the message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, Mapping):
        inner = value.get("error")
        # {"error": {...}} / {"error": "text"} / a bare {"message": ...} (vLLM's older shape)
        value = inner if inner is not None else value
    return {"error": error_payload(value, status)}
