"""Cost through the real proxy: every recorded call with usage carries genai-prices' figure on
its span, the cost counter adds up to the spans, unpriced models are counted, and the price
file is validated at startup and re-read when it changes."""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import genai_prices
import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from otel_responses import watched_file
from otel_responses.cli import _option_values, build_parser
from otel_responses.config import SERVE_OPTIONS, settings_from
from otel_responses.demo.app import create_demo_app
from otel_responses.telemetry.cost import CostBreakdown, Pricer, PricesError, parse_prices
from otel_responses.telemetry.middleware import ResponsesTelemetryMiddleware
from otel_responses.telemetry.options import TelemetryOptions, infer_provider
from otel_responses.telemetry.prices_file import PricesFile
from tests.recordings import Recording, final_response, load_recordings, need
from tests.servers import run_cli, serve_asgi
from tests.spans import SpanSink
from tests.test_cli import _cli
from tests.test_metrics import (
    SYNTHETIC,
    _sse,
    _synthetic,
    metered_proxy,
    scrape,
    send,
    span_ids,
    value,
    wait_for,
    wait_for_calls,
)
from tests.upstreams import RawUpstream

COST_KEYS = ("llm.cost.prompt", "llm.cost.completion", "llm.cost.total",
             "llm.cost.prompt_details.cache_read", "llm.cost.prompt_details.cache_write",
             "llm.cost.completion_details.reasoning")
TOKEN_KEYS = {"llm.token_count.prompt": ("input_tokens",),
              "llm.token_count.completion": ("output_tokens",),
              "llm.token_count.total": ("total_tokens",),
              "llm.token_count.prompt_details.cache_read": ("input_tokens_details",
                                                            "cached_tokens"),
              "llm.token_count.completion_details.reasoning": ("output_tokens_details",
                                                               "reasoning_tokens")}
# (llm.cost.<name>, where the usage reports its tokens, the table's own price, its parent's)
DETAILS = (("prompt_details.cache_read", ("input_tokens_details", "cached_tokens"),
            "cache_read_mtok", "input_mtok"),
           ("completion_details.reasoning", ("output_tokens_details", "reasoning_tokens"),
            "output_reasoning_mtok", "output_mtok"))
USAGE = {"input_tokens": 1_000_000, "input_tokens_details": {"cached_tokens": 250_000},
         "output_tokens": 100_000, "output_tokens_details": {"reasoning_tokens": 40_000},
         "total_tokens": 1_100_000}


def _response(model: str, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {"id": f"resp_{model}_{status}", "object": "response", "status": status,
            "model": model, "output": [], "usage": USAGE, **extra}


# Calls no recording has: a failed stream and a failed body that report usage, a self-hosted
# model the price file prices, a model nothing prices.
EXTRA = [
    _synthetic("cost__stream_failed_with_usage", 200, "text/event-stream", _sse(
        {"type": "response.created", "sequence_number": 0,
         "response": {**_response("gpt-4o-2024-08-06", "in_progress"), "usage": None}},
        {"type": "response.failed", "sequence_number": 1,
         "response": _response("gpt-4o-2024-08-06", "failed",
                               error={"code": "server_error", "message": "failed"})})),
    _synthetic("cost__failed_with_usage", 200, "application/json", json.dumps(
        _response("gpt-4.1-2025-04-14", "failed",
                  error={"code": "server_error", "message": "failed"}))),
    _synthetic("cost__local_llama", 200, "application/json",
               json.dumps(_response("local-llama-3"))),
    _synthetic("cost__unknown_model", 200, "application/json",
               json.dumps(_response("acme-finetune-7"))),
]
LOCAL_PRICES = {"models": [{"match": "local-llama-*", "input": 2.0, "cached_input": 0.5,
                            "output": 6.0}]}
# The local-llama call by hand: 750k input x $2/M + 250k cached x $0.5/M; 100k output x $6/M.
LOCAL_PROMPT, LOCAL_COMPLETION = 1.5 + 0.125, 0.6


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream(recordings={r.name: r for r in [*load_recordings(), *SYNTHETIC, *EXTRA]},
                      seed=20)
    with raw.running():
        yield raw


def _prices(tmp_path: Path, document: Any = LOCAL_PRICES) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(document))
    return str(path)


