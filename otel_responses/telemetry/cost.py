"""The USD cost of a call: its reported usage priced by the operator's price entries, else by the
genai-prices table for the model and provider, with the resolved per-token rates cached."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Any

from openinference.semconv.trace import SpanAttributes

from otel_responses.protocol.attributes import Attributes
from otel_responses.protocol.messages import str_or_none
from otel_responses.protocol.response_attributes import Usage, usage

log = logging.getLogger("otel_responses.cost")

PER_MILLION = 1_000_000
# Distinct (model, service tier) rates kept; model names come from clients, so past this a
# lookup is simply not cached (it still prices right, only slower).
MAX_CACHED_MODELS = 1024
_FOREVER = 2**63  # ns no clock reaches: "always" is (-_FOREVER, _FOREVER)
# genai-prices keys for usage a Responses `usage` object never reports (tool calls, modality
# splits): the library counts them as 0 for such a usage, so they add nothing here either (a
# test compares every model of the table with the library). Keys outside this set and
# _TOKEN_KEYS (audio hours, pages, characters) leave a model unpriced.
_UNREPORTED_UNITS = frozenset({
    "web_searches_kcount", "storage_searches_kcount", "input_text_messages_kcount",
    "cache_write_1h_mtok", "input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok",
    "input_image_mtok", "output_image_mtok", "cache_image_read_mtok", "input_video_mtok",
    "output_video_mtok", "output_citation_mtok"})
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok",
               "output_reasoning_mtok")


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 3x as long to build, per call
class CostBreakdown:
    """A call's cost in USD. ``prompt`` + ``completion`` is ``total`` (plus ``request_fee``,
    the per-call price a few models have). The details are subsets, priced at their own rate
    (or at the input / output rate when the table has none), set when the usage reports them.
    ``cache_savings`` is what the cached input tokens would have cost more at the input rate."""

    model: str
    prompt: float
    completion: float
    total: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    request_fee: float = 0.0
    cache_savings: float = 0.0


@dataclass(frozen=True, slots=True)
class Unpriced:
    """A call that reported usage for a model neither the entries nor the table price."""

    model: str


Pricing = CostBreakdown | Unpriced | None  # None: nothing to price (no usage, or no model)


class PricesError(ValueError):
    """A price file that cannot be used; the message names the entry."""


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One operator price: a model-name glob and USD per million tokens."""

    match: str
    input: float
    output: float
    cached_input: float | None = None


