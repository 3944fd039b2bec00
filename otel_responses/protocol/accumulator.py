"""Rebuild a Responses API `Response` from its stream events, sans-IO.

Tolerates cut streams, unknown events and malformed events: `add` never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DELTA_TYPES = frozenset({
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.mcp_call_arguments.delta",
    "response.code_interpreter_call_code.delta",
    "response.audio.delta",
    "response.audio.transcript.delta",
})
"""Event types carrying generated content; the first one marks time to first token."""

MAX_TEXT = 1 << 20
"""Characters kept per streamed text field (span attributes are capped far below this)."""

_SNAPSHOT_TYPES = frozenset({"response.created", "response.in_progress", "response.queued"})
# Item types the upstream runs itself, whose `response.<type>.in_progress`/`.completed`/
# `.failed` events time the tool's work (the item's added/done events bracket it otherwise).
SERVER_TOOL_TYPES = frozenset({"web_search_call", "file_search_call", "code_interpreter_call",
                               "image_generation_call", "mcp_call", "mcp_list_tools", "program",
                               "tool_search_call"})
# Items whose added/done events are not timed: the model speaking. Every other item may be
# tool work (some calls are run upstream or not as the item says, and a call run upstream may
# end at its own output item), so its boundaries are stamped.
_SPEECH = frozenset({"message", "reasoning"})
# Kinds of item boundary, in the order they come for one item.
ITEM_ADDED, TOOL_STARTED, TOOL_ENDED, ITEM_DONE = range(4)
_TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(slots=True)
class _Text:
    """A string field built from deltas; a `.done` value replaces it and freezes it."""

    chunks: list[str] = field(default_factory=list)
    final: bool = False
    size: int = 0

    def delta(self, text: str) -> bool:
        if self.final:
            return False
        if self.size < MAX_TEXT:  # past it, spans would truncate anyway: keep memory bounded
            self.chunks.append(text[:MAX_TEXT - self.size])
            self.size += len(text)
        return True

    def done(self, text: str) -> None:
        self.chunks = [text[:MAX_TEXT]]
        self.final = True


@dataclass(slots=True)
class _Part:
    """A content or summary part: the latest part object plus its streamed text."""

    part: dict[str, Any]
    key: str  # the part's text field: "text" or "refusal"
    text: _Text | None = None  # None: the part object's own text stands
    annotations: dict[int, Any] = field(default_factory=dict)
    final: bool = False

    def build(self) -> dict[str, Any]:
        if self.text is None and not self.annotations:
            return self.part
        out = dict(self.part)
        if self.text is not None:
            out[self.key] = "".join(self.text.chunks)
        if self.annotations:
            out["annotations"] = _merge(self.part.get("annotations"), self.annotations)
        return out


@dataclass(slots=True)
class _Item:
    """An output item: the latest item object plus parts and a streamed string field."""

    item: dict[str, Any]
    content: dict[int, _Part] = field(default_factory=dict)
    summary: dict[int, _Part] = field(default_factory=dict)
    key: str | None = None  # "arguments" / "input" / "code", once streamed
    text: _Text | None = None
    final: bool = False

    def build(self) -> dict[str, Any]:
        if self.final:
            return self.item
        out = dict(self.item)
        if self.content:
            out["content"] = _merge(out.get("content"),
                                    {i: p.build() for i, p in self.content.items()})
        if self.summary:
            out["summary"] = _merge(out.get("summary"),
                                    {i: p.build() for i, p in self.summary.items()})
        if self.key is not None and self.text is not None:
            out[self.key] = "".join(self.text.chunks)
        return out


@dataclass(frozen=True, slots=True)
class ItemTimes:
    """When an output item's work began and ended, by the clock that stamped its events: the
    tool's own ``in_progress`` event, else the item's ``added``; its ``completed``/``failed``,
    else the item's ``done``. None where no such event was stamped."""

    start: int | None
    end: int | None


def _merge(base: Any, by_index: Mapping[int, Any]) -> list[Any]:
    """`base` (a list, or anything else meaning empty) with entries replaced by index;
    indexes past the end are appended in index order, so gaps never pad with None."""
    out = list(base) if isinstance(base, list) else []
    for index in sorted(by_index):
        if 0 <= index < len(out):
            out[index] = by_index[index]
        else:
            out.append(by_index[index])
    return out


