"""ResponseAccumulator and ResponseStream: rebuilt responses checked against the recordings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_responses.protocol import sse as sse_parser
from otel_responses.protocol.accumulator import ResponseAccumulator
from otel_responses.protocol.stream import ResponseStream
from tests.recordings import Recording, load_recordings, need

SSE_RECORDINGS = [r for r in load_recordings() if r.is_sse]
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
SNAPSHOT = {"response.created", "response.in_progress", "response.queued"}


def sse_params() -> list[object]:
    if SSE_RECORDINGS:
        return [pytest.param(r, id=r.name) for r in SSE_RECORDINGS]
    return [pytest.param(None, id="no-shared-fixtures")]


# --- references written plainly, independent of the code under test -------------------------


def naive_events(body: str) -> list[dict[str, Any]]:
    """The data JSON of each block (recordings use LF and blank-line-terminated blocks)."""
    events = []
    for block in body.split("\n\n"):
        data = [line.removeprefix("data:").removeprefix(" ")
                for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


def terminal_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    return [e for e in events if e["type"] in TERMINAL][-1]


def message_text(response: dict[str, Any] | None) -> str:
    if response is None:
        return ""
    return "".join(part.get("text", "")
                   for item in response.get("output", []) if item.get("type") == "message"
                   for part in item.get("content", []) if part.get("type") == "output_text")


def call_arguments(response: dict[str, Any] | None) -> list[str]:
    if response is None:
        return []
    return [item.get("arguments", "") for item in response.get("output", [])
            if item.get("type") == "function_call"]


def annotations(response: dict[str, Any]) -> list[Any]:
    return [a for item in response["output"] if item.get("type") == "message"
            for part in item["content"] for a in part.get("annotations", [])]


def accumulate(events: list[dict[str, Any]]) -> ResponseAccumulator:
    acc = ResponseAccumulator()
    for event in events:
        acc.add(event)
    return acc


def stream_of(*chunks: bytes) -> ResponseStream:
    stream = ResponseStream()
    for chunk in chunks:
        stream.feed(chunk)
    stream.close()
    return stream


def sse(*events: dict[str, Any]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


# --- recordings --------------------------------------------------------------------------------


@pytest.mark.parametrize("rec", sse_params())
def test_full_stream(rec: Recording | None) -> None:
    rec = need(rec)
    events = naive_events(rec.body)
    terminal = terminal_event(events)
    stream = stream_of(rec.body_bytes)
    assert stream.outcome == terminal["type"].removeprefix("response.")
    assert stream.result() == terminal["response"]
    assert stream.result()["usage"] == terminal["response"]["usage"]
    assert stream.error is None
    assert not stream.truncated
    assert stream.events == len(events)
    assert stream.malformed == 0
    assert stream.delta_count == sum(e["type"].endswith(".delta") for e in events)


@pytest.mark.parametrize("rec", sse_params())
def test_rebuild_without_terminal_event(rec: Recording | None) -> None:
    rec = need(rec)
    events = naive_events(rec.body)
    terminal = terminal_event(events)["response"]
    acc = accumulate([e for e in events if e["type"] not in TERMINAL])
    result = acc.result()
    assert result is not None
    assert acc.outcome is None
    assert result["output"] == terminal["output"]  # built from output_item.done
    assert result["id"] == terminal["id"]
    last_snapshot = [e for e in events if e["type"] in SNAPSHOT][-1]["response"]
    assert result["status"] == last_snapshot["status"]
    assert result["usage"] == last_snapshot["usage"]


@pytest.mark.parametrize("rec", sse_params())
def test_rebuild_from_deltas_only(rec: Recording | None) -> None:
    """Without the terminal event and any `.done` event, everything comes from deltas."""
    rec = need(rec)
    events = naive_events(rec.body)
    terminal = terminal_event(events)["response"]
    acc = accumulate([e for e in events
                      if e["type"] not in TERMINAL and not e["type"].endswith(".done")])
    result = acc.result()
    assert result is not None
    from_deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert message_text(result) == from_deltas == message_text(terminal)
    by_item: dict[str, str] = {}
    for e in events:
        if e["type"] == "response.function_call_arguments.delta":
            by_item[e["item_id"]] = by_item.get(e["item_id"], "") + e["delta"]
    assert call_arguments(result) == list(by_item.values()) == call_arguments(terminal)
    assert annotations(result) == annotations(terminal)
    assert [(i["type"], i["id"]) for i in result["output"]] == [
        (i["type"], i["id"]) for i in terminal["output"]]


@pytest.mark.parametrize("rec", sse_params())
def test_recording_as_other_servers_send_it(rec: Recording | None) -> None:
    """No `event:` lines, keep-alive comments, CRLF and a trailing `data: [DONE]`."""
    rec = need(rec)
    lines = [line for line in rec.body.split("\n") if not line.startswith("event:")]
    body = ": keep-alive\r\n" + "\r\n".join(lines) + "data: [DONE]\r\n\r\n"
    original, variant = stream_of(rec.body_bytes), stream_of(body.encode())
    assert variant.result() == original.result()
    assert variant.outcome == original.outcome
    assert variant.delta_count == original.delta_count
    assert variant.events == original.events + 1
    assert variant.malformed == 0
    assert not variant.truncated


def test_cut_stream_gives_a_prefix() -> None:
    recordings = SSE_RECORDINGS or [need(None)]

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        rec = data.draw(st.sampled_from(recordings), label="recording")
        body = rec.body_bytes
        cut = data.draw(st.integers(0, len(body)), label="cut")
        split = data.draw(st.integers(0, cut), label="split")
        events = naive_events(rec.body)
        terminal = terminal_event(events)
        marker = f'"type":"{terminal["type"]}"'.encode()
        terminal_end = body.index(b"\n\n", body.index(marker)) + 2
        stream = stream_of(body[:split], body[split:cut])
        full = terminal["response"]
        assert message_text(full).startswith(message_text(stream.result()))
        for part, whole in zip(call_arguments(stream.result()), call_arguments(full),
                               strict=False):
            assert whole.startswith(part)
        if cut >= terminal_end:
            assert stream.outcome == terminal["type"].removeprefix("response.")
            assert stream.truncated == (cut < len(body))
        else:
            assert stream.outcome is None
            assert stream.truncated
            assert stream.delta_count == sum(
                e["type"].endswith(".delta") for e in naive_events(body[:cut].decode(
                    errors="ignore").rpartition("\n\n")[0] + "\n\n"))

    check()


# --- synthetic streams -------------------------------------------------------------------------

CREATED = {"type": "response.created",
           "response": {"id": "resp_1", "status": "in_progress", "output": [], "usage": None}}


def item_added(index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.output_item.added", "output_index": index, "item": item}


def test_nothing_seen() -> None:
    acc = ResponseAccumulator()
    assert acc.result() is None
    assert acc.outcome is None
    assert acc.error is None
    stream = ResponseStream()
    assert not stream.truncated  # not closed yet
    stream.close()
    assert stream.truncated
    assert stream.result() is None


def test_refusal() -> None:
    acc = accumulate([
        CREATED,
        item_added(0, {"id": "msg_1", "type": "message", "role": "assistant", "content": []}),
        {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "part": {"type": "refusal", "refusal": ""}},
        {"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "I can't"},
        {"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": " help."},
    ])
    assert acc.result()["output"] == [{
        "id": "msg_1", "type": "message", "role": "assistant",
        "content": [{"type": "refusal", "refusal": "I can't help."}]}]
    assert acc.delta_count == 2


def test_reasoning_summary_and_text() -> None:
    rs = {"output_index": 0, "item_id": "rs_1"}
    acc = accumulate([
        CREATED,
        item_added(0, {"id": "rs_1", "type": "reasoning", "summary": []}),
        {"type": "response.reasoning_summary_part.added", **rs, "summary_index": 0,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 0, "delta": "Th"},
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 0, "delta": "ink"},
        {"type": "response.reasoning_summary_part.added", **rs, "summary_index": 1,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **rs, "summary_index": 1, "delta": "B"},
        {"type": "response.reasoning_text.delta", **rs, "content_index": 0, "delta": "raw "},
        {"type": "response.reasoning_text.delta", **rs, "content_index": 0, "delta": "cot"},
    ])
    item = acc.result()["output"][0]
    assert item["summary"] == [{"type": "summary_text", "text": "Think"},
                               {"type": "summary_text", "text": "B"}]
    assert item["content"] == [{"type": "reasoning_text", "text": "raw cot"}]
    assert acc.delta_count == 5
    assert acc.ignored == 0


@pytest.mark.parametrize(("stem", "item_type", "key"), [
    ("function_call_arguments", "function_call", "arguments"),
    ("custom_tool_call_input", "custom_tool_call", "input"),
    ("mcp_call_arguments", "mcp_call", "arguments"),
    ("code_interpreter_call_code", "code_interpreter_call", "code"),
])
def test_streamed_item_fields(stem: str, item_type: str, key: str) -> None:
    ids = {"output_index": 1, "item_id": "it_1"}
    events = [
        CREATED,
        item_added(1, {"id": "it_1", "type": item_type, key: ""}),
        {"type": f"response.{stem}.delta", **ids, "delta": "ab"},
        {"type": f"response.{stem}.delta", **ids, "delta": "c"},
    ]
    acc = accumulate(events)
    assert acc.result()["output"] == [{"id": "it_1", "type": item_type, key: "abc"}]
    assert acc.delta_count == 2
    # `.done` carries the full value and wins; later deltas are stale
    acc.add({"type": f"response.{stem}.done", **ids, key: "xyz"})
    acc.add({"type": f"response.{stem}.delta", **ids, "delta": "!"})
    assert acc.result()["output"][0][key] == "xyz"
    assert acc.ignored == 1


def test_done_events_win_over_deltas() -> None:
    msg = {"output_index": 0, "item_id": "msg_1", "content_index": 0}
    acc = accumulate([
        CREATED,
        item_added(0, {"id": "msg_1", "type": "message", "role": "assistant", "content": []}),
        {"type": "response.output_text.delta", **msg, "delta": "Hel"},
        {"type": "response.output_text.done", **msg, "text": "Hello"},
    ])
    assert message_text(acc.result()) == "Hello"
    acc.add({"type": "response.content_part.done", **msg,
             "part": {"type": "output_text", "text": "Hello!", "annotations": ["a"]}})
    assert acc.result()["output"][0]["content"] == [
        {"type": "output_text", "text": "Hello!", "annotations": ["a"]}]
    done_item = {"id": "msg_1", "type": "message", "status": "completed", "content": []}
    acc.add({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    acc.add({"type": "response.output_text.delta", **msg, "delta": "late"})
    assert acc.result()["output"] == [done_item]


def test_annotations_by_index() -> None:
    msg = {"output_index": 0, "item_id": "msg_1", "content_index": 0}
    acc = accumulate([
        CREATED,
        item_added(0, {"id": "msg_1", "type": "message", "role": "assistant", "content": []}),
        {"type": "response.content_part.added", **msg,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", **msg, "delta": "See [1] and [2]."},
        {"type": "response.output_text.annotation.added", **msg, "annotation_index": 1,
         "annotation": {"url": "b"}},
        {"type": "response.output_text.annotation.added", **msg, "annotation_index": 0,
         "annotation": {"url": "a"}},
    ])
    part = acc.result()["output"][0]["content"][0]
    assert part == {"type": "output_text", "text": "See [1] and [2].",
                    "annotations": [{"url": "a"}, {"url": "b"}]}


def test_events_without_added_or_output_index() -> None:
    """A server that skips `output_item.added`, or leaves out `output_index` later."""
    acc = accumulate([
        {"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_1",
         "content_index": 0, "delta": "Hi"},
        {"type": "response.output_text.delta", "item_id": "msg_1", "content_index": 0,
         "delta": " there"},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "item_id": "fc_1",
         "delta": "{}"},
    ])
    assert acc.result() == {"output": [
        {"type": "message", "id": "msg_1", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "arguments": "{}"},
    ]}
    assert acc.ignored == 0


def test_snapshot_output_kept_and_inputs_not_mutated() -> None:
    snapshot = {"type": "response.in_progress", "response": {
        "id": "r", "status": "in_progress", "output": [{"type": "web_search_call", "id": "ws"}]}}
    before = json.dumps(snapshot)
    acc = accumulate([snapshot, item_added(1, {"type": "message", "id": "m", "content": []}),
                      {"type": "response.output_text.delta", "output_index": 1,
                       "content_index": 0, "delta": "x"}])
    assert [i["type"] for i in acc.result()["output"]] == ["web_search_call", "message"]
    assert acc.result() == acc.result()
    assert json.dumps(snapshot) == before


def test_queued_snapshot_status() -> None:
    queued = {"type": "response.queued", "response": {"id": "r", "status": "queued", "output": []}}
    acc = accumulate([CREATED, queued])
    assert acc.result()["status"] == "queued"
    assert acc.outcome is None


def test_error_event_documented_shape() -> None:
    acc = accumulate([CREATED, {"type": "error", "code": "server_error", "message": "boom",
                                "param": None, "sequence_number": 3}])
    assert acc.outcome == "error"
    assert acc.error == {"code": "server_error", "message": "boom", "type": None, "param": None}
    assert acc.result()["status"] == "in_progress"


def test_error_event_nested_shape() -> None:
    acc = accumulate([{"type": "error", "sequence_number": 2, "error": {
        "type": "too_many_requests", "code": "too_many_requests",
        "message": "Too Many Requests", "param": None}}])
    assert acc.outcome == "error"
    assert acc.error == {"code": "too_many_requests", "message": "Too Many Requests",
                         "type": "too_many_requests", "param": None}


def test_failed_response_carries_error_and_overrides_error_event() -> None:
    failed = {"type": "response.failed", "response": {
        "id": "r", "status": "failed", "output": [],
        "error": {"code": "rate_limit_exceeded", "message": "slow down"}}}
    acc = accumulate([CREATED, {"type": "error", "message": "first"}, failed])
    assert acc.outcome == "failed"
    assert acc.error == {"code": "rate_limit_exceeded", "message": "slow down", "type": None,
                         "param": None}
    assert acc.result() is failed["response"]


def test_error_event_after_terminal_event_keeps_outcome() -> None:
    completed = {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    acc = accumulate([completed, {"type": "error", "code": "late", "message": "m"}])
    assert acc.outcome == "completed"
    assert acc.error is not None and acc.error["code"] == "late"


def test_cancelled_status() -> None:
    acc = accumulate([{"type": "response.incomplete",
                       "response": {"id": "r", "status": "cancelled", "output": []}}])
    assert acc.outcome == "cancelled"


def test_terminal_event_without_response_still_ends_the_stream() -> None:
    acc = accumulate([CREATED, {"type": "response.completed"}])
    assert acc.outcome == "completed"
    assert acc.result()["status"] == "in_progress"
    assert acc.ignored == 1


def test_unknown_progress_and_malformed_events_are_counted_not_raised() -> None:
    events: list[dict[str, Any]] = [
        {"type": "response.something_new", "x": 1},
        {"type": "response.web_search_call.searching", "output_index": 0, "item_id": "ws"},
        {"type": "response.output_text.delta"},
        {"type": "response.output_text.delta", "output_index": "0", "content_index": 0,
         "delta": "x"},
        {"type": "response.output_text.delta", "output_index": True, "content_index": 0,
         "delta": "x"},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
         "delta": 5},
        {"type": "response.output_item.added", "output_index": 0, "item": "nope"},
        {"type": "response.created", "response": []},
        {"type": "response.audio.delta", "delta": "AAAA"},
        {"type": None},
        {},
    ]
    acc = accumulate(events)
    assert acc.ignored == len(events)
    assert acc.delta_count == 5
    assert acc.result() is None


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 3) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=4)
_TYPES = st.sampled_from([
    "response.created", "response.completed", "response.failed", "error",
    "response.output_item.added", "response.output_item.done", "response.content_part.added",
    "response.content_part.done", "response.output_text.delta", "response.output_text.done",
    "response.output_text.annotation.added", "response.refusal.delta",
    "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
    "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.unknown",
])
_FIELDS = st.sampled_from(["output_index", "content_index", "summary_index", "annotation_index",
                           "item_id", "delta", "text", "arguments", "part", "item", "response",
                           "annotation", "error", "code", "message"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(lambda t, f: {**f, "type": t}, _TYPES,
                          st.dictionaries(_FIELDS, _JSON, max_size=6)), max_size=12))
def test_arbitrary_events_never_raise(events: list[dict[str, Any]]) -> None:
    acc = accumulate(events)
    result = acc.result()
    assert result is None or isinstance(result, dict)
    assert acc.ignored <= len(events)


# --- ResponseStream specifics ------------------------------------------------------------------


def test_stream_malformed_and_non_object_data() -> None:
    stream = stream_of(b"data: {not json\n\ndata: 5\n\ndata: [1]\n\n" + sse(CREATED))
    assert stream.malformed == 3
    assert stream.events == 4
    assert stream.result() == CREATED["response"]


def test_stream_type_from_event_field_when_data_has_none() -> None:
    delta = {"output_index": 0, "content_index": 0, "delta": "hi"}
    body = b"event: response.output_text.delta\ndata: " + json.dumps(delta).encode() + b"\n\n"
    stream = stream_of(body)
    assert stream.delta_count == 1
    assert message_text(stream.result()) == "hi"


def test_stream_data_type_wins_over_event_field() -> None:
    body = b"event: response.output_text.delta\ndata: " + json.dumps(CREATED).encode() + b"\n\n"
    stream = stream_of(body)
    assert stream.delta_count == 0
    assert stream.result() == CREATED["response"]


def test_stream_done_marker_is_not_malformed() -> None:
    stream = stream_of(sse(CREATED) + b"data: [DONE]\n\n")
    assert stream.events == 2
    assert stream.malformed == 0


def test_stream_cut_mid_event_after_terminal_is_truncated() -> None:
    completed = {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    stream = stream_of(sse(CREATED, completed) + b"data: {")
    assert stream.outcome == "completed"
    assert stream.truncated


def test_stream_delta_count_moves_on_the_chunk_with_the_first_delta() -> None:
    delta = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
             "delta": "a"}
    body = sse(CREATED, delta)
    stream = ResponseStream()
    first_delta_end = len(body)
    stream.feed(body[:first_delta_end - 1])
    assert stream.delta_count == 0
    stream.feed(body[first_delta_end - 1:])
    assert stream.delta_count == 1


def test_stream_type_that_is_not_a_string_is_ignored_not_raised() -> None:
    acc = accumulate([{"type": []}, {"type": {"a": 1}}, {"type": 1}])
    assert acc.ignored == 3
    stream = stream_of(b'data: {"type": []}\n\n' + sse(CREATED))
    assert stream.result() == CREATED["response"]
    assert stream.accumulator.ignored == 1


def test_stream_oversize_event_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_parser, "MAX_EVENT", 300)
    big = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
           "delta": "x" * 500}
    completed = {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    stream = stream_of(sse(CREATED, big, completed))
    assert (stream.events, stream.malformed, stream.delta_count) == (3, 1, 0)
    assert stream.outcome == "completed"
    assert not stream.truncated


# --- snapshots parsed only when needed ----------------------------------------------------------

BROKEN_SNAPSHOT = b'event: response.in_progress\ndata: {"type":"response.in_progress", oops\n\n'


def test_snapshot_is_not_parsed_when_a_terminal_response_came() -> None:
    completed = {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    stream = stream_of(sse(CREATED) + BROKEN_SNAPSHOT + sse(completed))
    assert stream.result() == completed["response"]
    assert stream.malformed == 0  # never parsed: nothing needed it


def test_latest_snapshot_is_parsed_once_when_read() -> None:
    stream = ResponseStream()
    stream.feed(sse(CREATED) + BROKEN_SNAPSHOT)
    assert stream.malformed == 0
    assert stream.result() is None  # only the latest snapshot is kept, and it is broken
    assert stream.malformed == 1
    assert stream.result() is None
    assert stream.malformed == 1
    stream.feed(sse({"type": "response.queued", "response": {"id": "r", "status": "queued"}}))
    stream.close()
    assert stream.result() == {"id": "r", "status": "queued", "output": []}
    assert (stream.events, stream.malformed) == (3, 1)


@pytest.mark.parametrize("rec", sse_params())
def test_recording_reserialized_in_other_key_order(rec: Recording | None) -> None:
    """Keys reversed (so "type" comes last) and spaced separators, as other servers may
    send them: the same result, with and without the terminal event."""
    rec = need(rec)
    events = naive_events(rec.body)

    def body(events: list[dict[str, Any]], reorder: bool) -> bytes:
        if not reorder:
            return sse(*events)
        return "".join(f"data: {json.dumps(dict(reversed(e.items())))}\n\n"
                       for e in events).encode()

    unfinished = [e for e in events if e["type"] not in TERMINAL]
    for reorder in (False, True):
        stream = stream_of(body(events, reorder))
        assert stream.result() == terminal_event(events)["response"]
        assert (stream.events, stream.malformed) == (len(events), 0)
        assert stream.delta_count == sum(e["type"].endswith(".delta") for e in events)
        cut = stream_of(body(unfinished, reorder))
        assert cut.result() == accumulate(unfinished).result()
        assert cut.malformed == 0


_WS = st.text(st.sampled_from(" \t"), max_size=2)
_OBJECTS = st.builds(lambda type_, rest: {"type": type_, **rest},
                     st.sampled_from(["response.created", "response.in_progress", "error",
                                      "response.output_text.delta"]),
                     st.dictionaries(st.sampled_from(["response", "delta", "x"]), _JSON,
                                     max_size=3))
_DATA = st.one_of(
    st.builds(lambda before, obj, spaced, after, junk:
              before + json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":"))
              + after + junk,
              _WS, _OBJECTS, st.booleans(), _WS,
              # not JSON whitespace, though str.strip() would take them: \f, NBSP, U+2028
              st.sampled_from(["", "", "x", "}", "{}", ",", '"', "\ufeff", "\f", "\xa0",
                               "\u2028"])),
    st.builds(lambda bom, text: bom + text, st.sampled_from(["", "\ufeff"]),
              st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)),
    st.sampled_from(["[DONE]", "", "[]", "5", "null", '"s"', "{", '{"type":"response.created"']),
)


@settings(max_examples=300, deadline=None)
@given(data=_DATA)
def test_stream_accepts_exactly_what_json_loads_does(data: str) -> None:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    stream = stream_of(f"data: {data}\n\n".encode())
    stream.result()  # parses a snapshot left for later
    assert stream.events == 1
    assert stream.malformed == (0 if data == "[DONE]" or isinstance(value, dict) else 1)


@pytest.mark.parametrize("split", [False, True])
def test_large_snapshot_of_a_cut_stream_survives_packing(split: bool) -> None:
    """A long snapshot is held compressed; a cut stream's result is still exactly it."""
    tools = [{"type": "function", "name": f"tool_{i}", "description": "é€ " * 40,
              "parameters": {"type": "object"}} for i in range(20)]
    created = {"type": "response.created", "response": {
        "id": "r", "status": "queued", "output": [], "tools": tools}}
    progress = {"type": "response.in_progress", "response": {
        "id": "r", "status": "in_progress", "output": [], "tools": tools}}
    chunks = [f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode()
              for e in (created, progress)]
    stream = ResponseStream()
    for chunk in chunks if split else [b"".join(chunks)]:
        stream.feed(chunk)
    stream.close()
    assert len(json.dumps(progress)) > 1024  # long enough to be packed
    assert stream.events == 2
    assert stream.result() == progress["response"]
