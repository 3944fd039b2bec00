"""Concurrent chains across two proxy processes sharing one redis-server, with Redis killed
while they run: what needs the store fails with a clear 503, the replicas stay up, and they
work again once Redis is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from otel_responses.demo.app import create_demo_app, get_observer
from otel_responses.demo.observe import DemoObserver
from tests.redisd import RedisServer, redis_server
from tests.servers import serve_asgi
from tests.test_store_processes import proxy

CHAINS = 6
MAX_TURNS = 40  # a bound: every chain meets the outage long before (it starts after 2 turns each)
KILL_AFTER = 2 * CHAINS  # turns answered before Redis is killed
TIMEOUT = 10.0  # per request: a hang fails the test


@dataclass
class Chain:
    """One conversation: turn t goes to replica (n + t) % 2; ``ids`` of the answered turns,
    then the error that ended it, if any."""

    run: str
    n: int
    ids: list[str] = field(default_factory=list)
    error: openai.APIStatusError | None = None

    def turn_text(self, turn: int) -> str:
        return f"{self.run} chain {self.n} turn {turn}"


@pytest.fixture(scope="module")
def chat_upstream() -> Iterator[tuple[str, DemoObserver]]:
    demo = create_demo_app()
    with serve_asgi(demo) as url:
        yield url + "/v1", get_observer(demo)


@contextlib.contextmanager
def replicas(upstream: str, redisd: RedisServer) -> Iterator[list[str]]:
    """Two proxy processes in chat mode on ``redisd``; yields their base URLs."""
    with proxy(upstream, "--store", redisd.url) as (_, one, _), \
            proxy(upstream, "--store", redisd.url) as (_, other, _):
        yield [one, other]


def sent_user_texts(observer: DemoObserver, text: str) -> list[str]:
    """The user messages of the one chat request upstream whose new turn is ``text``."""
    sent = [m for m in (r.json()["messages"] for r in observer.requests)
            if m[-1]["content"] == text]
    assert len(sent) == 1, text
    return [m["content"] for m in sent[0] if m["role"] == "user"]


def test_chains_across_replicas_survive_redis_dying_mid_run(
        chat_upstream: tuple[str, DemoObserver]) -> None:
    upstream, observer = chat_upstream
    with redis_server() as redisd, replicas(upstream, redisd) as bases:
        chains = asyncio.run(_run_until_outage(bases, redisd))
        for chain in chains:
            # Answered turns continued the chain on alternating replicas: each sent upstream
            # every earlier turn of its own chain, in order.
            assert chain.ids, "turn 0 needs no store"
            for turn in range(len(chain.ids)):
                assert sent_user_texts(observer, chain.turn_text(turn)) == \
                    [chain.turn_text(t) for t in range(turn + 1)]
            # Then the outage: the first failure is the store's, in OpenAI's shape.
            assert chain.error is not None, f"chain {chain.n} never met the outage"
            assert chain.error.status_code == 503
            assert chain.error.body == {
                "message": "The response store is unavailable; try again later.",
                "type": "server_error", "param": None, "code": "store_unavailable"}
        stored = f"/v1/responses/{chains[0].ids[-1]}"
        for base in bases:  # both replicas are up; what needs the store fails the same way
            assert httpx.get(base + "/healthz", timeout=TIMEOUT).status_code == 200
            for method, path in (("GET", stored), ("GET", stored + "?stream=true"),
                                 ("GET", stored + "/input_items"), ("DELETE", stored)):
                answer = httpx.request(method, base + path, timeout=TIMEOUT)
                assert (answer.status_code, answer.json()["error"]["code"]) == (
                    503, "store_unavailable"), (method, path)
            # What needs no store is answered (its write fails, logged, not the request).
            unstored = httpx.post(base + "/v1/responses", timeout=TIMEOUT,
                                  json={"model": "demo", "input": "no store needed"})
            assert unstored.status_code == 200 and unstored.json()["status"] == "completed"
        redisd.start()  # empty: it keeps nothing on disk
        again = asyncio.run(_chains(bases, "after", turns=3))
        for chain in again:
            assert chain.error is None and len(chain.ids) == 3
            assert sent_user_texts(observer, chain.turn_text(2)) == \
                [chain.turn_text(t) for t in range(3)]
            for base in bases:
                assert httpx.get(f"{base}/v1/responses/{chain.ids[-1]}",
                                 timeout=TIMEOUT).json()["id"] == chain.ids[-1]


async def _run_until_outage(bases: list[str], redisd: RedisServer) -> list[Chain]:
    """Every chain runs until its first error; Redis is killed once KILL_AFTER turns were
    answered, while the other chains' requests are in flight."""
    enough = asyncio.Event()

    async def kill() -> None:
        await enough.wait()
        await asyncio.to_thread(redisd.stop)  # the loop keeps serving the chains meanwhile

    def answered(total: int) -> None:
        if total >= KILL_AFTER:
            enough.set()

    chains, _ = await asyncio.gather(_chains(bases, "before", MAX_TURNS, answered), kill())
    return chains


async def _chains(bases: list[str], run: str, turns: int,
                  answered: Callable[[int], None] = lambda total: None) -> list[Chain]:
    """CHAINS chains at once, each until ``turns`` turns or its first error; ``answered``
    is told the number of turns answered so far after each."""
    clients = [openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                                  timeout=TIMEOUT) for base in bases]
    total = 0

    async def converse(chain: Chain) -> Chain:
        nonlocal total
        for turn in range(turns):
            try:
                response = await clients[(chain.n + turn) % 2].responses.create(
                    model="demo", input=chain.turn_text(turn),
                    previous_response_id=chain.ids[-1] if chain.ids else None)
            except openai.APIStatusError as exc:
                chain.error = exc
                break
            chain.ids.append(response.id)
            total += 1
            answered(total)
        return chain

    try:
        return await asyncio.gather(*(converse(Chain(run, n)) for n in range(CHAINS)))
    finally:
        for client in clients:
            await client.close()
