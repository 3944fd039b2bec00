"""Micro-benchmark: CPU the stream recorder spends per SSE event, in µs.

    python bench/micro_stream.py [--number N] [--fixture NAME]

Feeds a Responses stream through CallRecorder → ResponseStream as the proxy does after each
chunk it relays: once with one event per chunk (the demo upstream writes one chunk per event),
once with the whole stream in a single chunk (chunks that arrived together are relayed as one).
The default stream is the one the demo upstream sends for the `stream` scenario of
`bench/payloads.py` (201 output_text deltas, 209 events); `--fixture` replays a recording from
../shared/fixtures/responses instead. Prints the best of five runs; the per-chunk split shows
what delays the first delta (the snapshot frames) and each later one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from otel_responses.demo import model
from otel_responses.telemetry.recorder import CallRecorder

import payloads

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "responses"
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


def demo_frames() -> list[bytes]:
    request = payloads.stream()
    reply = model.decide(request)
    return model.render(request, reply, model.Ids.for_number(1), 1_700_000_000).frames()


def fixture_frames(name: str) -> list[bytes]:
    body = json.loads((FIXTURES / f"{name}.json").read_text())["response"]["body"]
    return [block.encode() + b"\n\n" for block in body.split("\n\n") if block.strip()]


def run(chunks: list[bytes]) -> list[int]:
    """One call; the ns spent on each chunk, then on finish()."""
    clock = time.perf_counter_ns
    recorder = CallRecorder(0)
    recorder.response_start(200, HEADERS)
    spent = []
    for chunk in chunks:
        start = clock()
        recorder.response_chunk(chunk, True)
        spent.append(clock() - start)
    recorder.response_chunk(b"", False)
    start = clock()
    record = recorder.finish()
    spent.append(clock() - start)
    assert record.malformed_events == 0 and record.response is not None, record
    return spent


def best(chunks: list[bytes], number: int) -> list[float]:
    """Per chunk (and finish) µs, averaged over `number` calls; the best of five runs."""
    runs = []
    for _ in range(5):
        totals = [0] * (len(chunks) + 1)
        for _ in range(number):
            totals = [a + b for a, b in zip(totals, run(chunks), strict=True)]
        runs.append([t / number / 1e3 for t in totals])
    return min(runs, key=sum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200, help="calls per run")
    parser.add_argument("--fixture", help="a recording's name instead of the demo stream")
    args = parser.parse_args()
    frames = fixture_frames(args.fixture) if args.fixture else demo_frames()
    events = len(frames)
    first_delta = next(i for i, f in enumerate(frames) if b'.delta"' in f)
    print(f"{events} events, {sum(map(len, frames))} bytes, first delta is event {first_delta}")

    split = best(frames, args.number)
    *per_chunk, finish = split
    deltas = [t for t, f in zip(per_chunk, frames, strict=True) if b'.delta"' in f]
    print(f"one event per chunk: {sum(per_chunk) / events:7.2f} µs/event "
          f"(+ finish {finish:.1f} µs)")
    print(f"  before the first delta: {sum(per_chunk[:first_delta]):7.1f} µs "
          f"(snapshots: {' + '.join(f'{t:.1f}' for t in per_chunk[:2])})")
    print(f"  per delta event:        {sum(deltas) / len(deltas):7.2f} µs")
    whole, finish = best([b"".join(frames)], args.number)
    print(f"whole stream, 1 chunk: {whole / events:7.2f} µs/event (+ finish {finish:.1f} µs)")


if __name__ == "__main__":
    main()
