"""Tool calls, sans-IO: item timing from streams at any chunking, tool runs and their TOOL span
attributes (over the recordings and MCP exchanges), and the call ids that link an agent loop."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.protocol.accumulator import ItemTimes
from otel_responses.protocol.messages import builtin_call, output_messages
from otel_responses.protocol.response_attributes import response_attributes
from otel_responses.protocol.stream import ResponseStream
from otel_responses.protocol.tools import (
    COMPLETED,
    FAILED,
    INCOMPLETE,
    answered_calls,
    asked_calls,
    tool_attributes,
    tool_runs,
)
from tests.recordings import Recording, final_response, need, recordings_params

SERVER_TOOLS = ("web_search_call", "file_search_call", "code_interpreter_call",
                "image_generation_call", "mcp_call", "mcp_list_tools")
END_NS = 10**9

# ---- how a call is named ---------------------------------------------------------------------

_FIELD = st.one_of(st.none(), st.just(""), st.text("ab.", max_size=3), st.integers(0, 9))


@given(kind=st.sampled_from(SERVER_TOOLS), name=_FIELD, label=_FIELD, namespace=_FIELD,
       call_id=_FIELD, item_id=_FIELD)
def test_a_tool_run_names_its_call_as_the_output_message_does(
        kind: str, name: Any, label: Any, namespace: Any, call_id: Any, item_id: Any) -> None:
    fields = {"name": name, "server_label": label, "namespace": namespace, "call_id": call_id,
              "id": item_id}
    item = {"type": kind, "status": "completed",
            **{k: v for k, v in fields.items() if v is not None}}
    (run,) = tool_runs({"output": [item]}, {}, 0, END_NS, final=True)
    found = builtin_call(item)
    assert found is not None
    assert (run.name, run.call_id) == (found[0].name, found[0].id)
    if isinstance(name, str) and name:
        assert run.name.endswith(name)
    else:
        assert run.name == kind


# ---- a stream of text and tool items, chunked anyhow ----------------------------------------

# Tool payloads are upper case, the model's words lower case: a payload in an output message
# shows as upper case there.
_WORDS = st.text("abc xyz", min_size=1, max_size=12)
_PAYLOAD = st.text("QRSTUV", min_size=1, max_size=12)


def message_events(index: int, words: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    item_id = f"msg_{index}"
    text = "".join(words)
    done = {"id": item_id, "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    events = [{"type": "response.output_item.added", "output_index": index,
               "item": {**done, "status": "in_progress", "content": []}},
              {"type": "response.content_part.added", **where,
               "part": {"type": "output_text", "text": "", "annotations": []}},
              *({"type": "response.output_text.delta", **where, "delta": w} for w in words),
              {"type": "response.output_text.done", **where, "text": text},
              {"type": "response.output_item.done", "output_index": index, "item": done}]
    return done, events


def tool_events(index: int, kind: str, payload: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A server tool item's events: added, its own in_progress ... completed, then done."""
    item_id = f"{kind[:3]}_{index}"
    arguments = json.dumps({"q": payload})
    fields: dict[str, Any] = {
        "web_search_call": {"action": {"type": "search", "query": payload}},
        "mcp_call": {"server_label": "srv", "name": "lookup", "arguments": arguments,
                     "output": payload * 2, "error": None},
        "code_interpreter_call": {"code": payload, "container_id": "cntr",
                                  "outputs": [{"type": "logs", "logs": payload * 3}]},
    }[kind]
    done = {"id": item_id, "type": kind, "status": "completed", **fields}
    where = {"item_id": item_id, "output_index": index}
    work = {
        "web_search_call": [{"type": "response.web_search_call.searching", **where}],
        "mcp_call": [{"type": "response.mcp_call_arguments.delta", **where,
                      "delta": arguments},
                     {"type": "response.mcp_call_arguments.done", **where,
                      "arguments": arguments}],
        "code_interpreter_call": [{"type": "response.code_interpreter_call_code.delta", **where,
                                   "delta": payload},
                                  {"type": "response.code_interpreter_call.interpreting",
                                   **where}],
    }[kind]
    events = [{"type": "response.output_item.added", "output_index": index,
               "item": {"id": item_id, "type": kind, "status": "in_progress"}},
              {"type": f"response.{kind}.in_progress", **where}, *work,
              {"type": f"response.{kind}.completed", **where},
              {"type": "response.output_item.done", "output_index": index, "item": done}]
    return done, events


