"""SSEParser: WHATWG event-stream rules, and chunking never changes the events."""

from __future__ import annotations

import re
import tracemalloc
from itertools import pairwise
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_responses.protocol import sse
from otel_responses.protocol.sse import ServerSentEvent, SSEParser, is_event_stream
from tests.recordings import Recording, load_recordings, need

SSE_RECORDINGS = [r for r in load_recordings() if r.is_sse]


def sse_params() -> list[object]:
    if SSE_RECORDINGS:
        return [pytest.param(r, id=r.name) for r in SSE_RECORDINGS]
    return [pytest.param(None, id="no-shared-fixtures")]


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.close()


def ev(data: str, event: str | None = None, id: str | None = None,
       retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


def reference_parse(body: str, max_event: int | None = None) -> list[ServerSentEvent]:
    """The spec's algorithm written plainly over a whole decoded body (no chunking).

    With `max_event`, the documented limit too: a line that would take the event's data lines
    past `max_event` characters is dropped along with all the event's data, and the event is
    dispatched at its end as an oversize marker."""
    body = body.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", body)
    lines.pop()  # text after the last line ending is an unfinished line
    out: list[ServerSentEvent] = []
    data: str = ""
    event = ""
    last_id: str | None = None
    retry: int | None = None
    size, over = 0, False  # characters of the event's data lines; past the limit?
    for line in lines:
        if line == "":
            if over:
                out.append(ServerSentEvent(event or None, "", last_id, retry, oversize=True))
            elif data != "":
                out.append(ServerSentEvent(event or None, data.removesuffix("\n"), last_id, retry))
            data, event, retry, size, over = "", "", None, 0, False
            continue
        if max_event is not None and size + len(line) > max_event:
            data, size, over = "", 0, True
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        if name == "data":
            if not over:
                data += value + "\n"
                size += len(line)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and re.fullmatch(r"[0-9]+", value):
            retry = int(value)
    return out


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in pairwise(points)]


# --- line endings ---------------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_endings(eol: str) -> None:
    body = f"event: a{eol}data: 1{eol}{eol}data: 2{eol}{eol}".encode()
    assert parse(body) == [ev("1", "a"), ev("2")]


def test_mixed_line_endings() -> None:
    assert parse(b"data: 1\rdata: 2\r\ndata: 3\n\r\n") == [ev("1\n2\n3")]


def test_cr_then_lf_across_chunks_is_one_line_ending() -> None:
    # Were the LF a second line ending, it would be a blank line dispatching "a" alone.
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [ev("a\nb")]


def test_cr_then_empty_chunk_then_lf() -> None:
    assert parse(b"data: a\r", b"", b"\ndata: b\n\n") == [ev("a\nb")]


def test_cr_at_chunk_end_then_other_text() -> None:
    assert parse(b"data: a\r", b"data: b\r", b"\r") == [ev("a\nb")]


def test_lone_cr_dispatches_without_waiting_for_more() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\r") == [ev("x")]


def test_other_unicode_line_breaks_are_not_line_endings() -> None:
    text = "a\u2028b\x0bc\x0cd\x1ce\x85f"
    assert parse(f"data: {text}\n\n".encode()) == [ev(text)]


# --- encoding ------------------------------------------------------------------------------


def test_utf8_split_at_every_byte() -> None:
    body = "data: héllo 🌍 ✓\n\n".encode()
    assert parse(*(body[i:i + 1] for i in range(len(body)))) == [ev("héllo 🌍 ✓")]


def test_bom_at_start_is_dropped_even_when_split() -> None:
    body = b"\xef\xbb\xbfdata: x\n\n"
    assert parse(body) == [ev("x")]
    assert parse(body[:1], body[1:2], body[2:]) == [ev("x")]


