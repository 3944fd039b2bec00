"""Arize Phoenix as the trace backend: the proxy exports over OTLP (HTTP and gRPC), Phoenix reads.

One ``phoenix serve`` (``OTEL_RESPONSES_PHOENIX_BIN``) runs for the module on free loopback
ports. Each test starts real proxy processes exporting to it under their own Phoenix project:
one in front of the replaying upstream (every recorded exchange in ../shared/fixtures), one in
front of the demo upstream (a ``previous_response_id`` chain and an unrelated call), and one
serving an openai-agents run with a function tool (a stateless agent loop). The spans
are then read back through Phoenix's REST API and GraphQL, and checked against the recordings
and the responses the client received -- not against the proxy's own view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otel_responses.demo.app import DemoSettings, create_demo_app
from tests.e2e import Phoenix, Tap, phoenix_server, run_agent
from tests.recordings import Recording, final_response, load_recordings, need, sse_payloads
from tests.servers import run_cli, serve_asgi
from tests.spans import indexed, message_text, tool_calls
from tests.upstreams import RawUpstream

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
SPAN_QUERY = """query ($id: String!) { getSpanByOtelId(spanId: $id) {
  spanKind statusCode tokenCountPrompt tokenCountCompletion tokenCountTotal
  input { mimeType } output { mimeType }
  trace { traceId session { sessionId numTraces } } project { name } } }"""


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    with phoenix_server(tmp_path_factory.mktemp("phoenix")) as server:
        yield server


def _export_to(phoenix: Phoenix, project: str, protocol: str) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (phoenix.otlp_grpc if protocol == "grpc"
                                                   else phoenix.otlp_http),
            "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}"}


def _parsed(phoenix: Phoenix, span: dict[str, Any]) -> dict[str, Any]:
    """Phoenix's own parsed view of a span (GraphQL)."""
    reply = httpx.post(phoenix.base + "/graphql", timeout=10, json={
        "query": SPAN_QUERY, "variables": {"id": span["context"]["span_id"]}})
    parsed: dict[str, Any] = reply.json()["data"]["getSpanByOtelId"]
    return parsed


def _post(base: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(base + "/v1/responses", content=json.dumps(body).encode(), timeout=15,
                      headers={"content-type": "application/json", **headers})


def _demo_chain(base: str) -> list[dict[str, Any]]:
    """A tool call, its output, a follow-up (a previous_response_id chain), then a new call."""
    first = sse_payloads(_post(base, {
        "model": "demo", "instructions": "You are a weather bot.", "stream": True,
        "input": "Call get_weather for Oslo", "tools": [WEATHER_TOOL]}).text)[-1]["response"]
    (call,) = first["output"]
    second = _post(base, {"model": "demo", "previous_response_id": first["id"],
                          "tools": [WEATHER_TOOL], "input": [{
                              "type": "function_call_output", "call_id": call["call_id"],
                              "output": "Sunny, 21 C"}]}).json()
    third = _post(base, {"model": "demo", "previous_response_id": second["id"],
                         "input": "Thanks!"}).json()
    other = _post(base, {"model": "demo", "input": "An unrelated question"}).json()
    return [first, second, third, other]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_phoenix_parses_llm_spans_and_groups_sessions(phoenix: Phoenix, protocol: str,
                                                      tmp_path: Path) -> None:
    recordings = load_recordings()
    if not recordings:
        need(None)  # skips (or fails under CI) with the reason
    project = "otel-responses-e2e-" + protocol.split("/")[0]
    env = _export_to(phoenix, project, protocol)
    raw = RawUpstream(recordings={r.name: r for r in recordings}, seed=3)
    # Phoenix session ids are global: a seed per project keeps the demo's ids apart.
    demo = create_demo_app(DemoSettings(seed=project))
    with raw.running(), serve_asgi(demo) as demo_url:
        with run_cli("--upstream", raw.url + "/v1", env=env) as (replay_base, _):
            for rec in recordings:
                body = rec.request_body if isinstance(rec.request_body, dict) else {}
                sent = _post(replay_base, body, **{"x-scenario": f"replay:{rec.name}",
                                                   "x-session-id": f"{project}:{rec.name}"})
                assert sent.status_code == rec.status, rec.name
        with run_cli("--upstream", demo_url + "/v1", env=env) as (demo_base, _):
            chain = _demo_chain(demo_base)
    # Both proxies have exited: SIGTERM flushed their spans to Phoenix.

    tools = {rec.name: _server_tools(rec) for rec in recordings}
    count = len(recordings) + len(chain) + sum(map(len, tools.values()))
    spans = phoenix.spans(project, count)
    assert len(spans) == count
    assert {s["span_kind"] for s in spans} == {"LLM", "TOOL"}
    by_session: dict[str, list[dict[str, Any]]] = {}
    for span in spans:  # TOOL spans carry their call's session too
        by_session.setdefault(span["attributes"]["session.id"], []).append(span)

    for rec in recordings:
        (span,) = [s for s in by_session[f"{project}:{rec.name}"] if s["span_kind"] == "LLM"]
        _check_recorded(rec, span)
        _check_tools(phoenix, tools[rec.name], span, by_session.pop(f"{project}:{rec.name}"))
    _check_chain(phoenix, project, chain, by_session)


def _check_recorded(rec: Recording, span: dict[str, Any]) -> None:
    """Phoenix holds the recording as an LLM span with its model, tokens, messages and tools."""
    attrs, request = span["attributes"], rec.request_body
    if isinstance(request, dict) and isinstance(request.get("model"), str):
        assert span["name"] == f"chat {request['model']}", rec.name
        tools = [json.loads(t["tool.json_schema"]) for t in indexed(attrs, "llm.tools")]
        assert tools == request.get("tools", []), rec.name
        if request.get("input") or request.get("instructions"):
            assert indexed(attrs, "llm.input_messages"), rec.name
    final = final_response(rec)
    if final is None:
        assert span["status_code"] == "ERROR", rec.name
        return
    assert span["status_code"] == "OK", rec.name
    assert attrs["llm.model_name"] == final["model"], rec.name
    usage = final.get("usage")
    if usage:
        assert (attrs["llm.token_count.prompt"], attrs["llm.token_count.completion"],
                attrs["llm.token_count.total"]) == (
            usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]), rec.name
    # Phoenix shows the model's words and calls as the output, never a tool's payload.
    spoken = [i for i in final["output"]
              if i["type"] in ("message", "reasoning", "function_call", "custom_tool_call")]
    outputs = indexed(attrs, "llm.output_messages")
    assert len(outputs) == len(spoken), rec.name
    assert {m["message.role"] for m in outputs} <= {"assistant"}, rec.name


