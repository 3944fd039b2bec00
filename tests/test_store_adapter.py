"""Adapter mode with a response store, over real sockets with the openai SDK against the demo's
chat upstream: previous_response_id chains, store: false, retrieval of what was created,
sessions that follow the chain, and 50 concurrent chains staying consistent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from otel_responses.demo.app import create_demo_app, get_observer
from otel_responses.demo.observe import DemoObserver
from otel_responses.store.chains import CHAIN_LENGTH, STORE_ERROR
from otel_responses.telemetry.spans import SpanAttributes
from tests.recordings import sse_payloads
from tests.redisd import redis_server
from tests.servers import serve_asgi
from tests.spans import SpanSink, traced_proxy

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@contextlib.contextmanager
def adapted(**settings: Any) -> Iterator[tuple[openai.OpenAI, DemoObserver, SpanSink]]:
    """An SDK client → the proxy in chat mode (with ``settings``) → the demo's chat API."""
    demo = create_demo_app()
    with serve_asgi(demo) as upstream, \
            traced_proxy(upstream + "/v1", upstream_api="chat", **settings) as (base, sink):
        yield (openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0),
               get_observer(demo), sink)


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[openai.OpenAI, DemoObserver, SpanSink]]:
    with adapted(store="memory") as served:
        yield served


def sent_messages(observer: DemoObserver) -> list[tuple[str, Any]]:
    """(role, content or tool calls) of each message of the last chat request upstream."""
    request = observer.last_request
    assert request is not None and request.path == "/v1/chat/completions"
    return [(m["role"], m.get("content") or [c["function"]["name"] for c in m["tool_calls"]])
            for m in request.json()["messages"]]


def test_a_chain_sends_every_earlier_turn_but_only_the_latest_instructions(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink]) -> None:
    client, observer, _ = proxy
    first = client.responses.create(model="demo", input="first question",
                                    instructions="old rules")
    assert first.store is True and first.previous_response_id is None
    with client.responses.stream(model="demo", input="second question",
                                 previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    third = client.responses.create(model="demo", input="third question",
                                    instructions="new rules", previous_response_id=second.id)
    assert third.previous_response_id == second.id and third.store is True
    assert sent_messages(observer) == [
        ("system", "new rules"),
        ("user", "first question"), ("assistant", first.output_text),
        ("user", "second question"), ("assistant", second.output_text),
        ("user", "third question")]


def test_a_function_call_round_trip_through_previous_response_id(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink]) -> None:
    client, observer, _ = proxy
    asked = client.responses.create(model="demo", input="weather in Paris?", tools=[WEATHER])
    call = next(item for item in asked.output if item.type == "function_call")
    answered = client.responses.create(
        model="demo", previous_response_id=asked.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert "sunny" in answered.output_text
    request = observer.last_request
    assert request is not None
    messages = request.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == call.call_id


@pytest.mark.parametrize("gone", ["unknown", "deleted"])
def test_a_missing_previous_response_is_a_400_naming_it(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink], gone: str) -> None:
    client, observer, _ = proxy
    previous = "resp_unknown"
    if gone == "deleted":
        previous = client.responses.create(model="demo", input="soon gone").id
        client.responses.delete(previous)
    asked = len(observer.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="demo", input="more", previous_response_id=previous)
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "previous_response_id", "previous_response_not_found")
    assert len(observer.requests) == asked  # nothing was sent upstream


def test_an_expired_previous_response_is_a_400() -> None:
    with adapted(store="memory", store_ttl=0.001) as (client, _, _):
        first = client.responses.create(model="demo", input="short-lived")
        with pytest.raises(openai.BadRequestError, match="not found"):
            client.responses.create(model="demo", input="more", previous_response_id=first.id)


@pytest.mark.parametrize("stream", [False, True])
def test_store_false_stores_nothing_and_says_so(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink], stream: bool) -> None:
    client, _, _ = proxy
    kept = client.responses.create(model="demo", input="keep this")
    if stream:
        with client.responses.stream(model="demo", input="not this", store=False,
                                     previous_response_id=kept.id) as events:
            unkept = events.get_final_response()
    else:
        unkept = client.responses.create(model="demo", input="not this", store=False,
                                         previous_response_id=kept.id)
    assert (unkept.store, unkept.previous_response_id) == (False, kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    assert client.responses.retrieve(kept.id).id == kept.id


def test_what_was_created_is_what_is_retrieved(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink]) -> None:
    client, _, _ = proxy
    events = [e.model_dump(mode="json", exclude_unset=True)
              for e in client.responses.create(model="demo", stream=True, input=[
                  {"role": "user", "content": "stream me"}])]
    created = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert client.responses.with_raw_response.retrieve(created["id"]).http_response.json() == \
        created
    replayed = [e.model_dump(mode="json", exclude_unset=True)
                for e in client.responses.retrieve(created["id"], stream=True)]
    assert replayed == events
    items = client.responses.input_items.list(created["id"])
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [
        ("message", "user", "stream me")]


def test_a_response_reads_back_byte_for_byte(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink]) -> None:
    client, _, _ = proxy
    base = str(client.base_url)
    created = httpx.post(base + "responses", json={"model": "demo", "input": "keep me"})
    retrieved = httpx.get(f"{base}responses/{created.json()['id']}")
    assert retrieved.headers["content-type"] == created.headers["content-type"]
    assert retrieved.content == created.content


