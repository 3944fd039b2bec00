"""The demo upstream over real sockets, driven by the real openai SDK and raw httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.demo.app import DemoSettings, create_demo_app, get_observer
from otel_responses.demo.model import Ids, decide, render
from tests.servers import serve_asgi

CLOCK = 1_700_000_000.0
SIGNATURE = "This is a deterministic reply from the otel-responses demo model."
WEATHER_TOOLS = [
    {"type": "function", "name": "lookup_time", "description": "Current time",
     "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "required": ["city", "unit", "days"],
                    "properties": {"city": {"type": "string"},
                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                   "days": {"type": "integer", "minimum": 3},
                                   "verbose": {"type": "boolean"}}}},
]


def fixed_clock() -> float:
    return CLOCK


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[str, Any]]:
    app = create_demo_app(DemoSettings(clock=fixed_clock))
    with serve_asgi(app) as base:
        yield base, app


@pytest.fixture
def base(demo: tuple[str, Any]) -> str:
    return demo[0]


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def slow() -> Iterator[tuple[str, Any]]:
    """A server that spaces deltas 50 ms apart."""
    app = create_demo_app(DemoSettings(token_delay=0.05))
    with serve_asgi(app) as url:
        yield url, app


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event name, data) pairs, checking the exact framing."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[6:])
        assert data_line[6:] == json.dumps(data, separators=(",", ":"))  # compact JSON
        events.append((event_line[7:], data))
    return events


TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.done",
               "response.content_part.done", "response.output_item.done", "response.completed"]


# ---- text responses ------------------------------------------------------------------------

def test_non_stream_text_usage_and_shape(client: openai.OpenAI, base: str) -> None:
    response = client.responses.create(model="demo", input="hi")
    assert response.output_text == f'You said: "hi". {SIGNATURE}'
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == 1
    assert response.usage.output_tokens == 13  # 'You' ' said:' ' "hi".' + 10 signature words
    assert response.usage.total_tokens == 14
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0

    raw = httpx.post(base + "/v1/responses", json={
        "model": "gpt-test", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "two words"}]}],
        "instructions": "be brief", "temperature": 0.2, "tools": [{"type": "web_search"}],
        "metadata": {"k": "v"}})
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    body = raw.json()
    assert body["object"] == "response" and body["created_at"] == int(CLOCK)
    assert body["model"] == "gpt-test"  # any model is accepted and echoed
    assert (body["instructions"], body["temperature"], body["metadata"]) == ("be brief", 0.2,
                                                                              {"k": "v"})
    assert body["tools"] == [{"type": "web_search"}] and body["tool_choice"] == "auto"
    assert body["top_p"] == 1.0 and body["parallel_tool_calls"] is True
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["id"].startswith("msg_") and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "annotations": [], "logprobs": [],
                                "text": f'You said: "two words". {SIGNATURE}'}]
    assert body["usage"] == {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": 14, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": 18}


def test_same_requests_give_identical_bytes() -> None:
    requests = [{"model": "demo", "input": "same"},
                {"model": "demo", "input": "same", "stream": True}]
    bodies = []
    for _ in range(2):
        with serve_asgi(create_demo_app(DemoSettings(clock=fixed_clock))) as url:
            bodies.append([httpx.post(url + "/v1/responses", json=r).content for r in requests])
    assert bodies[0] == bodies[1]
    with serve_asgi(create_demo_app(DemoSettings(clock=fixed_clock, seed="other"))) as url:
        other = httpx.post(url + "/v1/responses", json=requests[0]).json()
    assert other["id"] != json.loads(bodies[0][0])["id"]


def test_stream_events_via_sdk(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="demo", input="stream me", stream=True))
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [t for t in types if t != "response.output_text.delta"] == TEXT_EVENTS
    assert types[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0].response, events[-1].response
    assert created.id == events[1].response.id == completed.id
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    text = "".join(d.delta for d in deltas)
    assert text == f'You said: "stream me". {SIGNATURE}' == completed.output_text
    assert completed.usage is not None and completed.usage.output_tokens == len(deltas) == 14
    item_id = completed.output[0].id
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {(item_id, 0, 0)}
    assert events[-4].type == "response.output_text.done" and events[-4].text == text


def test_raw_sse_framing(base: str) -> None:
    with httpx.stream("POST", base + "/v1/responses",
                      json={"model": "demo", "input": "x", "stream": True}) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in r.headers
        raw = r.read()
    events = parse_sse(raw)
    assert all(name == data["type"] for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[-1][1]["response"]["usage"]["output_tokens"] == sum(
        name == "response.output_text.delta" for name, _ in events)


def test_stream_helper_text(client: openai.OpenAI) -> None:
    with client.responses.stream(model="demo", input="helper") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text == f'You said: "helper". {SIGNATURE}'


def test_max_output_tokens_makes_response_incomplete(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="demo", input="hi", max_output_tokens=3,
                                          stream=True))
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == 'You said: "hi".'
    assert final.usage is not None and final.usage.output_tokens == 3


def test_json_schema_text_format_parses(client: openai.OpenAI) -> None:
    class Answer(pydantic.BaseModel):
        city: str
        score: float
        tags: list[str]

    parsed = client.responses.parse(model="demo", input="x", text_format=Answer).output_parsed
    assert parsed == Answer(city="demo", score=1.0, tags=[])


# ---- function calls ------------------------------------------------------------------------

def test_function_call_picks_tool_named_in_user_text(client: openai.OpenAI) -> None:
    response = client.responses.create(model="demo", input="use get_weather for Paris",
                                       tools=WEATHER_TOOLS)  # type: ignore[arg-type]
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "demo", "unit": "celsius", "days": 3}
    assert response.usage is not None and response.usage.output_tokens > 1

    first = client.responses.create(model="demo", input="no tool named here",
                                    tools=WEATHER_TOOLS)  # type: ignore[arg-type]
    assert first.output[0].type == "function_call"
    assert (first.output[0].name, first.output[0].arguments) == ("lookup_time", "{}")
    forced = client.responses.create(model="demo", input="get_weather", tools=WEATHER_TOOLS,
                                     tool_choice={"type": "function", "name": "lookup_time"})  # type: ignore[arg-type]
    assert forced.output[0].type == "function_call" and forced.output[0].name == "lookup_time"
    none = client.responses.create(model="demo", input="get_weather", tools=WEATHER_TOOLS,  # type: ignore[arg-type]
                                   tool_choice="none")
    assert none.output[0].type == "message"


def test_function_call_stream_helper_and_follow_up(client: openai.OpenAI) -> None:
    class GetWeather(pydantic.BaseModel):
        city: str
        days: int

    tool = openai.pydantic_function_tool(GetWeather)
    with client.responses.stream(model="demo", input="weather in Oslo?", tools=[tool]) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert [t for t in types if t != "response.function_call_arguments.delta"] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [call] = final.output
    assert call.type == "function_call" and call.name == "GetWeather"
    assert "".join(d.delta for d in deltas) == call.arguments
    assert call.parsed_arguments == GetWeather(city="demo", days=1)
    assert final.usage is not None and final.usage.output_tokens == len(deltas)

    follow = client.responses.create(
        model="demo", previous_response_id=final.id, tools=[tool],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny 21C"}])
    assert follow.output[0].type == "message"
    assert follow.output_text == f"The tool GetWeather returned: sunny 21C {SIGNATURE}"


# ---- stored responses ----------------------------------------------------------------------

def test_retrieve_input_items_cancel_delete_via_sdk(client: openai.OpenAI, base: str) -> None:
    created = client.responses.create(model="demo", input=[
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"}])
    assert client.responses.retrieve(created.id).output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["three", "two", "one"]  # type: ignore[union-attr]
    page = client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"]  # type: ignore[union-attr]
    assert page.has_more and page.data[0].id.startswith("msg_")  # type: ignore[union-attr]
    rest = client.responses.input_items.list(created.id, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["three"]  # type: ignore[union-attr]
    assert client.responses.cancel(created.id).status == "completed"  # already finished
    deleted = client.responses.delete(created.id)
    assert deleted is None  # the SDK discards the body; check it raw below
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)

    other = httpx.post(base + "/v1/responses", json={"model": "demo", "input": "a"}).json()
    assert httpx.get(f"{base}/v1/responses/{other['id']}").json() == other
    gone = httpx.delete(f"{base}/v1/responses/{other['id']}")
    assert gone.json() == {"id": other["id"], "object": "response.deleted", "deleted": True}
    assert httpx.delete(f"{base}/v1/responses/{other['id']}").status_code == 404


def test_input_tokens_compact_and_models(client: openai.OpenAI, base: str) -> None:
    counted = client.responses.input_tokens.count(model="demo", input="one two three",
                                                  instructions="four five")
    assert (counted.object, counted.input_tokens) == ("response.input_tokens", 5)
    compacted = client.responses.compact(model="demo", input=[
        {"role": "user", "content": "keep me"}, {"role": "assistant", "content": "fold me"}])
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "compaction"]
    assert compacted.usage.input_tokens == 4 and compacted.usage.output_tokens == 2
    assert [m.id for m in client.models.list()] == ["demo"]
    assert client.models.retrieve("demo").owned_by == "otel-responses"
    assert httpx.get(base + "/healthz").status_code == 200


def test_store_false_and_lru_bound() -> None:
    with serve_asgi(create_demo_app(DemoSettings(store_size=2))) as url:
        post = [httpx.post(url + "/v1/responses", json={"model": "demo", "input": str(i)}).json()
                for i in range(3)]
        unstored = httpx.post(url + "/v1/responses",
                              json={"model": "demo", "input": "x", "store": False}).json()
        assert unstored["store"] is False
        codes = [httpx.get(f"{url}/v1/responses/{r['id']}").status_code
                 for r in [*post, unstored]]
    assert codes == [404, 200, 200, 404]


def test_stream_resumption_replays_later_events(client: openai.OpenAI, base: str) -> None:
    original = list(client.responses.create(model="demo", input="resume", stream=True))
    rid = original[0].response.id
    replay = list(client.responses.retrieve(rid, stream=True, starting_after=5))
    assert [e.sequence_number for e in replay] == list(range(6, len(original)))
    assert [e.to_dict() for e in replay] == [e.to_dict() for e in original[6:]]
    raw = httpx.get(f"{base}/v1/responses/{rid}", params={"stream": "true",
                                                          "starting_after": "-1"})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert len(parse_sse(raw.content)) == len(original)
    unstreamed = client.responses.create(model="demo", input="plain")
    assert httpx.get(f"{base}/v1/responses/{unstreamed.id}",
                     params={"stream": "true"}).status_code == 400


# ---- errors --------------------------------------------------------------------------------

def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def test_error_shapes(base: str, client: openai.OpenAI) -> None:
    url = base + "/v1/responses"
    bad_json = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert error_of(bad_json, 400)["param"] is None
    assert error_of(httpx.post(url, json=[1]), 400)["param"] is None
    missing_model = error_of(httpx.post(url, json={"input": "x"}), 400)
    assert (missing_model["param"], missing_model["code"]) == ("model",
                                                               "missing_required_parameter")
    assert error_of(httpx.post(url, json={"model": "demo"}), 400)["param"] == "input"
    assert error_of(httpx.post(url, json={"model": "demo", "input": 3}), 400)["code"] == (
        "invalid_type")
    assert error_of(httpx.post(url, json={"model": "demo", "input": ["x"]}), 400)["param"] == (
        "input[0]")
    assert error_of(httpx.get(url + "/resp_missing"), 404)["message"] == (
        "Response with id 'resp_missing' not found.")
    for call in (lambda: httpx.delete(url + "/resp_missing"),
                 lambda: httpx.post(url + "/resp_missing/cancel"),
                 lambda: httpx.get(url + "/resp_missing/input_items")):
        error_of(call(), 404)
    assert "Invalid URL" in error_of(httpx.get(base + "/v1/nothing"), 404)["message"]
    previous = error_of(httpx.post(url, json={"model": "demo", "input": "x",
                                              "previous_response_id": "resp_nope"}), 404)
    assert previous["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="demo", input=None)  # type: ignore[arg-type]
    assert raised.value.param == "input"


# ---- pacing and observation ----------------------------------------------------------------

def test_token_delay_spaces_out_deltas(slow: tuple[str, Any]) -> None:
    url, _ = slow
    arrivals = []
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        started = time.monotonic()
        for event in client.responses.create(model="demo", input="pace", stream=True):
            if event.type == "response.output_text.delta":
                arrivals.append(time.monotonic())
    assert len(arrivals) == 13
    # Lower bounds only, and from the request's start: the server cannot send the last delta
    # before 12 delays have passed, however late the client reads.
    paced = arrivals[-1] - started
    assert paced >= 12 * 0.05 * 0.95
    with serve_asgi(create_demo_app()) as fast_url, openai.OpenAI(
            base_url=fast_url + "/v1", api_key="x") as client:
        started = time.monotonic()
        list(client.responses.create(model="demo", input="pace", stream=True))
        fast = time.monotonic() - started
    assert fast < paced


def test_observer_records_headers_and_body(demo: tuple[str, Any], base: str) -> None:
    observer = get_observer(demo[1])
    httpx.post(base + "/v1/responses?trace=1", json={"model": "demo", "input": "seen"},
               headers={"Authorization": "Bearer upstream-key", "X-Custom": "42"})
    seen = observer.last_request
    assert seen is not None
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/responses", "trace=1")
    assert seen.header("authorization") == "Bearer upstream-key"
    assert seen.header("X-CUSTOM") == "42" and seen.header("absent") is None
    assert seen.json() == {"model": "demo", "input": "seen"}
    httpx.get(base + "/healthz")
    assert observer.last_request is seen  # health checks are not recorded


def test_observer_counts_client_disconnect_mid_stream(slow: tuple[str, Any]) -> None:
    url, app = slow
    observer = get_observer(app)
    before = observer.disconnected_streams
    long_text = " ".join(f"w{i}" for i in range(40))  # ~50 deltas: 2.5 s if read to the end
    with httpx.Client() as http, http.stream(
            "POST", url + "/v1/responses",
            json={"model": "demo", "input": long_text, "stream": True}) as r:
        chunks = r.iter_raw()  # keep a reference: a collected iterator closes the stream
        next(chunks)
        assert observer.open_streams == 1
        rid = observer.streams[-1].response_id
    closed_at = time.monotonic()
    assert observer.wait_until(lambda o: o.disconnected_streams == before + 1, timeout=2)
    record = observer.streams[-1]
    assert record.outcome == "disconnected" and observer.open_streams == 0
    assert record.ended_at is not None and record.ended_at - closed_at < 1
    stored = httpx.get(f"{url}/v1/responses/{rid}").json()
    assert stored["status"] == "cancelled"
    replay = httpx.get(f"{url}/v1/responses/{rid}", params={"stream": "true"}).content
    assert len(parse_sse(replay)) == record.frames_sent < 20


def test_cancel_stops_running_stream(slow: tuple[str, Any]) -> None:
    url, app = slow
    observer = get_observer(app)
    long_text = " ".join(f"w{i}" for i in range(40))
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        stream = client.responses.create(model="demo", input=long_text, stream=True)
        first = next(iter(stream))
        rid = first.response.id  # type: ignore[union-attr]
        results: list[Any] = []
        reader = threading.Thread(target=lambda: results.extend(stream))
        reader.start()
        cancelled = client.responses.cancel(rid)
        reader.join(2)
    assert not reader.is_alive()
    assert cancelled.status == "cancelled"
    assert "response.completed" not in [e.type for e in results]
    assert observer.wait_until(lambda o: o.streams[-1].outcome == "cancelled", timeout=2)


# ---- the model, without sockets ------------------------------------------------------------

@settings(max_examples=60)
@given(text=st.text(min_size=0, max_size=300), limit=st.none() | st.integers(1, 20))
def test_frames_are_consistent_for_any_input(text: str, limit: int | None) -> None:
    request = {"model": "demo", "input": text, "max_output_tokens": limit}
    reply = decide(request)
    rendered = render(request, reply, Ids.for_number(1), 0)
    events = parse_sse(b"".join(rendered.frames()))
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = [d["delta"] for name, d in events if name == "response.output_text.delta"]
    final = events[-1][1]["response"]
    assert "".join(deltas) == final["output"][0]["content"][0]["text"]
    assert final["usage"]["output_tokens"] == len(deltas) >= 1
    assert final["usage"]["total_tokens"] == final["usage"]["input_tokens"] + len(deltas)
    assert final["usage"]["input_tokens"] == len(text.split())
    assert len(deltas) <= (limit or len(deltas))