def test_only_one_bom_is_dropped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", an unknown field.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_bom_later_in_stream_is_kept() -> None:
    assert parse("data: 1\n\ndata: \ufeff2\n\n".encode()) == [ev("1"), ev("\ufeff2")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse(b"data: a\xffb\n\n") == [ev("a\ufffdb")]


# --- fields --------------------------------------------------------------------------------


def test_multiline_data_joined_with_lf() -> None:
    assert parse(b"data: a\ndata: b\ndata:\ndata: c\n\n") == [ev("a\nb\n\nc")]


def test_only_one_space_after_colon_is_removed() -> None:
    assert parse(b"data:x\n\ndata:  y\n\nevent:  e\ndata: z \n\n") == [
        ev("x"), ev(" y"), ev("z ", " e")]


def test_value_keeps_later_colons() -> None:
    assert parse(b'data: {"a": "b:c"}\n\n') == [ev('{"a": "b:c"}')]


def test_comments_ignored() -> None:
    assert parse(b": keep-alive\n\n:x\ndata: 1\n: more\n\n") == [ev("1")]


def test_field_without_colon_has_empty_value() -> None:
    assert parse(b"data\ndata\n\n") == [ev("\n")]
    assert parse(b"event\ndata: x\n\n") == [ev("x")]


def test_unknown_fields_ignored() -> None:
    assert parse(b"foo: bar\nDATA: no\ndata: yes\n\n") == [ev("yes")]


def test_block_without_data_is_not_dispatched_and_resets_event() -> None:
    assert parse(b"event: a\n\ndata: x\n\n") == [ev("x")]
    assert parse(b"id: 1\nretry: 5\n\n") == []


def test_empty_data_field_is_dispatched() -> None:
    # Spec: "data:" appends an LF to the buffer, so the buffer is non-empty; the event is
    # dispatched with empty data. Only a block with no data field at all is dropped.
    assert parse(b"data:\n\n") == [ev("")]


def test_empty_event_field_means_default_type() -> None:
    assert parse(b"event:\ndata: x\n\n") == [ev("x")]


def test_last_event_id_persists_and_nul_is_ignored() -> None:
    body = b"id: 1\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n"
    assert parse(body) == [ev("a", id="1"), ev("b", id="1"), ev("c", id="1"), ev("d", id="")]


def test_retry_needs_ascii_digits_and_applies_to_its_block() -> None:
    body = "retry: 10\ndata: a\n\ndata: b\n\nretry: 1x\ndata: c\n\nretry: \uff13\ndata: d\n\n"
    assert parse(body.encode()) == [ev("a", retry=10), ev("b"), ev("c"), ev("d")]


# --- dispatch and end of input -------------------------------------------------------------


def test_event_dispatched_only_on_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.pending
    assert parser.feed(b"\n") == [ev("x")]
    assert not parser.pending


def test_unterminated_event_discarded_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2\n") == [ev("1")]
    assert parser.close() == []
    assert parser.pending


def test_unfinished_line_discarded_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2") == [ev("1")]
    assert parser.pending
    assert parser.close() == []
    assert parser.pending


def test_partial_utf8_byte_is_pending() -> None:
    parser = SSEParser()
    parser.feed(b"data: 1\n\n\xc3")
    assert parser.pending


@pytest.mark.parametrize("body", [b"", b"data: 1\n\n", b": comment\n", b"data: 1\r\r"])
def test_not_pending_at_event_boundary(body: bytes) -> None:
    parser = SSEParser()
    parser.feed(body)
    parser.close()
    assert not parser.pending


def test_events_split_across_many_chunks() -> None:
    parser = SSEParser()
    out: list[ServerSentEvent] = []
    for chunk in (b"ev", b"ent: a\nda", b"ta: hel", b"lo\n", b"\nda", b"ta: 2\n\n"):
        out += parser.feed(chunk)
    assert out == [ev("hello", "a"), ev("2")]


def test_long_line_in_tiny_chunks() -> None:
    payload = "x" * 200_000
    body = f"data: {payload}\n\n".encode()
    assert parse(*(body[i:i + 64] for i in range(0, len(body), 64))) == [ev(payload)]


# --- recordings ----------------------------------------------------------------------------


@pytest.mark.parametrize("rec", sse_params())
def test_recording_matches_reference_parse(rec: Recording | None) -> None:
    rec = need(rec)
    events = parse(rec.body_bytes)
    assert events == reference_parse(rec.body)
    assert len(events) == rec.body.count("\n\n")  # one event per blank-line-terminated block


@pytest.mark.parametrize("rec", sse_params())
def test_recording_byte_by_byte(rec: Recording | None) -> None:
    rec = need(rec)
    body = rec.body_bytes
    assert parse(*(body[i:i + 1] for i in range(len(body)))) == parse(body)


@pytest.mark.parametrize("eol", ["\r\n", "\r"])
@pytest.mark.parametrize("rec", sse_params())
def test_recording_with_other_line_endings(rec: Recording | None, eol: str) -> None:
    rec = need(rec)
    assert parse(rec.body.replace("\n", eol).encode()) == parse(rec.body_bytes)


def test_recording_any_split() -> None:
    recordings = SSE_RECORDINGS or [need(None)]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), eol=st.sampled_from(["\n", "\r\n", "\r"]))
    def check(data: st.DataObject, eol: str) -> None:
        rec = data.draw(st.sampled_from(recordings), label="recording")
        body = rec.body.replace("\n", eol).encode()
        cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=60), label="cuts")
        assert parse(*split_at(body, cuts)) == reference_parse(rec.body)

    check()