def test_a_stream_replays_byte_for_byte(
        proxy: tuple[openai.OpenAI, DemoObserver, SpanSink]) -> None:
    client, _, _ = proxy
    base = str(client.base_url)
    with httpx.stream("POST", base + "responses", json={
            "model": "demo", "input": "replay me", "stream": True}) as created:
        sent = b"".join(created.iter_bytes())
    response_id = sse_payloads(sent.decode())[-1]["response"]["id"]
    replay = httpx.get(f"{base}responses/{response_id}", params={"stream": "true"})
    assert replay.headers["content-type"].startswith("text/event-stream")
    assert replay.content == sent
    after = httpx.get(f"{base}responses/{response_id}",
                      params={"stream": "true", "starting_after": 2})
    assert [e["sequence_number"] for e in sse_payloads(after.text)] == \
        list(range(3, len(sse_payloads(sent.decode()))))


def test_the_session_is_the_chains_first_response_after_a_restart(tmp_path: Path) -> None:
    """No session header: the chain's root id, even when this process never saw the root."""
    with adapted(data_dir=str(tmp_path)) as (client, _, _):
        root = client.responses.create(model="demo", input="one")
        second = client.responses.create(model="demo", input="two",
                                         previous_response_id=root.id)
    with adapted(data_dir=str(tmp_path)) as (client, observer, sink):  # SQLite, reopened
        client.responses.create(model="demo", input="three", previous_response_id=second.id)
        span = sink.one()
        assert span.attributes is not None
        assert span.attributes[SpanAttributes.SESSION_ID] == root.id
        assert span.attributes[CHAIN_LENGTH] == 2
        assert [r for r, _ in sent_messages(observer)] == ["user", "assistant"] * 2 + ["user"]


def test_a_session_header_still_wins() -> None:
    with adapted(store="memory") as (client, _, sink):
        root = client.responses.create(model="demo", input="one")
        client.responses.create(model="demo", input="two", previous_response_id=root.id,
                                extra_headers={"x-session-id": "mine"})
        # Both spans, told apart by their input (either may end first).
        spans = sink.wait(2, calls=True)
    sessions = {str((s.attributes or {}).get(SpanAttributes.INPUT_VALUE)): (s.attributes or {})
                .get(SpanAttributes.SESSION_ID) for s in spans}
    assert [session for value, session in sessions.items() if '"two"' in value] == ["mine"]
    assert [session for value, session in sessions.items() if '"one"' in value] == [root.id]


def test_a_failed_write_is_noted_on_the_span_and_the_client_gets_its_response() -> None:
    with redis_server() as redisd, adapted(store=redisd.url) as (client, _, sink):
        redisd.stop()
        with client.responses.stream(model="demo", input="nowhere to keep this") as stream:
            answer = stream.get_final_response()
        assert answer.status == "completed" and answer.output_text
        attributes = sink.one().attributes
    assert attributes is not None
    assert "write failed" in str(attributes[STORE_ERROR])
    assert redisd.url.rpartition(":")[0] in str(attributes[STORE_ERROR])  # which store


CHAINS, TURNS = 50, 5


def test_concurrent_chains_stay_consistent(tmp_path: Path) -> None:
    """50 chains, 5 turns each, all at once on the default SQLite store; then two turns
    branching from one response at the same time."""
    with adapted(data_dir=str(tmp_path)) as (client, observer, _):
        base = str(client.base_url)
        last = asyncio.run(_chains(base))
        for chain, (response_id, text) in enumerate(last):
            # Every turn of the chain, in order, and nothing of any other chain.
            listed = httpx.get(f"{base}responses/{response_id}").json()
            assert listed["output"][0]["content"][0]["text"] == text
            sent = [r.json()["messages"] for r in observer.requests
                    if f"chain {chain} turn {TURNS - 1}" in r.body.decode()]
            assert len(sent) == 1
            users = [m["content"] for m in sent[0] if m["role"] == "user"]
            assert users == [f"chain {chain} turn {t}" for t in range(TURNS)]
        parent, parent_text = last[0]
        branches = asyncio.run(_branches(base, parent))
        for branch, response in enumerate(branches):
            assert response.previous_response_id == parent
            # What this branch sent upstream: chain 0's history, then its own turn, and
            # nothing of the branch running beside it.
            sent = [r.json()["messages"] for r in observer.requests
                    if f"branch {branch}" in r.body.decode()]
            assert len(sent) == 1
            assert [m["content"] for m in sent[0] if m["role"] == "user"] == \
                [f"chain 0 turn {t}" for t in range(TURNS)] + [f"branch {branch}"]
            assert [m["role"] for m in sent[0]] == ["user", "assistant"] * TURNS + ["user"]
            assert sent[0][-2]["content"] == parent_text


async def _chains(base: str) -> list[tuple[str, str]]:
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as client:
        async def chain(n: int) -> tuple[str, str]:
            previous = None
            for turn in range(TURNS):
                response = await client.responses.create(
                    model="demo", input=f"chain {n} turn {turn}", previous_response_id=previous)
                previous = response.id
            assert previous is not None
            return previous, response.output_text
        return await asyncio.gather(*(chain(n) for n in range(CHAINS)))


async def _branches(base: str, parent: str) -> list[Response]:
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as client:
        return await asyncio.gather(*(client.responses.create(
            model="demo", input=f"branch {b}", previous_response_id=parent) for b in range(2)))
