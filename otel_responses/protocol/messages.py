"""Responses input/output items as neutral messages, and their OpenInference flattening.

One dispatch table serves request input, instructions and response output alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from openinference.semconv.trace import (
    AudioAttributes,
    DocumentAttributes,
    ImageAttributes,
    MessageAttributes,
    MessageContentAttributes,
    ToolCallAttributes,
)

AttributeValue = (str | bool | int | float
                  | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float])
Attributes = dict[str, AttributeValue]

ASSISTANT, TOOL = "assistant", "tool"
# A file_id-only image has no URL; this scheme names a file in the upstream's Files API.
FILE_URL_SCHEME = "openai-file:"
# dict first: it is what json.loads makes, and far cheaper to test for than the Mapping ABC.
_MAPPING = (dict, Mapping)
# One encoder for every call (json.dumps makes one per call, a span makes dozens of calls).
# Values only ever come from parsed JSON, so they cannot be circular: no check needed.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str,
                            check_circular=False)


def dumps(value: Any) -> str:
    """Compact JSON; never raises on odd values (they only ever come from parsed JSON)."""
    return _ENCODER.encode(value)


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value)


def _field(obj: Mapping[str, Any], key: str) -> str:
    """A text field: missing or null is empty, a non-string is its JSON."""
    value = obj.get(key)
    return "" if value is None else text_of(value)


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, _MAPPING) else {}


def items_of(value: Any) -> list[Any]:
    """A JSON array as a list; a lone object counts as a one-element list."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, _MAPPING) else []


# NamedTuples: immutable like frozen dataclasses, and several times cheaper to create (a long
# conversation makes hundreds on every span).
class Part(NamedTuple):
    """One content part. ``type``: text refusal reasoning image document audio item_reference."""

    type: str
    text: str | None = None
    id: str | None = None  # reasoning item id, file id, or the referenced item id
    url: str | None = None  # http(s) or data: URL of an image or file
    name: str | None = None  # file name
    mime_type: str | None = None
    data: str | None = None  # inline file content or base64 audio
    encrypted_content: str | None = None


class ToolCall(NamedTuple):
    id: str | None
    name: str
    arguments: str | None  # JSON text, kept verbatim (including "{}")
    server: str | None = None  # tool type when the upstream runs it (web_search, mcp, ...)


class Message(NamedTuple):
    role: str
    content: str | None = None
    parts: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    server: str | None = None  # on the result of a server-run tool: the tool type


# ---- content parts --------------------------------------------------------------------------

def _data_url_mime(url: str | None) -> str | None:
    if url and url.startswith("data:"):
        return url[5:].split(";", 1)[0].split(",", 1)[0] or None
    return None


def _text_part(part: Mapping[str, Any]) -> Part:
    return Part("text", text=_field(part, "text"))


def _logs_part(part: Mapping[str, Any]) -> Part:
    return Part("text", text=_field(part, "logs"))


def _refusal_part(part: Mapping[str, Any]) -> Part:
    return Part("refusal", text=_field(part, "refusal"))


def _image_part(part: Mapping[str, Any]) -> Part:
    url = str_or_none(part.get("image_url")) or str_or_none(part.get("url"))
    return Part("image", url=url, id=str_or_none(part.get("file_id")),
                mime_type=_data_url_mime(url))


def _file_part(part: Mapping[str, Any]) -> Part:
    data = str_or_none(part.get("file_data"))
    url = str_or_none(part.get("file_url"))
    return Part("document", id=str_or_none(part.get("file_id")), url=url,
                name=str_or_none(part.get("filename")), data=data,
                mime_type=_data_url_mime(data) or _data_url_mime(url))


def _audio_part(part: Mapping[str, Any]) -> Part:
    audio = mapping(part.get("input_audio"))
    fmt = str_or_none(audio.get("format"))
    return Part("audio", data=str_or_none(audio.get("data")),
                mime_type=f"audio/{fmt}" if fmt else None)


_PARTS: dict[str, Callable[[Mapping[str, Any]], Part]] = {
    "input_text": _text_part,
    "output_text": _text_part,
    "text": _text_part,
    "summary_text": _text_part,
    "reasoning_text": _text_part,
    "refusal": _refusal_part,
    "input_image": _image_part,
    "computer_screenshot": _image_part,
    "image": _image_part,  # code interpreter output
    "logs": _logs_part,  # code interpreter output
    "input_file": _file_part,
    "input_audio": _audio_part,
}


