"""Sans-IO stream translation: parsed Chat Completions chunks in, Responses stream events out,
each delta forwarded the moment its chunk arrives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_responses.protocol.body import json_bytes
from otel_responses.protocol.chat.request import ChatCall
from otel_responses.protocol.chat.response import (
    COMPLETED,
    FAILED,
    INCOMPLETE,
    build_response,
    call_item,
    call_item_id,
    custom_input,
    is_custom,
    item_id,
    logprobs_of,
    message_item,
    outcome,
    reasoning_item,
    text_part,
    usage_of,
)

Event = dict[str, Any]

@dataclass(frozen=True, slots=True)
class _Kind:
    """The events of one kind of streamed part, and where its index and text go."""

    added: str
    delta: str
    done: str
    part_done: str
    index_key: str  # content_index, or summary_index for reasoning summaries
    field: str  # the done event's field with the whole text


_CONTENT = ("response.content_part.added", "response.content_part.done", "content_index")
_KINDS = {
    "output_text": _Kind(_CONTENT[0], "response.output_text.delta", "response.output_text.done",
                         _CONTENT[1], _CONTENT[2], "text"),
    "refusal": _Kind(_CONTENT[0], "response.refusal.delta", "response.refusal.done",
                     _CONTENT[1], _CONTENT[2], "refusal"),
    "reasoning_text": _Kind(_CONTENT[0], "response.reasoning_text.delta",
                            "response.reasoning_text.done", _CONTENT[1], _CONTENT[2], "text"),
    "summary_text": _Kind("response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta",
                          "response.reasoning_summary_text.done",
                          "response.reasoning_summary_part.done", "summary_index", "text"),
}


def sse_bytes(event: Mapping[str, Any]) -> bytes:
    """One event framed as OpenAI frames it: `event: TYPE`, `data: JSON`, a blank line."""
    return b"event: %s\ndata: %s\n\n" % (str(event["type"]).encode(), json_bytes(event))


def chunk_error(chunk: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(message, code) of an in-band error a chunk carries, as some servers send mid-stream
    inside an HTTP 200 (OpenRouter, Groq's `event: error`)."""
    error = chunk.get("error")
    if error is None:
        return None
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code", error.get("type"))
        return (message if isinstance(message, str) and message else "Upstream error.",
                None if code is None else str(code))
    return str(error), None


class _Text:
    """The open message or reasoning item and its open content part."""

    __slots__ = ("chunks", "id", "index", "kind", "logprobs", "parts", "type")

    def __init__(self, type_: str, id_: str, index: int) -> None:
        self.type, self.id, self.index = type_, id_, index
        self.parts: list[dict[str, Any]] = []  # finished parts
        self.kind: str | None = None  # kind of the open part
        self.chunks: list[str] = []
        self.logprobs: list[Any] = []

    def part(self) -> dict[str, Any]:
        assert self.kind is not None
        return text_part(self.kind, "".join(self.chunks), self.logprobs)

    def item(self, status: str) -> dict[str, Any]:
        parts = self.parts + ([self.part()] if self.kind else [])
        build = message_item if self.type == "message" else reasoning_item
        return build(self.id, status, parts)


class _Call:
    """One streamed tool call (one chat `tool_calls[].index`)."""

    __slots__ = ("call_id", "chunks", "custom", "id", "index", "name")

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name: str | None = None
        self.index = -1  # output index, once its output item was added
        self.id = ""
        self.chunks: list[str] = []
        self.custom = False


