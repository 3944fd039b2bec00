"""The deterministic ``demo`` model: what it answers and how that renders as a Response and SSE.

How the demo model answers a request (the first rule that applies wins):

1. The last input item is a ``function_call_output``: a text message that names the tool (found
   by ``call_id`` among the input items or the previous response's output) and quotes its output.
2. ``tools`` holds at least one ``{"type": "function"}`` tool and ``tool_choice`` is not
   ``"none"``: one ``function_call`` item (``call_id`` ``call_...``). The function is the one forced
   by ``tool_choice={"type": "function", "name": ...}``, else the first function tool whose name
   appears (case-insensitively) in the last user text, else the first function tool. Its
   ``arguments`` are a JSON object holding a deterministic value for each ``required`` property of
   the tool's JSON-schema ``parameters`` (``const``/first ``enum``/``default`` when given, else
   ``"demo"``, ``1``, ``1.0``, ``true``, ``[]``, or an object filled the same way); ``{}`` if none.
3. Otherwise a text message that quotes the last user text. With ``text.format`` ``json_schema``
   the text is instead a JSON value built from the schema like tool arguments; with
   ``json_object`` it is ``{"reply": <the text>}``.

Text is split into word-ish deltas (each word with its leading whitespace), JSON into runs of
word and non-word characters. ``usage.output_tokens`` is the number of deltas (cut short to
``max_output_tokens``, which makes the response ``incomplete``); ``usage.input_tokens`` is the
number of words in ``instructions`` plus every input item's text. Ids are hashes of a per-server
counter, so the same sequence of requests yields the same ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Json = dict[str, Any]

_WORD = re.compile(r"\s*\S+")
_JSON_PIECE = re.compile(r"\w+|\W+")
_QUOTE_WORDS = 40
_SIGNATURE = "This is a deterministic reply from the otel-responses demo model."
_COMPACT = (",", ":")

# Defaults the real API reports for request parameters the client left out (or sent as null).
_ECHOED: tuple[tuple[str, Any], ...] = (
    ("background", False),
    ("instructions", None),
    ("max_output_tokens", None),
    ("max_tool_calls", None),
    ("parallel_tool_calls", True),
    ("previous_response_id", None),
    ("prompt_cache_key", None),
    ("reasoning", {"effort": None, "summary": None}),
    ("safety_identifier", None),
    ("service_tier", "default"),
    ("store", True),
    ("temperature", 1.0),
    ("text", {"format": {"type": "text"}, "verbosity": "medium"}),
    ("tool_choice", "auto"),
    ("tools", []),
    ("top_logprobs", 0),
    ("top_p", 1.0),
    ("truncation", "disabled"),
    ("user", None),
    ("metadata", {}),
)


_ENCODE = json.JSONEncoder(separators=_COMPACT).encode  # reused: json.dumps builds one per call
_ENCODE_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def dumps(value: Any) -> str:
    """Compact JSON (ASCII-only, so lone surrogates from the input still encode)."""
    return _ENCODE(value)


def new_id(prefix: str, seed: str, n: int, kind: str, length: int = 48) -> str:
    """A realistic-looking id that is a pure function of (seed, counter, kind)."""
    return prefix + hashlib.sha256(f"{seed}:{n}:{kind}".encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Ids:
    response: str
    item: str
    call: str
    request: str

    @classmethod
    def for_number(cls, n: int, seed: str = "") -> Ids:
        return cls(response=new_id("resp_", seed, n, "resp"), item=new_id("", seed, n, "item"),
                   call=new_id("call_", seed, n, "call", 24),
                   request=new_id("req_", seed, n, "req", 32))


# ---- reading the request -------------------------------------------------------------------

def input_items(request: Json) -> list[Json]:
    """``input`` as a list of items (a bare string is one user message)."""
    value = request.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    """The text inside a content value: a string, or a list of parts with ``text`` fields."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(p["text"] for p in value if isinstance(p, dict)
                        and isinstance(p.get("text"), str))
    return ""


def item_text(item: Json) -> str:
    kind = item.get("type", "message")
    if kind == "function_call_output":
        return _text(item.get("output"))
    if kind == "function_call":
        return f"{item.get('name', '')} {item.get('arguments', '')}"
    return _text(item.get("content"))


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_input_tokens(request: Json) -> int:
    instructions = request.get("instructions")
    total = count_words(instructions) if isinstance(instructions, str) else 0
    return total + sum(count_words(item_text(item)) for item in input_items(request))


