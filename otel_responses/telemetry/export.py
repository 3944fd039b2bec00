"""The TracerProvider, configured by the standard OTEL_* variables and flushed at shutdown; its
export pipelines count every span they are given (exported, dropped or queued) for /metrics."""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from openinference.semconv.trace import SpanAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from otel_responses.telemetry.options import sdk_enabled

log = logging.getLogger("otel_responses.telemetry")

DEFAULT_SERVICE_NAME = "otel-responses"
# A long conversation flattens into thousands of attributes; the SDK default of 128 would
# silently cut it. Explicit OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT still wins.
DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT = 65_536
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# How long shutdown waits for queued spans to reach the collector before the process exits.
SHUTDOWN_FLUSH_SECONDS = 5.0
DEFAULT_MAX_QUEUE_SIZE = 2048  # the SDK's default for OTEL_BSP_MAX_QUEUE_SIZE
QUEUE_FULL = "queue_full"
EXPORT_FAILED = "export_failed"
UNENCODABLE = "unencodable"
DROP_REASONS = (QUEUE_FULL, EXPORT_FAILED, UNENCODABLE)
# A dead collector drops spans continuously: say so in the log now and then, the count is
# otel_responses_spans_dropped_total.
DROP_WARNING_INTERVAL_S = 60.0
# The SDK's OTLP exporters log every failed batch, and every retry of it, themselves.
_SDK_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                         "opentelemetry.exporter.otlp.proto.grpc.exporter")
_SDK_BATCH_FAILURES = ("Failed to export", "Transient error")  # record.msg prefixes


def _env(env: Mapping[str, str], *names: str, default: str = "") -> str:
    return next((env[n].strip() for n in names if env.get(n, "").strip()), default)


def _otlp_protocol(env: Mapping[str, str]) -> str:
    return _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL",
                default="http/protobuf")


def _otlp_endpoint(env: Mapping[str, str], protocol: str) -> str:
    """Where the SDK's exporter for ``protocol`` sends spans, by its own rules."""
    if protocol == "grpc":
        return _env(env, *_ENDPOINT_VARS, default="http://localhost:4317")
    if endpoint := _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint  # used as given
    base = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT", default="http://localhost:4318")
    return base.rstrip("/") + "/v1/traces"


def describe_span_export(env: Mapping[str, str], *, demo: bool = False) -> str:
    """Where spans go, as a newcomer needs to read it at startup."""
    if not sdk_enabled(env):
        return "off (OTEL_SDK_DISABLED=true)"
    described = []
    for name in exporter_names(env, demo):
        if name == "otlp":
            protocol = _otlp_protocol(env)
            described.append(f"OTLP {protocol} to {_otlp_endpoint(env, protocol)}")
        else:
            described.append({"log": "a summary line per call in this log",
                              "console": "stdout (console exporter)"}.get(name, name))
    return ", ".join(described) or "no exporter (OTEL_TRACES_EXPORTER=none)"


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = _otlp_protocol(env)
    # The exporters read endpoint, headers, timeout and compression from the same variables.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"unsupported OTLP protocol {protocol!r} (grpc or http/protobuf)")
    from otel_responses.telemetry.otlp_exporter import DirectOTLPSpanExporter
    return DirectOTLPSpanExporter()


