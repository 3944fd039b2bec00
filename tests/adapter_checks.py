"""Shared by the adapter tests: the one stream validity checker (SDK event types, sequence
numbers, indexes and ids, deltas adding up), recording replays, and a chat-stream strategy."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from otel_responses.protocol.chat import StreamTranslator, translate_completion, translate_request
from tests.recordings import TERMINAL, ChatOutcome, Recording, sse_payloads

EVENT = TypeAdapter(ResponseStreamEvent)
RESPONSE_ID = "resp_0123456789abcdef"
CREATED_AT = 1_700_000_000

# Delta event → (its done event, the done event's field holding the whole text).
_DELTAS = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.refusal.delta": ("response.refusal.done", "refusal"),
    "response.reasoning_text.delta": ("response.reasoning_text.done", "text"),
    "response.reasoning_summary_text.delta": ("response.reasoning_summary_text.done", "text"),
    "response.function_call_arguments.delta": ("response.function_call_arguments.done",
                                               "arguments"),
    "response.custom_tool_call_input.delta": ("response.custom_tool_call_input.done", "input"),
}
_DONES = {done: (delta, key) for delta, (done, key) in _DELTAS.items()}
_PART_FIELD = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text",
               "summary_text": "text"}
# Part events → the key of the part's index (content parts, reasoning summary parts).
_PART_ADDED = {"response.content_part.added": "content_index",
               "response.reasoning_summary_part.added": "summary_index"}
_PART_DONE = {"response.content_part.done": "content_index",
              "response.reasoning_summary_part.done": "summary_index"}


def validate_response(response: Mapping[str, Any]) -> Response:
    """A Response object, validated by the openai SDK's pydantic model (raises if invalid)."""
    return Response.model_validate(dict(response))


def check_stream(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Assert `events` is a valid Responses stream and return its final Response object.

    Every event validates as the SDK's `ResponseStreamEvent`; sequence numbers run 0, 1, …;
    created, in_progress first and exactly one terminal event last; output items are added
    with consecutive output indexes and unique ids; each event names an item and content part
    that is open; the deltas of a part or call add up to its done event; each item's done
    form is the final response's output at its index.
    """
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        EVENT.validate_python(dict(event))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in TERMINAL and sum(t in TERMINAL for t in types) == 1
    final = events[-1]["response"]
    validate_response(final)
    ids: list[str] = []  # by output index
    done: dict[int, dict[str, Any]] = {}
    parts: dict[tuple[int, str], int] = {}  # parts added per (output index, index key)
    open_part: dict[int, tuple[str, int] | None] = {}
    text: dict[tuple[int, str, int], list[str]] = {}
    for event in events[2:-1]:
        kind = event["type"]
        index = event.get("output_index")
        if kind == "error":
            continue
        if kind == "response.output_item.added":
            assert index == len(ids), "output indexes must be consecutive"
            assert event["item"]["id"] not in ids
            ids.append(event["item"]["id"])
            open_part[index] = None
            continue
        assert index is not None and index < len(ids) and index not in done, event
        if "item_id" in event:
            assert event["item_id"] == ids[index]
        key = "summary_index" if "summary_index" in event else "content_index"
        part_at = (key, event.get(key, -1))
        if kind == "response.output_item.done":
            assert event["item"]["id"] == ids[index] and open_part[index] is None
            done[index] = event["item"]
        elif kind in _PART_ADDED:
            assert open_part[index] is None and part_at[1] == parts.get((index, key), 0)
            open_part[index] = part_at
            parts[index, key] = part_at[1] + 1
        elif kind in _PART_DONE:
            assert open_part[index] == part_at
            part = event["part"]
            assert part[_PART_FIELD[part["type"]]] == "".join(text.get((index, *part_at), []))
            open_part[index] = None
        elif kind in _DELTAS:
            if part_at[1] >= 0:
                assert open_part[index] == part_at
            text.setdefault((index, *part_at), []).append(event["delta"])
        elif kind in _DONES:
            _, field = _DONES[kind]
            assert event[field] == "".join(text.get((index, *part_at), [])), kind
    if final["status"] != "failed":
        assert sorted(done) == list(range(len(ids))), "every added item must be done"
    assert [item["id"] for item in final["output"]] == ids
    for index, item in done.items():
        assert final["output"][index] == item
    return final


def sdk_accumulate(events: Sequence[Mapping[str, Any]]) -> Any:
    """Run `events` through the openai SDK's own stream accumulator (the state behind the
    strict `client.responses.stream()` helper); return the last event it yields."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    last = None
    for event in events:
        for out in state.handle_event(construct_type(type_=ResponseStreamEvent,
                                                     value=dict(event))):
            last = out
    return last


