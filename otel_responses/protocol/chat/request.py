"""Responses request body → Chat Completions request body, or an `AdapterRequestError` naming
the parameter that cannot be honoured."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

UnsupportedTools = Literal["drop", "error"]

BUILTIN_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "code_interpreter", "computer", "computer_use", "computer_use_preview",
    "image_generation", "mcp", "local_shell", "shell", "apply_patch", "tool_search",
})
"""Tools the hosted Responses API runs itself; a chat server cannot."""

NAMESPACE_SEPARATOR = "__"
"""Joins a namespace and a tool name into one chat function name (chat names allow
``[A-Za-z0-9_-]`` only, so not the ``.`` the telemetry uses)."""

# `include` values: logprobs are honoured; encrypted reasoning is accepted (there is none to
# encrypt); the others only add data to built-in tool items, which the adapter never produces.
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
_HARMLESS_INCLUDES = frozenset({
    "reasoning.encrypted_content", "web_search_call.action.sources", "web_search_call.results",
    "file_search_call.results", "code_interpreter_call.outputs",
    "computer_call_output.output.image_url", "message.input_image.image_url",
})

# Request keys honoured below; any other key is refused (never silently ignored).
_KNOWN_KEYS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "top_logprobs", "include", "text", "reasoning",
    "user", "safety_identifier", "metadata", "prompt_cache_key", "client_metadata", "stream",
    "stream_options", "store", "previous_response_id", "truncation", "service_tier",
    "background", "max_tool_calls", "presence_penalty", "frequency_penalty",
    "prompt_cache_retention",
})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class AdapterRequestError(Exception):
    """A request the adapter refuses: answered as HTTP 400 `invalid_request_error`."""

    status = 400

    def __init__(self, message: str, param: str | None, code: str = "unsupported_parameter"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ToolName:
    """A Responses tool as the client named it, behind one chat function name."""

    name: str
    namespace: str | None = None
    custom: bool = False  # a `custom` tool: its call carries {"input": text}


@dataclass(frozen=True)
class ChatCall:
    """Everything one adapted call needs: what to send upstream and how to translate back.

    `request`: the chat body (do not mutate it: `with_max_tokens` copies). `tool_names`: chat
    function name → the Responses tool behind it. `settings`: the request's settings as the
    Response object echoes them. `dropped_tools`: built-in tool types dropped from the request.
    `dropped_reasoning`: reasoning items in the input that carried readable text (dropped all
    the same; ones carrying only encrypted content are not counted). `client_metadata` and
    `prompt_cache_key` stay on our side (for the span), never sent upstream.
    `reasoning_part`: how the upstream's reasoning text is given back. "summary_text" (the
    default) streams it as reasoning summary events, the only reasoning events both the openai
    SDK and the Open Responses specification define (and what Codex shows by default);
    "reasoning_text" streams OpenAI's raw-reasoning events (`response.reasoning_text.*`),
    which Open Responses names differently (`response.reasoning.*`).
    """

    request: dict[str, Any]
    stream: bool
    logprobs: bool
    tool_names: Mapping[str, ToolName]
    settings: Mapping[str, Any]
    dropped_tools: tuple[str, ...] = ()
    dropped_reasoning: int = 0
    client_metadata: Mapping[str, Any] | None = None
    prompt_cache_key: str | None = None
    reasoning_part: Literal["summary_text", "reasoning_text"] = "summary_text"


def with_max_tokens(request: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a chat `request` with `max_completion_tokens` renamed `max_tokens`, for
    servers that reject the newer name."""
    out = dict(request)
    if "max_completion_tokens" in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    return out


def _refuse(param: str, message: str, code: str = "unsupported_parameter") -> AdapterRequestError:
    return AdapterRequestError(message, param, code)


def _require(cond: bool, param: str, message: str, code: str = "invalid_value") -> None:
    if not cond:
        raise _refuse(param, message, code)


def _obj(value: Any, param: str) -> Mapping[str, Any]:
    _require(isinstance(value, Mapping), param, f"'{param}' must be an object.", "invalid_type")
    return value


def _list(value: Any, param: str) -> list[Any]:
    _require(isinstance(value, list), param, f"'{param}' must be an array.", "invalid_type")
    return value


