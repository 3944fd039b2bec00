"""The TracerProvider, configured by the standard OTEL_* variables and flushed at shutdown."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from openinference.semconv.trace import SpanAttributes
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger("otel_responses.telemetry")

DEFAULT_SERVICE_NAME = "otel-responses"
# A long conversation flattens into thousands of attributes; the SDK default of 128 would
# silently cut it. Explicit OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT still wins.
DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT = 65_536
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# How long shutdown waits for queued spans to reach the collector before the process exits.
SHUTDOWN_FLUSH_SECONDS = 5.0


def _env(env: Mapping[str, str], *names: str, default: str = "") -> str:
    return next((env[n].strip() for n in names if env.get(n, "").strip()), default)


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL",
                    default="http/protobuf")
    # The exporters read endpoint, headers, timeout and compression from the same variables.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"unsupported OTLP protocol {protocol!r} (grpc or http/protobuf)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )
    return HTTPSpanExporter()


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
    for name in exporter_names(env, demo):
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "log":
            provider.add_span_processor(SummaryLogProcessor())
        else:
            raise ValueError(f"unsupported OTEL_TRACES_EXPORTER {name!r} "
                             "(otlp, console, log or none)")
    return provider


def shutdown_provider(provider: TracerProvider, timeout: float = SHUTDOWN_FLUSH_SECONDS) -> None:
    """Flush and shut down, but never wait past ``timeout``: a dead collector's retries
    (up to OTEL_EXPORTER_OTLP_TIMEOUT each) must not hold the process on SIGTERM."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("span export did not finish within %.0fs of shutdown; queued spans dropped",
                    timeout)