def _calls(base: str, sink: SpanSink, recs: list[Recording]) -> list[dict[str, Any]]:
    """Send each recording in turn; the attributes of each one's span, in order."""
    attrs = []
    with httpx.Client() as client:
        for rec in recs:
            assert send(base, rec, client).status_code == rec.status
            attrs.append(dict(sink.wait(len(attrs) + 1, calls=True)[-1].attributes or {}))
    return attrs


def _cost(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k.startswith("llm.cost.")}


def _provider(rec: Recording) -> str | None:
    return infer_provider(urlsplit(rec.source_url).hostname) if rec.source_url else None


def _started(span: ReadableSpan) -> datetime:
    assert span.start_time is not None
    return datetime.fromtimestamp(span.start_time / 1e9, UTC)


def _dig(mapping: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        mapping = (mapping or {}).get(key)  # type: ignore[assignment]
    return mapping


def test_every_recorded_call_with_usage_costs_what_genai_prices_says(
        upstream: RawUpstream) -> None:
    recs = load_recordings()
    need(recs[0] if recs else None)
    covered: collections.Counter[str] = collections.Counter()
    by_provider = collections.defaultdict(list)
    for rec in recs:
        by_provider[_provider(rec)].append(rec)
    for provider, group in by_provider.items():
        with metered_proxy(upstream.url + "/v1",
                           telemetry=TelemetryOptions(provider=provider)) as (base, sink, _):
            attrs = _calls(base, sink, group)
            spans = sink.calls()
            samples = scrape(base)
        unpriced = collections.Counter[str]()
        for rec, span, got in zip(group, spans, attrs, strict=True):
            final = final_response(rec) or {}
            reported = final.get("usage")
            # Phoenix prices the token counts itself: they stay exactly as reported.
            for key, path in TOKEN_KEYS.items():
                assert got.get(key) == (_dig(reported, path) if reported else None), key
            if not reported or provider is None:
                assert not _cost(got), rec.name
                if reported:
                    unpriced[final["model"]] += 1
                continue
            # genai-prices reading the recorded usage itself, and pricing it.
            extracted = genai_prices.extract_usage(final, provider_id="openai",
                                                   api_flavor="responses")
            tier = final.get("service_tier")
            calc = genai_prices.calc_price(
                extracted.usage, final["model"], provider_id=provider,
                genai_request_timestamp=_started(span),
                price_context={"service_tier": tier} if tier else None)
            assert got["llm.cost.total"] == pytest.approx(float(calc.total_price), rel=1e-9)
            assert got["llm.cost.prompt"] == pytest.approx(float(calc.input_price), rel=1e-9)
            assert got["llm.cost.completion"] == pytest.approx(float(calc.output_price),
                                                               rel=1e-9)
            assert got["llm.cost.prompt"] + got["llm.cost.completion"] == \
                pytest.approx(got["llm.cost.total"], rel=1e-12)
            # The details: their tokens at their own rate in the table, else their parent's.
            for name, path, own, parent in DETAILS:
                count = _dig(reported, path)
                if count is not None:
                    rate = getattr(calc.model_price, own)
                    rate = getattr(calc.model_price, parent) if rate is None else rate
                    assert got[f"llm.cost.{name}"] == \
                        pytest.approx(count * float(rate) / 1e6, rel=1e-9)
                    covered[name] += count > 0
            covered["stream" if rec.is_sse else "body"] += 1
            covered[final["status"]] += 1
        assert {m: value(samples, "otel_responses_cost_unpriced_total", model=m)
                for m in unpriced} == unpriced
    # The recordings cover what the issue names: streams and bodies, incomplete responses,
    # cached and reasoning tokens.
    assert min(covered[k] for k in ("stream", "body", "incomplete", *(d[0] for d in DETAILS))) > 0


def test_failed_responses_that_report_usage_are_priced(upstream: RawUpstream) -> None:
    with metered_proxy(upstream.url + "/v1",
                       telemetry=TelemetryOptions(provider="openai")) as (base, sink, _):
        stream, body = _calls(base, sink, EXTRA[:2])
    # gpt-4o: $2.5/M input, $1.25/M cached, $10/M output; gpt-4.1: $2, $0.5, $8.
    for attrs, input_rate, cached_rate, output_rate in ((stream, 2.5, 1.25, 10),
                                                         (body, 2, 0.5, 8)):
        assert attrs["openai.response.status"] == "failed"
        # 750k input + 250k cached; 100k output, reasoning included.
        assert attrs["llm.cost.prompt"] == pytest.approx(
            (750_000 * input_rate + 250_000 * cached_rate) / 1e6)
        assert attrs["llm.cost.completion"] == pytest.approx(100_000 * output_rate / 1e6)


def test_an_unknown_model_changes_nothing_but_the_unpriced_counter(
        upstream: RawUpstream) -> None:
    unknown = EXTRA[3]
    spans = []
    for cost in (True, False):
        with metered_proxy(upstream.url + "/v1", cost=cost,
                           telemetry=TelemetryOptions(provider="openai")) as (base, sink, _):
            spans.append(_calls(base, sink, [unknown])[0])
            counted = int(cost)  # the call is counted as unpriced only when pricing is on
            samples = wait_for(base, lambda s, n=counted: value(
                s, "gen_ai_client_operation_duration_seconds_count") == 1 and value(
                s, "otel_responses_cost_unpriced_total") == n)
        assert value(samples, "otel_responses_cost_unpriced_total",
                     model="acme-finetune-7") == counted
        assert value(samples, "otel_responses_cost_usd_total") == 0
    priced, unpriced = spans
    assert not _cost(priced)
    assert priced == unpriced


def test_the_cost_metric_adds_up_to_the_spans(upstream: RawUpstream, tmp_path: Path) -> None:
    recs = [*load_recordings(), *SYNTHETIC, *EXTRA]
    need(recs[0] if len(recs) > len(SYNTHETIC) + len(EXTRA) else None)
    with metered_proxy(upstream.url + "/v1", prices=_prices(tmp_path),
                       telemetry=TelemetryOptions(provider="openai")) as (base, sink, _):
        attrs = _calls(base, sink, recs)
        totals: collections.Counter[str] = collections.Counter()
        unpriced: collections.Counter[str] = collections.Counter()
        for got in attrs:
            model = got.get("llm.model_name")
            if "llm.cost.total" in got:
                totals[model] += got["llm.cost.total"]
            elif "llm.token_count.prompt" in got:
                unpriced[model] += 1
        metric = "otel_responses_cost_usd_total"
        # The counters move just after each span ends: wait until the last call is in.
        samples = wait_for(base, lambda s: value(s, metric) == pytest.approx(
            sum(totals.values())) and value(s, "otel_responses_cost_unpriced_total") ==
            sum(unpriced.values()))
    assert len(totals) >= 5 and unpriced  # priced models, and some that are not
    for model, total in totals.items():
        assert value(samples, metric, model=model, provider="openai") == pytest.approx(total)
    assert value(samples, metric) == pytest.approx(sum(totals.values()))
    for model, count in unpriced.items():
        assert value(samples, "otel_responses_cost_unpriced_total", model=model) == count
    local = next(a for a in attrs if a.get("llm.model_name") == "local-llama-3")
    assert (local["llm.cost.prompt"], local["llm.cost.completion"]) == \
        pytest.approx((LOCAL_PROMPT, LOCAL_COMPLETION))
    # The cached local tokens saved 250k x ($2 - $0.5)/M, at the entry's rates.
    assert value(samples, "otel_responses_cost_cache_savings_usd_total",
                 model="local-llama-3") == pytest.approx(0.375)
    # Each cost sample carries an exemplar naming one of the calls' spans.
    exported = span_ids(sink)
    exemplars = [s.exemplar for s in samples if s.name == metric and s.value > 0]
    assert exemplars and all(e is not None and (e.labels["trace_id"], e.labels["span_id"])
                             in exported for e in exemplars)


def test_no_cost_turns_pricing_off(upstream: RawUpstream) -> None:
    recs = load_recordings()
    need(recs[0] if recs else None)
    with metered_proxy(upstream.url + "/v1", cost=False,
                       telemetry=TelemetryOptions(provider="openai")) as (base, sink, _):
        attrs = _calls(base, sink, recs)
        samples = wait_for_calls(base, len(recs))
    assert not any(_cost(a) for a in attrs)
    assert not [s for s in samples if s.name.startswith("otel_responses_cost_")]


def _write_mount(mount: Path, version: str, text: str) -> None:
    """Update a ConfigMap-style mount: a new timestamped directory, then ``..data`` swapped to
    it in one rename, as kubelet does (the file itself is a symlink through ``..data``)."""
    target = mount / f"..{version}"
    target.mkdir()
    (target / "prices.yaml").write_text(text)
    link = mount / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, mount / "..data")
    if not (mount / "prices.yaml").is_symlink():
        (mount / "prices.yaml").symlink_to("..data/prices.yaml")