def parse_prices(document: Any) -> tuple[PriceEntry, ...]:
    """``{"models": [{"match", "input", "cached_input"?, "output"}, ...]}`` → entries, in order.

    Raises `PricesError` naming the first bad entry (its index and ``match``).
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), list):
        raise PricesError('expected {"models": [{"match": ..., "input": ..., "output": ...}]}')
    if unknown := set(document) - {"models"}:
        raise PricesError(f"unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    return tuple(_entry(i, raw) for i, raw in enumerate(document["models"]))


def _entry(index: int, raw: Any) -> PriceEntry:
    where = f"models[{index}]"
    if not isinstance(raw, Mapping):
        raise PricesError(f"{where}: expected an object with match, input and output")
    match = raw.get("match")
    if isinstance(match, str) and match:
        where += f" (match {match!r})"
    else:
        raise PricesError(f"{where}: match must be a non-empty model-name glob")
    if unknown := set(raw) - {"match", "input", "cached_input", "output"}:
        raise PricesError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    prices: dict[str, float | None] = {}
    for key in ("input", "output", "cached_input"):
        value = raw.get(key)
        if value is None and key == "cached_input":
            prices[key] = None
            continue
        if type(value) not in (int, float) or not 0 <= value < math.inf:
            raise PricesError(f"{where}: {key} must be a number >= 0 (USD per million tokens)")
        prices[key] = float(value)
    return PriceEntry(match, prices["input"] or 0.0, prices["output"] or 0.0,
                      prices["cached_input"])


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per token for each priced usage kind; None where that kind has no price of its own
    (its tokens are then priced with their parent: cached with input, reasoning with output)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None


@dataclass(frozen=True, slots=True)
class _ModelRates:
    """A model's rates: ``levels`` are (input tokens above which they apply, rates), highest
    threshold first, the last one from -1 (long-context tiers price a whole call by its input
    size); ``request_fee`` is USD per call."""

    levels: tuple[tuple[int, _Rates], ...]
    request_fee: float = 0.0

    def cost(self, model: str, counts: Usage) -> CostBreakdown | None:
        inputs, outputs = counts.input, counts.output
        if inputs is None or outputs is None:
            return None
        rates = next(r for start, r in self.levels if inputs > start)
        cached, written, reasoning = (counts.cache_read or 0, counts.cache_write or 0,
                                      counts.reasoning or 0)
        # Each token is priced once, at its most specific rate: the subsets the table prices
        # come out of their parent's count, the others stay in it (as genai-prices does).
        plain_input = inputs - (cached if rates.cache_read is not None else 0) \
            - (written if rates.cache_write is not None else 0)
        plain_output = outputs - (reasoning if rates.reasoning is not None else 0)
        if plain_input < 0 or plain_output < 0:
            return None  # subsets larger than their total: not a usage anyone billed
        cache_read_rate = rates.input if rates.cache_read is None else rates.cache_read
        cache_write_rate = rates.input if rates.cache_write is None else rates.cache_write
        reasoning_rate = rates.output if rates.reasoning is None else rates.reasoning
        prompt = plain_input * rates.input
        if rates.cache_read is not None:
            prompt += cached * rates.cache_read
        if rates.cache_write is not None:
            prompt += written * rates.cache_write
        completion = plain_output * rates.output
        if rates.reasoning is not None:
            completion += reasoning * rates.reasoning
        return CostBreakdown(
            model, prompt, completion, prompt + completion + self.request_fee,
            cache_read=None if counts.cache_read is None else cached * cache_read_rate,
            cache_write=None if counts.cache_write is None else written * cache_write_rate,
            reasoning=None if counts.reasoning is None else reasoning * reasoning_rate,
            request_fee=self.request_fee,
            cache_savings=cached * (rates.input - cache_read_rate))


_Cache = dict[tuple[str, str | None], tuple[_ModelRates | None, int, int]]


def _entry_rates(entry: PriceEntry) -> _ModelRates:
    cached = None if entry.cached_input is None else entry.cached_input / PER_MILLION
    return _ModelRates(((-1, _Rates(entry.input / PER_MILLION, entry.output / PER_MILLION,
                                    cache_read=cached)),))


class Pricer:
    """Prices calls for one upstream: ``entries`` first (first glob that matches the model),
    then, when ``table`` is on and a ``provider`` is known, genai-prices for that provider.

    Without a provider the table is not consulted: a self-hosted model named like a hosted
    one must not get the hosted one's price. Rates are resolved once per (model, service
    tier) and kept until the table's prices for the model change (a dated price, peak and
    off-peak hours) or `use` swaps the entries; a lookup is then a dict get and a few
    multiplications.
    """

    def __init__(self, provider: str | None = None, entries: Sequence[PriceEntry] = (),
                 *, table: bool = True) -> None:
        self.provider = provider
        # The entries and the rates resolved with them, swapped together by `use` (a reload
        # runs in a worker thread while calls are priced).
        self._state: tuple[tuple[PriceEntry, ...], _Cache] = (tuple(entries), {})
        self._table: Any = None  # genai-prices' Provider for ``provider``
        if table and provider is not None:
            self._table = _table_provider(provider)
            if self._table is None:
                log.warning("provider %r is not in the genai-prices table: only the price "
                            "file prices calls", provider)

    @property
    def table(self) -> bool:
        """Whether the genai-prices table prices what the entries do not."""
        return self._table is not None

    @property
    def entries(self) -> tuple[PriceEntry, ...]:
        return self._state[0]

    def use(self, entries: Sequence[PriceEntry]) -> None:
        """Swap in new operator entries (a reloaded price file)."""
        self._state = (tuple(entries), {})

    def price(self, request: Mapping[str, Any] | None, response: Mapping[str, Any] | None,
              at_ns: int) -> Pricing:
        """The cost of a call from its request and final response (or None if it reported no
        usage); ``at_ns`` is when it was made (prices can depend on the date and hour)."""
        if not response or not isinstance(response.get("usage"), Mapping):
            return None
        model = str_or_none(response.get("model")) or str_or_none((request or {}).get("model"))
        if model is None:
            return None
        tier = (str_or_none(response.get("service_tier"))
                or str_or_none((request or {}).get("service_tier")))
        return self.cost(usage(response), model, tier, at_ns)

    def cost(self, counts: Usage, model: str, service_tier: str | None, at_ns: int) -> Pricing:
        """``counts`` of ``model`` priced; `Unpriced` if nothing prices the model, None if the
        counts cannot be priced (no input or output count, subsets above their total)."""
        entries, cache = self._state
        key = (model, service_tier)
        cached = cache.get(key)
        if cached is not None and cached[1] <= at_ns < cached[2]:
            rates = cached[0]
        else:
            rates, since, until = self._resolve(entries, model, service_tier, at_ns)
            if len(cache) < MAX_CACHED_MODELS or key in cache:
                cache[key] = (rates, since, until)
        return Unpriced(model) if rates is None else rates.cost(model, counts)

    def _resolve(self, entries: tuple[PriceEntry, ...], model: str, service_tier: str | None,
                 at_ns: int) -> tuple[_ModelRates | None, int, int]:
        """The model's rates at ``at_ns``, and from and until when they hold (ns)."""
        for entry in entries:
            if fnmatchcase(model, entry.match):
                return _entry_rates(entry), -_FOREVER, _FOREVER
        provider, providers, zero = self._table or (None, None, None)
        # What genai_prices.calc_price does, less its lookup caches, which would keep every
        # model name a client ever sent (the tests compare the two over the whole table).
        model_info = provider.find_model(model, all_providers=providers) if provider else None
        if model_info is None:
            return None, -_FOREVER, _FOREVER
        at = datetime.fromtimestamp(at_ns / 1e9, UTC)
        calc = model_info.calc_price(
            zero, provider, genai_request_timestamp=at,
            price_context={"service_tier": service_tier} if service_tier else None)
        return _table_rates(calc.model_price), *_price_window(model_info, at)


