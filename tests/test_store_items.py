"""The store's sans-IO item handling: listed input, a chain's history as the upstream gets it,
and input_items pages."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.protocol.chat import AdapterRequestError, ChatCall, translate_request
from otel_responses.store.chains import Chains
from otel_responses.store.items import (
    ListingError,
    conversation,
    events_after,
    input_items_page,
    listed_input,
)
from tests.stored import record


def _counter() -> Any:
    n = itertools.count()
    return lambda prefix: f"{prefix}{next(n)}"


def test_a_string_input_is_one_user_message_with_an_id_and_text_parts() -> None:
    assert listed_input("hi", _counter()) == [
        {"id": "msg_0", "type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "hi"}]}]


def test_items_keep_their_ids_and_get_typed_ones_when_missing() -> None:
    items = listed_input([
        {"role": "assistant", "content": "before"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "message", "id": "msg_mine", "role": "user",
         "content": [{"type": "input_text", "text": "x"}]},
    ], _counter())
    assert [i["id"] for i in items] == ["msg_0", "fco_1", "msg_mine"]
    assert items[0]["type"] == "message"
    assert items[0]["content"] == [{"type": "output_text", "text": "before"}]


def test_history_is_each_turns_input_then_output_and_not_its_instructions() -> None:
    first = record({"model": "m", "input": "one", "instructions": "be terse"}, "uno")
    second = record({"model": "m", "input": "two", "previous_response_id": first.id}, "dos",
                    chain=[first.id])
    items = conversation([first, second], [{"role": "user", "content": "three"}])
    texts = [(i.get("role"), i["content"] if isinstance(i["content"], str)
              else i["content"][0]["text"]) for i in items]
    assert texts == [("user", "one"), ("assistant", "uno"), ("user", "two"),
                     ("assistant", "dos"), ("user", "three")]
    # What the upstream gets: no system message (the earlier instructions are not carried).
    chat = translate_request({"model": "m", "input": items}).request["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]


def test_a_call_output_follows_its_calls_even_when_text_came_between() -> None:
    turn = record({"model": "m", "input": "weather?"}, "",
                  [("call_a", "weather", "{}"), ("call_b", "time", "{}")])
    # The client answers the calls after an extra note of its own.
    new = [{"role": "user", "content": "note"},
           {"type": "function_call_output", "call_id": "call_b", "output": "noon"},
           {"type": "function_call_output", "call_id": "call_a", "output": "sun"}]
    items = conversation([turn], new)
    kinds = [(i.get("type", "message"), i.get("call_id")) for i in items]
    assert kinds[1:] == [("function_call", "call_a"), ("function_call", "call_b"),
                         ("function_call_output", "call_a"), ("function_call_output", "call_b"),
                         ("message", None)]
    chat = translate_request({"model": "m", "input": items}).request["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "tool", "tool", "user"]


_KIND = st.sampled_from(["message", "call", "output"])


@given(st.lists(st.tuples(_KIND, st.integers(0, 4)), max_size=25))
def test_conversation_is_a_permutation_with_outputs_right_after_their_calls(
        spec: list[tuple[str, int]]) -> None:
    items: list[dict[str, Any]] = []
    for n, (kind, call) in enumerate(spec):
        if kind == "message":
            items.append({"type": "message", "n": n})
        else:
            items.append({"type": "function_call" if kind == "call" else
                          "function_call_output", "call_id": f"c{call}", "n": n})
    out = conversation([], items)
    assert sorted(i["n"] for i in out) == list(range(len(items)))
    others = [i["n"] for i in items if i["type"] != "function_call_output"]
    assert [i["n"] for i in out if i["type"] != "function_call_output"] == others
    for index, item in enumerate(out):
        if item["type"] != "function_call_output":
            continue
        earlier_calls = {i["call_id"] for i in items[:item["n"]]
                         if i["type"] == "function_call"}
        if item["call_id"] not in earlier_calls:
            assert out.index(item) == index  # unanswerable: left where it was
            continue
        # Only calls and outputs between it and the call it answers.
        back = out[:index]
        call_at = max(j for j, i in enumerate(back) if i["type"] == "function_call"
                      and i["call_id"] == item["call_id"])
        assert all(i["type"] != "message" for i in back[call_at:])


class _Counted:
    """`translate_request`, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, body: Mapping[str, Any]) -> ChatCall:
        self.calls += 1
        return translate_request(body)


def test_a_chained_request_is_translated_once_after_its_chain() -> None:
    first = record({"model": "m", "input": "one"}, "uno")
    translate = _Counted()
    call = Chains.translate({"model": "m", "input": "two", "previous_response_id": first.id},
                            [first], translate)
    assert translate.calls == 1
    assert [(m["role"], m["content"]) for m in call.request["messages"]] == [
        ("user", "one"), ("assistant", "uno"), ("user", "two")]
    assert call.settings["previous_response_id"] == first.id


