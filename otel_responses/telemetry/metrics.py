"""Prometheus metrics: the OTel GenAI client histograms and the proxy's own health, one registry
per app, recorded after each response and served with trace exemplars."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_responses.outcome import FAULT_KINDS, REJECTIONS, STREAM_ENDINGS, UNREACHED
from otel_responses.protocol.response_attributes import usage
from otel_responses.protocol.sse import is_event_stream
from otel_responses.protocol.text import encodable
from otel_responses.protocol.tools import INCOMPLETE, TOOL_TYPES
from otel_responses.store.record import OPERATIONS
from otel_responses.telemetry.cost import CostBreakdown, Unpriced
from otel_responses.telemetry.metrics_port import serve_metrics
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.spans import error_type

if TYPE_CHECKING:  # telemetry stays importable without the proxy
    from otel_responses.proxy.forward import Exchange
    from otel_responses.telemetry.export import SpanPipeline

# Explicit bucket boundaries from the GenAI semantic conventions (model/gen-ai/metrics.yaml).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
# Tool calls take from a few milliseconds (a listing) to minutes (an interpreter run).
TOOL_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 120.0)
TIME_PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                          2.5)
# The proxy's own time is sub-millisecond when healthy, below the first semconv bucket.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0)

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                "gen_ai_response_model", "error_type", "stream")
OTHER = "other"
# Longer "model names" are junk, not models: they would bloat every scrape.
MAX_LABEL_LENGTH = 256
# error_type comes from the upstream's error codes: a known, short list unless it misbehaves.
MAX_ERROR_TYPES = 50
# Label sets whose children are cached per metric; the guards above already bound them, this
# only backs that up (past it, children are still found, just not cached).
MAX_CACHED_CHILDREN = 4096

# gen_ai_token_type → its field of the parsed `Usage`. cached_input and cache_creation_input
# are already inside input, reasoning inside output: each is its own series and is never
# added on top of the totals.
TOKEN_TYPES: tuple[tuple[str, str], ...] = (
    ("input", "input"), ("output", "output"), ("cached_input", "cache_read"),
    ("cache_creation_input", "cache_write"), ("reasoning", "reasoning"))


class LabelGuard:
    """Bounds one label's values: an allow-list, else the first ``limit`` distinct values seen;
    everything else becomes ``overflow``. An absent value stays empty."""

    def __init__(self, limit: int, allowed: Iterable[str] | None = None,
                 overflow: str = OTHER) -> None:
        self.limit = limit
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.overflow = overflow
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value:
            return ""
        if self.allowed is not None:
            return value if value in self.allowed else self.overflow
        if value in self._seen:
            return value
        if len(self._seen) < self.limit and len(value) <= MAX_LABEL_LENGTH:
            self._seen.add(value)
            return value
        return self.overflow


def reported_tokens(response: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """(gen_ai_token_type, count) for each count the response's usage actually carries."""
    counts = usage(response)
    for token_type, field in TOKEN_TYPES:
        count = getattr(counts, field)
        if count is not None:
            yield token_type, count


def current_exemplar() -> dict[str, str] | None:
    """The current span as an exemplar; none when no span is current or it was not sampled
    (an exemplar must lead to a trace that was exported)."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x")}


def _text(value: Any) -> str:
    # Label values come from clients: a lone surrogate would fail every later scrape.
    return encodable(value) if isinstance(value, str) else ""


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if status else "none"  # 0: the client left before a response


M = TypeVar("M", Counter, Histogram)


class _Children(Generic[M]):
    """A labelled metric whose child per label set is looked up once, then kept: ``labels()``
    converts, validates and takes a lock on every call, several times per request."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._cache.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._cache) < MAX_CACHED_CHILDREN:
                self._cache[values] = child
        return child


