"""Sans-IO item handling for stored responses: a request's input as listed items, a chain's
history as the upstream must get it, and one page of ``input_items``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from otel_responses.store.record import StoredResponse

Item = Mapping[str, Any]

_ID_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
              "custom_tool_call": "ctc_", "custom_tool_call_output": "ctco_",
              "reasoning": "rs_"}
_CALLS = frozenset({"function_call", "custom_tool_call"})
_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})


class ListingError(ValueError):
    """An ``input_items`` query parameter that cannot be used (answered with a 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def input_as_items(value: Any) -> list[Item]:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) \
        else []


def listed_input(value: Any, new_id: Callable[[str], str]) -> list[dict[str, Any]]:
    """A request's ``input`` as ``input_items`` lists it: a list of typed items, each with an
    id (``new_id(prefix)`` makes the missing ones), message text as content parts."""
    listed = []
    for item in input_as_items(value):
        kind = item.get("type", "message")
        entry = {"id": item.get("id") or new_id(_ID_PREFIX.get(kind, "item_")), **item,
                 "type": kind}
        content = entry.get("content")
        if kind == "message" and isinstance(content, str):
            part = "output_text" if entry.get("role") == "assistant" else "input_text"
            entry["content"] = [{"type": part, "text": content}]
        listed.append(entry)
    return listed


def conversation(chain: Sequence[StoredResponse], new_input: Iterable[Item]) -> list[Item]:
    """What the upstream gets for a request continuing ``chain`` (oldest first): each
    response's input and output items in order, then ``new_input``. A call's output is moved
    up to follow the run of calls it answers, so a call and its result are never split by
    other items (chat servers refuse tool calls not followed by their results). Earlier
    ``instructions`` are not carried over (OpenAI's rule): they are no item."""
    items: list[Item] = []
    for record in chain:
        items += record.input_items
        items += [i for i in record.response.get("output") or () if isinstance(i, Mapping)]
    items += new_input
    called: set[Any] = set()
    answers: dict[Any, list[Item]] = {}  # call_id → its outputs that come after the call
    for item in items:
        kind = item.get("type")
        if kind in _CALLS:
            called.add(item.get("call_id"))
        elif kind in _OUTPUTS and item.get("call_id") in called:
            answers.setdefault(item.get("call_id"), []).append(item)
    moved = {id(i) for outputs in answers.values() for i in outputs}
    out: list[Item] = []
    run: list[Item] = []  # the calls of the current run of consecutive calls
    for item in items:
        if id(item) in moved:
            continue
        if item.get("type") in _CALLS:
            run.append(item)
            out.append(item)
            continue
        _close_run(run, answers, out)
        out.append(item)
    _close_run(run, answers, out)
    return out


def _close_run(run: list[Item], answers: dict[Any, list[Item]], out: list[Item]) -> None:
    """Append the outputs answering the calls of ``run`` (in the calls' order), then clear it."""
    for call in run:
        out += answers.pop(call.get("call_id"), ())
    run.clear()


def events_after(stream: bytes, after: int) -> bytes:
    """The events of an SSE ``stream`` whose ``sequence_number`` is above ``after``. Sequence
    numbers count from 0 in the order sent, so that is every event after the first
    ``after + 1``; a JSON ``data`` line has no raw line break, so events split on blank
    lines."""
    if after < 0:
        return stream
    return b"".join(event + b"\n\n" for event in stream.split(b"\n\n")[after + 1:] if event)


def input_items_page(items: Sequence[Item], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of ``GET /v1/responses/{id}/input_items`` in OpenAI's list shape, from the
    query's ``after``, ``before`` (item ids, in the listed order), ``limit`` (1-100, default
    20) and ``order`` (``asc`` or ``desc``, the default)."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ListingError("order", f"Invalid order '{order}': expected 'asc' or 'desc'.")
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ListingError("limit", f"Invalid limit '{raw_limit}': expected an integer from "
                                    "1 to 100.")
    listed = list(items) if order == "asc" else list(reversed(items))
    start, end = 0, len(listed)
    for param in ("after", "before"):
        cursor = query.get(param)
        if cursor is None:
            continue
        index = next((i for i, item in enumerate(listed) if item.get("id") == cursor), None)
        if index is None:
            raise ListingError(param, f"No input item with id '{cursor}'.")
        if param == "after":
            start = max(start, index + 1)
        else:
            end = min(end, index)
    # `before` alone pages backwards: the items just before the cursor.
    window = listed[start:end]
    if query.get("before") is not None and query.get("after") is None:
        page = window[-limit:]
    else:
        page = window[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(window) > len(page)}
