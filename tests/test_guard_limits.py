"""Limit windows: the memory store's semantics on a clock the test moves, the Redis script
giving the same answers as the memory store on any sequence, and what a call is charged."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_responses.guard.keys import LIMIT_NAMES
from otel_responses.guard.limits import CONCURRENT, Check, MemoryStore
from otel_responses.guard.middleware import _LIMITS, _duration, charged_tokens
from otel_responses.guard.redis_store import RedisStore
from otel_responses.telemetry.metrics import ProxyMetrics
from tests.redisd import RedisServer, redis_server

T0 = 1_700_000_000.0  # on a bucket boundary of a minute window


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_requests_window_counts_exactly_and_frees_after_the_window() -> None:
    store = MemoryStore()
    rpm = Check("k:rpm", 3, 60.0, 1.0)
    results = [run(store.admit([rpm], T0 + i, f"l{i}")).admitted for i in range(4)]
    assert results == [True, True, True, False]
    refused = run(store.admit([rpm], T0 + 3, "x"))
    # The first request's bucket leaves the window at T0 + 61 (a bucket late, never early).
    assert refused.states[0].used == 3 and refused.states[0].wait == pytest.approx(58)
    assert not run(store.admit([rpm], T0 + 60.5, "x")).admitted
    assert run(store.admit([rpm], T0 + 61, "x")).admitted


def test_tokens_admit_while_some_are_left_and_charges_come_after() -> None:
    store = MemoryStore()
    tpm = Check("k:tpm", 100, 60.0)  # cost 0: tokens are charged when the call ends
    assert run(store.admit([tpm], T0, "a")).admitted
    run(store.settle([("k:tpm", 60.0, 99)], [], "", T0))
    assert run(store.admit([tpm], T0 + 1, "b")).admitted  # 1 token left: admitted
    run(store.settle([("k:tpm", 60.0, 50)], [], "", T0 + 1))  # the call overshot: charged anyway
    refused = run(store.admit([tpm], T0 + 2, "c"))
    assert not refused.admitted and refused.states[0].used == 149
    # Once T0's 99 leave, 50 remain (< 100): admitted again.
    assert refused.states[0].wait == pytest.approx(59)
    assert run(store.admit([tpm], T0 + 61, "d")).admitted


def test_an_admission_is_all_or_nothing() -> None:
    store = MemoryStore()
    rpm = Check("k:rpm", 10, 60.0, 1.0)
    tpd = Check("k:tpd", 5, 86400.0)
    run(store.settle([("k:tpd", 86400.0, 5)], [], "", T0))
    refused = run(store.admit([rpm, tpd], T0, "a"))
    assert not refused.admitted and refused.states[0].wait == 0 and refused.states[1].wait > 0
    assert run(store.admit([rpm], T0, "b")).states[0].used == 0  # the refusal charged nothing


def test_concurrency_slots_are_taken_and_released_by_lease() -> None:
    store = MemoryStore()
    slot = Check("k:conc", 2, CONCURRENT, 1.0)
    assert run(store.admit([slot], T0, "a")).admitted
    assert run(store.admit([slot], T0, "b")).admitted
    assert not run(store.admit([slot], T0, "c")).admitted
    run(store.settle([], ["k:conc"], "a", T0))
    assert run(store.admit([slot], T0, "c")).admitted


def test_idle_counters_are_swept() -> None:
    store = MemoryStore(sweep=60.0)
    run(store.admit([Check("k:rpm", 3, 60.0, 1.0), Check("k:tpm", 3, 60.0)], T0, "a"))
    assert len(store._windows) == 2
    run(store.admit([Check("other", 3, 60.0, 1.0)], T0 + 120, "b"))
    assert set(store._windows) == {"other"}


# -- the Redis script against the memory store ---------------------------------------------

@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@dataclass(frozen=True)
class Step:
    advance: float
    kind: str  # admit, charge, release
    cost: float
    limit: int


_steps = st.lists(st.builds(
    Step, st.sampled_from([0.0, 0.3, 1.0, 7.5, 30.0, 61.0]),
    st.sampled_from(["admit", "admit", "charge", "release"]),
    st.sampled_from([0.0, 1.0, 2.5, 40.0]), st.integers(1, 6)), max_size=25)
_names = itertools.count()


@settings(max_examples=40)
@given(_steps)
def test_redis_answers_as_the_memory_store(redis: RedisServer, steps: list[Step]) -> None:
    prefix = f"prop{next(_names)}:"

    async def both() -> None:
        memory, shared = MemoryStore(), RedisStore(redis.url)
        now = T0 + 0.25
        leases: list[str] = []
        try:
            for i, step in enumerate(steps):
                now += step.advance
                window = Check(prefix + "w", step.limit, 60.0, step.cost)
                slot = Check(prefix + "c", step.limit, CONCURRENT, 1.0)
                if step.kind == "admit":
                    lease = f"lease{i}"
                    got = [await s.admit([window, slot], now, lease) for s in (memory, shared)]
                    assert got[0].admitted == got[1].admitted, (i, got)
                    for a, b in zip(got[0].states, got[1].states, strict=True):
                        assert a.used == pytest.approx(b.used)
                        assert a.wait == pytest.approx(b.wait)
                    if got[0].admitted:
                        leases.append(lease)
                elif step.kind == "charge":
                    for s in (memory, shared):
                        await s.settle([(prefix + "w", 60.0, step.cost)], [], "", now)
                elif leases:
                    lease = leases.pop(0)
                    for s in (memory, shared):
                        await s.settle([], [prefix + "c"], lease, now)
        finally:
            await shared.aclose()

    run(both())


# -- what a call is charged ------------------------------------------------------------------

@dataclass
class Call:
    status: int
    request_raw: bytes
    response: dict[str, Any] | None


def test_charged_tokens() -> None:
    usage = {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    assert charged_tokens(Call(200, b"{}", {"usage": usage})) == 12
    assert charged_tokens(Call(200, b"{}", {"usage": {"input_tokens": 7,
                                                      "output_tokens": 5}})) == 12
    # A stream cut before its terminal event: the request and the output received, /4.
    rebuilt = {"output": [{"type": "message", "content": [{"text": "x" * 100}]}]}
    estimate = charged_tokens(Call(200, b"r" * 400, rebuilt))
    assert 125 <= estimate <= 150
    assert charged_tokens(Call(200, b"r" * 400, None)) == 100
    assert charged_tokens(Call(429, b"r" * 400, None)) == 0  # refused upstream: nothing used


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250ms"), (1, "1s"), (6.2, "7s"), (90, "1m30s"), (7200, "2h0m0s")])
def test_reset_durations_in_openai_format(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_every_limit_has_a_rejection_series_from_the_start() -> None:
    """The guard's refusals are labelled by the limits' names: each one's series is at 0
    before any refusal (so a rate() over it works from the first one)."""
    get = ProxyMetrics().registry.get_sample_value
    assert [get("otel_responses_rejections_total", {"reason": name}) for name in LIMIT_NAMES] \
        == [0.0] * len(LIMIT_NAMES)
    assert {name for name, *_ in _LIMITS} == set(LIMIT_NAMES)
