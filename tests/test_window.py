"""The bounded body window: any cut of a JSON object reads as a consistent part of it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.protocol.window import (
    HEAD_BYTES,
    TAIL_BYTES,
    BodyWindow,
    prefix_object,
    trailing_members,
)

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12) \
    | st.sampled_from(['"', "\\", '\\"', "\\u", "{[,:]}", "é€😀", "\n\t"])
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                               allow_infinity=False) | _TEXT
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=20)
_OBJECTS = st.dictionaries(_TEXT, _JSON, min_size=1, max_size=6)


def _part_of(part: Any, whole: Any) -> bool:
    """Whether ``part`` is what a cut of ``whole`` may leave: strings and lists cut short,
    objects missing members, and every value left a part of its own."""
    if isinstance(whole, dict):
        return isinstance(part, dict) and all(
            k in whole and _part_of(v, whole[k]) for k, v in part.items())
    if isinstance(whole, list):
        return isinstance(part, list) and len(part) <= len(whole) and all(
            _part_of(p, w) for p, w in zip(part, whole, strict=False))
    if isinstance(whole, str):
        return isinstance(part, str) and whole.startswith(part)
    return part == whole


def _dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


@settings(max_examples=150)
@given(_OBJECTS, st.data(), st.booleans())
def test_every_prefix_reads_as_part_of_the_object(doc: dict[str, Any], data: st.DataObject,
                                                  ascii_only: bool) -> None:
    raw = _dumps(doc, ascii_only)
    cut = data.draw(st.integers(1, len(raw)))
    part = prefix_object(raw[:cut])
    assert part is not None and _part_of(part, doc), (raw[:cut], part)
    assert prefix_object(raw) == doc


@settings(max_examples=150)
@given(_OBJECTS, st.data(), st.booleans())
def test_every_suffix_reads_as_whole_trailing_members(doc: dict[str, Any], data: st.DataObject,
                                                      ascii_only: bool) -> None:
    raw = _dumps(doc, ascii_only)
    cut = data.draw(st.integers(0, len(raw) - 1))
    members = trailing_members(raw[cut:])
    assert all(doc[k] == v for k, v in members.items()), (raw[cut:], members)
    assert trailing_members(raw) == doc
    # The last member is always read once its key and value are in the window.
    last_key = list(doc)[-1]
    last = json.dumps({last_key: doc[last_key]}, ensure_ascii=ascii_only).encode()
    if len(raw) - cut >= len(last) + 1:
        assert last_key in members


def test_prefix_of_a_huge_string_keeps_its_start_and_what_came_before() -> None:
    raw = _dumps({"id": "resp_1", "output": [{"type": "message", "content": [
        {"type": "output_text", "text": 'a\\"\u00e9' * 10_000}]}]}, ascii_only=False)
    for cut in range(60, 200):
        part = prefix_object(raw[:cut])
        assert part is not None and part["id"] == "resp_1", raw[:cut]
    # 8 bytes encode each 4 characters: the 4,000 bytes hold ~1,950 of them.
    text = prefix_object(raw[:4000])["output"][0]["content"][0]["text"]  # type: ignore[index]
    assert len(text) > 1800 and ('a\\"\u00e9' * 10_000).startswith(text)


def test_not_an_object() -> None:
    for raw in (b"", b"  ", b"[1, 2", b'"text', b"null", b"}"):
        assert prefix_object(raw) is None
        assert trailing_members(raw) == {}


def test_window_keeps_head_and_tail_only_and_reads_what_the_span_needs() -> None:
    text = "x" * (3 * HEAD_BYTES)
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    doc = {"id": "resp_big", "status": "incomplete", "model": "m", "output": [
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": text}]}], "usage": usage, "metadata": {}}
    raw = _dumps(doc, ascii_only=True)
    window = BodyWindow()
    for at in range(0, len(raw), 65_536):
        window.feed(raw[at:at + 65_536])
    assert window.size == len(raw) and not window.whole
    assert len(window._head) == HEAD_BYTES and len(window._tail) == TAIL_BYTES
    got = window.object()
    assert got is not None
    assert (got["id"], got["status"], got["model"], got["usage"]) == (
        "resp_big", "incomplete", "m", usage)
    kept = got["output"][0]["content"][0]["text"]
    assert HEAD_BYTES - 200 < len(kept) < HEAD_BYTES and text.startswith(kept)


def test_window_parses_a_small_body_whole() -> None:
    raw = _dumps({"id": "r", "output": [], "usage": None}, ascii_only=True)
    window = BodyWindow()
    window.feed(raw[:5])
    window.feed(raw[5:])
    assert window.whole and window.object() == {"id": "r", "output": [], "usage": None}