class StreamTranslator:
    """Feed parsed chat chunks, get Responses events (dicts, `sequence_number` from 0).

    `start()` once, `feed(chunk)` per chunk, then `finish()` at the end of the upstream stream
    or `fail(message, code)` if it broke. Exactly one terminal event is ever produced; calls
    after it return no events. `response` is the Response object (final after the terminal
    event). Only choice 0 is translated: a Responses call has one output.
    """

    def __init__(self, call: ChatCall, response_id: str, created_at: int) -> None:
        self._call = call
        self._id = response_id
        self._created_at = created_at
        self._model: str = call.request["model"]
        self._upstream_model = False
        self._seq = 0
        self._items: list[dict[str, Any] | _Text | _Call] = []  # by output index
        self._text: _Text | None = None
        self._calls: dict[int, _Call] = {}
        self._usage: Any = None
        self._finish_reason: str | None = None
        self._response: dict[str, Any] | None = None  # set by the terminal event

    # ---- public -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._response is not None

    @property
    def response(self) -> dict[str, Any]:
        if self._response is not None:
            return self._response
        return self._build("in_progress", [])

    def start(self) -> list[Event]:
        snapshot = self._build("in_progress", [])
        return [self._event({"type": "response.created", "response": snapshot}),
                self._event({"type": "response.in_progress", "response": snapshot})]

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        if self._response is not None:
            return []
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if usage:  # on a `choices: []` chunk, the last content chunk, or Groq's x_groq
            self._usage = usage
        if not self._upstream_model and isinstance(chunk.get("model"), str):
            self._model, self._upstream_model = chunk["model"], True  # the upstream's name
        error = chunk_error(chunk)
        if error is not None:
            return self.fail(*error)
        out: list[Event] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                self._delta(out, "reasoning", self._call.reasoning_part, reasoning)
            content = delta.get("content")
            if content and isinstance(content, str):
                logprobs = logprobs_of(choice.get("logprobs")) if self._call.logprobs else []
                self._delta(out, "message", "output_text", content, logprobs)
            refusal = delta.get("refusal")
            if refusal and isinstance(refusal, str):
                self._delta(out, "message", "refusal", refusal)
            for fragment in delta.get("tool_calls") or ():
                self._tool_fragment(out, fragment)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self, completed_at: int | None = None) -> list[Event]:
        """The upstream stream ended: close every open item, then one terminal event (or, if
        no finish_reason ever came, the stream was cut: as `fail`)."""
        if self._response is not None:
            return []
        if self._finish_reason is None:  # a cut stream, however cleanly it ended
            return self.fail("The upstream stream ended without a finish_reason.",
                             "upstream_incomplete")
        status, reason = outcome(self._finish_reason)
        out: list[Event] = []
        self._close_text(out, status)
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            self._close_call(out, call, status)
        self._response = self._build(status, self._output(status), reason, completed_at)
        kind = "response.completed" if status == COMPLETED else "response.incomplete"
        out.append(self._event({"type": kind, "response": self._response}))
        return out

    def fail(self, message: str, code: str | None = None) -> list[Event]:
        """The upstream broke mid-stream: an `error` event, then `response.failed`."""
        if self._response is not None:
            return []
        error = {"type": "server_error", "code": code, "message": message, "param": None}
        # OpenAI's SDK reads the fields flat, Open Responses nested: both are given.
        first = self._event({"type": "error", "code": code, "message": message, "param": None,
                             "error": error})
        self._response = self._build(FAILED, self._output(INCOMPLETE),
                                     error={"code": "server_error", "message": message})
        return [first, self._event({"type": "response.failed", "response": self._response})]

    # ---- internals --------------------------------------------------------------------------

    def _event(self, event: Event) -> Event:
        event["sequence_number"] = self._seq
        self._seq += 1
        return event

    def _build(self, status: str, output: list[dict[str, Any]], reason: str | None = None,
               completed_at: int | None = None,
               error: dict[str, Any] | None = None) -> dict[str, Any]:
        return build_response(self._call, self._id, self._created_at, model=self._model,
                              status=status, output=output, usage=usage_of(self._usage),
                              incomplete_reason=reason, error=error,
                              completed_at=completed_at)

    def _output(self, status: str) -> list[dict[str, Any]]:
        """Output items by index; items still open end with `status`."""
        out = []
        for item in self._items:
            if isinstance(item, _Text):
                out.append(item.item(status))
            elif isinstance(item, _Call):
                out.append(self._call_item(item, status))
            else:
                out.append(item)
        return out

    def _add_item(self, out: list[Event], item: dict[str, Any], slot: _Text | _Call) -> None:
        out.append(self._event({"type": "response.output_item.added",
                                "output_index": len(self._items), "item": item}))
        self._items.append(slot)

    def _delta(self, out: list[Event], item_type: str, kind: str, delta: str,
               logprobs: list[Any] | None = None) -> None:
        text = self._text
        if text is None or text.type != item_type:
            self._close_text(out, COMPLETED)
            index = len(self._items)
            text = self._text = _Text(item_type, item_id(
                "msg" if item_type == "message" else "rs", self._id, index), index)
            self._add_item(out, text.item("in_progress"), text)
        spec = _KINDS[kind]
        if text.kind != kind:
            self._close_part(out, text)
            text.kind = kind
            out.append(self._event({"type": spec.added, "item_id": text.id,
                                    "output_index": text.index,
                                    spec.index_key: len(text.parts),
                                    "part": text_part(kind, "")}))
        text.chunks.append(delta)
        event = {"type": spec.delta, "item_id": text.id, "output_index": text.index,
                 spec.index_key: len(text.parts), "delta": delta}
        if kind == "output_text":
            event["logprobs"] = logprobs or []
            if logprobs:
                text.logprobs.extend(logprobs)
        out.append(self._event(event))

    def _close_part(self, out: list[Event], text: _Text) -> None:
        if text.kind is None:
            return
        spec = _KINDS[text.kind]
        part = text.part()
        common = {"item_id": text.id, "output_index": text.index,
                  spec.index_key: len(text.parts)}
        done = {"type": spec.done, **common, spec.field: part[spec.field]}
        if text.kind == "output_text":
            done["logprobs"] = part["logprobs"]
        out.append(self._event(done))
        out.append(self._event({"type": spec.part_done, **common, "part": part}))
        text.parts.append(part)
        text.kind, text.chunks, text.logprobs = None, [], []

    def _close_text(self, out: list[Event], status: str) -> None:
        text = self._text
        if text is None:
            return
        self._close_part(out, text)
        item = text.item(status)
        self._items[text.index] = item
        out.append(self._event({"type": "response.output_item.done",
                                "output_index": text.index, "item": item}))
        self._text = None

    def _call_item(self, call: _Call, status: str) -> dict[str, Any]:
        return call_item(self._call, call.id, call.call_id or "", call.name or "",
                         "".join(call.chunks), status)

    def _tool_fragment(self, out: list[Event], fragment: Mapping[str, Any]) -> None:
        index = fragment.get("index")
        if not isinstance(index, int):  # servers that omit it send one call per fragment set
            index = len(self._calls) - (0 if fragment.get("id") or not self._calls else 1)
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call()
        function = fragment.get("function") or {}
        if call.call_id is None and fragment.get("id"):
            call.call_id = fragment["id"]
        if call.name is None and function.get("name"):
            call.name = function["name"]
        arguments = function.get("arguments") or ""
        if call.index < 0:
            if call.name is None:  # the item cannot be announced before its name is known
                call.chunks.append(arguments)
                return
            self._close_text(out, COMPLETED)
            call.index = len(self._items)
            call.call_id = call.call_id or item_id("call", self._id, call.index)
            call.custom = is_custom(self._call, call.name)
            call.id = call_item_id(self._call, self._id, call.name, call.index)
            pending = "".join(call.chunks)
            call.chunks = []
            self._add_item(out, self._call_item(call, "in_progress"), call)
            arguments = pending + arguments
        if not arguments:
            return
        call.chunks.append(arguments)
        if not call.custom:  # a custom tool's input is JSON-decoded once complete
            out.append(self._event({"type": "response.function_call_arguments.delta",
                                    "item_id": call.id, "output_index": call.index,
                                    "delta": arguments}))

    def _close_call(self, out: list[Event], call: _Call, status: str) -> None:
        if call.index < 0:  # never named: nothing was announced, nothing to close
            return
        item = self._call_item(call, status)
        common = {"item_id": call.id, "output_index": call.index}
        if call.custom:
            text = custom_input("".join(call.chunks))
            if text:
                out.append(self._event({"type": "response.custom_tool_call_input.delta",
                                        **common, "delta": text}))
            out.append(self._event({"type": "response.custom_tool_call_input.done", **common,
                                    "input": text}))
        else:
            out.append(self._event({"type": "response.function_call_arguments.done", **common,
                                    "arguments": item["arguments"]}))
        self._items[call.index] = item
        out.append(self._event({"type": "response.output_item.done",
                                "output_index": call.index, "item": item}))


def completion_chunk(completion: Mapping[str, Any]) -> dict[str, Any]:
    """A whole chat completion as the one chunk that streams it, for servers that answer a
    streamed request with JSON: fed to a `StreamTranslator`, it gives the events of the
    answer, each text or call in one delta."""
    choices = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        delta = {key: message[key] for key in ("content", "refusal", "reasoning_content",
                                               "reasoning") if message.get(key)}
        calls = message.get("tool_calls") or []
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        choices.append({"index": choice.get("index", 0), "delta": delta,
                        "finish_reason": choice.get("finish_reason"),
                        "logprobs": choice.get("logprobs")})
    return {**{k: v for k, v in completion.items() if k != "choices"}, "choices": choices}