@st.composite
def _streams(draw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the final output items, the stream's events)."""
    kinds = draw(st.lists(st.sampled_from(["message", "web_search_call", "mcp_call",
                                           "code_interpreter_call"]), min_size=1, max_size=5))
    items, events = [], [{"type": "response.created", "response": {
        "id": "resp_t", "object": "response", "status": "in_progress", "output": []}}]
    for index, kind in enumerate(kinds):
        item, item_events = (message_events(index, draw(st.lists(_WORDS, min_size=1, max_size=4)))
                             if kind == "message" else tool_events(index, kind, draw(_PAYLOAD)))
        items.append(item)
        events += item_events
    events.append({"type": "response.completed", "response": {
        "id": "resp_t", "object": "response", "status": "completed", "output": items}})
    return items, events


def _feed(body: bytes, cuts: list[int]) -> ResponseStream:
    """Feed ``body`` split at ``cuts``, stamping boundaries with the chunk number, as the
    recorder stamps them with the time each chunk went out."""
    stream = ResponseStream()
    bounds = [0, *sorted(set(cuts)), len(body)]
    for number, (start, end) in enumerate(itertools.pairwise(bounds)):
        stream.feed(body[start:end])
        if stream.accumulator.unstamped:
            stream.accumulator.stamp(number)
    stream.close()
    return stream


def _chunk_of(offset: int, cuts: list[int]) -> int:
    """The number of the chunk holding byte ``offset``."""
    return sum(1 for cut in set(cuts) if cut <= offset)


@settings(max_examples=150, deadline=None)
@given(stream=_streams(), data=st.data())
def test_tool_items_between_text_are_timed_by_their_events_at_any_chunking(
        stream: tuple[list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject) -> None:
    items, events = stream
    encoded = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    body = b"".join(encoded)
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=12))
    # A cut stream stops anywhere after the first event; the whole one runs to its end.
    length = data.draw(st.one_of(st.just(len(body)), st.integers(len(encoded[0]), len(body))))
    fed = _feed(body[:length], [c for c in cuts if c < length])

    # When each event was complete (its last byte), by chunk; None if it never came whole.
    arrived, offset = [], 0
    for raw in encoded:
        offset += len(raw)
        arrived.append(_chunk_of(offset - 1, cuts) if offset <= length else None)
    whole = length == len(body)
    response = fed.result()
    assert response is not None
    if whole:
        assert response["output"] == items
    runs = {run.output_index: run for run in tool_runs(
        response, fed.accumulator.item_times(), 0, END_NS, fed.accumulator.has_final)}

    for index, item in enumerate(items):
        mine = [(e["type"], at) for e, at in zip(events, arrived, strict=True)
                if e.get("output_index") == index and at is not None]
        if item["type"] == "message" or not mine:
            assert index not in runs
            continue
        run = runs[index]
        when = dict(reversed(mine))  # the first arrival of each event type
        kind = item["type"]
        start = when.get(f"response.{kind}.in_progress", when["response.output_item.added"])
        end = when.get(f"response.{kind}.completed", when.get("response.output_item.done"))
        assert (run.start_ns, run.end_ns, run.timed) == (start, END_NS if end is None else end,
                                                         True)
        assert run.server and run.type == kind and run.item_id == item["id"]
        assert run.status == (COMPLETED if "response.output_item.done" in when else INCOMPLETE)

    # What the model said stays in the output messages; no tool's payload ever does.
    said = [m for m in output_messages(response["output"])]
    assert all(not any(c.isupper() for c in json.dumps(m)) for m in said)
    if whole:
        assert len(said) == sum(1 for i in items if i["type"] == "message")


# ---- over the recordings ----------------------------------------------------------------------

def _with_server_tools(rec: Recording) -> bool:
    return any(f'"{kind}"' in rec.body for kind in SERVER_TOOLS)


RECORDED = recordings_params(_with_server_tools)


@pytest.mark.parametrize("rec", RECORDED)
def test_recorded_server_tools_become_tool_runs_with_their_payload(rec: Recording | None) -> None:
    rec = need(rec)
    response = final_response(rec)
    assert response is not None
    runs = tool_runs(response, {}, 100, 200, final=True)
    tools = [i for i in response["output"] if i["type"] in SERVER_TOOLS]
    assert tools and [r.item_id for r in runs if r.server] == [i["id"] for i in tools]
    for run, item in zip([r for r in runs if r.server], tools, strict=True):
        # Without stream events, a call's tool calls span the whole call.
        assert (run.start_ns, run.end_ns, run.timed) == (100, 200, False)
        assert run.status == COMPLETED == item["status"]
        attrs = tool_attributes(run, rec.request_body, response)
        assert attrs["openinference.span.kind"] == "TOOL"
        assert (attrs["tool.name"], attrs["tool.id"]) == (item["type"], item["id"])
        asked = json.loads(attrs["input.value"])
        for key in ("action", "queries", "code"):  # what the tool was asked
            if key in item:
                assert asked[key] == item[key]
        for key in ("results", "outputs"):  # what it gave back
            if item.get(key):
                assert json.loads(attrs["output.value"]) == item[key]


