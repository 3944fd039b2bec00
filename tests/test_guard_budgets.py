"""USD budgets over real sockets: calls priced by a price file spend a key's daily or monthly
budget, the call after the one that spent it is refused as OpenAI's insufficient_quota (one
process, and two sharing a redis-server), the UTC day's edge resets it, unpriced calls are free."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
import redis as redis_client
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.guard.limits import PERIOD_WINDOWS, Period, bucket_width, calendar_period
from otel_responses.guard.redis_store import PREFIX
from tests.guard import Clock, client, guarded, metric, wait_metric, write_keys
from tests.redisd import RedisServer
from tests.servers import run_cli
from tests.upstreams import RawUpstream

KEY = "sk-budget-0123456789abcdef"
BUDGET = 0.01
USD_PER_TOKEN = 300 / 1e6  # the price file's rate: a demo call of ~15 tokens is about $0.0045
SPENT = "otel_responses_limit_usd_charged_total"


def _keys(tmp_path: Path, name: str, **limits: float) -> Path:
    return write_keys(tmp_path / "keys.yaml", {"keys": [
        {"name": name, "key": KEY, "limits": limits}]})


def _prices(tmp_path: Path) -> str:
    path = tmp_path / "prices.json"
    rate = USD_PER_TOKEN * 1e6
    path.write_text(json.dumps({"models": [{"match": "demo", "input": rate, "output": rate}]}))
    return str(path)


def _call(sdk: openai.OpenAI, stream: bool) -> float:
    """One demo call, streamed or not; what it costs by its reported usage."""
    if stream:
        with sdk.responses.stream(model="demo", input="spend a little") as events:
            usage = events.get_final_response().usage
    else:
        usage = sdk.responses.create(model="demo", input="hi").usage
    assert usage is not None
    return usage.total_tokens * USD_PER_TOKEN


def _spend(bases: list[str], charged: Callable[[float], None]) -> float:
    """Call through ``bases`` in turn, streams and not, until the budget is spent: every call
    passes while some of it is left. ``charged`` waits for each call's charge to land."""
    spent, calls = 0.0, 0
    while spent < BUDGET:
        assert calls < 20, "the budget was never spent"
        spent += _call(client(bases[calls % len(bases)], KEY), stream=calls % 2 == 0)
        calls += 1
        charged(spent)
    assert calls >= 2  # the price makes one call spend part of the budget, not all of it
    return spent


