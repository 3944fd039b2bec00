"""The sans-IO stream translator: unit cases, SSE framing, and hypothesis properties over any
chunking of text and any interleaving of parallel tool-call fragments."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.protocol.body import json_bytes, json_object, json_text
from otel_responses.protocol.chat import (
    StreamTranslator,
    sse_bytes,
    translate_completion,
    translate_request,
)
from tests.adapter_checks import chat_streams, check_stream, chunk, sdk_accumulate
from tests.recordings import need, recordings_params

RID = "resp_test"
TOOLS = [{"type": "function", "name": f"tool{i}", "parameters": {"type": "object"}}
         for i in range(4)]


def translator(body: dict[str, Any] | None = None) -> StreamTranslator:
    call = translate_request({"model": "m", "input": "x", "stream": True, "tools": TOOLS,
                              **(body or {})})
    return StreamTranslator(call, RID, 1)


def run(chunks: list[dict[str, Any]], t: StreamTranslator | None = None) -> list[dict[str, Any]]:
    t = t or translator()
    events = t.start()
    for c in chunks:
        events += t.feed(c)
    return events + t.finish()


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


# ---- properties -----------------------------------------------------------------------------

@given(st.lists(st.text(min_size=0, max_size=8), max_size=30),
       st.lists(st.text(min_size=1, max_size=8), max_size=5),
       st.sampled_from(["stop", "length", "content_filter"]), st.booleans())
def test_any_chunking_of_text(pieces: list[str], thoughts: list[str], finish: str,
                              raw_reasoning: bool) -> None:
    call = translate_request({"model": "m", "input": "x", "stream": True},
                             raw_reasoning=raw_reasoning)
    t = StreamTranslator(call, RID, 1)
    events = t.start()
    for piece in thoughts:
        events += t.feed(chunk({"reasoning_content": piece}))
    for piece in pieces:
        out = t.feed(chunk({"role": "assistant", "content": piece}))
        deltas = of_type(out, "response.output_text.delta")
        # No buffering: a chat delta in, its Responses delta out, in the same call.
        assert [d["delta"] for d in deltas] == ([piece] if piece else [])
        events += out
    events += t.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                               "total_tokens": 7}})
    events += t.feed(chunk({}, finish))
    events += t.finish()
    final = check_stream(events)
    text = "".join(pieces)
    messages = [i for i in final["output"] if i["type"] == "message"]
    assert [p["text"] for m in messages for p in m["content"]] == ([text] if text else [])
    reasoning = [i for i in final["output"] if i["type"] == "reasoning"]
    where = "content" if raw_reasoning else "summary"
    assert [p["text"] for r in reasoning for p in r[where]] == (
        ["".join(thoughts)] if thoughts else [])
    assert final["status"] == ("completed" if finish == "stop" else "incomplete")
    assert final["usage"]["total_tokens"] == 7


@st.composite
def interleaved_calls(draw: st.DrawFn) -> tuple[list[list[str]], list[tuple[int, str]]]:
    """Fragments of 1-4 parallel calls' arguments, interleaved in any order that keeps each
    call's own fragments in order: (fragments per call, schedule of (call, fragment))."""
    calls = draw(st.lists(st.lists(st.text(max_size=6), min_size=1, max_size=6),
                          min_size=1, max_size=4))
    queues = [list(enumerate(c)) for c in calls]
    schedule = []
    while any(queues):
        i = draw(st.sampled_from([n for n, q in enumerate(queues) if q]))
        schedule.append((i, queues[i].pop(0)[1]))
    return calls, schedule