class _AppValues:
    """Values the app keeps itself (in-flight count, telemetry errors, the span export
    pipelines' counts), read at scrape time."""

    def __init__(self) -> None:
        self.in_flight: Callable[[], int] = lambda: 0
        self.telemetry_errors: Callable[[], int] = lambda: 0
        self.span_pipelines: Sequence[SpanPipeline] = ()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("otel_responses_in_flight_requests",
                                "Requests being forwarded right now.", value=self.in_flight())
        yield CounterMetricFamily(
            "otel_responses_telemetry_errors",
            "Failures while recording telemetry (the requests were unaffected).",
            value=self.telemetry_errors())
        exported = CounterMetricFamily(
            "otel_responses_spans_exported", "Spans the exporter delivered.", labels=("exporter",))
        dropped = CounterMetricFamily(
            "otel_responses_spans_dropped",
            "Spans that never reached the exporter's destination: queue_full (the export queue "
            "was full), export_failed (the exporter gave up on their batch).",
            labels=("exporter", "reason"))
        queued = GaugeMetricFamily("otel_responses_span_queue_size",
                                   "Finished spans waiting for export.", labels=("exporter",))
        capacity = GaugeMetricFamily(
            "otel_responses_span_queue_capacity",
            "Spans the export queue holds before dropping (OTEL_BSP_MAX_QUEUE_SIZE).",
            labels=("exporter",))
        for pipeline in self.span_pipelines:
            exporter = (pipeline.name,)
            exported.add_metric(exporter, pipeline.exported)
            for reason, count in pipeline.dropped.items():
                dropped.add_metric((*exporter, reason), count)
            queued.add_metric(exporter, pipeline.queued)
            capacity.add_metric(exporter, pipeline.capacity)
        yield from (exported, dropped, queued, capacity)