# ---- MCP, failures, agent loops ---------------------------------------------------------------

MCP_REQUEST = {"model": "gpt-5", "input": "Which tools?", "tools": [
    {"type": "mcp", "server_label": "wiki", "server_url": "https://mcp.example/sse",
     "server_description": "A wiki of everything.", "require_approval": "never"}]}
MCP_SCHEMA = {"type": "object", "properties": {"topic": {"type": "string"}}}
MCP_RESPONSE = {"id": "resp_m", "status": "completed", "output": [
    {"id": "mcpl_1", "type": "mcp_list_tools", "server_label": "wiki", "tools": [
        {"name": "ask", "description": "Ask the wiki.", "input_schema": MCP_SCHEMA}]},
    {"id": "mcp_2", "type": "mcp_call", "server_label": "wiki", "name": "ask",
     "arguments": '{"topic":"otters"}', "output": "Otters hold hands.", "error": None,
     "status": "completed"},
    {"id": "mcp_3", "type": "mcp_call", "server_label": "wiki", "name": "ask",
     "arguments": '{"topic":"x"}', "output": None, "error": "Server unreachable",
     "status": "failed"},
    {"id": "mcpr_4", "type": "mcp_approval_request", "server_label": "wiki", "name": "ask",
     "arguments": '{"topic":"y"}'},
]}


def test_mcp_calls_are_named_by_server_and_tool_and_described_by_the_listing() -> None:
    listing, call, failed, approval = tool_runs(MCP_RESPONSE, {}, 0, 1, final=True)
    assert [r.server for r in (listing, call, failed, approval)] == [True, True, True, False]
    attrs = tool_attributes(listing, MCP_REQUEST, MCP_RESPONSE)
    assert attrs["tool.name"] == "mcp_list_tools"
    assert attrs["tool.description"] == "A wiki of everything."
    assert json.loads(attrs["output.value"])[0]["name"] == "ask"
    attrs = tool_attributes(call, MCP_REQUEST, MCP_RESPONSE)
    assert (attrs["tool.name"], attrs["openai.mcp.server_label"]) == ("wiki.ask", "wiki")
    assert attrs["tool.description"] == "Ask the wiki."
    assert json.loads(attrs["tool.parameters"]) == MCP_SCHEMA
    assert attrs["input.value"] == '{"topic":"otters"}'
    assert (attrs["output.value"], attrs["output.mime_type"]) == ("Otters hold hands.",
                                                                  "text/plain")
    assert (call.status, failed.status) == (COMPLETED, FAILED)
    assert tool_attributes(failed, MCP_REQUEST, MCP_RESPONSE)["output.value"] == \
        "Server unreachable"
    # A listing sent back in a later request's input still describes the tool.
    later = {"output": [MCP_RESPONSE["output"][1]]}
    (again,) = tool_runs(later, {}, 0, 1, final=True)
    assert tool_attributes(again, {"input": MCP_RESPONSE["output"][:1]}, later)[
        "tool.description"] == "Ask the wiki."


def test_an_unfinished_item_of_a_final_response_is_incomplete() -> None:
    response = {"status": "incomplete", "output": [
        {"id": "ws_1", "type": "web_search_call", "status": "searching"}]}
    (run,) = tool_runs(response, {}, 5, 9, final=True)
    assert (run.status, run.start_ns, run.end_ns) == (INCOMPLETE, 5, 9)