# --- generated streams ---------------------------------------------------------------------

def _chars(exclude: str) -> st.SearchStrategy[str]:
    return st.characters(codec="utf-8", exclude_characters=exclude)  # utf-8: no surrogates


_NO_EOL = _chars("\r\n")
_GEN = st.fixed_dictionaries({
    "event": st.none() | st.text(_NO_EOL, max_size=12),
    "data": st.text(_chars("\r"), max_size=40),
    "id": st.none() | st.text(_chars("\r\n\0"), max_size=8),
    "retry": st.none() | st.integers(0, 10**6),
    "comment": st.none() | st.text(_NO_EOL, max_size=10),
})


def _event_lines(g: dict) -> list[str]:
    """The lines of one generated event, its closing blank line included."""
    lines = [":" + g["comment"]] if g["comment"] is not None else []
    if g["event"] is not None:
        lines.append("event: " + g["event"])
    if g["id"] is not None:
        lines.append("id: " + g["id"])
    if g["retry"] is not None:
        lines.append(f"retry: {g['retry']}")
    return lines + ["data: " + part for part in g["data"].split("\n")] + [""]


@settings(max_examples=150, deadline=None)
@given(gen=st.lists(_GEN, max_size=8), eol=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans(), data=st.data())
def test_generated_events_round_trip(gen: list[dict], eol: str, bom: bool,
                                     data: st.DataObject) -> None:
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id: str | None = None
    for g in gen:
        lines += _event_lines(g)
        last_id = g["id"] if g["id"] is not None else last_id
        expected.append(ev(g["data"], g["event"] or None, last_id, g["retry"]))
    body = ("\ufeff" if bom else "") + "".join(line + eol for line in lines)
    raw = body.encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="cuts")
    assert parse(*split_at(raw, cuts)) == expected


_FRAGMENTS = [b"data", b"event", b"id", b"retry", b":", b" ", b"\n", b"\r", b"\r\n", b"\n\n",
              b"x", b"1", b"\0", b"\xef\xbb\xbf", b"\xc3", b"\xa9", b"\xe2\x82", b"\xff",
              b"data: ", b"event: ", b"{}"]