class SpanPipeline(SpanProcessor):
    """A BatchSpanProcessor that accounts for every sampled span it is given: exported,
    dropped (``queue_full``, ``export_failed``, ``unencodable``) or still queued; read at
    scrape time.

    Public SDK interfaces only. The SDK counts its own drops only when the process-wide
    ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is set and never exposes its queue length, so
    the queue bound is enforced here: a span is admitted while fewer than ``capacity`` wait, and
    they leave the count when the batch processor hands them to the exporter. The SDK's queue
    (of the same capacity) therefore never overflows on its own.
    """

    def __init__(self, exporter: SpanExporter, name: str, capacity: int) -> None:
        self.exporter = exporter
        self.name = name
        # An exporter that can encode a span ahead does so as the span ends (see on_end).
        self._prepare = getattr(exporter, "prepare", None)
        self.capacity = capacity
        self.exported = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.queued = 0
        self._lock = threading.Lock()
        self._full = DropTally(DROP_WARNING_INTERVAL_S)
        self._failed = DropTally(DROP_WARNING_INTERVAL_S)
        self._batch = BatchSpanProcessor(_CountingExporter(exporter, self),
                                         max_queue_size=capacity)
        if hasattr(os, "register_at_fork"):
            # A forked child starts with the batch processor's queue emptied, so is the count.
            after_fork = weakref.WeakMethod(self._after_fork)

            def in_child() -> None:
                if (method := after_fork()) is not None:
                    method()
            os.register_at_fork(after_in_child=in_child)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # the batch processor ignores it too
        report = None
        with self._lock:
            admitted = self.queued < self.capacity
            if admitted:
                self.queued += 1
            else:
                self.dropped[QUEUE_FULL] += 1
                report = self._full.add(1, time.monotonic())
        if admitted:
            if self._prepare is not None:
                self._prepare(span)
            self._batch.on_end(span)
        elif report is not None:
            log.warning("span export queue full (%d spans, exporter %s): %d spans dropped "
                        "since the last report; see otel_responses_spans_dropped_total",
                        self.capacity, self.name, report.spans)

    def shutdown(self) -> None:
        self._batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)

    def _handed_over(self, count: int) -> None:
        with self._lock:
            self.queued -= count

    def _settled(self, count: int, ok: bool, unencodable: int = 0) -> None:
        report = None
        with self._lock:
            self.dropped[UNENCODABLE] += unencodable
            if ok:
                self.exported += count
            else:
                self.dropped[EXPORT_FAILED] += count
                report = self._failed.add(count, time.monotonic())
        if report is not None:
            log.warning("span export failed (exporter %s): %d batches, %d spans dropped since "
                        "the last report (at most one a %.0fs); last error: %s; see "
                        "otel_responses_spans_dropped_total", self.name, report.events,
                        report.spans, self._failed.interval, _SDK_FAILURES.last or "none logged")

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.queued = 0
        discard = getattr(self.exporter, "discard_prepared", None)
        if discard is not None:
            discard()


class DropReport(NamedTuple):
    events: int  # batches (or single spans) dropped since the last report
    spans: int


class DropTally:
    """Counts drops between log lines, allowing one line per ``interval`` seconds: the first
    drop is reported at once, later ones with the count of the drops they stand for."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._events = self._spans = 0
        self._next = float("-inf")

    def add(self, spans: int, now: float) -> DropReport | None:
        """Count a drop of ``spans`` at ``now``; the report to log, if one is due."""
        self._events += 1
        self._spans += spans
        if now < self._next:
            return None
        self._next = now + self.interval
        report = DropReport(self._events, self._spans)
        self._events = self._spans = 0
        return report


class _SDKFailureLines(logging.Filter):
    """Keeps the SDK exporters' per-batch failure and retry lines out of the log, remembering
    the last failure (with the retry line that said why) for the pipeline's own report: a
    collector that is down would otherwise add lines per batch, every few seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""
        self._retry = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(_SDK_BATCH_FAILURES)):
            return True
        if record.msg.startswith("Transient error"):
            self._retry = record.getMessage()
        else:
            self.last = record.getMessage() + (f" ({self._retry})" if self._retry else "")
            self._retry = ""
        return False


_SDK_FAILURES = _SDKFailureLines()


class _CountingExporter(SpanExporter):
    """Reports each batch to its SpanPipeline: taken off the queue, then exported or failed."""

    def __init__(self, exporter: SpanExporter, pipeline: SpanPipeline) -> None:
        self._exporter = exporter
        self._pipeline = pipeline

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._pipeline._handed_over(len(spans))
        # An exporter that drops a span it cannot encode (and sends the rest) counts it in
        # `unencodable`; exports run one at a time, so the difference is this batch's.
        before = getattr(self._exporter, "unencodable", 0)
        ok = False
        try:
            result = self._exporter.export(spans)
            ok = result is SpanExportResult.SUCCESS
            return result
        finally:  # an exception is a failed export too (the batch processor logs it)
            unencodable = getattr(self._exporter, "unencodable", 0) - before
            self._pipeline._settled(len(spans) - unencodable, ok, unencodable)

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        # The batch processor passes what is left of its shutdown time to exporters that take
        # it (the gRPC one): keep doing so through this wrapper.
        if "timeout_millis" in inspect.signature(self._exporter.shutdown).parameters:
            self._exporter.shutdown(timeout_millis=timeout_millis)  # type: ignore[call-arg]
        else:
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