def test_approvals_and_function_outputs_answer_the_calls_asked() -> None:
    runs = tool_runs(MCP_RESPONSE, {}, 0, 1, final=True)
    assert asked_calls(runs) == ["mcpr_4"]
    request = {"input": [
        {"type": "message", "role": "user", "content": "go"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_4", "approve": True},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "ok"}]}
    assert answered_calls(request) == ["mcpr_4", "call_1", "call_2"]
    assert answered_calls({"input": "just text"}) == []


def test_a_recorded_function_call_is_answered_by_the_next_recorded_request() -> None:
    (turn1,) = recordings_params(lambda r: r.name.endswith("function_call_turn1"))
    (turn2,) = recordings_params(lambda r: r.name.endswith("function_call_output_turn2"))
    first, second = need(turn1.values[0]), need(turn2.values[0])
    response = final_response(first)
    assert response is not None
    asked = asked_calls(tool_runs(response, {}, 0, 1, final=True))
    assert asked and answered_calls(second.request_body) == asked


# ---- who ran a call: the item says so, or its answer came back in the same response --------

SHELL_OUTPUT = [{"stdout": "HELLO\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]
FOUND_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
MIXED_RESPONSE: dict[str, Any] = {"status": "completed", "output": [
    {"id": "sh_1", "type": "shell_call", "call_id": "c_local", "status": "completed",
     "action": {"commands": ["ls"]}, "environment": {"type": "local"}},
    {"id": "sh_2", "type": "shell_call", "call_id": "c_hosted", "status": "completed",
     "action": {"commands": ["echo HELLO"]},
     "environment": {"type": "container_reference", "container_id": "cntr_1"}},
    {"id": "sho_2", "type": "shell_call_output", "call_id": "c_hosted", "status": "completed",
     "output": SHELL_OUTPUT},
    {"id": "sh_3", "type": "shell_call", "call_id": "c_answered", "status": "completed",
     "action": {"commands": ["date"]}},
    {"id": "sho_3", "type": "shell_call_output", "call_id": "c_answered", "status": "incomplete",
     "output": []},
    {"id": "ts_4", "type": "tool_search_call", "execution": "server", "status": "completed",
     "arguments": {"query": "WEATHER"}},
    {"id": "tso_4", "type": "tool_search_output", "execution": "server", "status": "completed",
     "tools": FOUND_TOOLS},
    {"id": "ts_5", "type": "tool_search_call", "execution": "client", "call_id": "c_search",
     "status": "completed", "arguments": {"query": "MAPS"}},
    {"id": "pr_6", "type": "program", "call_id": "c_program", "code": "return 6 * 7",
     "fingerprint": "fp"},
    {"id": "pro_6", "type": "program_output", "call_id": "c_program", "result": "42",
     "status": "completed"},
    {"id": "fc_7", "type": "function_call", "call_id": "c_fn", "name": "f", "arguments": "{}"},
]}


def test_who_ran_a_call_is_told_by_the_item_or_by_its_answer_in_the_response() -> None:
    runs = tool_runs(MIXED_RESPONSE, {}, 0, END_NS, final=True)
    assert [(r.item_id, r.server, r.result and r.result["id"], r.status) for r in runs] == [
        ("sh_1", False, None, COMPLETED),  # a local shell: the client runs it
        ("sh_2", True, "sho_2", COMPLETED),  # a hosted container's shell, answered alongside
        ("sh_3", True, "sho_3", INCOMPLETE),  # its output came back (unfinished) with it
        ("ts_4", True, "tso_4", COMPLETED),  # a server tool search: its output right after
        ("ts_5", False, None, COMPLETED),  # a tool search the client runs
        ("pr_6", True, "pro_6", COMPLETED),  # programmatic tool calling runs upstream
        ("fc_7", False, None, COMPLETED)]
    assert asked_calls(runs) == ["c_local", "c_search", "c_fn"]

    # The output messages hold the calls handed to the client, and no tool's payload.
    said = output_messages(MIXED_RESPONSE["output"])
    assert [m.tool_calls[0].id for m in said] == ["c_local", "c_search", "c_fn"]
    assert all(m.role == "assistant" for m in said)
    assert "HELLO" not in repr(said) and "WEATHER" not in repr(said) and "42" not in repr(said)

    # The TOOL span of a call run upstream shows what its own output item answered.
    by_id = {r.item_id: tool_attributes(r, None, MIXED_RESPONSE) for r in runs if r.server}
    assert json.loads(by_id["sh_2"]["output.value"]) == SHELL_OUTPUT
    assert json.loads(by_id["sh_2"]["input.value"])["action"] == {"commands": ["echo HELLO"]}
    assert json.loads(by_id["ts_4"]["output.value"]) == FOUND_TOOLS
    assert json.loads(by_id["ts_4"]["input.value"]) == {"query": "WEATHER"}
    assert by_id["pr_6"]["output.value"] == "42"
    assert by_id["sh_3"]["output.value"] == "[]"

    # A client's tool search result answers its call.
    assert answered_calls({"input": [{"type": "tool_search_output", "call_id": "c_search",
                                      "execution": "client", "tools": FOUND_TOOLS}]}) == [
        "c_search"]


def test_a_call_run_upstream_ends_at_its_answer_in_the_stream() -> None:
    response = {"status": "completed", "output": MIXED_RESPONSE["output"][1:3]}
    times = {0: ItemTimes(100, 200), 1: ItemTimes(300, 400)}
    (run,) = tool_runs(response, times, 0, END_NS, final=True)
    assert (run.start_ns, run.end_ns, run.timed) == (100, 400, True)


@pytest.mark.parametrize("finished", [True, False])
def test_only_calls_handed_to_the_client_make_a_tool_call_finish(finished: bool) -> None:
    upstream_only = [*MIXED_RESPONSE["output"][1:3], *MIXED_RESPONSE["output"][5:7]]
    output = upstream_only + ([MIXED_RESPONSE["output"][-1]] if not finished else [])
    attrs = response_attributes({"status": "completed", "output": output})
    assert attrs["llm.finish_reason"] == ("stop" if finished else "tool_call")
