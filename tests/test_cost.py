"""The cost core: operator prices worked out by hand, and the table's prices equal to what
genai-prices itself computes, for every model it lists, through its public API."""

from __future__ import annotations

import logging
import random
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices.data import providers
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.protocol.attributes import Attributes
from otel_responses.protocol.response_attributes import Usage
from otel_responses.telemetry.cost import (
    CostBreakdown,
    Pricer,
    PricesError,
    Unpriced,
    cost_attributes,
    parse_prices,
)
from otel_responses.telemetry.options import infer_provider

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LOCAL = {"models": [
    {"match": "local-llama-*", "input": 2.0, "cached_input": 0.5, "output": 6.0},
    {"match": "local-*", "input": 1, "output": 3},
    {"match": "gpt-4o*", "input": 1.0, "output": 1.0},
]}


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def usage(inputs: int, outputs: int, cached: int | None = None, reasoning: int | None = None,
          written: int | None = None) -> Usage:
    return Usage(inputs, outputs, inputs + outputs, cached, written, reasoning)


def breakdown(result: object) -> CostBreakdown:
    assert isinstance(result, CostBreakdown), result
    return result


# -- the operator's prices ----------------------------------------------------------------

def test_price_file_figures_worked_out_by_hand() -> None:
    pricer = Pricer("openai", parse_prices(LOCAL))
    # 1M input of which 250k cached, 100k output of which 40k reasoning:
    # input 750k x $2/M = 1.5, cached 250k x $0.5/M = 0.125, output 100k x $6/M = 0.6.
    cost = breakdown(pricer.cost(usage(1_000_000, 100_000, 250_000, 40_000), "local-llama-3",
                                 None, ns(NOW)))
    assert cost.prompt == pytest.approx(1.625, rel=1e-12)
    assert cost.completion == pytest.approx(0.6, rel=1e-12)
    assert cost.total == pytest.approx(2.225, rel=1e-12)
    assert cost.cache_read == pytest.approx(0.125, rel=1e-12)
    assert cost.reasoning == pytest.approx(0.24, rel=1e-12)  # 40k at the output rate
    assert cost.cache_savings == pytest.approx(0.375, rel=1e-12)  # 250k x ($2 - $0.5)/M
    assert cost.prompt + cost.completion == cost.total

    # The second entry has no cached price: cached tokens are input tokens (3000 x $1/M).
    cost = breakdown(pricer.cost(usage(3000, 500, 1000), "local-phi", None, ns(NOW)))
    assert (cost.prompt, cost.completion) == pytest.approx((0.003, 0.0015), rel=1e-12)
    assert cost.cache_read == pytest.approx(0.001, rel=1e-12)
    assert cost.cache_savings == 0 and cost.reasoning is None


def test_first_matching_entry_wins_and_entries_win_over_the_table() -> None:
    pricer = Pricer("openai", parse_prices(LOCAL))
    # local-llama-3 also matches local-*, which comes later.
    assert breakdown(pricer.cost(usage(1_000_000, 0), "local-llama-3", None, ns(NOW))).total \
        == pytest.approx(2.0)
    # gpt-4o is in the table at $2.5/M input; the entry says $1/M.
    assert breakdown(pricer.cost(usage(1_000_000, 0), "gpt-4o", None, ns(NOW))).total \
        == pytest.approx(1.0)
    # Swapping the entries (a reloaded file) drops the rates resolved with the old ones.
    pricer.use(())
    assert breakdown(pricer.cost(usage(1_000_000, 0), "gpt-4o", None, ns(NOW))).total \
        == pytest.approx(2.5)
    assert pricer.cost(usage(10, 10), "local-llama-3", None, ns(NOW)) == Unpriced("local-llama-3")


def test_no_price_is_never_a_guess(caplog: pytest.LogCaptureFixture) -> None:
    priced = Pricer("openai")
    assert priced.cost(usage(10, 10), "my-finetune", None, ns(NOW)) == Unpriced("my-finetune")
    # Without a provider the table is not consulted: a self-hosted gpt-oss is not OpenAI's.
    assert Pricer(None).cost(usage(10, 10), "gpt-4o", None, ns(NOW)) == Unpriced("gpt-4o")
    assert Pricer("openai", table=False).cost(usage(10, 10), "gpt-4o", None, ns(NOW)) == \
        Unpriced("gpt-4o")
    # A provider the table does not know prices nothing from it (and says so at startup).
    with caplog.at_level(logging.WARNING, "otel_responses.cost"):
        vllm = Pricer("vllm")
    assert not vllm.table and "'vllm' is not in the genai-prices table" in caplog.text
    assert vllm.cost(usage(10, 10), "gpt-4o", None, ns(NOW)) == Unpriced("gpt-4o")
    # Every provider the upstream host can name is in the table, by its id or a name it
    # matches (xai for x-ai, mistralai for mistral).
    hosts = ("api.openai.com", "x.openai.azure.com", "api.anthropic.com", "bedrock.amazonaws.com",
             "generativelanguage.googleapis.com", "api.x.ai", "api.deepseek.com", "api.groq.com",
             "api.fireworks.ai", "api.moonshot.ai", "api.cerebras.ai", "api.perplexity.ai",
             "api.together.xyz", "api.mistral.ai", "api.cohere.com")
    assert all(Pricer(infer_provider(host)).table for host in hosts)
    # Subsets larger than their total are not a usage anyone billed; a usage without its input
    # or output count cannot be priced; neither is a missing price (not counted as unpriced).
    assert priced.cost(usage(10, 10, cached=11), "gpt-4o", None, ns(NOW)) is None
    assert priced.cost(Usage(None, 5, None, None, None, None), "gpt-4o", None, ns(NOW)) is None
    assert priced.price({"model": "gpt-4o"}, {"model": "gpt-4o", "status": "failed"},
                        ns(NOW)) is None