def _part_type(part: Any) -> str | None:
    kind = part.get("type") if isinstance(part, _MAPPING) else None
    return kind if isinstance(kind, str) and kind in _PARTS else None


def _part(part: Any) -> Part:
    kind = _part_type(part)
    if kind is not None:
        return _PARTS[kind](part)
    # Unknown parts stay visible as their JSON rather than vanishing (and leaving a gap).
    return Part("text", text=text_of(part))


def _result(value: Any) -> tuple[str | None, tuple[Part, ...]]:
    """(plain content, parts) for a tool result: parts when it is made of them, else text."""
    if isinstance(value, str):
        return value, ()
    if _part_type(value) is not None:
        return None, (_part(value),)
    if isinstance(value, list) and value and all(_part_type(p) is not None for p in value):
        return None, tuple(_part(p) for p in value)
    return dumps(value), ()


def _content(value: Any) -> tuple[str | None, tuple[Part, ...]]:
    """(plain content, parts) for a message's ``content``."""
    if value is None:
        return None, ()
    if isinstance(value, list):
        return None, tuple(map(_part, value))
    return _result(value)


# ---- items ----------------------------------------------------------------------------------

def _role(item: Mapping[str, Any]) -> str:
    return str_or_none(item.get("role")) or ASSISTANT


def _qualified(prefix: Any, name: Any) -> str:
    """``namespace.name`` for namespaced functions, ``server_label.name`` for MCP tools."""
    base = text_of(name) if name is not None else ""
    return f"{prefix}.{base}" if isinstance(prefix, str) and prefix else base


def call_name_of(item: Mapping[str, Any]) -> str:
    """How a call item is named: ``server_label.name`` for an MCP call, ``namespace.name``
    for a namespaced function, the name, else the item type."""
    name = str_or_none(item.get("name"))
    if name is None:
        return text_of(item.get("type"))
    return _qualified(str_or_none(item.get("server_label")) or item.get("namespace"), name)


def _arguments(value: Any) -> str | None:
    return None if value is None else text_of(value)


def call_id_of(item: Mapping[str, Any]) -> str | None:
    """A call item's ``call_id``, else its ``id`` (built-in calls have only that)."""
    return str_or_none(item.get("call_id")) or str_or_none(item.get("id"))


def _message(item: Mapping[str, Any]) -> list[Message]:
    content, parts = _content(item.get("content"))
    return [Message(_role(item), content=content, parts=parts)]


def _function_call(item: Mapping[str, Any]) -> list[Message]:
    call = ToolCall(call_id_of(item), call_name_of(item),
                    _arguments(item.get("arguments")))
    return [Message(ASSISTANT, tool_calls=(call,))]


def _custom_tool_call(item: Mapping[str, Any]) -> list[Message]:
    # Free-form input; wrapped as {"input": ...} so arguments stay JSON, as in the reference.
    call = ToolCall(call_id_of(item), call_name_of(item),
                    dumps({"input": item.get("input")}))
    return [Message(ASSISTANT, tool_calls=(call,))]


def _reasoning(item: Mapping[str, Any]) -> list[Message]:
    texts = [_field(mapping(s), "text") for s in items_of(item.get("summary"))]
    texts += [_field(mapping(c), "text") for c in items_of(item.get("content"))]
    part = Part("reasoning", text="\n".join(t for t in texts if t) or None,
                id=str_or_none(item.get("id")),
                encrypted_content=str_or_none(item.get("encrypted_content")))
    return [Message(ASSISTANT, parts=(part,))]


def _item_reference(item: Mapping[str, Any]) -> list[Message]:
    return [Message(_role(item), parts=(Part("item_reference", id=text_of(item.get("id"))),))]


def _unknown(item: Any) -> list[Message]:
    role = _role(item) if isinstance(item, _MAPPING) else ASSISTANT
    return [Message(role, content=text_of(item))]


_IDS = frozenset({"type", "id", "call_id"})
_ENVELOPE = _IDS | {"status"}


