"""Micro-benchmark: CPU per request of Prometheus recording (ProxyMetrics), in µs per call.

    python bench/micro_metrics.py [--number N]

Records one typical streamed Responses call (four token types, time to first chunk, time per
output token), the same call priced (the cost counters), and its exchange, under a sampled
span so every observation carries an exemplar, as the proxy does after each request. Prints
the best of five runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import timeit

from opentelemetry.sdk.trace import TracerProvider
from otel_responses.proxy.forward import Exchange
from otel_responses.telemetry.cost import CostBreakdown
from otel_responses.telemetry.metrics import ProxyMetrics
from otel_responses.telemetry.recorder import CallRecord

USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 64},
         "total_tokens": 1500}
RECORD = CallRecord(
    request_raw=b"", request={"model": "gpt-4o", "stream": True}, status=200, stream=True,
    response={"model": "gpt-4o-2024-08-06", "usage": USAGE}, error=None, outcome="completed",
    start_ns=0, end_ns=2_500_000_000, first_token_ns=400_000_000)
PRICED = dataclasses.replace(RECORD, cost=CostBreakdown(
    "gpt-4o-2024-08-06", 0.00047, 0.003, 0.00347, cache_read=0.00128, reasoning=0.00064,
    cache_savings=0.00128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per run")
    number = parser.parse_args().number
    metrics = ProxyMetrics()
    exchange = Exchange("POST", "/v1/responses", "responses.create", status=200, stream=True,
                        overhead=0.0004)
    tracer = TracerProvider().get_tracer("bench")
    with tracer.start_as_current_span("chat gpt-4o"):
        for name, record in (("observe_call", lambda: metrics.observe_call(RECORD)),
                             ("observe_call priced", lambda: metrics.observe_call(PRICED)),
                             ("observe_exchange", lambda: metrics.observe_exchange(exchange))):
            best = min(timeit.repeat(record, number=number, repeat=5))
            print(f"{name:>19}: {best / number * 1e6:6.2f} µs/call")


if __name__ == "__main__":
    main()