def _int(event: Mapping[str, Any], key: str) -> int | None:
    value = event.get(key)
    return value if type(value) is int else None  # bool is an int subclass; reject it


def _str(event: Mapping[str, Any], key: str) -> str | None:
    value = event.get(key)
    return value if isinstance(value, str) else None


def _dict(event: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = event.get(key)
    return value if isinstance(value, dict) else None


def _error(source: Mapping[str, Any], type_: Any) -> dict[str, Any]:
    return {"code": source.get("code"), "message": source.get("message"),
            "type": type_, "param": source.get("param")}


class ResponseAccumulator:
    """Feed parsed stream events to `add`; read the attributes and `result()`.

    delta_count: content delta events seen (`DELTA_TYPES`), valid or not.
    ignored: events that contributed nothing: unknown or progress-only types, missing or
        mistyped fields, or content for an item or part already done.
    outcome: completed | incomplete | failed | cancelled | error; None until one is known.
    error: {code, message, type, param} from an `error` event or a failed response.
    unstamped: a server tool item's boundaries (added, done, its progress) came since the last
        `stamp`; the feeder stamps them with its clock, so this class needs none and a chunk
        without one costs nothing.
    """

    __slots__ = ("_by_id", "_final", "_items", "_mark_times", "_marked", "_marks", "_snapshot",
                 "delta_count", "error", "ignored", "outcome", "unstamped")

    def __init__(self) -> None:
        self.delta_count = 0
        self.ignored = 0
        self.outcome: str | None = None
        self.error: dict[str, Any] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None
        self._items: dict[int, _Item] = {}
        self._by_id: dict[str, int] = {}  # item id -> output_index, for events lacking the index
        # The first boundary of each kind per tool item, (output_index, kind), in arrival
        # order, and the time stamped on each; `_marked` holds index << 2 | kind of those, so
        # a repeated event adds nothing (memory stays bounded by the items).
        self._marks: list[tuple[int, int]] = []
        self._mark_times: list[int] = []
        self._marked: set[int] = set()
        self.unstamped = False

    def add(self, event: Mapping[str, Any]) -> None:
        """Apply one parsed event (a JSON object with a `type`)."""
        type_ = event.get("type")
        if not isinstance(type_, str):  # before the set lookups: a list or dict is unhashable
            self.ignored += 1
            return
        if type_ in DELTA_TYPES:
            self.delta_count += 1
        handler = _HANDLERS.get(type_)
        if handler is None or not handler(self, event):
            self.ignored += 1

    @property
    def has_final(self) -> bool:
        """A terminal event carried the response: `result()` no longer reads snapshots."""
        return self._final is not None

    def result(self) -> dict[str, Any] | None:
        """The final response if a terminal event carried one; else the latest snapshot with
        `output` rebuilt from item events (its status left as sent); None if nothing seen.

        Returned objects may share nested values with the events; don't mutate them."""
        if self._final is not None:
            return self._final
        if self._snapshot is None and not self._items:
            return None
        out = dict(self._snapshot or {})
        out["output"] = _merge(out.get("output"),
                               {i: item.build() for i, item in self._items.items()})
        return out

    def stamp(self, now: int) -> None:
        """Time every item boundary seen since the last stamp with ``now``."""
        times = self._mark_times
        times.extend([now] * (len(self._marks) - len(times)))
        self.unstamped = False

    def item_times(self) -> dict[int, ItemTimes]:
        """output_index → when a tool item's work began and ended (stamped boundaries only)."""
        seen: dict[int, list[int | None]] = {}
        for (index, kind), at in zip(self._marks, self._mark_times, strict=False):
            seen.setdefault(index, [None, None, None, None])[kind] = at
        return {index: ItemTimes(started if started is not None else added,
                                 ended if ended is not None else done)
                for index, (added, started, ended, done) in seen.items()}

    def _mark(self, index: int, kind: int) -> None:
        key = index << 2 | kind
        if key not in self._marked:
            self._marked.add(key)
            self._marks.append((index, kind))
            self.unstamped = True

    # --- lifecycle ---------------------------------------------------------------------

    def _on_snapshot(self, event: Mapping[str, Any]) -> bool:
        response = _dict(event, "response")
        if response is None:
            return False
        self._snapshot = response
        return True

    def _on_terminal(self, event: Mapping[str, Any]) -> bool:
        # The kind alone ends the stream, even if a broken server left out the response.
        response = _dict(event, "response")
        if response is not None and response.get("status") == "cancelled":
            self.outcome = "cancelled"
        else:
            self.outcome = event["type"].removeprefix("response.")
        if response is None:
            return False
        self._final = response
        error = _dict(response, "error")
        if error is not None:
            self.error = _error(error, error.get("type"))
        return True

    def _on_error(self, event: Mapping[str, Any]) -> bool:
        # Documented shape: code/message/param on the event. OpenAI has also been seen to
        # nest them in an "error" object with its own "type" (openai-dotnet#881).
        nested = _dict(event, "error")
        self.error = _error(nested, nested.get("type")) if nested else _error(event, None)
        if self.outcome is None:  # a later terminal event is more specific and overrides
            self.outcome = "error"
        return True

    # --- items ---------------------------------------------------------------------------

    def _on_item_added(self, event: Mapping[str, Any]) -> bool:
        index, item = _int(event, "output_index"), _dict(event, "item")
        if index is None or item is None:
            return False
        self._items[index] = _Item(item)
        self._remember_id(item, index)
        if item.get("type") not in _SPEECH:
            self._mark(index, ITEM_ADDED)
        return True

    def _on_item_done(self, event: Mapping[str, Any]) -> bool:
        index, item = _int(event, "output_index"), _dict(event, "item")
        if index is None or item is None:
            return False
        self._items[index] = _Item(item, final=True)
        self._remember_id(item, index)
        if item.get("type") not in _SPEECH:
            self._mark(index, ITEM_DONE)
        return True

    def _on_tool_progress(self, event: Mapping[str, Any], kind: int) -> bool:
        """A server tool's ``in_progress`` (``kind`` TOOL_STARTED) or ``completed``/``failed``."""
        index = _int(event, "output_index")
        if index is None:
            item_id = _str(event, "item_id")
            index = self._by_id.get(item_id) if item_id is not None else None
            if index is None:
                return False
        self._mark(index, kind)
        return True

    def _remember_id(self, item: Mapping[str, Any], index: int) -> None:
        item_id = item.get("id")
        if isinstance(item_id, str):
            self._by_id[item_id] = index

    def _item(self, event: Mapping[str, Any], item_type: str) -> _Item | None:
        """The open item an event targets, created if its `added` event was missed."""
        # Every delta comes here: _int() is inlined, and item_id read only when needed.
        index = event.get("output_index")
        item = self._items.get(index) if type(index) is int else None
        if item is None:
            item = self._missing_item(event, item_type)
        return None if item is None or item.final else item

    def _missing_item(self, event: Mapping[str, Any], item_type: str) -> _Item | None:
        """Without a known `output_index`: the item `item_id` names; else a stub."""
        index = _int(event, "output_index")
        item_id = _str(event, "item_id")
        if index is None:
            index = self._by_id.get(item_id) if item_id is not None else None
            return None if index is None else self._items.get(index)
        stub: dict[str, Any] = {"type": item_type}
        if item_id is not None:
            stub["id"] = item_id
            self._by_id[item_id] = index
        if item_type == "message":
            stub["role"] = "assistant"
        item = self._items[index] = _Item(stub)
        return item

    # --- streamed item fields (arguments, input, code) ---------------------------------

    def _on_field(self, event: Mapping[str, Any], item_type: str, key: str, src: str,
                  done: bool) -> bool:
        value = event.get(src)  # _str() inlined: the hot path
        item = self._item(event, item_type) if isinstance(value, str) else None
        if item is None:
            return False
        if item.text is None:
            item.key, item.text = key, _Text()
        if done:
            item.text.done(value)
            return True
        return item.text.delta(value)

    # --- content and summary parts --------------------------------------------------------

    def _part(self, event: Mapping[str, Any], item_type: str, summary: bool, part_type: str,
              key: str) -> _Part | None:
        item = self._item(event, item_type)
        index = event.get("summary_index" if summary else "content_index")
        if item is None or type(index) is not int:  # _int() inlined: the hot path
            return None
        parts = item.summary if summary else item.content
        part = parts.get(index)
        if part is None:
            stub: dict[str, Any] = {"type": part_type, key: ""}
            if part_type == "output_text":
                stub["annotations"] = []
            part = parts[index] = _Part(stub, key)
        return None if part.final else part

    def _on_part(self, event: Mapping[str, Any], summary: bool, done: bool) -> bool:
        new = _dict(event, "part")
        if new is None:
            return False
        part_type = new.get("type")
        item_type = "reasoning" if summary or part_type == "reasoning_text" else "message"
        key = "refusal" if part_type == "refusal" else "text"
        part = self._part(event, item_type, summary, "", key)
        if part is None:
            return False
        part.part, part.key = new, key  # replaces the stub `_part` may have made
        if done:  # the finished part carries its full text and annotations
            part.text, part.annotations, part.final = None, {}, True
        return True

    def _on_text(self, event: Mapping[str, Any], item_type: str, summary: bool,
                 part_type: str, key: str, src: str, done: bool) -> bool:
        value = event.get(src)  # _str() inlined: the hot path
        part = (self._part(event, item_type, summary, part_type, key)
                if isinstance(value, str) else None)
        if part is None:
            return False
        if part.text is None:
            part.text = _Text()
        if done:
            part.text.done(value)
            return True
        return part.text.delta(value)

    def _on_annotation(self, event: Mapping[str, Any]) -> bool:
        index = _int(event, "annotation_index")
        annotation = event.get("annotation")
        part = self._part(event, "message", False, "output_text", "text")
        if part is None or index is None or annotation is None:
            return False
        part.annotations[index] = annotation
        return True


_Handler = Callable[[ResponseAccumulator, Mapping[str, Any]], bool]


def _handlers() -> dict[str, _Handler]:
    # Handlers that take settings are closures passing them positionally: functools.partial
    # with keywords made the handling of a delta a fifth dearer.
    def part(summary: bool, done: bool) -> _Handler:
        return lambda acc, event: acc._on_part(event, summary, done)

    def text(item_type: str, summary: bool, part_type: str, key: str, src: str,
             done: bool) -> _Handler:
        return lambda acc, event: acc._on_text(event, item_type, summary, part_type, key, src,
                                               done)

    def field(item_type: str, key: str, src: str, done: bool) -> _Handler:
        return lambda acc, event: acc._on_field(event, item_type, key, src, done)

    def progress(kind: int) -> _Handler:
        return lambda acc, event: acc._on_tool_progress(event, kind)

    acc = ResponseAccumulator
    table: dict[str, _Handler] = {
        "response.output_item.added": acc._on_item_added,
        "response.output_item.done": acc._on_item_done,
        "response.content_part.added": part(summary=False, done=False),
        "response.content_part.done": part(summary=False, done=True),
        "response.reasoning_summary_part.added": part(summary=True, done=False),
        "response.reasoning_summary_part.done": part(summary=True, done=True),
        "response.output_text.annotation.added": acc._on_annotation,
        "error": acc._on_error,
    }
    table.update(dict.fromkeys(_SNAPSHOT_TYPES, acc._on_snapshot))
    table.update(dict.fromkeys(_TERMINAL_TYPES, acc._on_terminal))
    for tool in SERVER_TOOL_TYPES:
        table[f"response.{tool}.in_progress"] = progress(TOOL_STARTED)
        table[f"response.{tool}.completed"] = progress(TOOL_ENDED)
        table[f"response.{tool}.failed"] = progress(TOOL_ENDED)

    # Text inside a part: (event stem, item type, in summary?, part type, part key, done key)
    for stem, item_type, summary, part_type, key, done_src in (
        ("output_text", "message", False, "output_text", "text", "text"),
        ("refusal", "message", False, "refusal", "refusal", "refusal"),
        ("reasoning_text", "reasoning", False, "reasoning_text", "text", "text"),
        ("reasoning_summary_text", "reasoning", True, "summary_text", "text", "text"),
    ):
        for suffix, src in (("delta", "delta"), ("done", done_src)):
            table[f"response.{stem}.{suffix}"] = text(item_type, summary, part_type, key, src,
                                                      done=suffix == "done")

    # A string field of the item itself: (event stem, item type, item key)
    for stem, item_type, key in (
        ("function_call_arguments", "function_call", "arguments"),
        ("custom_tool_call_input", "custom_tool_call", "input"),
        ("mcp_call_arguments", "mcp_call", "arguments"),
        ("code_interpreter_call_code", "code_interpreter_call", "code"),
    ):
        for suffix, src in (("delta", "delta"), ("done", key)):
            table[f"response.{stem}.{suffix}"] = field(item_type, key, src, done=suffix == "done")
    return table


_HANDLERS = _handlers()
