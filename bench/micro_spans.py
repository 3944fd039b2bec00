"""Micro-benchmark: CPU of building one span (SpanWriter.start + finish), in µs per span.

    python bench/micro_spans.py [--number N] [--genai]

Cases: the small request ``{"model":"m","input":"hi"}`` with its small response; the ~100 KB
request of the benchmark suite (``payloads.large``) with the demo model's response, under the
proxy's raised attribute count limit and under the SDK's default of 128 (where the limit
bites). The tracer provider is the real SDK's, with no span processor, so the figures are
the proxy's span building plus the SDK's own attribute handling; OPENINFERENCE_HIDE_* apply
as in the proxy. Prints the best of seven runs, in CPU time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import timeit
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from otel_responses.demo import model
from otel_responses.outcome import Outcome
from otel_responses.telemetry.export import DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.recorder import CallRecord
from otel_responses.telemetry.spans import SpanWriter

import payloads

HEADERS = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
           (b"authorization", b"Bearer sk-bench"), (b"user-agent", b"bench/1.0")]


def _record(request: dict[str, Any]) -> CallRecord:
    raw = json.dumps(request, separators=(",", ":")).encode()
    response = model.render(request, model.decide(request), model.Ids.for_number(1), 0).final
    return CallRecord(request_raw=raw, request=json.loads(raw), status=200, stream=False,
                      response=response, error=None, outcome=Outcome.COMPLETED,
                      start_ns=1_000_000_000, end_ns=1_500_000_000)


def _one_span(writer: SpanWriter, record: CallRecord) -> Callable[[], None]:
    def run() -> None:
        span, forwarded = writer.start(HEADERS, record.start_ns)
        writer.finish(span, record, forwarded)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=0,
                        help="spans per run (default: 2,000 small, 20 large)")
    parser.add_argument("--genai", action="store_true", help="add the GenAI semconv attributes")
    args = parser.parse_args()
    # The SDK logs a warning per evicted attribute: still paid, no longer printed.
    logging.getLogger("opentelemetry.attributes").addHandler(logging.NullHandler())
    options = TelemetryOptions(genai_semconv=args.genai)
    small, large = _record({"model": "m", "input": "hi"}), _record(payloads.large())
    cases = (("small", small, DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT, 2_000),
             (f"{len(large.request_raw) // 1000} KB", large, DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT,
              20),
             (f"{len(large.request_raw) // 1000} KB, limit 128", large, 128, 20))
    for name, record, limit, default_number in cases:
        provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=limit))
        writer = SpanWriter(provider.get_tracer("bench"), options)
        number = args.number or default_number
        # CPU time: the machine is shared, and waiting for a core is not this code's cost.
        best = min(timeit.repeat(_one_span(writer, record), timer=time.process_time,
                                 number=number, repeat=7))
        print(f"{name:>18}: {best / number * 1e6:9.1f} µs/span")


if __name__ == "__main__":
    main()
