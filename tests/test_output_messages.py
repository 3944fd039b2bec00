"""Output messages hold what the model said: never a server-run tool's payload, cut or not."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_responses.protocol.attributes import response_attributes
from otel_responses.protocol.stream import ResponseStream
from otel_responses.telemetry.recorder import CallRecorder
from tests.recordings import Recording, final_response, need, recordings_params, sse_payloads
from tests.spans import indexed, message_text

OUT = "llm.output_messages"
_COMPRESS = {"gzip": gzip.compress, "br": brotli.compress,
             "zstd": lambda b: zstandard.ZstdCompressor().compress(b)}
# Calls the model hands to the client, and its own words: written down from the Responses API.
MODEL_CALLS = {"function_call", "custom_tool_call", "computer_call", "local_shell_call",
               "shell_call", "apply_patch_call", "mcp_approval_request"}
SPOKEN = MODEL_CALLS | {"message", "reasoning"}

# Items the upstream runs itself, each carrying payload strings marked PAYLOAD: results,
# listings, code and logs, images, blobs. None of it is the model talking to the caller.
SERVER_ITEMS: list[dict[str, Any]] = [
    {"type": "web_search_call", "id": "ws_1", "status": "completed",
     "action": {"type": "search", "query": "PAYLOAD-query",
                "sources": [{"type": "url", "url": "https://PAYLOAD.example"}]}},
    {"type": "file_search_call", "id": "fs_1", "status": "completed",
     "queries": ["PAYLOAD-fsq"], "results": [{"file_id": "f", "text": "PAYLOAD-chunk"}]},
    {"type": "code_interpreter_call", "id": "ci_1", "status": "completed",
     "container_id": "cntr", "code": "print('PAYLOAD-code')",
     "outputs": [{"type": "logs", "logs": "PAYLOAD-logs"},
                 {"type": "image", "url": "data:image/png;base64,PAYLOADpng"}]},
    {"type": "image_generation_call", "id": "ig_1", "status": "completed",
     "result": "PAYLOADimage", "revised_prompt": "PAYLOAD-prompt"},
    {"type": "mcp_list_tools", "id": "ml_1", "server_label": "docs",
     "tools": [{"name": "PAYLOAD-tool", "description": "PAYLOAD-description",
                "input_schema": {"type": "object"}}]},
    {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search",
     "arguments": '{"q":"PAYLOAD-mcp-args"}', "output": "PAYLOAD-mcp-output", "error": None},
    {"type": "mcp_call", "id": "mcp_2", "server_label": "docs", "name": "search",
     "arguments": "{}", "output": None, "error": "PAYLOAD-mcp-error"},
    {"type": "tool_search_call", "id": "ts_1", "call_id": None, "execution": "server",
     "arguments": {"q": "PAYLOAD-ts"}, "status": "completed"},
    {"type": "tool_search_output", "id": "to_1", "call_id": None, "execution": "server",
     "tools": [{"type": "function", "name": "PAYLOAD-found"}], "status": "completed"},
    {"type": "shell_call_output", "id": "sho_1", "call_id": "c9",
     "output": [{"stdout": "PAYLOAD-stdout", "stderr": "",
                 "outcome": {"type": "exit", "exit_code": 0}}]},
    {"type": "compaction", "id": "cmp_1", "encrypted_content": "PAYLOAD-blob"},
    {"type": "brand_new_server_item", "id": "new_1", "data": "PAYLOAD-new"},
]
MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "The answer.", "annotations": []},
                       {"type": "refusal", "refusal": "Not that part."}]}
REASONING = {"type": "reasoning", "id": "rs_1",
             "summary": [{"type": "summary_text", "text": "Thought about it."}]}
FUNCTION_CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup",
                 "arguments": '{"city":"Paris"}', "status": "completed"}


def output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    return indexed(response_attributes(response), OUT)


def leaves(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys excluded."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v)


def payload_strings(items: list[Any]) -> set[str]:
    """Strings only a server-run item carries: its results, code, listings (not ids or types)."""
    spoken = {s for item in items if item.get("type") in SPOKEN for s in leaves(item)}
    envelope = {"type", "id", "call_id", "status", "server_label"}
    return {s for item in items if item.get("type") not in SPOKEN
            for k, v in item.items() if k not in envelope
            for s in leaves(v) if len(s) >= 8 and s not in spoken}


def assert_no_payload(attrs: dict[str, Any], payloads: set[str]) -> None:
    for key, value in attrs.items():
        if key.startswith(OUT + "."):
            assert not any(p in str(value) for p in payloads), (key, value)


def test_server_tool_items_are_not_output_messages() -> None:
    items = [REASONING, *SERVER_ITEMS[:6], MESSAGE, *SERVER_ITEMS[6:], FUNCTION_CALL]
    response = {"id": "resp_1", "status": "completed", "model": "m", "output": items}
    attrs = response_attributes(response)
    found = indexed(attrs, OUT)
    assert [m["message.role"] for m in found] == ["assistant"] * 3
    assert found[0]["message.contents.0.message_content.type"] == "reasoning"
    assert found[0]["message.contents.0.message_content.text"] == "Thought about it."
    assert found[1]["message.contents.0.message_content.text"] == "The answer."
    assert found[1]["message.contents.1.message_content.type"] == "refusal"
    assert found[1]["message.contents.1.message_content.text"] == "Not that part."
    assert found[2]["message.tool_calls.0.tool_call.id"] == "call_1"
    assert found[2]["message.tool_calls.0.tool_call.function.arguments"] == '{"city":"Paris"}'
    assert not any("PAYLOAD" in str(v) for k, v in attrs.items() if k.startswith(OUT))
    # The response as returned keeps every item, typed: the record of what the tools did.
    assert json.loads(attrs["output.value"]) == response
    assert attrs["llm.finish_reason"] == "tool_call"


@pytest.mark.parametrize("kind", sorted(MODEL_CALLS - {"function_call", "custom_tool_call"}))
def test_calls_handed_to_the_client_are_tool_calls(kind: str) -> None:
    item = {"type": kind, "id": "x_1", "call_id": "call_9", "name": "rm",
            "server_label": "docs", "arguments": "{}", "action": {"type": "exec"}}
    (message,) = output_messages({"status": "completed", "output": [item]})
    assert message["message.role"] == "assistant"
    assert message["message.tool_calls.0.tool_call.id"] == "call_9"
    assert response_attributes({"status": "completed", "output": [item]})[
        "llm.finish_reason"] == "tool_call"


def test_server_tools_alone_finish_with_stop() -> None:
    attrs = response_attributes({"status": "completed", "output": [*SERVER_ITEMS, MESSAGE]})
    assert attrs["llm.finish_reason"] == "stop"


# ---- recordings: whole and cut at every event ---------------------------------------------

def _has_server_items(rec: Recording) -> bool:
    final = final_response(rec)
    return bool(final) and any(i.get("type") not in SPOKEN for i in final.get("output") or [])


@pytest.mark.parametrize("rec", recordings_params(_has_server_items))
def test_recorded_tool_payloads_stay_out_of_output_messages(rec: Recording | None) -> None:
    rec = need(rec)
    final = final_response(rec)
    assert final is not None
    payloads = payload_strings(final["output"])
    assert payloads, "the recording's tool items carry no payload to look for"
    found = output_messages(final)
    assert len(found) == sum(i["type"] in SPOKEN for i in final["output"])
    assert_no_payload(response_attributes(final), payloads)
    if not rec.is_sse:
        return
    # Cut after each event: the rebuilt response never turns a payload into words either.
    body = rec.body_bytes.replace(b"\r\n", b"\n")
    ends = [i + 2 for i in range(len(body)) if body.startswith(b"\n\n", i)]
    for end in ends:
        stream = ResponseStream()
        stream.feed(body[:end])
        stream.close()
        result = stream.result()
        if result is not None:
            assert_no_payload(response_attributes(result), payloads)
    assert len(ends) == len(sse_payloads(rec.body))


# ---- any interleaving, any chunking, cut or whole -----------------------------------------

def _events(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream a server sends for ``items``: added, content deltas, done."""
    events: list[dict[str, Any]] = [{"type": "response.created", "response": {
        "id": "resp_1", "status": "in_progress", "output": []}}]
    for index, item in enumerate(items):
        if item["type"] == "message":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "content": [], "status": "in_progress"}})
            text = item["content"][0]["text"]
            for piece in (text[:4], text[4:]):
                events.append({"type": "response.output_text.delta", "output_index": index,
                               "item_id": item["id"], "content_index": 0, "delta": piece})
        else:
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {"type": item["type"], "id": item["id"],
                                    "status": "in_progress"}})
            events.append({"type": f"response.{item['type']}.in_progress",
                           "output_index": index, "item_id": item["id"]})
        events.append({"type": "response.output_item.done", "output_index": index,
                       "item": item})
    events.append({"type": "response.completed", "response": {
        "id": "resp_1", "status": "completed", "output": items}})
    return events