def output_summary(response: Mapping[str, Any]) -> dict[str, Any]:
    """What a Response says, in the terms of `ChatOutcome`, for comparing with a recording."""
    text, refusal, reasoning, calls = [], [], [], []
    for item in response["output"]:
        if item["type"] == "message":
            text += [p["text"] for p in item["content"] if p["type"] == "output_text"]
            refusal += [p["refusal"] for p in item["content"] if p["type"] == "refusal"]
        elif item["type"] == "reasoning":
            reasoning += [p["text"] for p in item["summary"] + (item.get("content") or [])]
        elif item["type"] == "function_call":
            calls.append((item["call_id"], item["name"], item["arguments"]))
    return {"text": "".join(text), "refusal": "".join(refusal),
            "reasoning": "".join(reasoning), "tool_calls": calls}


def expected_summary(outcome: ChatOutcome) -> dict[str, Any]:
    return {"text": outcome.text, "refusal": outcome.refusal, "reasoning": outcome.reasoning,
            "tool_calls": [tuple(c) for c in outcome.tool_calls]}


def expected_status(outcome: ChatOutcome) -> tuple[str, str | None]:
    """(status, incomplete reason) a recording's ending calls for, from the Responses docs."""
    if outcome.error or outcome.finish_reason is None:
        return "failed", None
    reason = {"length": "max_output_tokens",
              "content_filter": "content_filter"}.get(outcome.finish_reason)
    return ("incomplete", reason) if reason else ("completed", None)


def expected_usage(outcome: ChatOutcome) -> tuple[int, int, int] | None:
    """(input, output, total) tokens the recording reports, or None if it reports none."""
    usage = outcome.usage
    if not usage:
        return None
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def usage_triple(response: Mapping[str, Any]) -> tuple[int, int, int] | None:
    usage = response["usage"]
    return None if usage is None else (usage["input_tokens"], usage["output_tokens"],
                                       usage["total_tokens"])


def responses_body(chat_request: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses request standing for a recorded chat request: its model, stream flag and
    function tools (flattened back to the Responses shape)."""
    tools = [{"type": "function", **t["function"]} for t in chat_request.get("tools") or []]
    body: dict[str, Any] = {"model": chat_request["model"], "input": "hi",
                            "stream": bool(chat_request.get("stream"))}
    if tools:
        body["tools"] = tools
    return body


def replay_stream(rec: Recording, raw_reasoning: bool = False) -> list[dict[str, Any]]:
    """The events the adapter emits for a recorded chat stream fed chunk by chunk."""
    call = translate_request(responses_body(rec.request_body), raw_reasoning=raw_reasoning)
    translator = StreamTranslator(call, RESPONSE_ID, CREATED_AT)
    events = translator.start()
    for chunk in sse_payloads(rec.body):
        events += translator.feed(chunk)
    events += translator.finish(CREATED_AT + 1)
    assert translator.response == events[-1]["response"]
    return events


def replay_completion(rec: Recording) -> dict[str, Any]:
    """The Response object the adapter makes of a recorded non-streamed chat completion."""
    call = translate_request(responses_body(rec.request_body))
    return translate_completion(call, json.loads(rec.body), RESPONSE_ID, CREATED_AT)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "model": "up-model",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


@st.composite
def chat_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Any mix of text, refusal, reasoning and tool-call deltas (several per chunk, ids and
    names only on a call's first fragment), usage anywhere, maybe a finish, maybe an error."""
    text = st.text(min_size=0, max_size=5)
    started: set[int] = set()
    chunks = []
    for _ in range(draw(st.integers(0, 12))):
        delta: dict[str, Any] = {}
        for field in draw(st.sets(st.sampled_from(["content", "refusal", "reasoning_content",
                                                   "reasoning", "tool_calls"]))):
            if field != "tool_calls":
                delta[field] = draw(text)
                continue
            delta["tool_calls"] = []
            for i in draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)):
                fragment: dict[str, Any] = {"index": i, "function": {"arguments": draw(text)}}
                if i not in started:
                    started.add(i)
                    fragment["id"] = f"call_{i}"
                    fragment["function"]["name"] = f"tool{i}"
                delta["tool_calls"].append(fragment)
        chunks.append(chunk(delta))
        if draw(st.booleans()) and draw(st.booleans()):
            chunks.append({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                    "total_tokens": 3}})
    ending = draw(st.sampled_from(["stop", "tool_calls", "length", "content_filter", None,
                                   "error"]))
    if ending == "error":
        chunks.append({"error": {"message": "boom", "code": 500}})
    elif ending:
        chunks.append(chunk({}, ending))
    return chunks