@pytest.mark.parametrize(("new_input", "param"), [
    (["fine", {"role": "wizard", "content": "x"}], "input[0]"),
    ([{"role": "user", "content": "x"}, {"role": "wizard", "content": "x"}], "input[1].role"),
    (None, "input"), (42, "input")])
def test_a_refused_chained_request_names_its_own_input(new_input: Any, param: str) -> None:
    """The chain's items come first upstream, but an error names the index the client sent
    (what is wrong with input the items cannot hold, before any chain is joined to it)."""
    first = record({"model": "m", "input": "one"}, "uno")
    body = {"model": "m", "input": new_input, "previous_response_id": first.id}
    with pytest.raises(AdapterRequestError) as alone:
        translate_request({**body, "previous_response_id": None})
    with pytest.raises(AdapterRequestError) as chained:
        Chains.translate(body, [first], translate_request)
    assert chained.value.param == alone.value.param == param


def test_a_chain_the_upstream_cannot_take_is_refused_at_its_place_in_the_chain() -> None:
    first = record({"model": "m", "input": "one"}, "uno")
    searched = dataclasses.replace(first, response={**first.response, "output": [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"}]})
    translate = _Counted()
    with pytest.raises(AdapterRequestError) as caught:
        Chains.translate({"model": "m", "input": "two"}, [searched], translate)
    assert caught.value.param == "input[1].type"  # the chain's input, then its output
    assert translate.calls == 2  # the new input, alone, was found sound


@given(st.lists(st.text(st.characters(exclude_characters="\n"), max_size=5), max_size=6),
       st.integers(-3, 8))
def test_events_after_keeps_the_events_past_a_sequence_number(texts: list[str],
                                                             after: int) -> None:
    events = [f"event: e\ndata: {json.dumps({'sequence_number': n, 'text': t})}\n\n".encode()
              for n, t in enumerate(texts)]
    kept = events_after(b"".join(events), after)
    assert kept == b"".join(events[max(after + 1, 0):])


ITEMS = [{"id": f"i{n}"} for n in range(7)]


def _ids(page: dict[str, Any]) -> list[str]:
    return [i["id"] for i in page["data"]]


def test_pages_default_to_newest_first_twenty() -> None:
    page = input_items_page(ITEMS, {})
    assert _ids(page) == [f"i{n}" for n in range(6, -1, -1)]
    assert (page["object"], page["first_id"], page["last_id"], page["has_more"]) == \
        ("list", "i6", "i0", False)


def test_after_pages_forward_in_either_order() -> None:
    assert _ids(input_items_page(ITEMS, {"order": "asc", "limit": "3"})) == ["i0", "i1", "i2"]
    page = input_items_page(ITEMS, {"order": "asc", "limit": "3", "after": "i2"})
    assert (_ids(page), page["has_more"]) == (["i3", "i4", "i5"], True)
    page = input_items_page(ITEMS, {"limit": "3", "after": "i2"})
    assert (_ids(page), page["has_more"]) == (["i1", "i0"], False)


def test_before_gives_the_items_just_before_the_cursor() -> None:
    page = input_items_page(ITEMS, {"order": "asc", "limit": "2", "before": "i4"})
    assert (_ids(page), page["has_more"]) == (["i2", "i3"], True)
    page = input_items_page(ITEMS, {"order": "asc", "after": "i1", "before": "i4"})
    assert _ids(page) == ["i2", "i3"]


def test_an_empty_page_has_no_first_or_last_id() -> None:
    page = input_items_page(ITEMS, {"after": "i0"})
    assert (page["data"], page["first_id"], page["last_id"], page["has_more"]) == \
        ([], None, None, False)


@pytest.mark.parametrize(("query", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
    ({"order": "up"}, "order"), ({"after": "nope"}, "after"), ({"before": "nope"}, "before"),
])
def test_bad_queries_name_their_parameter(query: dict[str, str], param: str) -> None:
    with pytest.raises(ListingError) as caught:
        input_items_page(ITEMS, query)
    assert caught.value.param == param


@given(st.integers(1, 100), st.sampled_from(["asc", "desc"]), st.integers(0, 30))
def test_following_last_id_visits_every_item_once(limit: int, order: str, n: int) -> None:
    items = [{"id": f"i{k}"} for k in range(n)]
    seen: list[str] = []
    query = {"limit": str(limit), "order": order}
    while True:
        page = input_items_page(items, query)
        seen += _ids(page)
        if not page["has_more"]:
            break
        query = {**query, "after": page["last_id"]}
    expected = [i["id"] for i in items]
    assert seen == (expected if order == "asc" else expected[::-1])