def reference_pending(body: str) -> bool:
    """Whether a whole decoded body stops inside an event: an unfinished line, or a field line
    after the last blank line."""
    lines = re.split(r"\r\n|\r|\n", body.removeprefix("\ufeff"))
    if lines.pop():
        return True
    block = lines[len(lines) - lines[::-1].index(""):] if "" in lines else lines
    return any(not line.startswith(":") for line in block)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(_FRAGMENTS), max_size=40), data=st.data())
def test_arbitrary_bytes_match_reference(parts: list[bytes], data: st.DataObject) -> None:
    """Any bytes in any chunks (UTF-8 sequences split or invalid, BOMs, CR and LF at chunk
    edges, blocks that take the fast paths or not) agree with the spec's algorithm run over
    the whole body decoded at once."""
    raw = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12), label="cuts")
    parser = SSEParser()
    events = [e for chunk in split_at(raw, cuts) for e in parser.feed(chunk)]
    events += parser.close()
    text = raw.decode("utf-8", "replace")
    assert events == reference_parse(text)
    assert parser.pending == reference_pending(text)


# --- size limit ----------------------------------------------------------------------------


def oversize(event: str | None = None, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(event=event, data="", id=id, oversize=True)


def test_limit_is_far_above_real_events() -> None:
    assert sse.MAX_EVENT >= 8 << 20


def test_unterminated_huge_line_is_not_kept() -> None:
    """A body that never ends its line holds at most the limit, however much comes."""
    parser = SSEParser()
    chunk = b"x" * (1 << 20)
    tracemalloc.start()
    try:
        parser.feed(b"data: ")
        for _ in range(3 * sse.MAX_EVENT // len(chunk)):
            assert parser.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < sse.MAX_EVENT + 8 * len(chunk)
    assert parser.pending
    # the line's end, then the blank line ending its event: one marker, and parsing goes on
    assert parser.feed(b"xx\n\ndata: next\n\n") == [oversize(), ev("next")]
    assert not parser.pending


def test_oversize_event_becomes_a_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_EVENT", 20)
    body = (b"id: 7\nevent: big\ndata: 0123456789\ndata: 0123456789\ndata: tail\n\n"
            b"data: fits\n\n")
    assert parse(body) == [oversize("big", "7"), ev("fits", id="7")]


@pytest.mark.parametrize("line", [b": comment", b"id: 0123456789abcdefghij", b"data: ok"])
def test_any_line_past_the_limit_is_dropped(monkeypatch: pytest.MonkeyPatch,
                                            line: bytes) -> None:
    monkeypatch.setattr(sse, "MAX_EVENT", 20)
    padded = line + b"." * 20
    assert parse(b"id: 1\n" + padded + b"\ndata: x\n\n") == [oversize(None, "1")]


def test_limit_is_the_same_for_any_chunking() -> None:
    @settings(max_examples=150, deadline=None)
    @given(gen=st.lists(_GEN, max_size=6), eol=st.sampled_from(["\n", "\r\n", "\r"]),
           cap=st.integers(0, 60), data=st.data())
    def check(gen: list[dict], eol: str, cap: int, data: st.DataObject) -> None:
        lines = [line for g in gen for line in _event_lines(g)]
        body = "".join(line + eol for line in lines)
        raw = body.encode()
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="cuts")
        with mock.patch.object(sse, "MAX_EVENT", cap):
            assert parse(*split_at(raw, cuts)) == reference_parse(body, max_event=cap)

    check()


@pytest.mark.parametrize(("headers", "expected"), [
    ([(b"content-type", b"text/event-stream")], True),
    ([(b"Content-Type", b"Text/Event-Stream; charset=utf-8")], True),
    ([(b"x-other", b"1"), (b"CONTENT-TYPE", b"text/event-stream;charset=UTF-8")], True),
    ([(b"content-type", b"application/json")], False),
    ([(b"content-type", b"text/event")], False),
    ([(b"x-content-type", b"text/event-stream")], False),
    ([], False),
])
def test_is_event_stream_matches_the_media_type_in_any_case(
        headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_event_stream(headers) is expected