def _refused(base: str, period: Period, clock: Clock | None = None) -> openai.RateLimitError:
    """The next call, refused: insufficient_quota, retry-after at the period's edge."""
    now = (clock or time.time)()
    edge = calendar_period(period, now)[1]
    before = edge - now
    with pytest.raises(openai.RateLimitError) as caught:
        client(base, KEY).responses.create(model="demo", input="hi")
    after = edge - (clock or time.time)()
    error = caught.value
    assert error.status_code == 429
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert isinstance(error.body, dict)
    message = error.body["message"]
    assert ("daily budget" if period == "day" else "monthly budget") in message
    assert "USD 0.01" in message and KEY not in message
    assert math.ceil(after) <= int(error.response.headers["retry-after"]) <= math.ceil(before)
    return error


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_spent_daily_budget_refuses_until_the_utc_day_ends(
        demo: str, tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    url = "memory" if store == "memory" else request.getfixturevalue("redis").url
    clock = Clock()
    with guarded(demo, _keys(tmp_path, f"daily-{store}", usd_per_day=BUDGET), clock,
                 rate_limit_store=url, prices=_prices(tmp_path)) as (base, _):
        spent = _spend([base], lambda total: wait_metric(base, SPENT, total - 1e-9))
        assert metric(base, SPENT) == pytest.approx(spent)  # the priced cost, exactly
        _refused(base, "day", clock)
        _refused(base, "day", clock)
        assert metric(base, "otel_responses_rejections_total", 'reason="usd_per_day"') == 2
        # Just before midnight UTC it is still spent; just after, a new day's budget.
        clock.advance(calendar_period("day", clock())[1] - clock() - 2)
        _refused(base, "day", clock)
        clock.advance(3)
        assert client(base, KEY).responses.create(model="demo", input="hi").output_text


def test_two_processes_sharing_redis_share_a_monthly_budget(redis: RedisServer,
                                                            tmp_path: Path) -> None:
    env = {"OTEL_RESPONSES_API_KEYS_FILE": str(_keys(tmp_path, "monthly-two",
                                                     usd_per_month=BUDGET)),
           "OTEL_RESPONSES_RATE_LIMIT_STORE": redis.url,
           "OTEL_RESPONSES_PRICES_FILE": _prices(tmp_path)}
    shared = redis_client.Redis.from_url(redis.url)

    def landed(total: float) -> None:
        # A charge reaches redis just after the call's last byte: wait for it, then the
        # other process must see it.
        counter = f"{PREFIX}monthly-two\x00usd_per_month\x00"
        counter += calendar_period("month", time.time())[0]
        deadline = time.monotonic() + 10
        while sum(float(v) for v in shared.hvals(counter)) < total - 1e-9:
            assert time.monotonic() < deadline, "the charge never reached redis"
            time.sleep(0.02)

    with run_cli(env=env) as (one, _), run_cli(env=env) as (two, _), shared:
        _spend([one, two], landed)
        for base in (one, two):
            _refused(base, "month")
        refused = sum(metric(b, "otel_responses_rejections_total", 'reason="usd_per_month"')
                      for b in (one, two))
        assert refused == 2


def test_unpriced_calls_are_not_charged(demo: str, tmp_path: Path) -> None:
    """Without a price for the demo model nothing is charged, no guessed figure: a budget of
    a millionth of a dollar lets every call through."""
    with guarded(demo, _keys(tmp_path, "unpriced", usd_per_day=0.000001)) as (base, _):
        sdk = client(base, KEY)
        for stream in (True, False, True, False):
            _call(sdk, stream)
        wait_metric(base, "otel_responses_cost_unpriced_total", 4, 'model="demo"')
        assert metric(base, SPENT) == 0


def test_a_call_without_usage_is_not_charged(upstream: RawUpstream, tmp_path: Path) -> None:
    """A stream cut before its usage: tokens are estimated, USD never is (the same settlement
    charges both, so once the tokens show, a USD charge would have too)."""
    keys = _keys(tmp_path, "cut", tokens_per_day=1_000_000, usd_per_day=BUDGET)
    with guarded(upstream.url + "/v1", keys, prices=_prices(tmp_path)) as (base, _), \
            httpx.Client(timeout=10) as http:
        with pytest.raises(httpx.RemoteProtocolError), http.stream(
                "POST", base + "/v1/responses",
                json={"model": "demo", "input": "x" * 400, "stream": True},
                headers={"authorization": f"Bearer {KEY}", "x-scenario": "cut"}) as cut:
            cut.read()
        wait_metric(base, "otel_responses_limit_tokens_charged_total", 1)
        assert metric(base, SPENT) == 0


@given(st.floats(0, 4e9), st.sampled_from(["day", "month"]))
def test_a_calendar_period_holds_now_and_its_counter_never_slides(now: float,
                                                                 period: Period) -> None:
    label, edge = calendar_period(period, now)
    start = datetime.strptime(label, "%Y-%m-%d" if period == "day" else "%Y-%m").replace(
        tzinfo=UTC).timestamp()
    assert start <= now < edge
    assert calendar_period(period, edge - 0.001)[0] == label < calendar_period(period, edge)[0]
    # A charge anywhere in the period stays in its window until the period is over.
    window = PERIOD_WINDOWS[period]
    assert edge - start + bucket_width(window) < window


@pytest.mark.parametrize("key_label", [False, True])
def test_the_cost_metric_names_the_key_only_when_asked(demo: str, tmp_path: Path,
                                                       key_label: bool) -> None:
    with guarded(demo, _keys(tmp_path, "spender"), prices=_prices(tmp_path),
                 metrics_key_label=key_label) as (base, _):
        cost = _call(client(base, KEY), stream=True)
        labels = ('key="spender",' if key_label else "") + 'model="demo",provider="openai"'
        assert wait_metric(base, "otel_responses_cost_usd_total", cost - 1e-12,
                           labels) == pytest.approx(cost)
        assert KEY not in httpx.get(base + "/metrics").text
