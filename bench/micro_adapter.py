"""Micro-benchmark: CPU the Chat Completions adapter spends per streamed delta, in µs.

    python bench/micro_adapter.py [--number N] [--deltas D]

Translates a chat stream of D content deltas (200 by default, plus the role, finish and usage
chunks) with `StreamTranslator.feed`, the chunks already parsed (as the adapter gets them from
its SSE parser), and separately with each event framed by `sse_bytes` (what the adapter writes
to the client). Prints the best of five runs of N streams each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from otel_responses.protocol.chat import StreamTranslator, sse_bytes, translate_request

CALL = translate_request({"model": "m", "input": "hi", "stream": True})


def chunks(deltas: int) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "m", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": f"tok{i} "}) for i in range(deltas)]
    out.append(chunk({}, "stop"))
    out.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "m", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": deltas,
                          "total_tokens": deltas + 5}})
    return out


def translate(stream: list[dict[str, Any]]) -> None:
    t = StreamTranslator(CALL, "resp_bench", 1)
    t.start()
    for c in stream:
        t.feed(c)
    t.finish()


def translate_and_frame(stream: list[dict[str, Any]]) -> None:
    t = StreamTranslator(CALL, "resp_bench", 1)
    for event in t.start():
        sse_bytes(event)
    for c in stream:
        for event in t.feed(c):
            sse_bytes(event)
    for event in t.finish():
        sse_bytes(event)


def per_delta(work: Callable[[list[dict[str, Any]]], None], stream: list[dict[str, Any]],
              number: int, deltas: int) -> float:
    """µs per delta: a whole stream's cost (start and finish included) over its deltas."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            work(stream)
        runs.append((time.perf_counter() - start) / number / deltas * 1e6)
    return min(runs)


def feed_only(stream: list[dict[str, Any]], number: int) -> float:
    """µs per content chunk spent inside feed() alone, for the middle of the stream."""
    best = float("inf")
    clock = time.perf_counter_ns
    for _ in range(5):
        spent = 0
        for _ in range(number):
            t = StreamTranslator(CALL, "resp_bench", 1)
            t.start()
            t.feed(stream[0])
            start = clock()
            for c in stream[1:-2]:
                t.feed(c)
            spent += clock() - start
            t.feed(stream[-2])
            t.finish()
        best = min(best, spent / number / (len(stream) - 3) / 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--deltas", type=int, default=200)
    args = parser.parse_args()
    stream = chunks(args.deltas)
    print(f"{args.deltas}-delta chat stream, best of 5 runs of {args.number} streams")
    print(f"  feed() per content delta:               {feed_only(stream, args.number):6.2f} µs")
    print(f"  whole stream per delta:                 "
          f"{per_delta(translate, stream, args.number, args.deltas):6.2f} µs")
    print(f"  whole stream per delta, SSE-framed:     "
          f"{per_delta(translate_and_frame, stream, args.number, args.deltas):6.2f} µs")


if __name__ == "__main__":
    main()