def test_the_response_model_and_service_tier_are_priced_over_the_request() -> None:
    pricer = Pricer("openai")
    response = {"model": "gpt-4o-2024-08-06", "service_tier": "priority",
                "usage": {"input_tokens": 1_000_000, "output_tokens": 0}}
    cost = breakdown(pricer.price({"model": "gpt-4o", "service_tier": "auto"}, response,
                                  ns(NOW)))
    assert cost.model == "gpt-4o-2024-08-06"
    assert cost.total == pytest.approx(4.25)  # gpt-4o's priority input price per million
    request_only = pricer.price({"model": "gpt-4o", "service_tier": "flex"},
                                {"usage": response["usage"]}, ns(NOW))
    assert breakdown(request_only).model == "gpt-4o"


@pytest.mark.parametrize(("document", "problem"), [
    ([], 'expected {"models"'),
    ({"models": {}}, 'expected {"models"'),
    ({"models": [], "extra": 1}, "unknown top-level key(s): extra"),
    ({"models": ["x"]}, "models[0]: expected an object"),
    ({"models": [{"input": 1, "output": 1}]}, "models[0]: match must be"),
    ({"models": [LOCAL["models"][0], {"match": "b-*", "input": -1, "output": 1}]},
     "models[1] (match 'b-*'): input must be a number >= 0"),
    ({"models": [{"match": "c", "input": "2", "output": 1}]},
     "models[0] (match 'c'): input must be a number"),
    ({"models": [{"match": "c", "input": 1}]}, "models[0] (match 'c'): output must be"),
    ({"models": [{"match": "c", "input": 1, "output": float("nan")}]}, "output must be"),
    ({"models": [{"match": "c", "input": 1, "output": True}]}, "output must be"),
    ({"models": [{"match": "c", "input": 1, "output": 1, "cached_input": -0.5}]},
     "cached_input must be"),
    ({"models": [{"match": "c", "input": 1, "output": 1, "cache": 1}]},
     "models[0] (match 'c'): unknown key(s) cache"),
])
def test_an_unusable_price_document_names_the_entry(document: Any, problem: str) -> None:
    with pytest.raises(PricesError) as caught:
        parse_prices(document)
    assert problem in str(caught.value)


def test_cost_attributes_are_the_openinference_names() -> None:
    cost = CostBreakdown("m", 0.5, 0.25, 0.75, cache_read=0.125, reasoning=0.0625)
    attrs: Attributes = cost_attributes(cost)
    assert attrs == {"llm.cost.prompt": 0.5, "llm.cost.completion": 0.25, "llm.cost.total": 0.75,
                     "llm.cost.prompt_details.cache_read": 0.125,
                     "llm.cost.completion_details.reasoning": 0.0625}
    assert "llm.cost.prompt_details.cache_read" not in cost_attributes(
        CostBreakdown("m", 0.5, 0.25, 0.75))


# -- the table: equal to genai-prices' own figures ------------------------------------------

def library_total(counts: Usage, model: str, provider: str, tier: str | None,
                  at: datetime) -> Decimal | None:
    """What genai-prices computes itself, or None where it cannot price the call."""
    values = {"input_tokens": counts.input, "output_tokens": counts.output,
              "cache_read_tokens": counts.cache_read, "cache_write_tokens": counts.cache_write,
              "output_reasoning_tokens": counts.reasoning}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = genai_prices.calc_price(
                genai_prices.Usage(**{k: v for k, v in values.items() if v is not None}),
                model, provider_id=provider, genai_request_timestamp=at,
                price_context={"service_tier": tier} if tier else None)
    except (LookupError, ValueError):
        return None
    return calc.total_price


