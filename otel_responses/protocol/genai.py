"""OTel GenAI semantic-convention attributes (inference span) for one Responses call."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from otel_responses.protocol.messages import (
    TOOL,
    Attributes,
    Message,
    Part,
    ToolCall,
    dumps,
    instruction_messages,
    items_messages,
    mapping,
    str_or_none,
)
from otel_responses.protocol.response_attributes import finish_reason, usage

# Names from the GenAI registry (opentelemetry-semantic-conventions is not a protocol dependency).
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
OPENAI_API_TYPE = "openai.api.type"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_STREAM = "gen_ai.request.stream"
CONVERSATION_ID = "gen_ai.conversation.id"
OUTPUT_TYPE = "gen_ai.output.type"
OPENAI_REQUEST_SERVICE_TIER = "openai.request.service_tier"
OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"

_OUTPUT_TYPES = {"json_schema": "json", "json_object": "json", "text": "text"}
_MEDIA = frozenset({"image", "audio", "document"})  # the part type is the modality

JsonPart = dict[str, Any]


# ---- message parts (gen-ai-input-messages.json / gen-ai-output-messages.json) ---------------

def _media_part(part: Part) -> JsonPart:
    """blob for inline data, uri for links, file for uploaded files."""
    inline = part.data or (part.url if part.url and part.url.startswith("data:") else None)
    out: JsonPart
    if inline:
        # Parts keep the data URL's mime type; the blob holds only the base64 after the comma.
        content = inline.split(",", 1)[1] if inline.startswith("data:") else inline
        out = {"type": "blob", "modality": part.type, "content": content}
    elif part.url:
        out = {"type": "uri", "modality": part.type, "uri": part.url}
    elif part.id:
        out = {"type": "file", "modality": part.type, "file_id": part.id}
    else:
        out = {"type": part.type}
    if part.mime_type:
        out["mime_type"] = part.mime_type
    return out


def _part(part: Part) -> JsonPart:
    if part.type in _MEDIA:
        return _media_part(part)
    if part.type == "item_reference":
        return {"type": "item_reference", "id": part.id}
    # text, reasoning, and refusal (a generic part: the schema has no refusal type)
    return {"type": part.type, "content": part.text or ""}


def _arguments(arguments: str | None) -> Any:
    if arguments is None:
        return None
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # not JSON (or absurdly deep): keep the text
        return arguments


def _tool_call_part(call: ToolCall) -> JsonPart:
    arguments = _arguments(call.arguments)
    if call.server is None:
        return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments}
    details = dict(arguments) if isinstance(arguments, dict) else {"arguments": arguments}
    return {"type": "server_tool_call", "id": call.id, "name": call.server,
            "server_tool_call": {**details, "type": call.server}}


def _parts(message: Message) -> list[JsonPart]:
    body: list[JsonPart] = [_part(p) for p in message.parts]
    if message.content is not None:
        body.insert(0, {"type": "text", "content": message.content})
    if message.role == TOOL:
        result: Any = message.content if not message.parts else body
        if message.server is not None:
            body = [{"type": "server_tool_call_response", "id": message.tool_call_id,
                     "server_tool_call_response": {"type": message.server, "output": result}}]
        else:
            body = [{"type": "tool_call_response", "id": message.tool_call_id,
                     "response": result}]
    return body + [_tool_call_part(c) for c in message.tool_calls]


def _input_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "parts": _parts(message)}
        if message.name:
            entry["name"] = message.name
        out.append(entry)
    return out


def _output_messages(messages: Iterable[Message], reason: str | None) -> list[dict[str, Any]]:
    # One generation: every output item is a part of one assistant message (the spec's own
    # Responses example). A response without a finish reason was cut short: "error".
    parts = [p for m in messages for p in _parts(m)]
    return [{"role": "assistant", "parts": parts, "finish_reason": reason or "error"}]


def _tool_definitions(tools: list[Any]) -> list[dict[str, Any]]:
    # description and parameters are NOT RECOMMENDED by default (size); the JSON is in llm.tools.
    defs = []
    for tool in tools:
        t = mapping(tool)
        defs.append({k: t[k] for k in ("type", "name") if isinstance(t.get(k), str)})
    return defs


# ---- attributes -----------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _conversation_id(value: Any) -> str | None:
    return str_or_none(value) or str_or_none(mapping(value).get("id"))


def _request_attributes(request: Mapping[str, Any]) -> Attributes:
    max_tokens = request.get("max_output_tokens")
    tier = str_or_none(request.get("service_tier"))
    fmt = str_or_none(mapping(mapping(request.get("text")).get("format")).get("type"))
    values: tuple[tuple[str, Any], ...] = (
        (REQUEST_MODEL, str_or_none(request.get("model"))),
        (REQUEST_MAX_TOKENS, max_tokens if type(max_tokens) is int else None),
        (REQUEST_TEMPERATURE, _number(request.get("temperature"))),
        (REQUEST_TOP_P, _number(request.get("top_p"))),
        (REQUEST_STREAM, True if request.get("stream") is True else None),  # only if streaming
        (CONVERSATION_ID, _conversation_id(request.get("conversation"))),
        (OUTPUT_TYPE, _OUTPUT_TYPES.get(fmt) if fmt else None),
        (OPENAI_REQUEST_SERVICE_TIER, tier if tier != "auto" else None),
    )
    attrs: Attributes = {k: v for k, v in values if v is not None}
    instructions = instruction_messages(request.get("instructions"))
    if instructions:
        attrs[SYSTEM_INSTRUCTIONS] = dumps([p for m in instructions for p in _parts(m)])
    if "input" in request:
        attrs[INPUT_MESSAGES] = dumps(_input_messages(items_messages(request.get("input"))))
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        attrs[TOOL_DEFINITIONS] = dumps(_tool_definitions(tools))
    return attrs


def _response_attributes(response: Mapping[str, Any]) -> Attributes:
    reason = finish_reason(response)
    counts = usage(response)
    values: tuple[tuple[str, Any], ...] = (
        (RESPONSE_ID, str_or_none(response.get("id"))),
        (RESPONSE_MODEL, str_or_none(response.get("model"))),
        (RESPONSE_FINISH_REASONS, [reason] if reason else None),
        (OPENAI_RESPONSE_SERVICE_TIER, str_or_none(response.get("service_tier"))),
        (CONVERSATION_ID, _conversation_id(response.get("conversation"))),
        (USAGE_INPUT_TOKENS, counts.input),
        (USAGE_OUTPUT_TOKENS, counts.output),
        (USAGE_CACHE_READ_INPUT_TOKENS, counts.cache_read),
        (USAGE_CACHE_CREATION_INPUT_TOKENS, counts.cache_write),
        (USAGE_REASONING_OUTPUT_TOKENS, counts.reasoning),
    )
    attrs: Attributes = {k: v for k, v in values if v is not None}
    messages = items_messages(response.get("output"))
    if messages:
        attrs[OUTPUT_MESSAGES] = dumps(_output_messages(messages, reason))
    return attrs


def genai_attributes(request: Mapping[str, Any] | None,
                     response: Mapping[str, Any] | None) -> Attributes:
    """GenAI inference-span attributes, including the opt-in message and tool JSON.

    ``gen_ai.provider.name`` is ``openai``; a caller fronting Azure overrides it.
    """
    attrs: Attributes = {OPERATION_NAME: "chat", PROVIDER_NAME: "openai",
                         OPENAI_API_TYPE: "responses"}
    if request is not None:
        attrs.update(_request_attributes(request))
    if response is not None:
        # Only the conversation id overlaps: the request's wins, the response merely echoes it.
        for key, value in _response_attributes(response).items():
            attrs.setdefault(key, value)
    return attrs