def _local_total(pricer: Pricer) -> float:
    cost = pricer.price(None, _response("local-llama-3"), 0)
    assert isinstance(cost, CostBreakdown), cost
    return cost.total


def test_the_price_file_is_reread_when_its_mount_swaps(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_mount(tmp_path, "v1", "models:\n  - {match: local-*, input: 1, output: 1}\n")
    pricer = Pricer(None)
    watched = PricesFile(str(tmp_path / "prices.yaml"), pricer)
    assert _local_total(pricer) == pytest.approx(1.1)
    assert not watched.check()  # unchanged
    _write_mount(tmp_path, "v2", "models:\n  - {match: local-*, input: 2, output: 2}\n")
    assert watched.check()
    assert _local_total(pricer) == pytest.approx(2.2)
    # Broken, then gone: the last good prices stay in use, and the operator is told.
    _write_mount(tmp_path, "v3", "models:\n  - {match: local-*, input: lots, output: 2}\n")
    with caplog.at_level(logging.WARNING, "otel_responses.cost"):
        assert not watched.check()
        (tmp_path / "..data").unlink()
        assert not watched.check()
    assert _local_total(pricer) == pytest.approx(2.2)
    assert "models[0] (match 'local-*'): input must be a number" in caplog.text
    assert "is gone" in caplog.text
    _write_mount(tmp_path, "v4", '{"models": [{"match": "local-*", "input": 3, "output": 3}]}')
    assert watched.check()
    assert _local_total(pricer) == pytest.approx(3.3)


def test_the_running_proxy_picks_up_a_changed_price_file(
        upstream: RawUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watched_file, "RELOAD_INTERVAL", 0.02)
    path = _prices(tmp_path)
    with metered_proxy(upstream.url + "/v1", prices=path) as (base, sink, _), \
            httpx.Client() as client:
        local = EXTRA[2]
        assert _calls(base, sink, [local])[0]["llm.cost.prompt"] == \
            pytest.approx(LOCAL_PROMPT)
        _prices(tmp_path, {"models": [{**LOCAL_PRICES["models"][0], "input": 4.0}]})
        # Bounded: each call is a span; the reload lands within a few intervals.
        for _ in range(200):
            sink.clear()
            assert send(base, local, client).status_code == 200
            if sink.one().attributes["llm.cost.prompt"] != pytest.approx(LOCAL_PROMPT):
                break
        assert sink.one().attributes["llm.cost.prompt"] == pytest.approx(3.0 + 0.125)


def test_an_unusable_price_file_stops_the_start_naming_the_entry(tmp_path: Path) -> None:
    bad = _prices(tmp_path, {"models": [LOCAL_PRICES["models"][0],
                                        {"match": "gpt-*", "input": 1}]})
    for args, env in ((["--prices", bad], {}), ([], {"OTEL_RESPONSES_PRICES_FILE": bad})):
        result = _cli("serve", "--upstream", "http://127.0.0.1:9/v1", *args, env=env)
        assert result.returncode != 0
        assert f"price file {bad}: models[1] (match 'gpt-*'): output must be a number" \
            in result.stderr
    missing = str(tmp_path / "absent.yaml")
    result = _cli("serve", "--upstream", "http://127.0.0.1:9/v1", "--prices", missing)
    assert result.returncode != 0 and f"price file {missing}: No such file" in result.stderr
    with pytest.raises(PricesError):
        PricesFile(str(tmp_path / "absent.yaml"), Pricer(None))


def test_cost_flags_and_their_variables() -> None:
    def settings(argv: list[str], env: dict[str, str]) -> tuple[bool, str | None]:
        args = vars(build_parser(env).parse_args(["serve", *argv]))
        args.pop("command")
        built = settings_from(_option_values(args, SERVE_OPTIONS, env)[0])
        return built.cost, built.prices

    assert settings([], {}) == (True, None)
    assert settings([], {"OTEL_RESPONSES_COST": "off",
                         "OTEL_RESPONSES_PRICES_FILE": "/etc/p.yaml"}) == (False, "/etc/p.yaml")
    assert settings(["--no-cost", "--prices", "a.json"], {}) == (False, "a.json")
    assert settings(["--cost"], {"OTEL_RESPONSES_COST": "off"}) == (True, None)


def test_a_sink_gets_each_calls_cost_as_its_span_has_it() -> None:
    """What a budget guard's sink sees: ``CallRecord.cost_usd``, set before the sinks run, for
    streams and bodies, on the demo upstream's own traffic."""
    spans, charged = SpanSink(), list[float | None]()
    pricer = Pricer(None, parse_prices({"models": [{"match": "demo", "input": 3, "output": 15}]}))
    app = ResponsesTelemetryMiddleware(create_demo_app(), tracer_provider=spans.provider,
                                       sinks=(lambda record: charged.append(record.cost_usd),),
                                       pricer=pricer)
    with serve_asgi(app) as base, openai.OpenAI(base_url=base + "/v1", api_key="unused") as client:
        body = client.responses.create(model="demo", input="Hello there")
        with client.responses.stream(model="demo", input="Say more, at length") as stream:
            streamed = stream.get_final_response()
        finished = spans.wait(2)
        for _ in range(500):  # the sinks run just after each span ends
            if len(charged) == 2:
                break
            time.sleep(0.01)
    # $3 per million input tokens, $15 per million output tokens.
    expected = [(r.usage.input_tokens * 3 + r.usage.output_tokens * 15) / 1e6
                for r in (body, streamed) if r.usage is not None]
    assert len(expected) == 2 and expected[0] != expected[1]
    assert charged == pytest.approx(expected)
    assert [s.attributes["llm.cost.total"] for s in finished] == pytest.approx(expected)


def test_the_demo_proxy_prices_its_model_from_a_price_file(tmp_path: Path) -> None:
    """A newcomer's run: ``otel-responses --prices FILE`` with the demo upstream, as a process."""
    path = _prices(tmp_path, {"models": [{"match": "de*", "input": 10, "output": 20}]})
    with run_cli("--prices", path) as (base, _), \
            openai.OpenAI(base_url=base + "/v1", api_key="unused") as client:
        answer = client.responses.create(model="demo", input="Hello there")
        assert answer.usage is not None
        expected = (answer.usage.input_tokens * 10 + answer.usage.output_tokens * 20) / 1e6
        samples = wait_for(base, lambda s: value(s, "otel_responses_cost_usd_total") > 0)
    assert value(samples, "otel_responses_cost_usd_total", model="demo") == \
        pytest.approx(expected)