# The pipelines of each provider build_tracer_provider made, so that an app given such a
# provider (rather than building its own) still reports them.
_PIPELINES: weakref.WeakKeyDictionary[TracerProvider, tuple[SpanPipeline, ...]] = \
    weakref.WeakKeyDictionary()


def span_pipelines(provider: TracerProvider | None) -> tuple[SpanPipeline, ...]:
    """The export pipelines of a provider made by :func:`build_tracer_provider`; none for any
    other provider (its processors are its owner's)."""
    return () if provider is None else _PIPELINES.get(provider, ())


class SummaryLogProcessor(SpanProcessor):
    """One readable log line per finished LLM span: for demo mode, when no collector is set."""

    def on_end(self, span: ReadableSpan) -> None:
        a = span.attributes or {}
        ttft = next((e.timestamp for e in span.events if e.name.startswith("First Token")), None)
        ttft_ms = f"{(ttft - span.start_time) / 1e6:.1f}ms" if ttft and span.start_time else "-"
        log.info(
            "%s: model=%s tokens=%s/%s ttft=%s status=%s trace_id=%032x", span.name,
            a.get(SpanAttributes.LLM_MODEL_NAME, "-"),
            a.get(SpanAttributes.LLM_TOKEN_COUNT_PROMPT, "-"),
            a.get(SpanAttributes.LLM_TOKEN_COUNT_COMPLETION, "-"), ttft_ms,
            span.status.status_code.name, span.context.trace_id if span.context else 0)


def exporter_names(env: Mapping[str, str], demo: bool) -> list[str]:
    """OTEL_TRACES_EXPORTER as a list; demo mode with no collector configured logs instead."""
    names = [n.strip() for n in _env(env, "OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if not names:
        names = ["log"] if demo and not _env(env, *_ENDPOINT_VARS) else ["otlp"]
    return [n for n in names if n != "none"]


def build_tracer_provider(env: Mapping[str, str] | None = None, *,
                          demo: bool = False) -> TracerProvider:
    env = os.environ if env is None else env
    attributes = {}
    if not _env(env, "OTEL_SERVICE_NAME") and "service.name=" not in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    count_limit = None if _env(env, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") else \
        DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT
    provider = TracerProvider(resource=Resource.create(attributes),
                              span_limits=SpanLimits(max_span_attributes=count_limit))
    pipelines = []
    for name in exporter_names(env, demo):
        if name == "log":
            provider.add_span_processor(SummaryLogProcessor())
        elif name in ("otlp", "console"):
            if name == "otlp":  # its pipeline reports failures: not the SDK per batch
                for logger_name in _SDK_EXPORTER_LOGGERS:
                    logging.getLogger(logger_name).addFilter(_SDK_FAILURES)
            exporter = _otlp_exporter(env) if name == "otlp" else ConsoleSpanExporter()
            pipelines.append(SpanPipeline(exporter, name, _max_queue_size(env)))
            provider.add_span_processor(pipelines[-1])
        else:
            raise ValueError(f"unsupported OTEL_TRACES_EXPORTER {name!r} "
                             "(otlp, console, log or none)")
    _PIPELINES[provider] = tuple(pipelines)
    return provider


def _max_queue_size(env: Mapping[str, str]) -> int:
    value = _env(env, "OTEL_BSP_MAX_QUEUE_SIZE")
    try:
        return int(value) if value else DEFAULT_MAX_QUEUE_SIZE
    except ValueError:
        raise ValueError(f"OTEL_BSP_MAX_QUEUE_SIZE must be an integer, not {value!r}") from None


def shutdown_provider(provider: TracerProvider, timeout: float = SHUTDOWN_FLUSH_SECONDS) -> None:
    """Flush and shut down, but never wait past ``timeout``: a dead collector's retries
    (up to OTEL_EXPORTER_OTLP_TIMEOUT each) must not hold the process on SIGTERM."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("span export did not finish within %.0fs of shutdown; queued spans dropped",
                    timeout)