def _message(n: int) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": f"said {n} words", "annotations": []}]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tool_items_interleaved_with_text_at_any_chunking_compressed_or_not(
        data: st.DataObject) -> None:
    tools = data.draw(st.lists(st.sampled_from(SERVER_ITEMS), max_size=5), label="tools")
    texts = [_message(n) for n in range(data.draw(st.integers(1, 3), label="messages"))]
    items = data.draw(st.permutations(tools + texts), label="order")
    items = [{**item, "id": f"{item['id']}_{i}"} for i, item in enumerate(items)]
    wire = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"
                   for e in _events(items)).encode()
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    coding = data.draw(st.sampled_from([None, "gzip", "br", "zstd"]), label="coding")
    sent = wire[:cut] if coding is None else _COMPRESS[coding](wire[:cut])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(sent)), max_size=6), label="chunks"))
    # Through the recorder, as the proxy observes it: compressed bodies decoded as they come.
    call = CallRecorder(0)
    call.response_start(200, [(b"content-type", b"text/event-stream")]
                        + ([(b"content-encoding", coding.encode())] if coding else []))
    for start, end in zip([0, *cuts], [*cuts, len(sent)], strict=True):
        call.response_chunk(sent[start:end], True)
    call.response_chunk(b"", False)
    result = call.finish().response
    plain = ResponseStream()
    plain.feed(wire[:cut])
    plain.close()
    assert result == plain.result()
    if result is None:
        return
    found = output_messages(result)
    assert all(m["message.role"] == "assistant" for m in found)
    assert not any("PAYLOAD" in message_text(m) for m in found)
    assert_no_payload(response_attributes(result), {"PAYLOAD"})
    if cut == len(wire):
        assert [message_text(m) for m in found] == [i["content"][0]["text"] for i in items
                                                    if i["type"] == "message"]