def _str(value: Any, param: str) -> str:
    _require(isinstance(value, str), param, f"'{param}' must be a string.", "invalid_type")
    return value


# ---- tools ----------------------------------------------------------------------------------

def _function_spec(tool: Mapping[str, Any], name: str, param: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        spec["description"] = _str(tool["description"], f"{param}.description")
    if tool.get("parameters") is not None:
        spec["parameters"] = _obj(tool["parameters"], f"{param}.parameters")
    if tool.get("strict") is not None:
        spec["strict"] = bool(tool["strict"])
    return spec


def _custom_spec(tool: Mapping[str, Any], name: str, param: str) -> dict[str, Any]:
    """A free-form `custom` tool as a function taking one string, `input`; a grammar the chat
    server cannot enforce is shown to the model in the parameter's description."""
    about = "The tool's free-form input."
    fmt = tool.get("format")
    if fmt is not None:
        fmt = _obj(fmt, f"{param}.format")
        if fmt.get("type") == "grammar":
            about += (f" It must follow this {fmt.get('syntax', '')} grammar:\n"
                      f"{_str(fmt.get('definition'), f'{param}.format.definition')}")
        else:
            _require(fmt.get("type") == "text", f"{param}.format",
                     "Only 'text' and 'grammar' custom tool formats are supported.")
    spec: dict[str, Any] = {
        "name": name,
        "parameters": {"type": "object", "properties": {"input": {"type": "string",
                                                                  "description": about}},
                       "required": ["input"], "additionalProperties": False},
    }
    if tool.get("description") is not None:
        spec["description"] = _str(tool["description"], f"{param}.description")
    return spec


def _echo_function(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A function tool as a Response object lists it (every field present)."""
    return {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict")}


@dataclass
class _Tools:
    chat: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, ToolName] = field(default_factory=dict)
    echo: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def add(self, tool: Mapping[str, Any], namespace: str | None, param: str) -> None:
        kind = tool.get("type")
        _require(kind in ("function", "custom"), f"{param}.type",
                 f"Tool type '{kind}' is not supported inside a namespace.")
        chat_name = _qualified(tool.get("name"), namespace, param)
        _require(chat_name not in self.names, param,
                 f"Tool name '{chat_name}' is defined twice.")
        custom = kind == "custom"
        spec = (_custom_spec if custom else _function_spec)(tool, chat_name, param)
        self.chat.append({"type": "function", "function": spec})
        self.names[chat_name] = ToolName(tool["name"], namespace, custom)


def _tools(value: Any, unsupported: UnsupportedTools) -> _Tools:
    out = _Tools()
    for i, tool in enumerate(_list(value, "tools")):
        param = f"tools[{i}]"
        tool = _obj(tool, param)
        kind = tool.get("type")
        if kind in BUILTIN_TOOLS:
            _require(unsupported == "drop", param,
                     f"The built-in tool '{kind}' cannot run on a Chat Completions server.",
                     "unsupported_tool")
            out.dropped.append(kind)
            continue
        if kind == "namespace":
            ns = _str(tool.get("name"), f"{param}.name")
            for j, inner in enumerate(_list(tool.get("tools"), f"{param}.tools")):
                out.add(_obj(inner, f"{param}.tools[{j}]"), ns, f"{param}.tools[{j}]")
            out.echo.append(dict(tool))
        elif kind in ("function", "custom"):
            out.add(tool, None, param)
            out.echo.append(_echo_function(tool) if kind == "function" else dict(tool))
        else:
            raise _refuse(f"{param}.type", f"Unknown tool type '{kind}'.", "invalid_value")
    return out


def _qualified(name: Any, namespace: Any, param: str) -> str:
    """The chat function name of a (possibly namespaced) Responses tool name."""
    name = _str(name, f"{param}.name")
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _chat_tool_name(tools: _Tools, name: Any, namespace: Any, param: str) -> str:
    chat_name = _qualified(name, namespace, param)
    _require(chat_name in tools.names, f"{param}.name",
             f"tool_choice names '{chat_name}', which is not among the tools sent upstream.")
    return chat_name


def _tool_choice(value: Any, tools: _Tools) -> Any:
    if isinstance(value, str):
        _require(value in ("auto", "none", "required"), "tool_choice",
                 f"Unknown tool_choice '{value}'.")
        return value
    choice = _obj(value, "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = _chat_tool_name(tools, choice.get("name"), choice.get("namespace"), "tool_choice")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode")
        _require(mode in ("auto", "required"), "tool_choice.mode",
                 f"Unknown allowed_tools mode '{mode}'.")
        allowed = []
        for i, tool in enumerate(_list(choice.get("tools"), "tool_choice.tools")):
            param = f"tool_choice.tools[{i}]"
            tool = _obj(tool, param)
            _require(tool.get("type") in ("function", "custom"), f"{param}.type",
                     "allowed_tools can only name function and custom tools here.")
            name = _chat_tool_name(tools, tool.get("name"), tool.get("namespace"), param)
            allowed.append({"type": "function", "function": {"name": name}})
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    raise _refuse("tool_choice", f"tool_choice of type '{kind}' cannot be honoured by a Chat "
                  "Completions server.")


# ---- input ----------------------------------------------------------------------------------

def _image_part(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    _require(part.get("file_id") is None, f"{param}.file_id",
             "Images given by file_id cannot be sent to a Chat Completions server; "
             "use image_url (a URL or a data URL).", "unsupported_value")
    image: dict[str, Any] = {"url": _str(part.get("image_url"), f"{param}.image_url")}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _file_part(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    _require(part.get("file_url") is None, f"{param}.file_url",
             "Files given by URL cannot be sent to a Chat Completions server; use file_data.",
             "unsupported_value")
    file: dict[str, Any] = {}
    if part.get("file_id") is not None:
        file["file_id"] = _str(part["file_id"], f"{param}.file_id")
    if part.get("file_data") is not None:
        file["file_data"] = _str(part["file_data"], f"{param}.file_data")
        if part.get("filename") is not None:
            file["filename"] = _str(part["filename"], f"{param}.filename")
    _require(bool(file), param, "input_file needs file_data or file_id.")
    return {"type": "file", "file": file}


def _text(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    return {"type": "text", "text": _str(part.get("text"), f"{param}.text")}


_USER_PARTS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "input_text": _text, "output_text": _text, "text": _text,
    "input_image": _image_part, "input_file": _file_part,
}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _content(value: Any, param: str, allowed: frozenset[str] | None) -> str | list[Any]:
    """Message content as chat content: a string stays a string, parts map one to one. Text
    collapses to a string, which every chat server takes (some take nothing else for system
    and tool messages, llama-cpp-python's among them): one text part, or where only text is
    allowed (`allowed` given) every part, joined by blank lines."""
    if isinstance(value, str):
        return value
    parts = []
    for i, part in enumerate(_list(value, param)):
        p = f"{param}[{i}]"
        part = _obj(part, p)
        kind = part.get("type")
        convert = _USER_PARTS.get(kind) if allowed is None or kind in allowed else None
        _require(convert is not None, f"{p}.type",
                 f"Content part '{kind}' cannot be sent here to a Chat Completions server.",
                 "unsupported_value")
        parts.append(convert(part, p))
    if allowed is not None or (len(parts) == 1 and parts[0]["type"] == "text"):
        return "\n\n".join(part["text"] for part in parts)
    return parts


@dataclass
class _Messages:
    tools: _Tools
    out: list[dict[str, Any]] = field(default_factory=list)
    dropped_reasoning: int = 0

    def message(self, item: Mapping[str, Any], param: str) -> None:
        role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
        _require(role is not None, f"{param}.role", f"Unknown role '{item.get('role')}'.")
        content = item.get("content")
        if role == "assistant":
            self._assistant(content, param)
            return
        allowed = None if role == "user" else _TEXT_PARTS  # chat system messages are text only
        self.out.append({"role": role, "content": _content(content, f"{param}.content", allowed)})

    def _assistant(self, content: Any, param: str) -> None:
        msg: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(content, str):
            msg["content"] = content
        else:
            texts, refusals = [], []
            for i, part in enumerate(_list(content, f"{param}.content")):
                p = f"{param}.content[{i}]"
                part = _obj(part, p)
                if part.get("type") == "refusal":
                    refusals.append(_str(part.get("refusal"), f"{p}.refusal"))
                else:
                    _require(part.get("type") in _TEXT_PARTS, f"{p}.type",
                             f"Content part '{part.get('type')}' cannot be sent in an "
                             "assistant message.", "unsupported_value")
                    texts.append(_str(part.get("text"), f"{p}.text"))
            msg["content"] = "".join(texts) if texts or not refusals else None
            if refusals:
                msg["refusal"] = "".join(refusals)
        self.out.append(msg)

    def _call(self, item: Mapping[str, Any], param: str, arguments: str) -> None:
        name = _qualified(item.get("name"), item.get("namespace"), param)
        call = {"id": _str(item.get("call_id"), f"{param}.call_id"), "type": "function",
                "function": {"name": name, "arguments": arguments}}
        last = self.out[-1] if self.out else None
        # Consecutive calls are one assistant turn: merge them (and into the text before them).
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            # Empty rather than null or absent: llama-cpp-python refuses a null content and
            # its chat templates read the key; OpenAI and vLLM take either.
            self.out.append({"role": "assistant", "content": "", "tool_calls": [call]})

    def function_call(self, item: Mapping[str, Any], param: str) -> None:
        self._call(item, param, _str(item.get("arguments"), f"{param}.arguments"))

    def custom_tool_call(self, item: Mapping[str, Any], param: str) -> None:
        self._call(item, param, json.dumps({"input": _str(item.get("input"), f"{param}.input")}))

    def call_output(self, item: Mapping[str, Any], param: str) -> None:
        output = item.get("output")
        content = _content(output, f"{param}.output", _TEXT_PARTS)  # chat tool results: text
        self.out.append({"role": "tool", "tool_call_id": _str(item.get("call_id"),
                                                              f"{param}.call_id"),
                         "content": content})

    def reasoning(self, item: Mapping[str, Any], param: str) -> None:
        # Chat servers take no reasoning back in the messages, so it is dropped; counted when
        # it carried readable text (encrypted-only items, as Codex sends, are expected).
        if any(isinstance(p, Mapping) and p.get("text")
               for p in (item.get("summary") or []) + (item.get("content") or [])):
            self.dropped_reasoning += 1

    def add(self, item: Any, param: str) -> None:
        item = _obj(item, param)
        kind = item.get("type", "message")
        handler = {
            "message": self.message, "function_call": self.function_call,
            "custom_tool_call": self.custom_tool_call,
            "function_call_output": self.call_output,
            "custom_tool_call_output": self.call_output, "reasoning": self.reasoning,
        }.get(kind)
        _require(handler is not None, f"{param}.type",
                 f"Input items of type '{kind}' cannot be sent to a Chat Completions server.",
                 "unsupported_value")
        handler(item, param)


# ---- parameters -----------------------------------------------------------------------------

def _response_format(text: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    fmt = _obj(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    _require(kind == "json_schema", "text.format.type", f"Unknown text.format type '{kind}'.")
    schema = {"name": _str(fmt.get("name"), "text.format.name"),
              "schema": _obj(fmt.get("schema"), "text.format.schema")}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"type": "json_schema", "json_schema": schema}


def _refuse_set(body: Mapping[str, Any], key: str, why: str, ok: Callable[[Any], bool]) -> None:
    if body.get(key) is not None and not ok(body[key]):
        raise _refuse(key, f"'{key}' cannot be honoured: {why}")


def _check_unhonoured(body: Mapping[str, Any]) -> None:
    for key in body:
        _require(key in _KNOWN_KEYS, key, f"Unknown parameter '{key}'.", "unknown_parameter")
    _refuse_set(body, "previous_response_id", "the adapter keeps no stored responses.",
                lambda v: False)
    _refuse_set(body, "background", "background mode needs a response store.", lambda v: not v)
    _refuse_set(body, "truncation", "a Chat Completions server cannot truncate the input.",
                lambda v: v == "disabled")
    _refuse_set(body, "max_tool_calls", "a Chat Completions server cannot limit tool calls.",
                lambda v: False)
    _refuse_set(body, "service_tier", "only 'auto' and 'default' are served.",
                lambda v: v in ("auto", "default"))


def _settings(body: Mapping[str, Any], tools: _Tools) -> dict[str, Any]:
    """The request's settings as a Response object echoes them (OpenAI's defaults filled in
    for those not given, or given as null)."""
    def given(key: str, default: Any) -> Any:
        value = body.get(key)
        return default if value is None else value

    reasoning = dict(body.get("reasoning") or {})
    text = dict(body.get("text") or {})
    text.setdefault("format", {"type": "text"})
    return {
        "instructions": body.get("instructions"),
        "tools": tools.echo,
        "tool_choice": given("tool_choice", "auto"),
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "temperature": given("temperature", 1.0),
        "top_p": given("top_p", 1.0),
        "presence_penalty": given("presence_penalty", 0.0),
        "frequency_penalty": given("frequency_penalty", 0.0),
        "top_logprobs": given("top_logprobs", 0),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "metadata": given("metadata", {}),
        "previous_response_id": None,
        "store": False,  # nothing is stored (yet): saying otherwise would be a lie
        "background": False,
        "truncation": "disabled",
        "service_tier": given("service_tier", "default"),
        "text": text,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
    }


def translate_request(body: Mapping[str, Any], *, unsupported_tools: UnsupportedTools = "drop",
                      raw_reasoning: bool = False) -> ChatCall:
    """Translate a Responses create body; raise `AdapterRequestError` for what cannot be
    honoured (built-in tools are dropped instead when `unsupported_tools` is "drop").
    `raw_reasoning`: give reasoning back as `reasoning_text` (see `ChatCall`)."""
    body = _obj(body, "body")
    _check_unhonoured(body)
    model = _str(body.get("model"), "model")
    tools = _tools(body.get("tools") or [], unsupported_tools)
    messages = _Messages(tools)
    if body.get("instructions") is not None:
        messages.out.append({"role": "system",
                             "content": _str(body["instructions"], "instructions")})
    source = body.get("input")
    _require(source is not None, "input", "'input' is required.", "missing_required_parameter")
    if isinstance(source, str):
        messages.out.append({"role": "user", "content": source})
    else:
        for i, item in enumerate(_list(source, "input")):
            messages.add(item, f"input[{i}]")

    chat: dict[str, Any] = {"model": model, "messages": messages.out}
    if tools.chat:
        chat["tools"] = tools.chat
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"], tools)
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    elif body.get("tool_choice") not in (None, "auto", "none"):
        raise _refuse("tool_choice", "tool_choice asks for a tool, but no tool is sent upstream.")
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"),
                     ("max_output_tokens", "max_completion_tokens"), ("user", "user"),
                     ("safety_identifier", "safety_identifier"),
                     ("presence_penalty", "presence_penalty"),
                     ("frequency_penalty", "frequency_penalty")):
        if body.get(src) is not None:
            chat[dst] = body[src]

    include = body.get("include") or []
    for i, value in enumerate(_list(include, "include")):
        _require(value == _LOGPROBS_INCLUDE or value in _HARMLESS_INCLUDES, f"include[{i}]",
                 f"include value '{value}' is not supported.")
    logprobs = _LOGPROBS_INCLUDE in include or bool(body.get("top_logprobs"))
    if logprobs:
        chat["logprobs"] = True
        if body.get("top_logprobs"):
            chat["top_logprobs"] = body["top_logprobs"]

    text = _obj(body.get("text") or {}, "text")
    response_format = _response_format(text)
    if response_format is not None:
        chat["response_format"] = response_format
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    reasoning = _obj(body.get("reasoning") or {}, "reasoning")
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]

    stream = bool(body.get("stream"))
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    _obj(body.get("metadata") or {}, "metadata")
    client_metadata = body.get("client_metadata")
    return ChatCall(
        request=chat, stream=stream, logprobs=logprobs, tool_names=tools.names,
        settings=_settings(body, tools), dropped_tools=tuple(tools.dropped),
        dropped_reasoning=messages.dropped_reasoning,
        client_metadata=client_metadata if isinstance(client_metadata, Mapping) else None,
        prompt_cache_key=body.get("prompt_cache_key"),
        reasoning_part="reasoning_text" if raw_reasoning else "summary_text",
    )