@given(interleaved_calls())
def test_any_interleaving_of_parallel_calls(case: tuple[list[list[str]], list[tuple[int, str]]]
                                            ) -> None:
    calls, schedule = case
    seen: set[int] = set()
    chunks = []
    for i, fragment in schedule:
        tool_call: dict[str, Any] = {"index": i, "function": {"arguments": fragment}}
        if i not in seen:  # id and name only on a call's first fragment
            tool_call.update(id=f"call_{i}", type="function")
            tool_call["function"]["name"] = f"tool{i}"
            seen.add(i)
        chunks.append(chunk({"tool_calls": [tool_call]}))
    final = check_stream(run([*chunks, chunk({}, "tool_calls")]))
    first_seen = list(dict.fromkeys(i for i, _ in schedule))
    assert [(c["call_id"], c["name"], c["arguments"]) for c in final["output"]] == [
        (f"call_{i}", f"tool{i}", "".join(calls[i])) for i in first_seen]
    assert final["status"] == "completed"


# ---- unit cases -----------------------------------------------------------------------------

def test_refusal_is_a_refusal_part() -> None:
    events = run([chunk({"role": "assistant", "refusal": ""}),
                  chunk({"refusal": "I can't"}), chunk({"refusal": " help."}),
                  chunk({}, "stop")])
    final = check_stream(events)
    assert [e["delta"] for e in of_type(events, "response.refusal.delta")] == ["I can't",
                                                                              " help."]
    assert of_type(events, "response.refusal.done")[0]["refusal"] == "I can't help."
    assert final["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]


def test_text_after_tool_call_and_reasoning_order() -> None:
    events = run([chunk({"reasoning": "think"}), chunk({"content": "Hi"}),
                  chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {
                      "name": "tool0", "arguments": "{}"}}]}),
                  chunk({}, "tool_calls")])
    final = check_stream(events)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call"]
    assert sdk_accumulate(events).response.output_text == "Hi"


def test_namespace_and_custom_calls_map_back() -> None:
    tools = [{"type": "namespace", "name": "crm", "description": "d",
              "tools": [{"type": "function", "name": "find"}]},
             {"type": "custom", "name": "apply_patch"}]
    t = translator({"tools": tools})
    patch = json.dumps({"input": "*** Begin Patch\n*** End Patch"})
    events = run([chunk({"tool_calls": [
                      {"index": 0, "id": "c0", "function": {"name": "crm__find",
                                                            "arguments": "{\"q\":"}},
                      {"index": 1, "id": "c1", "function": {"name": "apply_patch",
                                                            "arguments": patch[:10]}}]}),
                   chunk({"tool_calls": [{"index": 1, "function": {"arguments": patch[10:]}},
                                         {"index": 0, "function": {"arguments": "1}"}}]}),
                   chunk({}, "tool_calls")], t)
    final = check_stream(events)
    fn, custom = final["output"]
    assert (fn["type"], fn["name"], fn["namespace"], fn["arguments"]) == (
        "function_call", "find", "crm", "{\"q\":1}")
    assert (custom["type"], custom["name"], custom["input"], custom["call_id"]) == (
        "custom_tool_call", "apply_patch", "*** Begin Patch\n*** End Patch", "c1")
    assert of_type(events, "response.custom_tool_call_input.done")[0]["input"] == custom["input"]


def test_name_after_id_is_awaited() -> None:
    events = run([chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {
                      "arguments": "{\"a\""}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"name": "tool0",
                                                                 "arguments": ":1}"}}]}),
                  chunk({}, "tool_calls")])
    assert check_stream(events)["output"][0]["arguments"] == "{\"a\":1}"


def test_inband_error_fails_the_response() -> None:
    t = translator()
    events = t.start() + t.feed(chunk({"content": "par"}))
    events += t.feed({"error": {"message": "Token limit reached", "code": 400}})
    assert t.feed(chunk({"content": "more"})) == [] and t.finish() == []
    final = check_stream(events)
    error = events[-2]
    assert (error["type"], error["message"], error["code"]) == (
        "error", "Token limit reached", "400")
    assert error["error"]["message"] == "Token limit reached"
    assert final["status"] == "failed" and final["error"]["message"] == "Token limit reached"
    assert final["output"][0]["content"][0]["text"] == "par"