def split_words(text: str) -> tuple[str, ...]:
    """Text as the word-ish deltas a stream sends (each word with its leading whitespace)."""
    return tuple(_WORD.findall(text))


def last_user_text(items: list[Json]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return item_text(item)
    return ""


def _quote(text: str) -> str:
    words = text.split()
    return " ".join(words[:_QUOTE_WORDS]) + (" …" if len(words) > _QUOTE_WORDS else "")


def sample_json(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A deterministic value matching a (reasonable) JSON schema: required properties only."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 16:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ["?"]:
            target = target.get(part) if isinstance(target, dict) else None
        return sample_json(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    for key in ("enum", "anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return options[0] if key == "enum" else sample_json(options[0], root, depth + 1)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: sample_json(properties.get(name, {}), root, depth + 1) for name in names}
    if kind == "array":
        count = schema.get("minItems")
        count = count if isinstance(count, int) and 0 < count <= 8 else 0
        return [sample_json(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    low = schema.get("minimum")
    low = low if isinstance(low, int | float) and not isinstance(low, bool) else None
    if kind == "integer":
        return max(1, int(low)) if low is not None else 1
    if kind == "number":
        return max(1.0, float(low)) if low is not None else 1.0
    return {"boolean": True, "null": None}.get(kind, "demo") if isinstance(kind, str) else "demo"


# ---- deciding the answer -------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """What the demo model answers, already split into the deltas a stream sends."""

    kind: Literal["message", "function_call"]
    pieces: tuple[str, ...]
    name: str = ""  # the function's name when kind == "function_call"
    incomplete: bool = False  # cut short by max_output_tokens

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def function_tools(request: Json) -> list[Json]:
    tools = request.get("tools")
    if not isinstance(tools, list):
        return []
    return [t for t in tools if isinstance(t, dict) and t.get("type") == "function"
            and isinstance(t.get("name"), str)]


def named_tools(tools: list[Json], user_text: str) -> list[Json]:
    """The tools whose name appears (case-insensitively) in ``user_text``, in ``tools`` order."""
    lowered = user_text.lower()
    return [t for t in tools if t["name"].lower() in lowered]


def _pick_tool(tools: list[Json], tool_choice: Any, user_text: str) -> Json:
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        forced = next((t for t in tools if t["name"] == tool_choice.get("name")), None)
        if forced is not None:
            return forced
    return next(iter(named_tools(tools, user_text)), tools[0])


def _tool_name(call_id: Any, items: list[Json], previous: Json | None) -> str:
    earlier = items + (previous.get("output", []) if previous else [])
    return next((str(i.get("name")) for i in earlier if i.get("type") == "function_call"
                 and i.get("call_id") == call_id), "the tool")


def decide(request: Json, previous: Json | None = None) -> Reply:
    """Apply the rules in this module's docstring; ``previous`` is the previous response, if any."""
    items = input_items(request)
    last = items[-1] if items else {}
    answers_tool = last.get("type") == "function_call_output"
    tools = function_tools(request)
    if not answers_tool and tools and request.get("tool_choice") != "none":
        tool = _pick_tool(tools, request.get("tool_choice"), last_user_text(items))
        arguments = sample_json(tool.get("parameters"))
        arguments = dumps(arguments if isinstance(arguments, dict) else {})
        return Reply("function_call", tuple(_JSON_PIECE.findall(arguments)), name=tool["name"])
    if answers_tool:
        name = _tool_name(last.get("call_id"), items, previous)
        text = f"The tool {name} returned: {_quote(item_text(last))} {_SIGNATURE}"
    else:
        quoted = _quote(last_user_text(items))
        text = f'You said: "{quoted}". {_SIGNATURE}' if quoted else f"Hello! {_SIGNATURE}"
    fmt = request.get("text", {}).get("format") if isinstance(request.get("text"), dict) else None
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type in ("json_schema", "json_object"):
        value = sample_json(fmt.get("schema")) if fmt_type == "json_schema" else {"reply": text}
        pieces = tuple(_JSON_PIECE.findall(json.dumps(value)))
    else:
        pieces = split_words(text)
    limit = request.get("max_output_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        return Reply("message", pieces[:limit], incomplete=True)
    return Reply("message", pieces)


# ---- rendering -----------------------------------------------------------------------------

def usage(input_tokens: int, output_tokens: int) -> Json:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def _echo(request: Json) -> Json:
    echoed = {}
    for key, default in _ECHOED:
        value = request.get(key)
        echoed[key] = default if value is None else value
    return echoed


@dataclass(frozen=True)
class Rendered:
    """The Response object before (``snapshot``) and after (``final``) generation, plus SSE."""

    reply: Reply
    snapshot: Json
    final: Json

    @property
    def item(self) -> Json:
        return self.final["output"][0]

    @property
    def first_delta(self) -> int:
        """The sequence number of the first delta event."""
        return 4 if self.reply.kind == "message" else 3

    def frames(self) -> list[bytes]:
        """Every SSE event of the stream, framed and encoded; index == sequence_number."""
        item, done = self.item, self.reply.kind == "message"
        item_id, final_type = item["id"], ("response.incomplete" if self.reply.incomplete
                                           else "response.completed")
        where = {"item_id": item_id, "output_index": 0}
        snapshot = dumps(self.snapshot)  # sent twice: serialise once
        frames = [_response_frame(0, "response.created", snapshot),
                  _response_frame(1, "response.in_progress", snapshot)]
        events: list[Json] = [
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "status": "in_progress",
                      **({"content": []} if done else {"arguments": ""})}},
        ]
        if done:
            part = item["content"][0]
            events.append({"type": "response.content_part.added", **where, "content_index": 0,
                           "part": {**part, "text": ""}})
        frames.extend(_frame(n, event) for n, event in enumerate(events, start=len(frames)))
        # Deltas are the hot path: splice the few changing values into a pre-encoded template.
        if done:
            kind = "response.output_text.delta"
            middle = f',{dumps(where)[1:-1]},"content_index":0,"logprobs":[],"delta":'
        else:
            kind = "response.function_call_arguments.delta"
            middle = f',{dumps(where)[1:-1]},"delta":'
        head = f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":'
        frames.extend(f"{head}{n}{middle}{_ENCODE_STRING(piece)}}}\n\n".encode()
                      for n, piece in enumerate(self.reply.pieces, start=len(frames)))
        if done:
            part = item["content"][0]
            tail: list[Json] = [
                {"type": "response.output_text.done", **where, "content_index": 0,
                 "text": part["text"], "logprobs": []},
                {"type": "response.content_part.done", **where, "content_index": 0,
                 "part": part},
            ]
        else:
            tail = [{"type": "response.function_call_arguments.done", **where,
                     "arguments": item["arguments"]}]
        tail.append({"type": "response.output_item.done", "output_index": 0, "item": item})
        frames.extend(_frame(n, event) for n, event in enumerate(tail, start=len(frames)))
        frames.append(_response_frame(len(frames), final_type, dumps(self.final)))
        return frames


def _response_frame(sequence_number: int, kind: str, response_json: str) -> bytes:
    data = f'{{"type":"{kind}","sequence_number":{sequence_number},"response":{response_json}}}'
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _frame(sequence_number: int, event: Json) -> bytes:
    event = {"type": event["type"], "sequence_number": sequence_number, **event}
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode()


def render(request: Json, reply: Reply, ids: Ids, created_at: int) -> Rendered:
    """Build the Response objects for ``reply`` (the model name is echoed as requested)."""
    snapshot = {"id": ids.response, "object": "response", "created_at": created_at,
                "status": "in_progress", "completed_at": None, "error": None,
                "incomplete_details": None, "model": request["model"], "output": [],
                "usage": None, **_echo(request)}
    if reply.kind == "message":
        status = "incomplete" if reply.incomplete else "completed"
        item: Json = {"id": "msg_" + ids.item, "type": "message", "status": status,
                      "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                   "text": reply.text}], "role": "assistant"}
    else:
        item = {"id": "fc_" + ids.item, "type": "function_call", "status": "completed",
                "arguments": reply.text, "call_id": ids.call, "name": reply.name}
    final = {**snapshot, "status": "incomplete" if reply.incomplete else "completed",
             "completed_at": created_at, "output": [item],
             "incomplete_details": {"reason": "max_output_tokens"} if reply.incomplete else None,
             "usage": usage(count_input_tokens(request), len(reply.pieces))}
    return Rendered(reply, snapshot, final)


def listed_items(items: list[Json], seed: str, n: int) -> list[Json]:
    """Items as ``GET /v1/responses/{id}/input_items`` lists them: with ids, typed content."""
    listed = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        entry = {"id": item.get("id") or new_id(_ITEM_PREFIX.get(kind, "item_"), seed, n,
                                                 f"input{index}"), "type": kind, **item}
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text" if item.get("role") != "assistant"
                            else "output_text", "text": content}]
            entry["content"] = content
        entry.setdefault("status", "completed")
        listed.append(entry)
    return listed


_ITEM_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}
