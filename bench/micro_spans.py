"""Micro-benchmark: CPU of building one span (SpanWriter.start + finish), in µs per span.

    python bench/micro_spans.py [--number N] [--genai]

Cases: the small request ``{"model":"m","input":"hi"}`` with its small response; the ~100 KB
request of the benchmark suite (``payloads.large``) with the demo model's response, under the
proxy's raised attribute count limit and under the SDK's default of 128 (where the limit
bites). The tracer provider is the real SDK's, with no span processor, so the figures are
the proxy's span building plus the SDK's own attribute handling; OPENINFERENCE_HIDE_* apply
as in the proxy. Prints the best of seven runs, in CPU time.

Tool spans: the small call's answer alone, then with three built-in tool items before it (a
web search, a file search with results, an interpreter run with logs), each becoming a TOOL
span; the tool runs are derived from the response inside the timed run, as the recorder
does. Their difference is the cost of the three tool spans, printed per call; "+ OTLP" runs
them again with each span encoded as it ends, as the proxy's exporter does.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import timeit
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from otel_responses.demo import model
from otel_responses.outcome import Outcome
from otel_responses.protocol.tools import tool_runs
from otel_responses.telemetry.export import DEFAULT_SPAN_ATTRIBUTE_COUNT_LIMIT
from otel_responses.telemetry.options import TelemetryOptions
from otel_responses.telemetry.otlp import span_field
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


# Three built-in tool calls as the Responses API returns them (shapes of the recordings).
TOOL_ITEMS = [
    {"id": "ws_1", "type": "web_search_call", "status": "completed",
     "action": {"type": "search", "query": "weather in Oslo today"}},
    {"id": "fs_2", "type": "file_search_call", "status": "completed",
     "queries": ["Oslo climate"], "results": [
         {"file_id": "file-1", "filename": "climate.md", "score": 0.91,
          "text": "Oslo has a humid continental climate. " * 8, "attributes": {}}]},
    {"id": "ci_3", "type": "code_interpreter_call", "status": "completed",
     "container_id": "cntr_1", "code": "import statistics\nprint(statistics.mean([3, 5, 8]))",
     "outputs": [{"type": "logs", "logs": "5.333333333333333"}]},
]


def _with_tools(record: CallRecord) -> CallRecord:
    assert record.response is not None
    response = {**record.response, "output": [*TOOL_ITEMS, *record.response["output"]]}
    return replace(record, response=response)


def _one_span(writer: SpanWriter, record: CallRecord) -> Callable[[], None]:
    def run() -> None:
        span, forwarded = writer.start(HEADERS, record.start_ns)
        record.tools = tool_runs(record.response, {}, record.start_ns, record.end_ns, True)
        writer.finish(span, record, forwarded)
    return run


class _Encoder(SpanProcessor):
    """Encodes each span as it ends, as the proxy's OTLP exporter does (`prepare`)."""

    def on_end(self, span: ReadableSpan) -> None:
        span_field(span)


def _best(run: Callable[[], None], number: int) -> float:
    """µs per run: the best of seven, in CPU time (the machine is shared, and waiting for a
    core is not this code's cost)."""
    return min(timeit.repeat(run, timer=time.process_time, number=number, repeat=7)) / number \
        * 1e6


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
        best = _best(_one_span(writer, record), args.number or default_number)
        print(f"{name:>18}: {best:9.1f} µs/span")
    tools = _with_tools(small)
    for encode in (False, True):
        provider = TracerProvider()
        if encode:
            provider.add_span_processor(_Encoder())
        writer = SpanWriter(provider.get_tracer("bench"), options)
        number = args.number or 2_000
        without, with_tools = (_best(_one_span(writer, r), number) for r in (small, tools))
        label = "small" + (" + OTLP" if encode else "")
        print(f"{label:>18}: {without:9.1f} µs/call without tools, {with_tools:.1f} with 3 "
              f"built-in tool spans: +{with_tools - without:.1f} µs")


if __name__ == "__main__":
    main()