SERVER_TOOLS = ("web_search_call", "file_search_call", "code_interpreter_call",
                "image_generation_call", "mcp_call", "mcp_list_tools")
TOOL_QUERY = """query ($id: String!) { getSpanByOtelId(spanId: $id) {
  spanKind statusCode parentId input { value mimeType } output { value mimeType } } }"""


def _server_tools(rec: Recording) -> list[dict[str, Any]]:
    """The output items of the recording that the upstream ran: web searches, code runs, ..."""
    final = final_response(rec)
    return [i for i in (final or {"output": []})["output"] if i["type"] in SERVER_TOOLS]


def _check_tools(phoenix: Phoenix, items: list[dict[str, Any]], llm: dict[str, Any],
                 spans: list[dict[str, Any]]) -> None:
    """Each tool the upstream ran is a TOOL span under the LLM span, with its input (and
    output where the item holds one) as Phoenix parses them."""
    tool_spans = {s["attributes"]["tool.id"]: s for s in spans if s["span_kind"] == "TOOL"}
    assert set(tool_spans) == {i["id"] for i in items}
    for item in items:
        span = tool_spans[item["id"]]
        assert span["name"] == item["type"]
        assert span["parent_id"] == llm["context"]["span_id"]
        assert span["context"]["trace_id"] == llm["context"]["trace_id"]
        assert llm["start_time"] <= span["start_time"] <= span["end_time"] <= llm["end_time"]
        reply = httpx.post(phoenix.base + "/graphql", timeout=10, json={
            "query": TOOL_QUERY, "variables": {"id": span["context"]["span_id"]}})
        parsed = reply.json()["data"]["getSpanByOtelId"]
        assert (parsed["spanKind"], parsed["statusCode"]) == ("tool", "OK")
        assert parsed["parentId"] == llm["context"]["span_id"]
        asked = json.loads(parsed["input"]["value"])
        for key in ("action", "queries", "code"):  # what the tool was asked
            if key in item:
                assert asked[key] == item[key]
        for key in ("results", "outputs"):  # what it gave back
            if item.get(key):
                assert json.loads(parsed["output"]["value"]) == item[key]