class ProxyMetrics:
    """One app's metrics, in a registry of its own (several apps may share a process).

    Fed after the fact, never on the byte path: :meth:`observe_exchange` by the proxy for every
    forwarded request, :meth:`observe_call` by the telemetry middleware for every Responses
    call; :meth:`track_streams` wraps the app to count open event streams; :meth:`watch` names
    what is read at scrape time. Histogram observations carry the current span as an exemplar.
    """

    def __init__(self, *, provider: str = "openai", models: Iterable[str] | None = None,
                 max_models: int = 50, key_label: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.key_label = key_label
        self.provider = provider
        self._model = LabelGuard(max_models, models)
        self._error_type = LabelGuard(MAX_ERROR_TYPES, overflow="_OTHER")
        self._app_values = _AppValues()
        registry = self.registry
        registry.register(self._app_values)

        def genai_histogram(name: str, doc: str, buckets: tuple[float, ...], unit: str = "",
                            extra: tuple[str, ...] = ()) -> _Children[Histogram]:
            return _Children(Histogram(name, doc, (*GENAI_LABELS, *extra), unit=unit,
                                       buckets=buckets, registry=registry))

        self.duration = genai_histogram(
            "gen_ai_client_operation_duration",
            "Responses calls: request received to last byte sent.", DURATION_BUCKETS, "seconds")
        self.token_usage = genai_histogram(
            "gen_ai_client_token_usage", "Tokens per call, by type, as the upstream reported them.",
            TOKEN_BUCKETS, extra=("gen_ai_token_type",))
        self.time_to_first_chunk = genai_histogram(
            "gen_ai_client_operation_time_to_first_chunk",
            "Streams: request received to the first content delta sent.", DURATION_BUCKETS,
            "seconds")
        self.time_per_output_token = genai_histogram(
            "gen_ai_server_time_per_output_token",
            "Successful streams: (duration - time to first chunk) / (output tokens - 1).",
            TIME_PER_TOKEN_BUCKETS, "seconds")
        self.requests = _Children(Counter(
            "otel_responses_requests", "Forwarded requests.", ("route", "method", "status_class"),
            registry=registry))
        self.open_streams = Gauge(
            "otel_responses_open_streams", "Event-stream responses flowing right now.",
            registry=registry)
        self.stream_endings = _Children(Counter(
            "otel_responses_stream_endings", "Responses streams, by how they ended.",
            ("outcome",), registry=registry))
        self.upstream_faults = _Children(Counter(
            "otel_responses_upstream_faults", "Upstream failures, by kind.", ("kind",),
            registry=registry))
        self.upstream_retries = Counter(
            "otel_responses_upstream_retries",
            "Requests sent upstream a second time, on a new connection, after a stale one.",
            registry=registry)
        self.upstream_up = Gauge(
            "otel_responses_upstream_up",
            "1 if the latest forwarded request got a response from the upstream, 0 if it could "
            "not connect or had no answer in time; 1 before any request.", registry=registry)
        self.upstream_up.set(1)
        self.overhead = _Children(Histogram(
            "otel_responses_proxy_overhead", "Time the proxy itself added to a request.",
            ("route",), unit="seconds", buckets=OVERHEAD_BUCKETS, registry=registry))
        self.tool_calls = _Children(Counter(
            "otel_responses_tool_calls",
            "Tool call items in responses, by item type and how they ended: those the upstream "
            "ran and those handed to the client.", ("type", "status"), registry=registry))
        self.tool_duration = _Children(Histogram(
            "otel_responses_tool_call_duration",
            "Tool calls the upstream ran, timed from their stream events.", ("type",),
            unit="seconds", buckets=TOOL_DURATION_BUCKETS, registry=registry))
        self._tool_type = LabelGuard(len(TOOL_TYPES), TOOL_TYPES)
        self._cost_metrics(registry)
        # The guard's (keys and limits); the key's name is a label only when asked for.
        key = ("key",) if key_label else ()
        self.rejections = _Children(Counter(
            "otel_responses_rejections", "Requests the guard refused, by reason.",
            ("reason", *key), registry=registry))
        self.limit_store_errors = _Children(Counter(
            "otel_responses_limit_store_errors",
            "Rate-limit store failures, by operation (admit: the request was admitted or "
            "refused as --rate-limit-fail says).", ("operation",), registry=registry))
        self.tokens_charged = Counter(
            "otel_responses_limit_tokens_charged",
            "Tokens charged to keys' token limits after their calls.", key, registry=registry)
        self.usd_charged = Counter(
            "otel_responses_limit_usd_charged",
            "USD charged to keys' budgets after their calls (priced calls only).", key,
            registry=registry)
        # Response store (adapter mode).
        self.store_errors = _Children(Counter(
            "otel_responses_store_errors",
            "Response store operations that failed or timed out, by operation (read, write, "
            "delete); a failed write never fails the request it stores.", ("operation",),
            registry=registry))
        for operation in OPERATIONS:
            self.store_errors.labels(operation)
        # Known label values start at zero, so rate() sees their first increment.
        for kind in FAULT_KINDS.values():
            self.upstream_faults.labels(kind)
        for outcome in STREAM_ENDINGS:
            self.stream_endings.labels(outcome)
        if not key_label:  # with keys as labels, each series starts with its key's first
            for reason in REJECTIONS:
                self.rejections.labels(reason)

    def _cost_metrics(self, registry: CollectorRegistry) -> None:
        self.cost = _Children(Counter(
            "otel_responses_cost_usd", "USD spent on calls, priced from their reported usage.",
            ("model", "provider", *(("key",) if self.key_label else ())), registry=registry))
        self.cost_cache_savings = _Children(Counter(
            "otel_responses_cost_cache_savings_usd",
            "USD the cached input tokens would have cost more at the model's uncached input "
            "rate.", ("model", "provider"), registry=registry))
        self.cost_unpriced = _Children(Counter(
            "otel_responses_cost_unpriced",
            "Calls that reported usage for a model without a price (no cost was recorded).",
            ("model",), registry=registry))

    def _observe_cost(self, record: CallRecord, exemplar: dict[str, str] | None) -> None:
        cost = record.cost
        if isinstance(cost, CostBreakdown):
            labels = (self._model(_text(cost.model)), self.provider)
            key = self._key(record.caller.name if record.caller is not None else None)
            self.cost.labels(*labels, *key).inc(cost.total, exemplar)
            self.cost_cache_savings.labels(*labels).inc(cost.cache_savings)
        elif isinstance(cost, Unpriced):
            self.cost_unpriced.labels(self._model(_text(cost.model))).inc()

    def watch(self, *, in_flight: Callable[[], int], telemetry_errors: Callable[[], int],
              span_pipelines: Sequence[SpanPipeline] = ()) -> None:
        """Where the app keeps the counts that are read at scrape time."""
        self._app_values.in_flight = in_flight
        self._app_values.telemetry_errors = telemetry_errors
        self._app_values.span_pipelines = span_pipelines

    def observe_exchange(self, ex: Exchange) -> None:
        self.requests.labels(ex.route, ex.method, _status_class(ex.status)).inc()
        kind = FAULT_KINDS.get(ex.outcome)
        if kind is not None:
            self.upstream_faults.labels(kind).inc()
        if ex.retried:
            self.upstream_retries.inc()
        if ex.outcome in UNREACHED:
            self.upstream_up.set(0)
        elif ex.status and ex.overhead > 0:  # forwarded, and the upstream answered
            self.upstream_up.set(1)
        if ex.overhead > 0:  # zero: nothing was forwarded (rejected, or the client left early)
            self.overhead.labels(ex.route).observe(ex.overhead, current_exemplar())

    def observe_call(self, record: CallRecord) -> None:
        request, response = record.request or {}, record.response or {}
        labels = (
            "chat", self.provider,
            self._model(_text(request.get("model"))), self._model(_text(response.get("model"))),
            self._error_type(_text(error_type(record))) if record.is_error else "",
            "true" if record.stream or request.get("stream") is True else "false",
        )
        exemplar = current_exemplar()
        self.duration.labels(*labels).observe(record.duration_s, exemplar)
        tokens = dict(reported_tokens(response))
        for token_type, count in tokens.items():
            self.token_usage.labels(*labels, token_type).observe(count, exemplar)
        ttft = record.ttft_s
        if ttft is not None:
            self.time_to_first_chunk.labels(*labels).observe(ttft, exemplar)
            output = tokens.get("output", 0)
            if output > 1 and not record.is_error:
                self.time_per_output_token.labels(*labels).observe(
                    (record.duration_s - ttft) / (output - 1), exemplar)
        if record.stream:
            self.stream_endings.labels(record.outcome).inc()
        self._observe_cost(record, exemplar)
        if record.tools:
            self._observe_tools(record, exemplar)

    def _observe_tools(self, record: CallRecord, exemplar: dict[str, str] | None) -> None:
        for run in record.tools:
            kind = self._tool_type(run.type)
            self.tool_calls.labels(kind, run.status).inc()
            if run.server and run.timed and run.status != INCOMPLETE:
                self.tool_duration.labels(kind).observe(run.duration_s, exemplar)

    def observe_rejection(self, reason: str, key: str | None) -> None:
        self.rejections.labels(reason, *self._key(key)).inc()

    def observe_store_error(self, operation: str) -> None:
        self.limit_store_errors.labels(operation).inc()

    def observe_charge(self, tokens: float, key: str) -> None:
        self._charge(self.tokens_charged, tokens, key)

    def observe_spend(self, usd: float, key: str) -> None:
        self._charge(self.usd_charged, usd, key)

    def _charge(self, counter: Counter, amount: float, key: str) -> None:
        (counter.labels(*self._key(key)) if self.key_label else counter).inc(amount)

    def _key(self, key: str | None) -> tuple[str, ...]:
        # Key names come from the operator's keys file: bounded, and never the key itself.
        return (encodable(key or ""),) if self.key_label else ()

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def track_streams(self, app: ASGIApp) -> ASGIApp:
        return _StreamTracker(app, self.open_streams)

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: OpenMetrics (with exemplars) when the Accept header asks for it,
        else the classic text format."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        # Rendering every series is CPU work: keep it off the loop that relays streams.
        body = await asyncio.to_thread(encode, self.registry)
        return Response(body, headers={"content-type": content_type})

    def serve(self, host: str, port: int, idle_timeout: float) -> Callable[[], None]:
        """Serve the metrics on their own port (any path), in a thread; return the stop.
        A connection idle for ``idle_timeout`` seconds is closed."""
        return serve_metrics(self.registry, host, port, idle_timeout)


class _StreamTracker:
    """ASGI wrapper: counts event-stream responses, on every route, while their bytes flow."""

    def __init__(self, app: ASGIApp, gauge: Gauge) -> None:
        self.app = app
        self.gauge = gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        opened = False

        async def watch(message: Message) -> None:
            nonlocal opened
            await send(message)
            if message["type"] == "http.response.start" and is_event_stream(
                    message.get("headers", ())):
                opened = True
                self.gauge.inc()

        try:
            await self.app(scope, receive, watch)
        finally:
            if opened:
                self.gauge.dec()
