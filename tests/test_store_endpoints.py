"""The retrieval endpoints over real sockets with the openai SDK, from a seeded store: GET (JSON
and replayed SSE), DELETE, input_items pages, 404s, and a Redis outage answered 503 quickly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import httpx
import openai
import pytest
from starlette.applications import Starlette

from otel_responses.config import Settings
from otel_responses.protocol.body import json_bytes
from otel_responses.proxy.forward import Proxy
from otel_responses.store.memory import MemoryStore
from otel_responses.store.record import Operation, ResponseStore, StoredResponse
from otel_responses.store.redisdb import RedisStore
from otel_responses.store.routes import store_routes
from otel_responses.store.service import Responses
from tests.recordings import sse_payloads
from tests.redisd import redis_server
from tests.servers import serve_asgi, serve_tcp
from tests.stored import record

FIRST = record({"model": "m", "input": [
    {"role": "developer", "content": "be brief"},
    {"role": "user", "content": "what is the weather in Paris?"},
    {"type": "function_call", "call_id": "call_0", "name": "weather", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
]}, "It is sunny in Paris.")


@contextlib.contextmanager
def serve(store: ResponseStore, seed: Sequence[StoredResponse] = (),
          errors: list[Operation] | None = None, timeout: float = 2) -> Iterator[str]:
    for stored in seed:
        asyncio.run(store.put(stored))
    responses = Responses(ttl=3600, timeout=timeout, store=store,
                          on_error=(errors.append if errors is not None else lambda op: None))
    proxy = Proxy(Settings(upstream="http://127.0.0.1:9/v1"))  # never reached: no forwarding
    with serve_asgi(Starlette(routes=store_routes(responses, proxy))) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(MemoryStore(10 * 1024 * 1024), [FIRST]) as base:
        yield base


def test_get_returns_the_response_as_the_client_got_it(url: str) -> None:
    raw = httpx.get(f"{url}/v1/responses/{FIRST.id}")
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.content == json_bytes(FIRST.response)
    got = client(url).responses.retrieve(FIRST.id)
    assert (got.id, got.output_text, got.status) == (FIRST.id, "It is sunny in Paris.",
                                                     "completed")


def test_stream_true_replays_the_events_after_starting_after(url: str) -> None:
    events = list(client(url).responses.retrieve(FIRST.id, stream=True))
    assert FIRST.events is not None
    assert [e.model_dump(mode="json", exclude_unset=True) for e in events] == \
        sse_payloads(FIRST.events.decode())
    later = list(client(url).responses.retrieve(FIRST.id, stream=True, starting_after=3))
    assert [e.sequence_number for e in later] == list(range(4, len(events)))
    assert later[-1].type == "response.completed"


def test_a_response_not_streamed_cannot_be_replayed(url: str) -> None:
    plain = dataclasses.replace(FIRST, id="resp_plain", events=None)
    with serve(MemoryStore(1 << 20), [plain]) as base:
        answer = httpx.get(f"{base}/v1/responses/resp_plain", params={"stream": "true"})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "stream"
        assert httpx.get(f"{base}/v1/responses/resp_plain").status_code == 200


def test_input_items_lists_this_requests_input_newest_first(url: str) -> None:
    listed = client(url).responses.input_items.list(FIRST.id)
    assert [i.type for i in listed.data] == ["function_call_output", "function_call",
                                             "message", "message"]
    assert all(i.id for i in listed.data)
    assert listed.data[-1].role == "developer"  # as the client said it, not as sent upstream
    paged = client(url).responses.input_items.list(FIRST.id, limit=1, order="asc")
    assert [i.id for i in paged] == [i["id"] for i in FIRST.input_items]  # every page, once
    raw = httpx.get(f"{url}/v1/responses/{FIRST.id}/input_items", params={"limit": 2}).json()
    assert (raw["object"], raw["has_more"], raw["first_id"]) == \
        ("list", True, FIRST.input_items[-1]["id"])


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"order": "sideways"},
                                   {"after": "msg_unknown"}])
def test_bad_list_parameters_are_400s_naming_them(url: str, query: dict[str, str]) -> None:
    answer = httpx.get(f"{url}/v1/responses/{FIRST.id}/input_items", params=query)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == next(iter(query))


def test_unknown_ids_are_openai_404s(url: str) -> None:
    for method, path in (("GET", "resp_nope"), ("DELETE", "resp_nope"),
                         ("GET", "resp_nope/input_items")):
        answer = httpx.request(method, f"{url}/v1/responses/{path}")
        assert answer.status_code == 404
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client(url).responses.retrieve("resp_nope")


def test_delete_answers_deleted_then_the_response_is_gone() -> None:
    doomed = record({"model": "m", "input": "forget me"}, "ok")
    with serve(MemoryStore(1 << 20), [doomed]) as base:
        answer = httpx.delete(f"{base}/v1/responses/{doomed.id}")
        assert answer.status_code == 200
        assert answer.json() == {"id": doomed.id, "object": "response", "deleted": True}
        with pytest.raises(openai.NotFoundError):
            client(base).responses.retrieve(doomed.id)
        with pytest.raises(openai.NotFoundError):
            client(base).responses.delete(doomed.id)


def test_a_redis_outage_is_a_quick_503_counted_and_recovers() -> None:
    errors: list[Operation] = []
    with redis_server() as redisd:
        asyncio.run(_seed(redisd.url))
        # Made outside the server's loop, the client connects on first use, in that loop.
        with serve(RedisStore(redisd.url, timeout=1, described="redis"), errors=errors,
                   timeout=1) as base:
            assert httpx.get(f"{base}/v1/responses/{FIRST.id}").status_code == 200
            redisd.stop()
            for method, path in (("GET", FIRST.id), ("GET", f"{FIRST.id}/input_items"),
                                 ("DELETE", FIRST.id)):
                # Bounded: the client's own timeout would fail the test on a hang.
                answer = httpx.request(method, f"{base}/v1/responses/{path}", timeout=10)
                assert answer.status_code == 503
                assert answer.json()["error"]["code"] == "store_unavailable"
            assert errors == ["read", "read", "delete"]
            redisd.start()  # empty again: it keeps nothing on disk
            assert httpx.get(f"{base}/v1/responses/{FIRST.id}").status_code == 404


def test_a_store_that_never_answers_is_a_503_within_the_timeout() -> None:
    """A Redis that accepts connections and never answers: the read gives up at the bound."""
    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()
    errors: list[Operation] = []
    with serve_tcp(black_hole) as (port, _):
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.3, described="redis")
        with serve(store, errors=errors, timeout=0.3) as base:
            answer = httpx.get(f"{base}/v1/responses/resp_x", timeout=10)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "store_unavailable"
    assert errors == ["read"]


async def _seed(url: str) -> None:
    store = RedisStore(url, timeout=1, described="redis")
    await store.put(FIRST)
    await store.aclose()