def _check_chain(phoenix: Phoenix, project: str, chain: list[dict[str, Any]],
                 by_session: dict[str, list[dict[str, Any]]]) -> None:
    first, second, third, other = chain
    # The chain is one Phoenix session named after its root response; the other call its own.
    assert set(by_session) == {first["id"], other["id"]}
    chain_spans = {s["attributes"]["gen_ai.response.id"]: s for s in by_session[first["id"]]}
    assert set(chain_spans) == {first["id"], second["id"], third["id"]}
    sessions = {s["session_id"]: s for s in phoenix.sessions(project)
                if s["session_id"] in by_session}
    chain_session = sessions[first["id"]]
    assert {t["trace_id"] for t in chain_session["traces"]} == {
        s["context"]["trace_id"] for s in chain_spans.values()}
    assert len(chain_session["traces"]) == 3
    assert chain_session["token_count_prompt"] == sum(
        r["usage"]["input_tokens"] for r in (first, second, third))
    assert chain_session["token_count_completion"] == sum(
        r["usage"]["output_tokens"] for r in (first, second, third))
    assert len(sessions[other["id"]]["traces"]) == 1

    # The tool call: instructions and prompt in, the call out, the tool's definition.
    call_span = chain_spans[first["id"]]
    attrs = call_span["attributes"]
    assert [(m["message.role"], message_text(m)) for m in indexed(
        attrs, "llm.input_messages")] == [("system", "You are a weather bot."),
                                          ("user", "Call get_weather for Oslo")]
    (call,) = first["output"]
    (out,) = indexed(attrs, "llm.output_messages")
    assert tool_calls(out) == [("get_weather", call["arguments"])]
    (tool,) = indexed(attrs, "llm.tools")
    assert json.loads(tool["tool.json_schema"]) == WEATHER_TOOL
    # The tool output, linked to the call by call_id; the answer quoting it.
    attrs = chain_spans[second["id"]]["attributes"]
    (tool_message,) = indexed(attrs, "llm.input_messages")
    assert tool_message["message.role"] == "tool"
    assert tool_message["message.tool_call_id"] == call["call_id"]
    assert tool_message["message.content"] == "Sunny, 21 C"
    (answer,) = indexed(attrs, "llm.output_messages")
    assert message_text(answer) == second["output"][0]["content"][0]["text"]

    # Phoenix's own parsed view (GraphQL): kind, token columns, session membership.
    parsed = _parsed(phoenix, call_span)
    usage = first["usage"]
    assert parsed["spanKind"] == "llm" and parsed["statusCode"] == "OK"
    assert (parsed["tokenCountPrompt"], parsed["tokenCountCompletion"],
            parsed["tokenCountTotal"]) == (usage["input_tokens"], usage["output_tokens"],
                                           usage["total_tokens"])
    assert parsed["input"]["mimeType"] == parsed["output"]["mimeType"] == "json"
    assert parsed["trace"]["session"] == {"sessionId": first["id"], "numTraces": 3}
    assert parsed["project"]["name"] == project


def test_phoenix_groups_an_agent_loop_into_one_session(phoenix: Phoenix) -> None:
    """A real openai-agents run with a function tool, stateless (no previous_response_id): the
    call answering the tool continues the session of the call that asked for it.

    Phoenix 20 neither stores nor returns span links, so the link itself is checked in the
    exported OTLP bytes (tests/test_e2e_agents.py); in Phoenix the loop is one session.
    """
    project = "otel-responses-e2e-agents"
    upstream = Tap(create_demo_app(DemoSettings(seed=project)))
    with serve_asgi(upstream) as demo_url, run_cli(
            "--upstream", demo_url + "/v1",
            env=_export_to(phoenix, project, "http/protobuf")) as (base, _):
        result = run_agent(base + "/v1", "stream")
    asking, answering = (x.response for x in upstream.exchanges)
    (call,) = asking["output"]
    assert result["tool_calls"] == [json.loads(call["arguments"])]

    spans = {s["attributes"]["gen_ai.response.id"]: s for s in phoenix.spans(project, 2)}
    assert set(spans) == {asking["id"], answering["id"]}
    assert {s["attributes"]["session.id"] for s in spans.values()} == {asking["id"]}
    (session,) = [s for s in phoenix.sessions(project) if s["session_id"] == asking["id"]]
    assert sorted(t["trace_id"] for t in session["traces"]) == sorted(
        s["context"]["trace_id"] for s in spans.values())
    assert len(session["traces"]) == 2
    assert session["token_count_prompt"] == sum(
        r["usage"]["input_tokens"] for r in (asking, answering))
    # The answering span holds the tool's output under the call id Phoenix shows on the asking
    # span's tool call.
    (out,) = indexed(spans[asking["id"]]["attributes"], "llm.output_messages")
    assert out["message.tool_calls.0.tool_call.id"] == call["call_id"]
    *_, tool_message = indexed(spans[answering["id"]]["attributes"], "llm.input_messages")
    assert (tool_message["message.role"], tool_message["message.tool_call_id"]) == (
        "tool", call["call_id"])
    parsed = _parsed(phoenix, spans[answering["id"]])
    assert parsed["trace"]["session"] == {"sessionId": asking["id"], "numTraces": 2}