@dataclass(frozen=True, slots=True)
class _ToolOutput:
    """A tool result item → a ``tool`` message answering the call named by ``id_key``."""

    result_key: str | None  # None: the result is the item's own fields
    id_key: str = "call_id"

    def value(self, item: Mapping[str, Any]) -> Any:
        value = item.get(self.result_key) if self.result_key else None
        if value is None:  # also a failed apply_patch_call_output: show its status and the rest
            value = {k: v for k, v in item.items() if k not in _IDS}
        return value

    def answers(self, item: Mapping[str, Any]) -> str | None:
        """The id of the call this output answers."""
        return str_or_none(item.get(self.id_key)) or call_id_of(item)

    def __call__(self, item: Mapping[str, Any]) -> list[Message]:
        content, parts = _result(self.value(item))
        return [Message(TOOL, content=content, parts=parts, tool_call_id=self.answers(item),
                        name=str_or_none(item.get("name")))]


@dataclass(frozen=True, slots=True)
class _BuiltinCall:
    """A built-in tool call: the call, then its result when the item holds one.

    The OpenInference function name is the item type (the MCP tool name for MCP items).
    Arguments are the item's own ``arguments`` when it has them (MCP, tool search), else the
    JSON of its remaining fields (action, queries, code, operation, ...).
    """

    server: bool = True  # run by the upstream; False for tools the client runs (shell, ...)
    result_keys: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()  # large or opaque fields that are neither arguments nor result

    def call(self, item: Mapping[str, Any]) -> ToolCall:
        kind = text_of(item.get("type"))
        upstream = (self.server and item.get("execution") != "client") or says_server_ran(item)
        server = kind.removesuffix("_call") if upstream else None
        if "arguments" in item:
            arguments = _arguments(item.get("arguments"))
        else:
            skip = _ENVELOPE.union(self.result_keys, self.omit)
            arguments = dumps({k: v for k, v in item.items() if k not in skip})
        return ToolCall(call_id_of(item), call_name_of(item), arguments, server)

    def result(self, item: Mapping[str, Any]) -> Any:
        """The item's result: one result field's value, several as an object; None if none."""
        results = {k: item[k] for k in self.result_keys if item.get(k) not in (None, "", [])}
        if not results:
            return None
        return next(iter(results.values())) if len(results) == 1 else results

    def __call__(self, item: Mapping[str, Any]) -> list[Message]:
        call = self.call(item)
        messages = [Message(ASSISTANT, tool_calls=(call,))]
        value = self.result(item)
        if value is not None:
            content, parts = _result(value)
            messages.append(Message(TOOL, content=content, parts=parts, tool_call_id=call.id,
                                    server=call.server))
        return messages


_ITEMS: dict[str, Callable[[Mapping[str, Any]], list[Message]]] = {
    "message": _message,
    "function_call": _function_call,
    "custom_tool_call": _custom_tool_call,
    "reasoning": _reasoning,
    "item_reference": _item_reference,
    "function_call_output": _ToolOutput("output"),
    "custom_tool_call_output": _ToolOutput("output"),
    "computer_call_output": _ToolOutput("output"),
    "local_shell_call_output": _ToolOutput("output"),
    "shell_call_output": _ToolOutput("output"),
    "apply_patch_call_output": _ToolOutput("output"),
    "tool_search_output": _ToolOutput("tools"),
    "program_output": _ToolOutput("result"),
    "mcp_approval_response": _ToolOutput(None, id_key="approval_request_id"),
    "web_search_call": _BuiltinCall(),
    "file_search_call": _BuiltinCall(result_keys=("results",)),
    "code_interpreter_call": _BuiltinCall(result_keys=("outputs",)),
    "image_generation_call": _BuiltinCall(omit=("result",)),  # the image goes to *.images
    "computer_call": _BuiltinCall(server=False),
    "local_shell_call": _BuiltinCall(server=False),
    "shell_call": _BuiltinCall(server=False),
    "apply_patch_call": _BuiltinCall(server=False),
    "mcp_call": _BuiltinCall(result_keys=("output", "error")),
    "mcp_list_tools": _BuiltinCall(result_keys=("tools", "error")),
    "mcp_approval_request": _BuiltinCall(server=False),  # answered by the client
    "tool_search_call": _BuiltinCall(),  # run upstream unless `execution: client`
    "program": _BuiltinCall(),  # programmatic tool calling: its code runs upstream
    "compaction": _BuiltinCall(omit=("encrypted_content",)),
}


# Output items that are the model speaking: its messages and reasoning, and the calls it hands
# to the client to run (the turn then waits for their results). Every other output item is
# work the upstream did itself: a search, an MCP listing or call, interpreter runs, generated
# images. Their payload is not what the model said, so it is kept out of the output messages.
CLIENT_CALLS = frozenset({"function_call", "custom_tool_call", "computer_call",
                          "local_shell_call", "shell_call", "apply_patch_call",
                          "mcp_approval_request"})