def assert_same_as_library(pricer: Pricer, counts: Usage, model: str, tier: str | None,
                           at: datetime) -> bool:
    """The pricer's total is the library's; returns whether the call was priced."""
    assert pricer.provider is not None
    expected = library_total(counts, model, pricer.provider, tier, at)
    got = pricer.cost(counts, model, tier, ns(at))
    if got is None:  # counts no one bills (subsets over their total): the library refuses too
        assert expected is None, (model, counts)
        return False
    if isinstance(got, Unpriced):
        # Unpriced where the library cannot price it, or prices it at nothing (a free or
        # price-less entry) or with units a Responses usage never reports (hours, pages).
        assert expected is None or not _token_priced(model, pricer.provider, at), (model, expected)
        return False
    assert expected is not None, model
    assert got.total == pytest.approx(float(expected), rel=1e-9, abs=1e-15), (model, counts)
    assert got.prompt + got.completion + got.request_fee == pytest.approx(got.total, rel=1e-12)
    return True


def _token_priced(model: str, provider: str, at: datetime) -> bool:
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=0, output_tokens=0), model,
                                    provider_id=provider, genai_request_timestamp=at).model_price
    keys = {k for k, v in vars(price).items() if v is not None}
    return {"input_mtok", "output_mtok"} <= keys and not keys & {
        "audio_hours", "input_audio_hours", "input_mchars", "input_document_kpages",
        "input_annotated_document_kpages"}


TABLE = [(p.id, m.id) for p in providers for m in p.models]


def test_every_model_in_the_table_costs_what_the_library_says() -> None:
    rng = random.Random(20)
    pricers = {p.id: Pricer(p.id) for p in providers}
    priced = 0
    for provider, model in TABLE:
        inputs = rng.choice([0, 7, 1200, 150_000, 272_001, 1_500_000])
        outputs = rng.choice([0, 9, 4000])
        counts = usage(inputs, outputs, cached=rng.choice([None, 0, inputs // 3]),
                       reasoning=rng.choice([None, 0, outputs // 2]),
                       written=rng.choice([None, 0, inputs // 5]))
        tier = rng.choice([None, "default", "flex", "priority"])
        priced += assert_same_as_library(pricers[provider], counts, model, tier, NOW)
    # Most of the table prices tokens; the rest is free, price-less or billed by other units.
    assert priced > 0.75 * len(TABLE), (priced, len(TABLE))


OPENAI_MODELS = sorted({m.id for p in providers if p.id == "openai" for m in p.models})
OPENAI_PRICER = Pricer("openai")


@given(model=st.sampled_from(OPENAI_MODELS), inputs=st.integers(0, 3_000_000),
       outputs=st.integers(0, 200_000), cached=st.floats(0, 1.1), reasoning=st.floats(0, 1.1),
       tier=st.sampled_from([None, "default", "flex", "priority", "scale"]))
def test_openai_costs_what_the_library_says(model: str, inputs: int, outputs: int, cached: float,
                                            reasoning: float, tier: str | None) -> None:
    counts = usage(inputs, outputs, int(inputs * cached), int(outputs * reasoning))
    assert_same_as_library(OPENAI_PRICER, counts, model, tier, NOW)


def test_long_context_tier_prices_the_whole_call_at_the_higher_rate() -> None:
    pricer = Pricer("openai")
    below = breakdown(pricer.cost(usage(272_000, 0), "gpt-5.4", None, ns(NOW)))
    above = breakdown(pricer.cost(usage(272_001, 0), "gpt-5.4", None, ns(NOW)))
    assert below.total == pytest.approx(272_000 * 2.5e-6)
    assert above.total == pytest.approx(272_001 * 5e-6)  # every token, not just those above
    for inputs in (272_000, 272_001):
        assert_same_as_library(pricer, usage(inputs, 1000, inputs // 2), "gpt-5.4", None, NOW)


def test_reasoning_with_its_own_rate_is_priced_at_it() -> None:
    pricer = Pricer("perplexity")
    cost = breakdown(pricer.cost(usage(1000, 1000, reasoning=400), "sonar-deep-research", None,
                                 ns(NOW)))
    # $8/M output for 600 tokens, $3/M reasoning for 400.
    assert cost.completion == pytest.approx(600 * 8e-6 + 400 * 3e-6)
    assert cost.reasoning == pytest.approx(400 * 3e-6)
    assert_same_as_library(pricer, usage(1000, 1000, reasoning=400), "sonar-deep-research", None,
                           NOW)


def test_peak_and_off_peak_prices_switch_at_the_hour_even_when_cached() -> None:
    pricer = Pricer("deepseek")
    counts = usage(1_000_000, 1_000_000)
    off_peak = datetime(2026, 12, 5, 0, 29, tzinfo=UTC)
    peak = datetime(2026, 12, 5, 0, 31, tzinfo=UTC)
    early = breakdown(pricer.cost(counts, "deepseek-chat", None, ns(off_peak)))
    late = breakdown(pricer.cost(counts, "deepseek-chat", None, ns(peak)))
    assert early.total != late.total
    for moment in (off_peak, peak, datetime(2026, 12, 5, 16, 31, tzinfo=UTC)):
        assert_same_as_library(pricer, counts, "deepseek-chat", None, moment)
