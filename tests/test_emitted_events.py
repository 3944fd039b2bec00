"""The events the proxy itself emits, over real sockets, against the Open Responses OpenAPI
document: the adapter's translated streams (recorded chat traffic and the demo's), its error
events (upstream in-band errors, cut and undecodable streams), and store replays of them all.
What the document has no type for (custom tool calls) is checked against OpenAI's shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import httpx
import pytest
from openai.types.responses import (
    CustomTool,
    ResponseCustomToolCall,
    ResponseCustomToolCallInputDeltaEvent,
    ResponseCustomToolCallInputDoneEvent,
)
from pydantic import BaseModel

from tests.adapter_checks import check_stream, responses_body
from tests.open_responses import NOT_IN_SPEC, openapi_validator, spec_event
from tests.recordings import (
    CHAT_DIR,
    Recording,
    load_recordings,
    need,
    recordings_params,
    sse_payloads,
)
from tests.spans import traced_proxy
from tests.test_store_adapter import adapted
from tests.upstreams import RawUpstream

# OpenAI's own models of the events the document has no type for.
OPENAI_EVENTS: dict[str, type[BaseModel]] = {
    "response.custom_tool_call_input.delta": ResponseCustomToolCallInputDeltaEvent,
    "response.custom_tool_call_input.done": ResponseCustomToolCallInputDoneEvent,
}
assert OPENAI_EVENTS.keys() == NOT_IN_SPEC
# How the upstream breaks a recorded stream (tests/upstreams.py), and the error code the
# proxy's `error` event then carries.
FAULTS = {"cut": ({"x-scenario": "cut:{}"}, "upstream_cut"),
          "undecodable": ({"x-scenario": "replay:{}", "x-compress": "corrupt"},
                          "upstream_invalid_response")}
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files."}


@cache
def recorded_custom_response() -> dict[str, Any]:
    """A response with a custom tool call as OpenAI sent it (a recording)."""
    rec = need(next((r for r in load_recordings() if r.name == "dd-trace-py__custom_tool_call"),
                    None))
    return json.loads(rec.body)


def check_custom(value: Mapping[str, Any], model: type[BaseModel], recorded: Mapping[str, Any],
                 *, exact: bool = False) -> None:
    """``value`` valid under OpenAI's ``model``, with only fields OpenAI sent in ``recorded``
    (``exact``: all of them), of the same JSON types."""
    model.model_validate(dict(value))
    types = {k: type(v) for k, v in value.items()}
    sent = {k: type(v) for k, v in recorded.items()}
    assert types == sent if exact else types.items() <= sent.items()


def outside_spec_checked(event: Mapping[str, Any]) -> dict[str, Any]:
    """``event`` with what the document has no type for (custom tool calls, custom tools)
    checked against OpenAI's shapes and taken out: an event's item becomes null, which the
    document allows; a response drops them from its output and tools."""
    recorded = recorded_custom_response()
    call = next(i for i in recorded["output"] if i["type"] == "custom_tool_call")
    out = dict(event)
    if out.get("item") is not None and out["item"]["type"] == "custom_tool_call":
        check_custom(out["item"], ResponseCustomToolCall, call, exact=True)
        out["item"] = None
    if "response" in out:
        response = out["response"]
        for item in response["output"]:
            if item["type"] == "custom_tool_call":
                check_custom(item, ResponseCustomToolCall, call, exact=True)
        for tool in response["tools"]:
            if tool["type"] == "custom":  # as given: OpenAI echoes a tool's optional fields
                check_custom(tool, CustomTool, recorded["tools"][0])
        out["response"] = {
            **response,
            "output": [i for i in response["output"] if i["type"] != "custom_tool_call"],
            "tools": [t for t in response["tools"] if t["type"] != "custom"]}
    return out


def check_emitted(events: list[dict[str, Any]]) -> None:
    """A valid stream (tests/adapter_checks.py), each event valid under the document or, for
    custom tool calls, OpenAI's exact shape (no field missing or extra)."""
    check_stream(events)
    validate = openapi_validator()
    for event in events:
        model = OPENAI_EVENTS.get(event["type"])
        if model is not None:
            assert event.keys() == model.model_fields.keys()
            model.model_validate(event)
        else:
            validate("event", spec_event(outside_spec_checked(event)))


def emitted_and_replayed(base: str, body: Mapping[str, Any],
                         headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """A streamed call's events as sent, after checking its stored replay sends the same."""
    sent = httpx.post(base + "/v1/responses", json={**body, "stream": True},
                      headers=headers, timeout=30)
    assert sent.status_code == 200, sent.text
    events = sse_payloads(sent.text)
    replay = httpx.get(f"{base}/v1/responses/{events[-1]['response']['id']}",
                       params={"stream": "true"}, timeout=30)
    assert replay.status_code == 200, replay.text
    assert replay.content == sent.content
    return events


@pytest.fixture(scope="module")
def replayed() -> Iterator[str]:
    """The proxy in chat mode, keeping responses, before recorded chat traffic."""
    with RawUpstream.replaying(*load_recordings(CHAT_DIR), seed=5).running() as raw, \
            traced_proxy(raw.url + "/v1", upstream_api="chat", store="memory",
                         read_timeout=2.0) as (base, _):
        yield base


@pytest.mark.parametrize("rec", recordings_params(lambda r: r.is_sse and r.status < 400,
                                                  CHAT_DIR))
def test_translated_recorded_streams_conform(rec: Recording | None, replayed: str) -> None:
    rec = need(rec, CHAT_DIR)
    events = emitted_and_replayed(replayed, responses_body(rec.request_body),
                                  {"x-scenario": f"replay:{rec.name}"})
    check_emitted(events)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("rec", recordings_params(lambda r: r.is_sse and r.status < 400,
                                                  CHAT_DIR))
def test_error_events_on_upstream_failures_conform(rec: Recording | None, fault: str,
                                                   replayed: str) -> None:
    rec = need(rec, CHAT_DIR)
    headers, code = FAULTS[fault]
    events = emitted_and_replayed(replayed, responses_body(rec.request_body),
                                  {k: v.format(rec.name) for k, v in headers.items()})
    check_emitted(events)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == events[-2]["error"]["code"] == code


@pytest.fixture(scope="module")
def demo_proxy() -> Iterator[str]:
    """The proxy in chat mode, keeping responses, before the demo upstream."""
    with adapted(store="memory") as (client, _, _):
        yield str(client.base_url).removesuffix("/v1/")


@pytest.mark.parametrize(("body", "emitted"), [
    pytest.param({"input": "Hello"}, {"response.output_text.delta"}, id="text"),
    pytest.param({"input": "Hello there, how are you", "max_output_tokens": 3},
                 {"response.incomplete"}, id="incomplete"),
    pytest.param({"input": "weather?", "tools": [WEATHER]},
                 {"response.function_call_arguments.delta"}, id="function-call"),
    pytest.param({"input": "use apply_patch", "tools": [PATCH], "reasoning": {"effort": "low"}},
                 NOT_IN_SPEC | {"response.reasoning_summary_text.delta"},
                 id="reasoning-custom-tool-call"),
])
def test_the_demos_translated_streams_conform(body: dict[str, Any], emitted: set[str],
                                              demo_proxy: str) -> None:
    """Data the project makes itself, including what no recording has: custom tool calls."""
    events = emitted_and_replayed(demo_proxy, {"model": "demo", **body})
    check_emitted(events)
    assert {e["type"] for e in events} >= emitted