"""Call types the client is asked to run, unless the item says the upstream ran it (a shell in
a hosted container): `handed_to_client` tells from the item."""
# Built-in tools the upstream runs unless the item says ``execution: client``.
_CLIENT_IF_SAID = frozenset({"tool_search_call"})
_SPEECH = frozenset({"message", "reasoning"})


def says_server_ran(item: Mapping[str, Any]) -> bool:
    """The item itself says the upstream ran it: a tool search's ``execution: server``, a
    shell in a hosted container (``environment.type: container_reference``)."""
    return (item.get("execution") == "server"
            or mapping(item.get("environment")).get("type") == "container_reference")


def answered_call(item: Any) -> str | None:
    """The id of the call a tool output item answers (a function's output, a shell's, an MCP
    approval…); None for any other item."""
    handler = _ITEMS.get(item_type(item) or "")
    return handler.answers(item) if isinstance(handler, _ToolOutput) else None


def call_outputs(items: Any) -> dict[str, int]:
    """call id → index of each tool output item (``…_output``) among a response's output:
    calls the upstream ran and answered in the same response (a hosted shell, a program)."""
    out: dict[str, int] = {}
    for index, item in enumerate(items_of(items)):
        call_id = answered_call(item)
        if call_id is not None:
            out.setdefault(call_id, index)
    return out


def handed_to_client(item: Any, outputs: Mapping[str, int]) -> bool:
    """Whether a response's output item is a call the client must run: a `CLIENT_CALLS` type
    whose item neither says the upstream ran it (`says_server_ran`) nor has its output among
    the response's (``outputs``: `call_outputs`); a tool search the item says the client runs
    (``execution: client``)."""
    kind = item_type(item)
    if kind in _CLIENT_IF_SAID:
        return item.get("execution") == "client"
    if kind not in CLIENT_CALLS:
        return False
    return not says_server_ran(item) and str_or_none(item.get("call_id")) not in outputs


def tool_output(item: Mapping[str, Any]) -> Any:
    """A tool output item's result (a shell's output, a tool search's tools, a program's
    result); None for any other item."""
    handler = _ITEMS.get(item_type(item) or "")
    return handler.value(item) if isinstance(handler, _ToolOutput) else None


def item_type(item: Any) -> str | None:
    """An item's type; ``message`` for an EasyInputMessage ({role, content} without one)."""
    if not isinstance(item, _MAPPING):
        return None
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    return kind if isinstance(kind, str) else None


def builtin_call(item: Mapping[str, Any]) -> tuple[ToolCall, Any] | None:
    """A built-in tool item's call (name, arguments) and result (None if it holds none), as
    its messages show them; None for any other item."""
    handler = _ITEMS.get(item_type(item) or "")
    if not isinstance(handler, _BuiltinCall):
        return None
    return handler.call(item), handler.result(item)


def item_messages(item: Any) -> list[Message]:
    """The message(s) for one input item; unknown items become a JSON message."""
    handler = _ITEMS.get(item_type(item) or "")
    return handler(item) if handler is not None else _unknown(item)


def items_messages(items: Any) -> list[Message]:
    """Messages for a Responses ``input``/``output``: a string is one user message."""
    if isinstance(items, str):
        return [Message("user", content=items)]
    return [m for item in items_of(items) for m in item_messages(item)]


def output_messages(items: Any) -> list[Message]:
    """Messages for a response's ``output``: only what the model spoke, its messages and
    reasoning and the calls it hands to the client (`handed_to_client`)."""
    outputs = call_outputs(items)
    return [m for item in items_of(items)
            if item_type(item) in _SPEECH or handed_to_client(item, outputs)
            for m in item_messages(item)]


def instruction_messages(instructions: Any) -> list[Message]:
    """``instructions``: a string is one system message (skipped when empty), a list is items."""
    if isinstance(instructions, str):
        return [Message("system", content=instructions)] if instructions else []
    return items_messages(instructions) if isinstance(instructions, list) else []