def _table_provider(name: str) -> tuple[Any, Any, Any] | None:
    """genai-prices' Provider named ``name`` (its id or a name it matches, such as ``azure``),
    all providers (for its fallbacks) and a zero usage; None if the table has no such one."""
    import genai_prices  # ~0.1 s and ~15 MB: only when the table can be used
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    providers = get_snapshot().providers
    provider = find_provider_by_id(providers, name)
    if provider is None:
        return None
    return provider, providers, genai_prices.Usage(input_tokens=0, output_tokens=0)


def _table_rates(model_price: Any) -> _ModelRates | None:
    """genai-prices' resolved ``ModelPrice`` as per-token floats; None when it prices a usage
    kind the Responses API does not report (audio, images: the call cannot be priced right)."""
    prices = {k: v for k, v in vars(model_price).items() if v is not None}
    request_fee = prices.pop("requests_kcount", None)
    if set(prices) - set(_TOKEN_KEYS) - _UNREPORTED_UNITS or "input_mtok" not in prices \
            or "output_mtok" not in prices:
        return None
    # Every threshold any key's tiers start at: between two of them, every rate is fixed.
    starts = sorted({tier.start for value in prices.values() if hasattr(value, "tiers")
                     for tier in value.tiers} | {-1}, reverse=True)

    def rate(key: str, input_tokens_above: int) -> float | None:
        value = prices.get(key)
        if value is None:
            return None
        if hasattr(value, "tiers"):  # genai-prices TieredPrices: the highest tier passed wins
            value = next((t.price for t in sorted(value.tiers, key=lambda t: -t.start)
                          if input_tokens_above >= t.start), value.base)
        return float(value) / PER_MILLION

    levels = tuple((start, _Rates(*(rate(k, start) for k in ("input_mtok", "output_mtok")),
                                  cache_read=rate("cache_read_mtok", start),
                                  cache_write=rate("cache_write_mtok", start),
                                  reasoning=rate("output_reasoning_mtok", start)))
                   for start in starts)
    return _ModelRates(levels, float(request_fee) / 1000 if request_fee is not None else 0.0)


def _price_window(model_info: Any, at: datetime) -> tuple[int, int]:
    """Since and until when (ns) the model's dated or time-of-day prices stay as they are at
    ``at``: the rates resolved at ``at`` hold for any call made in between."""
    constraints = [c.constraint for c in model_info.prices] \
        if isinstance(model_info.prices, list) else []
    constraints += [v.constraint for v in model_info.price_variants or ()]
    changes: list[datetime] = []
    for constraint in filter(None, constraints):
        if hasattr(constraint, "start_date"):
            changes.append(datetime.combine(constraint.start_date, time(), UTC))
        else:
            for moment in (constraint.start_time, constraint.end_time):
                changes += [_on(at.date() + timedelta(days=d), moment) for d in (-1, 0, 1)]
    since = max((c for c in changes if c <= at), default=None)
    until = min((c for c in changes if c > at), default=None)
    return (int(since.timestamp() * 1e9) if since else -_FOREVER,
            int(until.timestamp() * 1e9) if until else _FOREVER)


def _on(day: date, moment: time) -> datetime:
    return datetime.combine(day, moment.replace(tzinfo=moment.tzinfo or UTC)).astimezone(UTC)


def cost_attributes(cost: CostBreakdown) -> Attributes:
    """The OpenInference ``llm.cost.*`` span attributes, in USD."""
    attrs: Attributes = {
        SpanAttributes.LLM_COST_PROMPT: cost.prompt,
        SpanAttributes.LLM_COST_COMPLETION: cost.completion,
        SpanAttributes.LLM_COST_TOTAL: cost.total,
    }
    for key, value in ((SpanAttributes.LLM_COST_PROMPT_DETAILS_CACHE_READ, cost.cache_read),
                       (SpanAttributes.LLM_COST_PROMPT_DETAILS_CACHE_WRITE, cost.cache_write),
                       (SpanAttributes.LLM_COST_COMPLETION_DETAILS_REASONING, cost.reasoning)):
        if value is not None:
            attrs[key] = value
    return attrs
