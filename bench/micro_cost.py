"""Micro-benchmark: CPU per call of pricing a finished call (Pricer.price), in µs.

    python bench/micro_cost.py [--number N]

Prices one typical Responses call (cached and reasoning tokens reported) as the middleware
does after each call: a model from the genai-prices table, one with long-context tiers, one
from an operator price entry and one nothing prices; each after its rates are cached (every
call but a model's first). Then a model's first lookup, which resolves its rates through
genai-prices, and the one-off import of the table. Best of seven runs, CPU time.
"""

from __future__ import annotations

import argparse
import time

from otel_responses.telemetry.cost import Pricer, parse_prices

USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 64},
         "total_tokens": 1500}
ENTRIES = parse_prices({"models": [{"match": "local-*", "input": 2, "cached_input": 0.5,
                                    "output": 6}]})
REQUEST = {"model": "gpt-4o", "stream": True}
AT = time.time_ns()


def per_call(pricer: Pricer, model: str, number: int) -> float:
    """µs per call, CPU time, best of seven."""
    response = {"model": model, "service_tier": "default", "usage": USAGE}
    pricer.price(REQUEST, response, AT)  # the model's first call resolves and caches its rates
    clock = time.process_time_ns
    best = float("inf")
    for _ in range(7):
        start = clock()
        for _ in range(number):
            pricer.price(REQUEST, response, AT)
        best = min(best, (clock() - start) / number / 1e3)
    return best


def first_lookup(model: str) -> float:
    """µs to resolve a model's rates through genai-prices (a fresh pricer each time)."""
    response = {"model": model, "usage": USAGE}
    best = float("inf")
    for _ in range(7):
        pricer = Pricer("openai")
        start = time.process_time_ns()
        pricer.price(REQUEST, response, AT)
        best = min(best, (time.process_time_ns() - start) / 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=50_000, help="calls per run")
    number = parser.parse_args().number
    start = time.process_time_ns()
    pricer = Pricer("openai", ENTRIES)  # imports genai-prices and its table
    print(f"{'import of the table':>28}: {(time.process_time_ns() - start) / 1e6:8.1f} ms once")
    for label, model in (("table model", "gpt-4o-2024-08-06"),
                         ("table model, tiered", "gpt-5.4"),
                         ("price-file entry", "local-llama-3"),
                         ("unpriced model", "acme-finetune-7")):
        print(f"{label:>28}: {per_call(pricer, model, number):8.2f} µs/call")
    print(f"{'first lookup of a model':>28}: {first_lookup('gpt-4o-2024-08-06'):8.1f} µs once")


if __name__ == "__main__":
    main()