def generated_images(items: Any) -> list[str]:
    """Data URLs of the ``image_generation_call`` results among ``items``."""
    urls = []
    for item in items_of(items):
        if isinstance(item, _MAPPING) and item.get("type") == "image_generation_call":
            result = str_or_none(item.get("result"))
            if result:
                fmt = str_or_none(item.get("output_format")) or "png"
                urls.append(result if result.startswith("data:")
                            else f"data:image/{fmt};base64,{result}")
    return urls


# ---- OpenInference flattening ---------------------------------------------------------------

_C = MessageContentAttributes
_IMAGE_URL = f"{_C.MESSAGE_CONTENT_IMAGE}.{ImageAttributes.IMAGE_URL}"
_AUDIO = f"{_C.MESSAGE_CONTENT_AUDIO}."
_DOCUMENT = f"{_C.MESSAGE_CONTENT_DOCUMENT}."


def _image_url(part: Part) -> str | None:
    """The part's URL, or ``openai-file:<file_id>`` for a file-only image or file."""
    if part.url:
        return part.url
    return f"{FILE_URL_SCHEME}{part.id}" if part.id else None


# These write their leaves under ``prefix`` straight into ``out``: no dict per part or call.
def _part_attributes(part: Part, prefix: str, out: Attributes) -> None:
    out[prefix + _C.MESSAGE_CONTENT_TYPE] = part.type
    if part.type == "image":
        url = _image_url(part)
        if url:
            out[prefix + _IMAGE_URL] = url
    elif part.type == "document":
        leaves = ((DocumentAttributes.DOCUMENT_ID, part.id),
                  (DocumentAttributes.DOCUMENT_URL, part.url),
                  (DocumentAttributes.DOCUMENT_NAME, part.name),
                  (DocumentAttributes.DOCUMENT_MIME_TYPE, part.mime_type),
                  (DocumentAttributes.DOCUMENT_CONTENT, part.data))
        out.update({prefix + _DOCUMENT + k: v for k, v in leaves if v})
    elif part.type == "audio":
        if part.data:
            mime = part.mime_type or "application/octet-stream"
            out[prefix + _AUDIO + AudioAttributes.AUDIO_URL] = f"data:{mime};base64,{part.data}"
        if part.mime_type:
            out[prefix + _AUDIO + AudioAttributes.AUDIO_MIME_TYPE] = part.mime_type
    else:
        if part.text is not None:
            out[prefix + _C.MESSAGE_CONTENT_TEXT] = part.text
        if part.id:
            out[prefix + _C.MESSAGE_CONTENT_ID] = part.id
        if part.encrypted_content:
            out[prefix + _C.MESSAGE_CONTENT_ENCRYPTED_CONTENT] = part.encrypted_content


def _tool_call_attributes(call: ToolCall, prefix: str, out: Attributes) -> None:
    out[prefix + ToolCallAttributes.TOOL_CALL_FUNCTION_NAME] = call.name
    if call.id:
        out[prefix + ToolCallAttributes.TOOL_CALL_ID] = call.id
    if call.arguments is not None:
        out[prefix + ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON] = call.arguments


def _message_attributes(message: Message, prefix: str, out: Attributes) -> None:
    out[prefix + MessageAttributes.MESSAGE_ROLE] = message.role
    if message.content is not None:
        out[prefix + MessageAttributes.MESSAGE_CONTENT] = message.content
    if message.name:
        out[prefix + MessageAttributes.MESSAGE_NAME] = message.name
    if message.tool_call_id:
        out[prefix + MessageAttributes.MESSAGE_TOOL_CALL_ID] = message.tool_call_id
    for j, part in enumerate(message.parts):
        _part_attributes(part, f"{prefix}{MessageAttributes.MESSAGE_CONTENTS}.{j}.", out)
    for k, call in enumerate(message.tool_calls):
        _tool_call_attributes(call, f"{prefix}{MessageAttributes.MESSAGE_TOOL_CALLS}.{k}.", out)


def flatten_messages(prefix: str, messages: Iterable[Message]) -> Attributes:
    """``{prefix}.{i}.message.*`` for each message, indexed densely from 0."""
    out: Attributes = {}
    for i, message in enumerate(messages):
        _message_attributes(message, f"{prefix}.{i}.", out)
    return out


def flatten_images(prefix: str, urls: Iterable[str]) -> Attributes:
    """``{prefix}.{n}.image.url`` (span-level ``input.images`` / ``output.images``)."""
    return {f"{prefix}.{n}.{ImageAttributes.IMAGE_URL}": url for n, url in enumerate(urls)}