def test_cut_stream_fails() -> None:
    t = translator()
    events = t.start() + t.feed(chunk({"content": "half"}))
    events += t.fail("The upstream closed the connection.", "upstream_cut")
    assert check_stream(events)["status"] == "failed"
    events = run([chunk({"content": "no finish"})])
    final = check_stream(events)
    assert final["status"] == "failed"
    assert [(e["type"], e.get("code")) for e in events[-2:]] == [
        ("error", "upstream_incomplete"), ("response.failed", None)]


def test_usage_never_made_up_and_model_from_upstream() -> None:
    final = check_stream(run([chunk({"content": "x"}), chunk({}, "stop")]))
    assert final["usage"] is None and final["model"] == "up-model"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
             "prompt_tokens_details": {"cached_tokens": 4},
             "completion_tokens_details": {"reasoning_tokens": 2}}
    final = check_stream(run([chunk({"content": "x"}), chunk({}, "stop", usage=usage)]))
    assert final["usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                              "input_tokens_details": {"cached_tokens": 4,
                                                       "cache_write_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 2}}


def test_logprobs_carried_when_asked() -> None:
    t = translator({"include": ["message.output_text.logprobs"], "top_logprobs": 1})
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                       "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]}
    events = run([{"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp}]},
                  chunk({}, "stop")], t)
    final = check_stream(events)
    assert of_type(events, "response.output_text.delta")[0]["logprobs"][0]["token"] == "Hi"
    assert final["output"][0]["content"][0]["logprobs"][0]["logprob"] == -0.1


def test_other_choices_and_empty_deltas_ignored() -> None:
    events = run([chunk({"role": "assistant", "content": ""}), {"choices": []},
                  {"choices": [{"index": 1, "delta": {"content": "other"}}]},
                  chunk({"content": "mine"}), chunk({}, "stop")])
    final = check_stream(events)
    assert [p["text"] for p in final["output"][0]["content"]] == ["mine"]


def test_stream_and_nonstream_responses_have_one_shape() -> None:
    call = translate_request({"model": "m", "input": "x", "tools": TOOLS})
    final = check_stream(run([chunk({"content": "x"}), chunk({}, "stop")],
                             StreamTranslator(call, RID, 1)))
    completion = {"model": "up-model", "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"content": "x"}}]}
    assert translate_completion(call, completion, RID, 1) == final


@pytest.mark.parametrize("rec", recordings_params(
    lambda r: r.is_sse and r.status < 400 and r.body.startswith("event: ")))
def test_sse_framing_is_openais(rec: Any) -> None:
    """`sse_bytes` re-frames every event of a recorded OpenAI stream byte for byte."""
    rec = need(rec)
    blocks = [b for b in rec.body.split("\n\n") if b.strip()]
    for block in blocks:
        data = json.loads(block.split("\ndata: ", 1)[1])
        assert sse_bytes(data) == (block + "\n\n").encode()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(), inner, max_size=3), max_leaves=10)


@given(_JSON, st.sampled_from(["", " ", "\n\t"]))
def test_an_event_is_read_as_the_object_a_body_is(value: Any, space: str) -> None:
    """`json_object` reads an event's data (text) as it reads a body (bytes): the object the
    JSON is, or None for any other value; what `json_text` writes reads back the same."""
    text = space + json_text(value)
    assert json_object(text) == json_object(text.encode()) == (
        value if isinstance(value, dict) else None)
    assert json_bytes(value) == json_text(value).encode() == json.dumps(
        value, ensure_ascii=False, separators=(",", ":")).encode()


@given(st.text())
def test_any_text_is_the_object_json_loads_reads_or_none(text: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    assert json_object(text) == json_object(text.encode()) == (
        value if isinstance(value, dict) else None)


@settings(max_examples=60)  # each example validates every event with pydantic
@given(chat_streams())
def test_any_chat_stream_gives_a_valid_sequence(chunks: list[dict[str, Any]]) -> None:
    events = run(chunks)
    final = check_stream(events)
    assert sdk_accumulate(events).response.status == final["status"]
